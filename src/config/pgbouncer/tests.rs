use super::*;
use crate::config::{AuthType, Config};
use std::io::Write;

fn write(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::File::create(&p)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    p
}

#[test]
fn reads_a_pgbouncer_ini() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "userlist.txt", "\"alice\" \"secret\"\n");
    let ini = write(
        dir.path(),
        "pgbouncer.ini",
        "[databases]\n\
         app = host=10.0.0.5 port=5433 dbname=appdb pool_size=7 pool_mode=statement password='p w'\n\
         * = host=127.0.0.1 auth_user=pgbouncer\n\
         [users]\n\
         bob = pool_mode=session max_user_connections=3\n\
         [pgbouncer]\n\
         listen_addr = 127.0.0.1, ::1\n\
         listen_port = 7432\n\
         auth_type = scram-sha-256\n\
         auth_file = userlist.txt\n\
         pool_mode = transaction\n\
         query_wait_timeout = 2.5\n\
         server_idle_timeout = 1min\n\
         logfile = /var/log/x.log\n\
         syslog = 1\n",
    );
    let loaded = load(&ini).unwrap();
    // Keys pgsluice does not implement are named, not silently dropped.
    assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
    assert_eq!(
        loaded.raw.databases["*"].auth_user.as_deref(),
        Some("pgbouncer")
    );
    assert!(loaded.warnings.iter().any(|w| w.contains("syslog")));
    let c = Config::from_raw(loaded.raw, &ini, loaded.warnings).unwrap();
    assert_eq!(c.general.listen_addr, ["127.0.0.1", "::1"]);
    assert_eq!(
        c.general.logfile.as_deref(),
        Some(std::path::Path::new("/var/log/x.log"))
    );
    assert_eq!(c.general.listen_port, 7432);
    assert_eq!(c.general.auth_type, AuthType::ScramSha256);
    assert_eq!(c.general.pool_mode, PoolMode::Transaction);
    assert_eq!(
        c.general.query_wait_timeout,
        Some(std::time::Duration::from_millis(2500))
    );
    assert_eq!(
        c.general.server_idle_timeout,
        Some(std::time::Duration::from_secs(60))
    );
    let app = c.database("app").unwrap();
    assert_eq!(
        (app.host.as_str(), app.port, app.dbname.as_deref()),
        ("10.0.0.5", 5433, Some("appdb"))
    );
    assert_eq!(app.pool_mode, Some(PoolMode::Statement));
    assert_eq!(c.database("other").unwrap().name, "*");
    assert_eq!(c.users["bob"].max_user_connections, Some(3));
    assert!(c.auth_secrets.contains_key("alice"));
    let sources = crate::pool::Sources {
        store: &Default::default(),
        discovery: &Default::default(),
        kdf: &Default::default(),
    };
    let s = crate::pool::PoolSettings::resolve(&c, "app", "bob", &sources).unwrap();
    assert_eq!((s.mode, s.pool_size), (PoolMode::Session, 7));
}

#[test]
fn malformed_value_names_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let ini = write(
        dir.path(),
        "p.ini",
        "[pgbouncer]\n\nmax_client_conn = lots\n",
    );
    let e = load(&ini).unwrap_err().to_string();
    assert!(
        e.contains("p.ini:3") && e.contains("max_client_conn") && e.contains("lots"),
        "{e}"
    );
    let ini = write(
        dir.path(),
        "q.ini",
        "[databases]\nx = host=a port=notaport\n",
    );
    let e = load(&ini).unwrap_err().to_string();
    assert!(e.contains("q.ini:2") && e.contains("port"), "{e}");
}

#[test]
fn seconds_with_units() {
    assert_eq!(parse_seconds("15"), Ok(15.0));
    assert_eq!(parse_seconds("250ms"), Ok(0.25));
    assert_eq!(parse_seconds("2h"), Ok(7200.0));
    assert!(parse_seconds("-1").is_err());
    assert!(parse_seconds("5 parsecs").is_err());
}

#[test]
fn the_pgsluice_section_holds_our_own_keys() {
    let dir = tempfile::tempdir().unwrap();
    let ini = write(
        dir.path(),
        "pgbouncer.ini",
        "[pgbouncer]\nlisten_port = 7432\n\
         [pgsluice]\nmetrics_addr = 127.0.0.1:9930\nworkers = 2\nlisten_port = 1\n",
    );
    let loaded = load(&ini).unwrap();
    // A PgBouncer key in [pgsluice] is not taken: that section is for pgsluice's own.
    assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
    assert!(loaded.warnings[0].contains("\"listen_port\" is not a pgsluice setting"));
    let c = Config::from_raw(loaded.raw, &ini, loaded.warnings).unwrap();
    assert_eq!(
        c.general.metrics_addr,
        Some("127.0.0.1:9930".parse().unwrap())
    );
    assert_eq!((c.general.workers, c.general.listen_port), (2, 7432));

    let bad = write(
        dir.path(),
        "bad.ini",
        "[pgsluice]\nmetrics_addr = localhost\n",
    );
    let e = Config::from_raw(load(&bad).unwrap().raw, &bad, Vec::new()).unwrap_err();
    assert!(e.to_string().contains("metrics_addr"), "{e}");
}
