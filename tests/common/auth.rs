//! Helpers shared by the authentication tests (tests/auth.rs, tests/auth_query.rs,
//! tests/auth_wire.rs): the files a test writes for pgsluice, psql and tokio-postgres logins and
//! what a refused login shows, and the first steps of a login by hand (startup packet,
//! Authentication requests).
#![allow(dead_code, clippy::unwrap_used)]

use super::*;
use std::process::Output;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

pub const PROTOCOL_3: u32 = 196_608;
/// Authentication message codes: what the pooler asks the client for.
pub const AUTH_OK: u32 = 0;
pub const AUTH_CLEARTEXT: u32 = 3;
pub const AUTH_MD5: u32 = 5;
pub const AUTH_SASL: u32 = 10;
pub const AUTH_SASL_CONTINUE: u32 = 11;

/// PostgreSQL's words for a wrong password, with the user name replaced as in [`Refusal`].
pub const PASSWORD_FAILED: &str = "password authentication failed for user \"<user>\"";
pub const UNKNOWN_USER: &str = "no_such_user";

/// Files the test writes before pgsluice starts (auth file, hba file); the config names them by
/// absolute path, and a later `auth_file` line overrides the harness's own userlist.
pub fn files(entries: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in entries {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

pub fn path_in(dir: &tempfile::TempDir, name: &str) -> String {
    dir.path().join(name).display().to_string()
}

/// A userlist.txt from (user, secret) pairs.
pub fn userlist(entries: &[(&str, &str)]) -> String {
    entries
        .iter()
        .map(|(user, secret)| format!("\"{user}\" \"{secret}\"\n"))
        .collect()
}

/// The secret PostgreSQL stores for `user` (a SCRAM verifier or an md5 hash).
pub fn stored_secret(user: &str) -> String {
    Postgres::shared().psql_super(&format!(
        "SELECT rolpassword FROM pg_authid WHERE rolname = '{user}'"
    ))
}

/// `[pgbouncer]` lines for TLS towards clients: pgsluice presents the certificate PostgreSQL uses
/// (SAN 127.0.0.1, signed by the test CA).
pub fn client_tls(mode: &str) -> String {
    let c = &Postgres::shared().certs;
    format!(
        "client_tls_sslmode = {mode}\nclient_tls_cert_file = {}\nclient_tls_key_file = {}\n",
        c.server_cert.display(),
        c.server_key.display()
    )
}

/// libpq's options to present no client certificate at all, whatever ~/.postgresql holds
/// (libpq goes on without one when the named file does not exist).
pub const NO_CERTIFICATE: &str = "sslcert=/nonexistent/none.crt sslkey=/nonexistent/none.key";

/// Runs psql off the async threads.
pub async fn psql(conninfo: String, sql: &'static str) -> Output {
    tokio::task::spawn_blocking(move || psql_conninfo(&conninfo, sql))
        .await
        .unwrap()
}

/// psql's answer, trimmed; panics with its error output when it failed.
pub fn answer(out: &Output) -> String {
    assert!(
        out.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

pub fn conninfo(s: &Sluice, user: &str, db: &str, extra: &str) -> String {
    format!(
        "host=127.0.0.1 port={} user={user} dbname={db} {extra}",
        s.addr.port()
    )
}

pub async fn current_user(c: &tokio_postgres::Client) -> String {
    first_value(&c.simple_query("SELECT current_user").await.unwrap()).unwrap()
}

/// Logs in and expects it to work as `user`.
pub async fn logs_in(s: &Sluice, user: &str, password: &str, db: &str) -> tokio_postgres::Client {
    let c = s.connect_as(user, password, db).await.unwrap_or_else(|e| {
        panic!(
            "{user} could not log in to {db}: {} ({:?})",
            error_text(&e),
            sqlstate(&e)
        )
    });
    assert_eq!(current_user(&c).await, user);
    c
}

/// What a refused login shows the client. The user's name in the message is replaced by `<user>`,
/// so that the refusals of two users can be compared whole.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub severity: String,
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

pub async fn refusal(s: &Sluice, user: &str, password: &str, db: &str) -> Refusal {
    let e = match s.connect_as(user, password, db).await {
        Ok(_) => panic!("{user} was let in to {db} with password {password:?}"),
        Err(e) => e,
    };
    refusal_of(&e, user)
}

pub fn refusal_of(e: &tokio_postgres::Error, user: &str) -> Refusal {
    let d = e
        .as_db_error()
        .unwrap_or_else(|| panic!("refused without an ErrorResponse: {e}"));
    Refusal {
        severity: d.severity().to_owned(),
        code: d.code().code().to_owned(),
        message: d.message().replace(user, "<user>"),
        detail: d.detail().map(str::to_owned),
        hint: d.hint().map(str::to_owned),
    }
}

/// Opens a raw connection and sends a startup packet for `user` and `db`.
pub async fn send_startup(s: &Sluice, user: &str, db: &str) -> TcpStream {
    let mut raw = TcpStream::connect(s.addr).await.unwrap();
    raw.write_all(&wire::startup(
        PROTOCOL_3,
        &[("user", user), ("database", db)],
    ))
    .await
    .unwrap();
    raw
}

/// The code of an Authentication message body.
pub fn auth_code(body: &[u8]) -> u32 {
    u32::from_be_bytes(body[..4].try_into().unwrap())
}

/// Reads the next message, which must be an Authentication message; returns its code and data.
pub async fn read_auth(raw: &mut TcpStream) -> (u32, Vec<u8>) {
    let (tag, body) = tokio::time::timeout(Duration::from_secs(10), wire::read_message(raw))
        .await
        .expect("no answer from the pooler");
    assert_eq!(
        tag,
        b'R',
        "expected an Authentication message, got {:?}: {}",
        tag as char,
        String::from_utf8_lossy(&body)
    );
    (auth_code(&body), body[4..].to_vec())
}

/// What the pooler asks a client logging in as `user` to `db` for: [`AUTH_OK`] (nothing),
/// [`AUTH_CLEARTEXT`], [`AUTH_MD5`] or [`AUTH_SASL`].
pub async fn first_auth_request(s: &Sluice, user: &str, db: &str) -> u32 {
    let mut raw = send_startup(s, user, db).await;
    read_auth(&mut raw).await.0
}

/// Proves the pooler still logs clients in and serves them.
pub async fn still_serving(s: &Sluice) {
    let c = logs_in(s, SCRAM_USER, SCRAM_PASSWORD, "appdb").await;
    assert_eq!(
        first_value(&c.simple_query("SELECT 42").await.unwrap()).as_deref(),
        Some("42")
    );
}
