//! TLS beyond the client handshake, against the shared PostgreSQL (`ssl=on`, certificates from
//! `TestCerts`): channel binding (SCRAM-SHA-256-PLUS, tls-server-end-point) with psql and
//! psycopg 3, pgsluice's own TLS towards PostgreSQL (every server_tls_sslmode, and the client
//! certificate CloudNativePG's auth user logs in with), and the served certificate replaced on
//! disk and taken up by a reload.
//!
//! Towards PostgreSQL, the user `tlsonly` is refused by pg_hba without TLS (`hostnossl ...
//! reject`), so a login as `tlsonly` through pgsluice proves that pgsluice's server connection uses
//! TLS, and `pg_stat_ssl` says the same for any user. The client-facing handshake is tested in
//! tests/tls.rs.
#![allow(clippy::unwrap_used, clippy::err_expect)] // tokio-postgres clients are not Debug

mod common;

use common::tls::*;
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

// ---------------------------------------------------------------------------------------------
// 1. Channel binding (SCRAM-SHA-256-PLUS, tls-server-end-point)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_channel_binding_require_needs_tls_and_scram() {
    let c = &pg().certs;
    let s = Sluice::start(
        &format!("auth_type = scram-sha-256\n{}", serve_server_cert("prefer")),
        "",
    )
    .await;
    let base = s.conn_str(SCRAM_USER, SCRAM_PASSWORD, "appdb");

    // libpq only completes SCRAM-SHA-256-PLUS when the server's proof covers the hash of the
    // certificate libpq saw, so a wrong end-point hash in pgsluice fails here.
    let p = psql(
        format!("{base} sslmode=require channel_binding=require"),
        "SELECT current_user",
    )
    .await;
    assert!(p.ok, "channel binding over TLS:\n{}", p.text);
    assert_eq!(p.stdout, SCRAM_USER);
    let p = psql_probe(format!(
        "host=localhost port={} user={SCRAM_USER} password={SCRAM_PASSWORD} dbname=appdb \
         sslmode=verify-full sslrootcert={} channel_binding=require",
        s.addr.port(),
        c.ca.display()
    ))
    .await;
    assert!(
        p.ok && p.tls,
        "verify-full with channel binding:\n{}",
        p.text
    );
    // Without binding over TLS still works (the client picks plain SCRAM-SHA-256).
    let p = psql_probe(format!("{base} sslmode=require channel_binding=disable")).await;
    assert!(p.ok && p.tls, "{}", p.text);

    let p = psql_probe(format!("{base} sslmode=disable channel_binding=require")).await;
    assert!(
        !p.ok,
        "channel binding cannot work in the clear:\n{}",
        p.text
    );
    assert!(p.text.contains("channel binding"), "{}", p.text);

    // The binding does not replace the password check.
    let wrong = s.conn_str(SCRAM_USER, "wrong-secret", "appdb");
    let p = psql_probe(format!("{wrong} sslmode=require channel_binding=require")).await;
    assert!(!p.ok, "{}", p.text);
    assert!(
        p.text.contains("password authentication failed"),
        "{}",
        p.text
    );

    // md5 (the auth file holds a plain password) has no channel binding.
    let s = Sluice::start(
        &format!("auth_type = md5\n{}", serve_server_cert("prefer")),
        "",
    )
    .await;
    let base = s.conn_str(SCRAM_USER, SCRAM_PASSWORD, "appdb");
    let p = psql_probe(format!("{base} sslmode=require channel_binding=require")).await;
    assert!(
        !p.ok,
        "md5 cannot satisfy channel_binding=require:\n{}",
        p.text
    );
    assert!(p.text.contains("channel binding"), "{}", p.text);
}

/// Connects with psycopg 3 to the libpq conninfo in argv[1]; prints `OK user=.. ssl=.. libpq=..`.
const PSYCOPG_PROBE: &str = r#"
import sys
import psycopg
try:
    with psycopg.connect(sys.argv[1]) as conn:
        user = conn.execute("SELECT current_user").fetchone()[0]
        print(f"OK user={user} ssl={conn.pgconn.ssl_in_use} libpq={psycopg.pq.version()}")
except psycopg.Error as e:
    print(f"ERROR libpq={psycopg.pq.version()} {e}")
    sys.exit(1)
"#;

