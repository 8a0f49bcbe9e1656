use super::*;
use crate::backend::TlsFailure;

/// Every way a checkout can fail, the SQLSTATE its client hears, and words it must not hear.
#[test]
fn each_pool_failure_has_one_sqlstate_and_a_client_safe_text() {
    let refused = || {
        std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "Connection refused (os error 111)",
        )
    };
    let cases = [
        (PoolError::WaitTimeout, "08P01"),
        (PoolError::Unreachable, "08006"),
        (
            PoolError::Connect(BackendError::Connect {
                addr: "10.1.2.3:5432".into(),
                source: refused(),
            }),
            "08006",
        ),
        (PoolError::Connect(BackendError::Io(refused())), "08006"),
        (
            PoolError::Connect(BackendError::Login {
                code: "28P01".into(),
                message: "password authentication failed for user \"app\"".into(),
            }),
            "28P01",
        ),
        (
            PoolError::Connect(BackendError::Tls {
                kind: TlsFailure::Certificate,
                detail: "invalid peer certificate: UnknownIssuer at 10.1.2.3".into(),
            }),
            "08006",
        ),
        (
            PoolError::Connect(BackendError::LoginRetry {
                code: "28P01".into(),
                last: "password authentication failed".into(),
            }),
            "28P01",
        ),
    ];
    for (e, code) in cases {
        let told = crate::error::ClientError::from(&e);
        assert_eq!(told.code, code, "{e:?}");
        assert_eq!(told.severity, crate::proto::encode::Severity::Fatal);
        let text = &told.message;
        for leak in ["10.1.2.3", "5432", "os error", "UnknownIssuer"] {
            assert!(
                !text.contains(leak),
                "{e:?} tells the client {leak:?}: {text}"
            );
        }
    }
}

#[test]
fn only_failures_that_pass_keep_clients_waiting() {
    let io = || std::io::Error::from(std::io::ErrorKind::ConnectionReset);
    let login = |code: &str| BackendError::Login {
        code: code.into(),
        message: String::new(),
    };
    assert!(BackendError::Io(io()).is_transient());
    assert!(BackendError::Timeout.is_transient());
    assert!(
        login("57P03").is_transient(),
        "the database system is starting up"
    );
    assert!(login("53300").is_transient(), "too many connections");
    assert!(
        !login("28P01").is_transient(),
        "a wrong password stays wrong"
    );
    assert!(!login("3D000").is_transient(), "no such database");
    let tls = BackendError::Tls {
        kind: TlsFailure::Certificate,
        detail: String::new(),
    };
    assert!(!tls.is_transient());
}

fn config_of(ini: &str) -> crate::config::Config {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgsluice.ini");
    std::fs::write(&path, ini).unwrap();
    crate::config::load(&path).unwrap()
}

/// A pool of database `app` under `ini`'s settings, with no server behind it, and its registry.
fn pool_of(ini: &str) -> (std::sync::Arc<Pool>, super::registry::Registry) {
    let config = config_of(ini);
    let sources = super::Sources {
        store: &Default::default(),
        discovery: &Default::default(),
        kdf: &Default::default(),
    };
    let settings = PoolSettings::resolve(&config, "app", "u", &sources).unwrap();
    let registry = super::registry::Registry::default();
    let key = PoolKey {
        database: "app".into(),
        user: "u".into(),
    };
    (registry.get_or_create(key, settings), registry)
}

const APP_INI: &str = "[databases]\napp = host=127.0.0.1 port=1\n[pgbouncer]\nlisten_port = 1\n";

#[tokio::test]
async fn pause_resume_and_a_removed_database_move_the_one_pool_state() {
    let (p, _registry) = pool_of(APP_INI);
    assert_eq!(p.state(), PoolState::Open);
    p.pause();
    assert_eq!(p.state(), PoolState::Paused);
    assert!(p.is_paused());
    // The database goes away while paused: closing wins, and RESUME does not reopen it.
    p.close();
    assert_eq!(p.state(), PoolState::Closing);
    p.pause();
    assert_eq!(
        p.state(),
        PoolState::Closing,
        "a closing pool stays closing"
    );
    // A reload that brings the database back reopens it.
    p.update_settings((*p.settings()).clone());
    assert_eq!(p.state(), PoolState::Open);
}

#[tokio::test]
async fn a_paused_database_removed_and_added_back_by_reload_is_still_paused() {
    let (p, registry) = pool_of(APP_INI);
    let sources = super::Sources {
        store: &Default::default(),
        discovery: &Default::default(),
        kdf: &Default::default(),
    };
    registry.pause(Some("app"));
    assert_eq!(p.state(), PoolState::Paused);
    let without =
        config_of("[databases]\nother = host=127.0.0.1 port=1\n[pgbouncer]\nlisten_port = 1\n");
    registry.reload(&without, &sources);
    assert_eq!(p.state(), PoolState::Closing);
    registry.reload(&config_of(APP_INI), &sources);
    assert_eq!(
        p.state(),
        PoolState::Paused,
        "PAUSE outlives the database's absence"
    );
    registry.resume(Some("app"));
    assert_eq!(p.state(), PoolState::Open);
}