async fn psycopg(conninfo: String) -> (bool, String) {
    let py = python();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(py)
            .args(["-c", PSYCOPG_PROBE, conninfo.as_str()])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn libpq_version(text: &str) -> u32 {
    let rest = &text[text
        .find("libpq=")
        .expect("the probe names libpq's version")
        + 6..];
    rest.split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_channel_binding_and_direct_tls() {
    let s = Sluice::start(
        &format!("auth_type = scram-sha-256\n{}", serve_server_cert("prefer")),
        "",
    )
    .await;
    let base = format!(
        "{} connect_timeout=10",
        s.conn_str(SCRAM_USER, SCRAM_PASSWORD, "appdb")
    );
    let (ok, out) = psycopg(format!("{base} sslmode=require channel_binding=require")).await;
    assert!(ok, "psycopg with channel_binding=require:\n{out}");
    assert!(
        out.contains(&format!("user={SCRAM_USER}")) && out.contains("ssl=True"),
        "{out}"
    );
    let (ok, out) = psycopg(format!("{base} sslmode=disable channel_binding=require")).await;
    assert!(!ok, "channel binding in the clear must fail:\n{out}");
    assert!(out.contains("channel binding"), "{out}");

    // PostgreSQL 17's libpq can start with the ClientHello (ALPN "postgresql").
    if libpq_version(&out) >= 170000 {
        let (ok, out) = psycopg(format!(
            "{base} sslmode=require sslnegotiation=direct channel_binding=require"
        ))
        .await;
        assert!(ok, "psycopg with sslnegotiation=direct:\n{out}");
        assert!(out.contains("ssl=True"), "{out}");
    } else {
        eprintln!("psycopg's libpq is older than 17: sslnegotiation=direct not tried");
    }
}

// ---------------------------------------------------------------------------------------------
// 2. TLS towards PostgreSQL

/// Logs in through a fresh pgsluice as the SCRAM user to `tlsdb`, whose entry points at `host` with
/// `extra` (e.g. a forced user), and returns `current_user` and `pg_stat_ssl.ssl` of the server
/// connection, or the error the client got.
async fn through_pooler(
    server_tls: &str,
    host: &str,
    extra: &str,
) -> Result<(String, String), String> {
    let s = Sluice::start_exact(
        server_tls,
        &format!(
            "tlsdb = host={host} port={} dbname=postgres {extra}",
            pg().port
        ),
    )
    .await;
    let c = s
        .connect_as(SCRAM_USER, SCRAM_PASSWORD, "tlsdb")
        .await
        .map_err(|e| error_text(&e))?;
    let rows = c
        .simple_query("SELECT current_user, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .await
        .map_err(|e| error_text(&e))?;
    let row = rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .expect("pg_stat_ssl has a row for the backend");
    Ok((
        row.get(0).unwrap().to_owned(),
        row.get(1).unwrap().to_owned(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sslmodes_towards_postgresql() {
    let c = &pg().certs;
    let tlsonly = format!("user={TLS_ONLY_USER} password={TLS_ONLY_PASSWORD}");
    let ca = format!("server_tls_ca_file = {}", c.ca.display());
    let other_ca = format!("server_tls_ca_file = {}", c.other_ca.display());
    let via_tls = Ok((TLS_ONLY_USER.to_owned(), "t".to_owned()));

    // disable: not even asked for, and pg_hba refuses tlsonly in the clear.
    let err = through_pooler("server_tls_sslmode = disable", "127.0.0.1", &tlsonly)
        .await
        .expect_err("tlsonly without TLS");
    assert!(err.contains("pg_hba.conf rejects"), "{err}");
    // prefer is the default. SCRAM towards PostgreSQL over TLS is SCRAM-SHA-256-PLUS (PostgreSQL
    // offers it), so these logins also prove pgsluice's client side of channel binding.
    assert_eq!(through_pooler("", "127.0.0.1", &tlsonly).await, via_tls);
    for mode in ["prefer", "require"] {
        assert_eq!(
            through_pooler(
                &format!("server_tls_sslmode = {mode}"),
                "127.0.0.1",
                &tlsonly
            )
            .await,
            via_tls,
            "{mode}"
        );
    }
    // require checks nothing: PostgreSQL's certificate does not name 127.0.0.2, and no CA is set.
    assert_eq!(
        through_pooler("server_tls_sslmode = require", "127.0.0.2", &tlsonly).await,
        via_tls
    );

    // verify-full: the chain and the name (SAN localhost, 127.0.0.1; SNI is the configured host).
    for host in ["127.0.0.1", "localhost"] {
        assert_eq!(
            through_pooler(
                &format!("server_tls_sslmode = verify-full\n{ca}"),
                host,
                &tlsonly
            )
            .await,
            via_tls,
            "verify-full host={host}"
        );
    }
    let err = through_pooler(
        &format!("server_tls_sslmode = verify-full\n{ca}"),
        "127.0.0.2",
        &tlsonly,
    )
    .await
    .expect_err("verify-full with a host the certificate does not name");
    assert!(err.contains("certificate"), "{err}");
    assert!(
        !err.contains("NotValidForName") && !err.contains("127.0.0.2"),
        "TLS internals or the server's address reached the client: {err}"
    );
    // verify-ca: the chain only.
    assert_eq!(
        through_pooler(
            &format!("server_tls_sslmode = verify-ca\n{ca}"),
            "127.0.0.2",
            &tlsonly
        )
        .await,
        via_tls,
        "verify-ca ignores the name"
    );
    for mode in ["verify-ca", "verify-full"] {
        let err = through_pooler(
            &format!("server_tls_sslmode = {mode}\n{other_ca}"),
            "127.0.0.1",
            &tlsonly,
        )
        .await
        .expect_err("a CA that did not sign PostgreSQL's certificate");
        assert!(err.contains("certificate"), "{mode}: {err}");
        assert!(
            !err.contains("UnknownIssuer"),
            "{mode}: rustls internals: {err}"
        );
    }

    // Any user: pg_stat_ssl of the server connection follows the mode.
    for (mode, ssl) in [("disable", "f"), ("prefer", "t"), ("require", "t")] {
        assert_eq!(
            through_pooler(&format!("server_tls_sslmode = {mode}"), "127.0.0.1", "").await,
            Ok((SCRAM_USER.to_owned(), ssl.to_owned())),
            "{mode}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_client_certificate_logs_in_by_cert_as_cloudnativepg_does() {
    let c = &pg().certs;
    // pg_hba: `hostssl all cnpg_pooler_pgbouncer 127.0.0.0/8 cert`; no password exists.
    let forced = format!("user={AUTH_USER}");
    let verify = format!(
        "server_tls_sslmode = verify-full\nserver_tls_ca_file = {}",
        c.ca.display()
    );
    let with_cert = format!(
        "{verify}\nserver_tls_cert_file = {}\nserver_tls_key_file = {}",
        c.pooler_client_cert.display(),
        c.pooler_client_key.display()
    );
    assert_eq!(
        through_pooler(&with_cert, "127.0.0.1", &forced).await,
        Ok((AUTH_USER.to_owned(), "t".to_owned()))
    );
    through_pooler(&verify, "127.0.0.1", &forced)
        .await
        .expect_err("without the client certificate PostgreSQL refuses the auth user");
}

// ---------------------------------------------------------------------------------------------
// 3. Certificate rotation

/// How the certificate files are replaced.
#[derive(Debug, Clone, Copy)]
enum Rotation {
    /// New files written under temporary names and renamed over the configured paths.
    RenameFiles,
    /// Kubernetes' atomic writer: the configured paths are symlinks into `..data`, itself a symlink
    /// to a generation directory; a new generation is published by renaming a new `..data`.
    SwapDataSymlink,
}

fn write_secret_file(path: &Path, contents: &[u8]) {
    std::fs::write(path, contents).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Publishes `cert` and `key` as `dir/tls.crt` and `dir/tls.key` (generation `generation`).
fn publish(dir: &Path, how: Rotation, generation: u32, cert: &[u8], key: &[u8]) {
    match how {
        Rotation::RenameFiles => {
            for (name, contents) in [("tls.crt", cert), ("tls.key", key)] {
                let tmp = dir.join(format!(".{name}.{generation}.tmp"));
                write_secret_file(&tmp, contents);
                std::fs::rename(tmp, dir.join(name)).unwrap();
            }
        }
        Rotation::SwapDataSymlink => {
            let generation_dir = format!("..gen{generation}");
            std::fs::create_dir(dir.join(&generation_dir)).unwrap();
            write_secret_file(&dir.join(&generation_dir).join("tls.crt"), cert);
            write_secret_file(&dir.join(&generation_dir).join("tls.key"), key);
            let tmp = dir.join("..data_tmp");
            std::os::unix::fs::symlink(generation_dir, &tmp).unwrap();
            std::fs::rename(tmp, dir.join("..data")).unwrap();
            for name in ["tls.crt", "tls.key"] {
                if std::fs::symlink_metadata(dir.join(name)).is_err() {
                    std::os::unix::fs::symlink(format!("..data/{name}"), dir.join(name)).unwrap();
                }
            }
        }
    }
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

async fn rotation(how: Rotation) {
    let c = &pg().certs;
    let dir = tempfile::tempdir().unwrap();
    publish(
        dir.path(),
        how,
        1,
        &read(&c.server_cert),
        &read(&c.server_key),
    );
    // Over TLS: legacy by trust (for the raw client), app by SCRAM (channel binding for psql).
    let hba = dir.path().join("hba.conf");
    std::fs::write(
        &hba,
        format!(
            "hostssl all {MD5_USER} 127.0.0.1/32 trust\n\
             hostssl all {SCRAM_USER} 127.0.0.1/32 scram-sha-256\n"
        ),
    )
    .unwrap();
    let s = Sluice::start(
        &format!(
            "auth_type = hba\nauth_hba_file = {}\n{}",
            hba.display(),
            serve_tls(
                "require",
                &dir.path().join("tls.crt"),
                &dir.path().join("tls.key")
            )
        ),
        "",
    )
    .await;
    let before = der(&c.server_cert);
    let after = der(&c.wrong_name_cert);
    let any = connector(ClientSetup::default());
    let psql_login = format!(
        "host=127.0.0.1 port={} user={SCRAM_USER} password={SCRAM_PASSWORD} dbname=appdb \
         sslrootcert={} channel_binding=require",
        s.addr.port(),
        c.ca.display()
    );

    // A client that stays connected through the rotation.
    let mut old = tls_after_ssl_request(s.addr, &any).await.unwrap();
    assert_eq!(served(&old), before);
    assert_eq!(login(&mut old, MD5_USER, None).await, Ok(0), "{how:?}");
    assert_eq!(query_value(&mut old, "SELECT 1").await.as_deref(), Ok("1"));
    let p = psql_probe(format!("{psql_login} sslmode=verify-full")).await;
    assert!(p.ok && p.tls, "{how:?} before the rotation:\n{}", p.text);

    publish(
        dir.path(),
        how,
        2,
        &read(&c.wrong_name_cert),
        &read(&c.wrong_name_key),
    );
    s.app.reload().expect("reload with the new certificate");

    let mut fresh = tls_after_ssl_request(s.addr, &any).await.unwrap();
    assert_eq!(
        served(&fresh),
        after,
        "{how:?}: a new handshake sees the new certificate"
    );
    assert_eq!(login(&mut fresh, MD5_USER, None).await, Ok(0));
    // libpq sees it too: the new name fails verify-full; verify-ca and channel binding (whose
    // end-point hash must now be the new certificate's) pass.
    let p = psql_probe(format!("{psql_login} sslmode=verify-full")).await;
    assert!(
        !p.ok,
        "{how:?}: the new certificate names db.example.invalid:\n{}",
        p.text
    );
    assert!(p.text.contains("does not match host name"), "{}", p.text);
    let p = psql_probe(format!("{psql_login} sslmode=verify-ca")).await;
    assert!(p.ok && p.tls, "{how:?} after the rotation:\n{}", p.text);

    // The old client kept its session, and its certificate.
    assert_eq!(
        query_value(&mut old, "SELECT 2").await.as_deref(),
        Ok("2"),
        "{how:?}: the client connected before the reload"
    );
    assert_eq!(served(&old), before);

    // A broken file is refused by the reload, which keeps the configuration in force.
    publish(dir.path(), how, 3, b"not a certificate\n", b"not a key\n");
    assert!(
        s.app.reload().is_err(),
        "{how:?}: reload accepted a garbage certificate"
    );
    let mut after_bad = tls_after_ssl_request(s.addr, &any).await.unwrap();
    assert_eq!(served(&after_bad), after);
    assert_eq!(login(&mut after_bad, MD5_USER, None).await, Ok(0));
    assert_eq!(query_value(&mut old, "SELECT 3").await.as_deref(), Ok("3"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_replaced_by_rename_is_served_after_reload_to_new_clients_only() {
    rotation(Rotation::RenameFiles).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_replaced_by_kubernetes_data_symlink_swap_is_served_after_reload() {
    rotation(Rotation::SwapDataSymlink).await;
}
