//! Client authentication against the real PostgreSQL: every auth_type, certificates, hba files,
//! CloudNativePG's auth_query wiring with SCRAM pass-through, stalled and malformed logins, and
//! the log that must never show a password.
#![allow(clippy::unwrap_used, clippy::zombie_processes)]

mod common;

use common::wire::{self, error_code, error_message};
use common::*;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const PROTOCOL_3: u32 = 196_608;
/// Authentication message codes: what the pooler asks the client for.
const AUTH_OK: u32 = 0;
const AUTH_CLEARTEXT: u32 = 3;
const AUTH_MD5: u32 = 5;
const AUTH_SASL: u32 = 10;
const AUTH_SASL_CONTINUE: u32 = 11;

/// PostgreSQL's words for a wrong password, with the user name replaced as in [`Refusal`].
const PASSWORD_FAILED: &str = "password authentication failed for user \"<user>\"";
const UNKNOWN_USER: &str = "no_such_user";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Files the test writes before pgsluice starts (auth file, hba file); the config names them by
/// absolute path, and a later `auth_file` line overrides the harness's own userlist.
fn files(entries: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in entries {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

fn path_in(dir: &tempfile::TempDir, name: &str) -> String {
    dir.path().join(name).display().to_string()
}

/// A userlist.txt from (user, secret) pairs.
fn userlist(entries: &[(&str, &str)]) -> String {
    entries
        .iter()
        .map(|(user, secret)| format!("\"{user}\" \"{secret}\"\n"))
        .collect()
}

/// The secret PostgreSQL stores for `user` (a SCRAM verifier or an md5 hash).
fn stored_secret(user: &str) -> String {
    Postgres::shared().psql_super(&format!(
        "SELECT rolpassword FROM pg_authid WHERE rolname = '{user}'"
    ))
}

/// `[pgbouncer]` lines for TLS towards clients: pgsluice presents the certificate PostgreSQL uses
/// (SAN 127.0.0.1, signed by the test CA).
fn client_tls(mode: &str) -> String {
    let c = &Postgres::shared().certs;
    format!(
        "client_tls_sslmode = {mode}\nclient_tls_cert_file = {}\nclient_tls_key_file = {}\n",
        c.server_cert.display(),
        c.server_key.display()
    )
}

/// libpq's options to present the client certificate whose CN is `app`.
fn app_certificate() -> String {
    let c = &Postgres::shared().certs;
    format!(
        "sslcert={} sslkey={}",
        c.app_client_cert.display(),
        c.app_client_key.display()
    )
}

/// libpq's options to present no client certificate at all, whatever ~/.postgresql holds
/// (libpq goes on without one when the named file does not exist).
const NO_CERTIFICATE: &str = "sslcert=/nonexistent/none.crt sslkey=/nonexistent/none.key";

/// Runs psql off the async threads.
async fn psql(conninfo: String, sql: &'static str) -> Output {
    tokio::task::spawn_blocking(move || psql_conninfo(&conninfo, sql))
        .await
        .unwrap()
}

/// psql's answer, trimmed; panics with its error output when it failed.
fn answer(out: &Output) -> String {
    assert!(
        out.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// psql's error output; panics when it succeeded.
fn failure(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "psql was let in: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn conninfo(s: &Sluice, user: &str, db: &str, extra: &str) -> String {
    format!(
        "host=127.0.0.1 port={} user={user} dbname={db} {extra}",
        s.addr.port()
    )
}

async fn current_user(c: &tokio_postgres::Client) -> String {
    first_value(&c.simple_query("SELECT current_user").await.unwrap()).unwrap()
}

/// Connects with tokio-postgres giving no password at all.
async fn connect_without_password(
    s: &Sluice,
    user: &str,
    db: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) =
        tokio_postgres::connect(&conninfo(s, user, db, ""), tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Logs in and expects it to work as `user`.
async fn logs_in(s: &Sluice, user: &str, password: &str, db: &str) -> tokio_postgres::Client {
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
struct Refusal {
    severity: String,
    code: String,
    message: String,
    detail: Option<String>,
    hint: Option<String>,
}

async fn refusal(s: &Sluice, user: &str, password: &str, db: &str) -> Refusal {
    let e = match s.connect_as(user, password, db).await {
        Ok(_) => panic!("{user} was let in to {db} with password {password:?}"),
        Err(e) => e,
    };
    refusal_of(&e, user)
}

fn refusal_of(e: &tokio_postgres::Error, user: &str) -> Refusal {
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
async fn send_startup(s: &Sluice, user: &str, db: &str) -> TcpStream {
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
fn auth_code(body: &[u8]) -> u32 {
    u32::from_be_bytes(body[..4].try_into().unwrap())
}

/// Reads the next message, which must be an Authentication message; returns its code and data.
async fn read_auth(raw: &mut TcpStream) -> (u32, Vec<u8>) {
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
async fn first_auth_request(s: &Sluice, user: &str, db: &str) -> u32 {
    let mut raw = send_startup(s, user, db).await;
    read_auth(&mut raw).await.0
}

/// Everything the pooler sends until it closes the connection; panics if it is still open after
/// `within`. A reset counts as closed.
async fn until_closed(raw: &mut TcpStream, within: Duration) -> Vec<u8> {
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(within, raw.read_to_end(&mut buf))
        .await
        .is_ok();
    assert!(
        closed,
        "the connection was still open after {within:?} (received {buf:?})"
    );
    buf
}

/// A frontend PasswordMessage-family frame (`p`) around `body`.
fn password_frame(body: &[u8]) -> Vec<u8> {
    let mut m = vec![b'p'];
    m.extend_from_slice(&(4 + body.len() as u32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// SASLInitialResponse: mechanism, the length the client *declares* for the data, the data.
fn sasl_initial(mechanism: &str, declared: i32, data: &[u8]) -> Vec<u8> {
    let mut body = mechanism.as_bytes().to_vec();
    body.push(0);
    body.extend_from_slice(&declared.to_be_bytes());
    body.extend_from_slice(data);
    password_frame(&body)
}

const CLIENT_NONCE: &str = "fyko+d2lbbFgONRv9qkxdawL";

/// A well-formed SCRAM client-first-message without channel binding.
fn client_first() -> Vec<u8> {
    format!("n,,n=,r={CLIENT_NONCE}").into_bytes()
}

/// Starts a SCRAM exchange as the SCRAM user on a pooler with auth_type = scram-sha-256, up to the
/// AuthenticationSASL request.
async fn sasl_requested(s: &Sluice) -> TcpStream {
    let mut raw = send_startup(s, SCRAM_USER, "appdb").await;
    let (code, mechanisms) = read_auth(&mut raw).await;
    assert_eq!(code, AUTH_SASL);
    assert!(
        String::from_utf8_lossy(&mechanisms).contains("SCRAM-SHA-256"),
        "{mechanisms:?}"
    );
    raw
}

/// Sends a valid client-first-message and returns the server-first-message's combined nonce.
async fn scram_server_first(raw: &mut TcpStream) -> String {
    let first = client_first();
    raw.write_all(&sasl_initial("SCRAM-SHA-256", first.len() as i32, &first))
        .await
        .unwrap();
    let (code, data) = read_auth(raw).await;
    assert_eq!(code, AUTH_SASL_CONTINUE);
    let server_first = String::from_utf8(data).unwrap();
    let nonce = server_first
        .split(',')
        .find_map(|a| a.strip_prefix("r="))
        .unwrap_or_else(|| panic!("no nonce in {server_first:?}"))
        .to_owned();
    assert!(
        nonce.starts_with(CLIENT_NONCE),
        "the server nonce must extend ours: {server_first}"
    );
    nonce
}

/// A proof of the right length (32 bytes, base64) that no password produces.
fn bogus_proof() -> String {
    format!("{}=", "A".repeat(43))
}

/// Proves the pooler still logs clients in and serves them.
async fn still_serving(s: &Sluice) {
    let c = logs_in(s, SCRAM_USER, SCRAM_PASSWORD, "appdb").await;
    assert_eq!(
        first_value(&c.simple_query("SELECT 42").await.unwrap()).as_deref(),
        Some("42")
    );
}

// ---------------------------------------------------------------------------------------------
// 1. auth_type over plain connections
// ---------------------------------------------------------------------------------------------

/// Each auth_type asks the client for what its name says (nothing, a cleartext password, an md5
/// response, SCRAM), and the right password gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_auth_type_asks_for_what_it_names() {
    for (auth_type, asked) in [
        ("trust", AUTH_OK),
        ("any", AUTH_OK),
        ("plain", AUTH_CLEARTEXT),
        ("password", AUTH_CLEARTEXT),
        ("md5", AUTH_MD5),
        ("scram-sha-256", AUTH_SASL),
    ] {
        let s = Sluice::start(&format!("auth_type = {auth_type}"), "").await;
        assert_eq!(
            first_auth_request(&s, SCRAM_USER, "appdb").await,
            asked,
            "what auth_type = {auth_type} asks for"
        );
        let c = s
            .connect_as(SCRAM_USER, SCRAM_PASSWORD, "appdb")
            .await
            .unwrap_or_else(|e| panic!("auth_type = {auth_type}: {e}"));
        assert_eq!(
            current_user(&c).await,
            SCRAM_USER,
            "auth_type = {auth_type}"
        );
    }
}

/// trust and any let a client in without a password; any also takes a user nobody knows when
/// the database entry forces the server user (PgBouncer's meaning).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_and_any_need_no_password() {
    let pg = Postgres::shared();
    let s = Sluice::start("auth_type = trust", "").await;
    let c = connect_without_password(&s, SCRAM_USER, "appdb")
        .await
        .expect("trust asks for no password");
    assert_eq!(current_user(&c).await, SCRAM_USER);

    let s = Sluice::start(
        "auth_type = any",
        &format!(
            "forced = host=127.0.0.1 port={} dbname=appdb user={SCRAM_USER}",
            pg.port
        ),
    )
    .await;
    let c = connect_without_password(&s, "nobody_at_all", "forced")
        .await
        .expect("any lets an unknown user in");
    assert_eq!(
        current_user(&c).await,
        SCRAM_USER,
        "the forced user serves it"
    );
    // A listed user with a wrong password gets in too: nothing is checked.
    logs_in(&s, SCRAM_USER, "not-the-password", "appdb").await;
}

/// auth_type = password: the cleartext password is checked, against a plain secret or an md5 hash
/// in the auth file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_checks_the_cleartext_password() {
    let legacy_hash = stored_secret(MD5_USER);
    assert!(legacy_hash.starts_with("md5"), "{legacy_hash}");
    let f = files(&[(
        "users.txt",
        userlist(&[
            (SCRAM_USER, SCRAM_PASSWORD),
            (MD5_USER, legacy_hash.as_str()),
        ])
        .as_str(),
    )]);
    let s = Sluice::start(
        &format!(
            "auth_type = password\nauth_file = {}",
            path_in(&f, "users.txt")
        ),
        "",
    )
    .await;
    logs_in(&s, SCRAM_USER, SCRAM_PASSWORD, "appdb").await;
    logs_in(&s, MD5_USER, MD5_PASSWORD, "appdb").await;
    for user in [SCRAM_USER, MD5_USER] {
        let r = refusal(&s, user, "wrong-password", "appdb").await;
        assert_eq!(
            (r.code.as_str(), r.message.as_str()),
            ("28P01", PASSWORD_FAILED)
        );
    }
}

/// auth_type = md5, PgBouncer's meaning: a user whose stored secret is a SCRAM verifier is asked
/// for SCRAM, a user with an md5 hash for md5. With only the verifier in the auth file (no
/// plaintext anywhere), the pool still logs in to PostgreSQL: the client's proof is passed through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_asks_for_scram_when_the_auth_file_holds_a_scram_verifier() {
    let verifier = stored_secret(SCRAM_USER);
    assert!(verifier.starts_with("SCRAM-SHA-256$"), "{verifier}");
    let legacy_hash = stored_secret(MD5_USER);
    let f = files(&[(
        "users.txt",
        userlist(&[
            (SCRAM_USER, verifier.as_str()),
            (MD5_USER, legacy_hash.as_str()),
        ])
        .as_str(),
    )]);
    let s = Sluice::start(
        &format!("auth_type = md5\nauth_file = {}", path_in(&f, "users.txt")),
        "",
    )
    .await;
    assert_eq!(first_auth_request(&s, SCRAM_USER, "appdb").await, AUTH_SASL);
    assert_eq!(first_auth_request(&s, MD5_USER, "appdb").await, AUTH_MD5);
    logs_in(&s, SCRAM_USER, SCRAM_PASSWORD, "appdb").await;
    logs_in(&s, MD5_USER, MD5_PASSWORD, "appdb").await;
    for user in [SCRAM_USER, MD5_USER] {
        let r = refusal(&s, user, "wrong-password", "appdb").await;
        assert_eq!(
            (r.code.as_str(), r.message.as_str()),
            ("28P01", PASSWORD_FAILED)
        );
    }
}

/// auth_type = scram-sha-256: a wrong password and an unknown user are refused alike (28P01, the
/// same words, no detail to tell them apart), and the unknown user is taken through the same SCRAM
/// exchange rather than refused up front.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_refuses_wrong_password_and_unknown_user_alike() {
    let s = Sluice::start("auth_type = scram-sha-256", "").await;
    logs_in(&s, SCRAM_USER, SCRAM_PASSWORD, "appdb").await;
    let wrong = refusal(&s, SCRAM_USER, "wrong-password", "appdb").await;
    assert_eq!(wrong.code, "28P01", "{wrong:?}");
    assert_eq!(wrong.message, PASSWORD_FAILED, "{wrong:?}");
    let unknown = refusal(&s, UNKNOWN_USER, "wrong-password", "appdb").await;
    assert_eq!(
        unknown, wrong,
        "an unknown user must look like a wrong password"
    );
    assert_eq!(
        first_auth_request(&s, UNKNOWN_USER, "appdb").await,
        AUTH_SASL
    );
    still_serving(&s).await;
}

// ---------------------------------------------------------------------------------------------
// 2. auth_type = cert
// ---------------------------------------------------------------------------------------------

/// auth_type = cert with client_tls_sslmode = verify-ca: a client certificate the CA signed, with
/// CN = the user, is the login; a certificate of another user, no certificate, or no TLS are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cert_auth_with_verify_ca() {
    let pg = Postgres::shared();
    let s = Sluice::start(
        &format!(
            "auth_type = cert\n{}client_tls_ca_file = {}",
            client_tls("verify-ca"),
            pg.certs.ca.display()
        ),
        "",
    )
    .await;
    let verify = format!("sslmode=verify-ca sslrootcert={}", pg.certs.ca.display());
    let out = psql(
        conninfo(
            &s,
            SCRAM_USER,
            "appdb",
            &format!("{verify} {}", app_certificate()),
        ),
        "SELECT current_user",
    )
    .await;
    assert_eq!(answer(&out), SCRAM_USER);

    // app's certificate does not make anyone else.
    let out = psql(
        conninfo(
            &s,
            MD5_USER,
            "appdb",
            &format!("{verify} {}", app_certificate()),
        ),
        "SELECT current_user",
    )
    .await;
    let err = failure(&out);
    assert!(
        err.contains(&format!(
            "certificate authentication failed for user \"{MD5_USER}\""
        )),
        "{err}"
    );

    // verify-ca demands a certificate in the TLS handshake itself.
    let out = psql(
        conninfo(
            &s,
            SCRAM_USER,
            "appdb",
            &format!("{verify} {NO_CERTIFICATE}"),
        ),
        "SELECT current_user",
    )
    .await;
    failure(&out);

    // Without TLS there is nothing to check.
    let r = refusal(&s, SCRAM_USER, SCRAM_PASSWORD, "appdb").await;
    assert_eq!(
        (r.code.as_str(), r.message.as_str()),
        ("28000", "SSL required")
    );
}

/// auth_type = cert with client_tls_sslmode = require and a CA file: the certificate is optional
/// in the handshake, so a client without one gets through TLS and is then refused in PostgreSQL's
/// words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cert_auth_with_require_and_a_ca_file() {
    let pg = Postgres::shared();
    let s = Sluice::start(
        &format!(
            "auth_type = cert\n{}client_tls_ca_file = {}",
            client_tls("require"),
            pg.certs.ca.display()
        ),
        "",
    )
    .await;
    let out = psql(
        conninfo(
            &s,
            SCRAM_USER,
            "appdb",
            &format!("sslmode=require {}", app_certificate()),
        ),
        "SELECT current_user",
    )
    .await;
    assert_eq!(answer(&out), SCRAM_USER);

    let out = psql(
        conninfo(
            &s,
            SCRAM_USER,
            "appdb",
            &format!("sslmode=require {NO_CERTIFICATE}"),
        ),
        "SELECT current_user",
    )
    .await;
    let err = failure(&out);
    assert!(
        err.contains(&format!(
            "certificate authentication failed for user \"{SCRAM_USER}\""
        )),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. auth_type = hba
// ---------------------------------------------------------------------------------------------

/// auth_type = hba: the first matching line of auth_hba_file decides, per user, database and
/// transport: TLS-only users, reject lines, and md5 / scram-sha-256 / password / trust methods; a
/// connection no line matches gets PostgreSQL's "no pg_hba.conf entry" and 28000.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hba_file_decides_per_connection() {
    let f = files(&[
        (
            "users.txt",
            userlist(&[
                (SCRAM_USER, SCRAM_PASSWORD),
                (MD5_USER, MD5_PASSWORD),
                (TLS_ONLY_USER, TLS_ONLY_PASSWORD),
                ("postgres", ""),
            ])
            .as_str(),
        ),
        (
            "hba.conf",
            format!(
                "# TYPE  DATABASE USER ADDRESS METHOD\n\
                 hostssl all {TLS_ONLY_USER} 127.0.0.1/32 scram-sha-256\n\
                 hostnossl all {TLS_ONLY_USER} 127.0.0.1/32 reject\n\
                 host all {MD5_USER} 127.0.0.1/32 md5\n\
                 host appdb {SCRAM_USER} 127.0.0.1/32 scram-sha-256\n\
                 host postgres {SCRAM_USER} 127.0.0.1 255.255.255.255 password\n\
                 host all postgres 127.0.0.0/8 trust\n"
            )
            .as_str(),
        ),
    ]);
    let s = Sluice::start(
        &format!(
            "auth_type = hba\nauth_hba_file = {}\nauth_file = {}\n{}",
            path_in(&f, "hba.conf"),
            path_in(&f, "users.txt"),
            client_tls("prefer")
        ),
        "",
    )
    .await;

    // Each line's method is what the client is asked for, and the right password gets in.
    assert_eq!(first_auth_request(&s, MD5_USER, "appdb").await, AUTH_MD5);
    assert_eq!(first_auth_request(&s, SCRAM_USER, "appdb").await, AUTH_SASL);
    assert_eq!(
        first_auth_request(&s, SCRAM_USER, "postgres").await,
        AUTH_CLEARTEXT
    );
    assert_eq!(
        first_auth_request(&s, "postgres", "postgres").await,
        AUTH_OK
    );
    logs_in(&s, MD5_USER, MD5_PASSWORD, "appdb").await;
    logs_in(&s, SCRAM_USER, SCRAM_PASSWORD, "appdb").await;
    logs_in(&s, SCRAM_USER, SCRAM_PASSWORD, "postgres").await;
    let c = connect_without_password(&s, "postgres", "postgres")
        .await
        .expect("trust line");
    assert_eq!(current_user(&c).await, "postgres");
    let r = refusal(&s, SCRAM_USER, "wrong-password", "appdb").await;
    assert_eq!(
        (r.code.as_str(), r.message.as_str()),
        ("28P01", PASSWORD_FAILED)
    );

    // The TLS-only user: refused in the clear by its reject line, let in over TLS (and PostgreSQL,
    // which rejects it without TLS too, sees the pooler's server connection over TLS).
    let r = refusal(&s, TLS_ONLY_USER, TLS_ONLY_PASSWORD, "appdb").await;
    assert_eq!(r.code, "28000", "{r:?}");
    assert_eq!(
        r.message,
        "pg_hba.conf rejects connection for user \"<user>\""
    );
    let out = psql(
        conninfo(
            &s,
            TLS_ONLY_USER,
            "appdb",
            &format!("password={TLS_ONLY_PASSWORD} sslmode=require"),
        ),
        "SELECT current_user",
    )
    .await;
    assert_eq!(answer(&out), TLS_ONLY_USER);

    // No line for app in template1.
    let r = refusal(&s, SCRAM_USER, SCRAM_PASSWORD, "template1").await;
    assert_eq!(r.code, "28000", "{r:?}");
    assert_eq!(
        r.message,
        "no pg_hba.conf entry for host \"127.0.0.1\", user \"<user>\", database \"template1\", no encryption"
    );
    still_serving(&s).await;
}

// ---------------------------------------------------------------------------------------------
// 4. CloudNativePG: auth_query as the auth user, logged in by certificate
// ---------------------------------------------------------------------------------------------

/// CloudNativePG's pooler configuration (pgbouncer.ini as the operator writes it, minus what
/// pgsluice does not have): auth_query through `public.user_search` as `cnpg_pooler_pgbouncer`,
/// which logs in to PostgreSQL with its client certificate. With `with_certificate` false the
/// certificate pair is left out.
fn cnpg_config(hba: &str, with_certificate: bool) -> String {
    let c = &Postgres::shared().certs;
    let mut ini = format!(
        "pool_mode = session\n\
         auth_user = {AUTH_USER}\n\
         auth_query = SELECT usename, passwd FROM public.user_search($1)\n\
         auth_dbname = postgres\n\
         auth_hba_file = {hba}\n\
         auth_type = hba\n\
         client_tls_ca_file = {}\n\
         {}\
         ignore_startup_parameters = extra_float_digits,options\n\
         server_tls_ca_file = {}\n\
         server_tls_sslmode = verify-ca\n",
        c.ca.display(),
        client_tls("prefer"),
        c.ca.display(),
    );
    if with_certificate {
        ini.push_str(&format!(
            "server_tls_cert_file = {}\nserver_tls_key_file = {}\n",
            c.pooler_client_cert.display(),
            c.pooler_client_key.display()
        ));
    }
    ini
}

/// The pooler's pg_hba.conf as CloudNativePG writes it by default.
const CNPG_HBA: &str = "host all all 0.0.0.0/0 md5\nhost all all ::/0 md5\n";

/// A user missing from the auth file logs in with SCRAM: its verifier comes from user_search, run
/// by the auth user over a certificate login, and the pool logs in to PostgreSQL (which allows
/// that user only scram-sha-256) with the key recovered from the client's proof. Wrong password
/// and unknown user are refused alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudnativepg_auth_query_with_scram_pass_through() {
    let f = files(&[("pg_hba.conf", CNPG_HBA)]);
    let s = Sluice::start(&cnpg_config(&path_in(&f, "pg_hba.conf"), true), "").await;

    // An md5 line with a fetched SCRAM verifier asks for SCRAM (PgBouncer's rule).
    assert_eq!(first_auth_request(&s, QUERY_USER, "appdb").await, AUTH_SASL);
    let c = logs_in(&s, QUERY_USER, QUERY_PASSWORD, "appdb").await;
    // The server connection is TLS and presents the auth user's certificate.
    let row = c
        .query_one(
            "SELECT ssl, coalesce(client_dn, '') FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0), "server connection without TLS");
    let dn: String = row.get(1);
    assert!(dn.contains(&format!("CN={AUTH_USER}")), "client DN {dn:?}");
    // PostgreSQL 16+ names the method it authenticated the session with.
    let version: i32 = first_value(&c.simple_query("SHOW server_version_num").await.unwrap())
        .unwrap()
        .parse()
        .unwrap();
    if version >= 160_000 {
        let expected = format!("scram-sha-256:{QUERY_USER}");
        assert_eq!(
            first_value(&c.simple_query("SELECT system_user").await.unwrap()).as_deref(),
            Some(expected.as_str())
        );
    }
    // The pooler never had the plaintext: not in its auth file, not in its configuration.
    for name in ["userlist.txt", "pgbouncer.ini"] {
        let text = std::fs::read_to_string(s.dir.path().join(name)).unwrap();
        assert!(!text.contains(QUERY_PASSWORD), "{name} holds the password");
        assert!(!text.contains(QUERY_USER), "{name} knows {QUERY_USER}");
    }

    // Over TLS as well (SCRAM-SHA-256-PLUS when libpq takes it).
    let out = psql(
        conninfo(
            &s,
            QUERY_USER,
            "appdb",
            &format!("password={QUERY_PASSWORD} sslmode=require {NO_CERTIFICATE}"),
        ),
        "SELECT current_user",
    )
    .await;
    assert_eq!(answer(&out), QUERY_USER);

    let wrong = refusal(&s, QUERY_USER, "wrong-password", "appdb").await;
    assert_eq!(wrong.code, "28P01", "{wrong:?}");
    assert_eq!(wrong.message, PASSWORD_FAILED, "{wrong:?}");
    let unknown = refusal(&s, UNKNOWN_USER, "wrong-password", "appdb").await;
    assert_eq!(
        unknown, wrong,
        "an unknown user must look like a wrong password"
    );
    // A refused attempt does not spoil the next good one.
    logs_in(&s, QUERY_USER, QUERY_PASSWORD, "appdb").await;
}

/// Without its certificate the auth user cannot log in (PostgreSQL has only a `cert` line for it),
/// so users known only through auth_query cannot either: the wiring rests on that certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_query_needs_the_auth_users_certificate() {
    let f = files(&[("pg_hba.conf", CNPG_HBA)]);
    let s = Sluice::start(&cnpg_config(&path_in(&f, "pg_hba.conf"), false), "").await;
    let e = match s.connect_as(QUERY_USER, QUERY_PASSWORD, "appdb").await {
        Ok(_) => panic!("{QUERY_USER} got in although the auth user could not log in"),
        Err(e) => e,
    };
    assert!(e.as_db_error().is_some(), "no ErrorResponse: {e}");
    // Users from the auth file are not affected.
    logs_in(&s, SCRAM_USER, SCRAM_PASSWORD, "appdb").await;
}

// ---------------------------------------------------------------------------------------------
// 5. Stalled logins
// ---------------------------------------------------------------------------------------------

/// A client that stops answering in the middle of its login is cut off at client_login_timeout
/// with 08P01, whether it stalls at the password request or halfway through SCRAM; others are
/// served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_login_is_cut_off_at_client_login_timeout() {
    let s = Sluice::start("auth_type = scram-sha-256\nclient_login_timeout = 1", "").await;

    // Stalls at the AuthenticationSASL request.
    let started = Instant::now();
    let mut at_request = sasl_requested(&s).await;
    // Stalls after the server-first-message.
    let mut mid_scram = sasl_requested(&s).await;
    scram_server_first(&mut mid_scram).await;

    // A prompt client is served while both wait.
    still_serving(&s).await;

    for (what, raw) in [
        ("at the password request", &mut at_request),
        ("halfway through SCRAM", &mut mid_scram),
    ] {
        let rest = until_closed(raw, Duration::from_secs(5)).await;
        assert!(
            started.elapsed() >= Duration::from_millis(500),
            "closed {what} after {:?}, before client_login_timeout",
            started.elapsed()
        );
        assert_eq!(
            error_code(&rest).as_deref(),
            Some("08P01"),
            "{what}: {rest:?}"
        );
    }
    still_serving(&s).await;
}

// ---------------------------------------------------------------------------------------------
// 6. Malformed SASL
// ---------------------------------------------------------------------------------------------

/// Malformed SASL messages get an ErrorResponse with 08P01 and a close, not a hang and not a
/// password failure; a well-formed exchange with a wrong proof is a password failure (28P01);
/// other clients keep being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_sasl_messages_get_08p01_and_a_close() {
    let s = Sluice::start("auth_type = scram-sha-256", "").await;
    let first = client_first();
    let len = first.len() as i32;
    let mut frame_shorter_than_body = password_frame(b"SCRAM-SHA-256\0");
    // The length covers itself and 7 of the 14 body bytes: "SCRAM-S", no terminator.
    frame_shorter_than_body[1..5].copy_from_slice(&11u32.to_be_bytes());
    let mut frame_over_the_cap = vec![b'p'];
    frame_over_the_cap.extend_from_slice(&100_000u32.to_be_bytes());
    frame_over_the_cap.extend_from_slice(b"SCRAM-SHA-256\0");
    let cases = [
        (
            "a mechanism that was not offered",
            sasl_initial("SCRAM-SHA-1", len, &first),
        ),
        (
            "a declared length beyond the data",
            sasl_initial("SCRAM-SHA-256", 1000, &first),
        ),
        (
            "a declared length short of the data",
            sasl_initial("SCRAM-SHA-256", 3, &first),
        ),
        (
            "a negative declared length",
            sasl_initial("SCRAM-SHA-256", -7, &first),
        ),
        (
            "garbage instead of a client-first-message",
            sasl_initial("SCRAM-SHA-256", 11, b"hello world"),
        ),
        (
            "a mechanism name without its terminator",
            password_frame(b"SCRAM-SHA-256"),
        ),
        (
            "a frame length that cuts the mechanism name",
            frame_shorter_than_body,
        ),
        ("a frame length over the pre-login cap", frame_over_the_cap),
        (
            "a Query instead of a SASL response",
            wire::query("SELECT 1"),
        ),
    ];
    for (what, bytes) in cases {
        let mut raw = sasl_requested(&s).await;
        let _ = raw.write_all(&bytes).await;
        let answer = until_closed(&mut raw, Duration::from_secs(5)).await;
        assert_eq!(
            error_code(&answer).as_deref(),
            Some("08P01"),
            "{what}: {:?}",
            error_message(&answer)
        );
    }

    // A client-final-message with a nonce the server never issued.
    let mut raw = sasl_requested(&s).await;
    scram_server_first(&mut raw).await;
    let forged = format!("c=biws,r={CLIENT_NONCE}forged,p={}", bogus_proof());
    raw.write_all(&password_frame(forged.as_bytes()))
        .await
        .unwrap();
    let answer = until_closed(&mut raw, Duration::from_secs(5)).await;
    assert_eq!(error_code(&answer).as_deref(), Some("08P01"), "{answer:?}");

    // The same message with the right nonce is well formed: only the proof is wrong.
    let mut raw = sasl_requested(&s).await;
    let nonce = scram_server_first(&mut raw).await;
    let final_message = format!("c=biws,r={nonce},p={}", bogus_proof());
    raw.write_all(&password_frame(final_message.as_bytes()))
        .await
        .unwrap();
    let answer = until_closed(&mut raw, Duration::from_secs(5)).await;
    assert_eq!(error_code(&answer).as_deref(), Some("28P01"), "{answer:?}");
    assert_eq!(
        error_message(&answer),
        Some(PASSWORD_FAILED.replace("<user>", SCRAM_USER))
    );

    still_serving(&s).await;
}

// ---------------------------------------------------------------------------------------------
// Channel binding
// ---------------------------------------------------------------------------------------------

/// Over TLS, a client that insists on channel binding (libpq `channel_binding=require`) logs in:
/// pgsluice offers SCRAM-SHA-256-PLUS. The server connection is TLS too (server_tls_sslmode's
/// default, prefer). With client_tls_sslmode = require a client in the clear is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_binding_required_by_the_client_over_tls() {
    let pg = Postgres::shared();
    let s = Sluice::start(
        &format!("auth_type = scram-sha-256\n{}", client_tls("require")),
        "",
    )
    .await;
    let out = psql(
        conninfo(
            &s,
            SCRAM_USER,
            "appdb",
            &format!(
                "password={SCRAM_PASSWORD} sslmode=verify-full sslrootcert={} channel_binding=require",
                pg.certs.ca.display()
            ),
        ),
        "SELECT current_user, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
    )
    .await;
    assert_eq!(answer(&out), format!("{SCRAM_USER}|t"));
    let r = refusal(&s, SCRAM_USER, SCRAM_PASSWORD, "appdb").await;
    assert_eq!(
        (r.code.as_str(), r.message.as_str()),
        ("28000", "SSL required")
    );
}

// ---------------------------------------------------------------------------------------------
// 7. The log
// ---------------------------------------------------------------------------------------------

/// The real binary, its stderr going to a file (a pipe could fill up at debug level).
struct Binary {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Binary {
    /// Starts `pgsluice pgbouncer.ini` with `extra` in `[pgbouncer]` and `files` beside the ini.
    fn start(extra: &str, files: &[(&str, &str)]) -> Binary {
        let pg = Postgres::shared();
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let port = free_port();
        let ini = dir.path().join("pgbouncer.ini");
        std::fs::write(
            &ini,
            format!(
                "[databases]\n* = host=127.0.0.1 port={}\n[pgbouncer]\nlisten_addr = 127.0.0.1\n\
                 listen_port = {port}\nunix_socket_dir =\n{extra}\n",
                pg.port
            ),
        )
        .unwrap();
        let log = dir.path().join("pgsluice.log");
        let child = Command::new(env!("CARGO_BIN_EXE_pgsluice"))
            .arg(&ini)
            .env("RUST_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut b = Binary {
            child,
            port,
            log,
            _dir: dir,
        };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return b;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = b.stop_and_read_log();
        panic!("pgsluice did not start listening: {log}");
    }

    /// Stops it with SIGQUIT and returns everything it logged.
    fn stop_and_read_log(&mut self) -> String {
        let _ = Command::new("kill")
            .args(["-QUIT", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.child.try_wait().unwrap().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        std::fs::read_to_string(&self.log).unwrap()
    }

    async fn connect(
        &self,
        user: &str,
        password: &str,
        db: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (c, conn) = tokio_postgres::connect(
            &format!(
                "host=127.0.0.1 port={} user={user} password={password} dbname={db}",
                self.port
            ),
            tokio_postgres::NoTls,
        )
        .await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(c)
    }
}

/// Splits a stored secret into the parts worth looking for: the whole, and for a SCRAM verifier its
/// salt and keys, for an md5 hash its hex digest.
fn secret_fragments(stored: &str) -> Vec<String> {
    let mut parts = vec![stored.to_owned()];
    if let Some(hex) = stored.strip_prefix("md5") {
        parts.push(hex.to_owned());
    }
    parts.extend(
        stored
            .split(['$', ':'])
            .filter(|p| p.len() >= 16)
            .map(str::to_owned),
    );
    parts
}

/// Logins by SCRAM, md5, cleartext and auth_query (right and wrong passwords), logged at debug
/// level by the real binary: no password, and no secret fetched by auth_query, is in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_password_or_fetched_secret_reaches_the_log() {
    let pg = Postgres::shared();
    let c = &pg.certs;
    let hba = format!(
        "host all {MD5_USER} 127.0.0.1/32 md5\n\
         host postgres {SCRAM_USER} 127.0.0.1/32 password\n\
         host all {SCRAM_USER} 127.0.0.1/32 scram-sha-256\n\
         host all all 127.0.0.1/32 md5\n"
    );
    let users = userlist(&[(SCRAM_USER, SCRAM_PASSWORD), (MD5_USER, MD5_PASSWORD)]);
    let mut b = Binary::start(
        &format!(
            "auth_type = hba\nauth_hba_file = hba.conf\nauth_file = users.txt\n\
             auth_user = {AUTH_USER}\n\
             auth_query = SELECT usename, passwd FROM public.user_search($1)\n\
             auth_dbname = postgres\n\
             server_tls_sslmode = verify-ca\nserver_tls_ca_file = {}\n\
             server_tls_cert_file = {}\nserver_tls_key_file = {}\n",
            c.ca.display(),
            c.pooler_client_cert.display(),
            c.pooler_client_key.display()
        ),
        &[("hba.conf", hba.as_str()), ("users.txt", users.as_str())],
    );

    let wrong = [
        "Wrong-Scram-Staple",
        "Wrong-Md5-Staple",
        "Wrong-Cleartext-Staple",
        "Wrong-Query-Staple",
    ];
    let logins = [
        (SCRAM_USER, SCRAM_PASSWORD, wrong[0], "appdb"),
        (MD5_USER, MD5_PASSWORD, wrong[1], "appdb"),
        (SCRAM_USER, SCRAM_PASSWORD, wrong[2], "postgres"),
        (QUERY_USER, QUERY_PASSWORD, wrong[3], "appdb"),
    ];
    for (user, password, wrong_password, db) in logins {
        let client = b
            .connect(user, password, db)
            .await
            .unwrap_or_else(|e| panic!("{user} to {db}: {e}"));
        assert_eq!(current_user(&client).await, user);
        drop(client);
        let e = match b.connect(user, wrong_password, db).await {
            Ok(_) => panic!("{user} got in with a wrong password"),
            Err(e) => e,
        };
        assert_eq!(sqlstate(&e), Some("28P01"), "{user}: {e}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = b.stop_and_read_log();

    // The log did record the logins and the failures (so the greps below look at something).
    for user in [SCRAM_USER, MD5_USER, QUERY_USER] {
        assert!(
            log.contains(&format!("user={user}")),
            "no login of {user} logged: {log}"
        );
    }
    assert!(log.contains("password authentication failed"), "{log}");

    let mut secrets: Vec<String> = [SCRAM_PASSWORD, MD5_PASSWORD, QUERY_PASSWORD]
        .into_iter()
        .chain(wrong)
        .map(str::to_owned)
        .collect();
    secrets.extend(secret_fragments(&stored_secret(QUERY_USER)));
    secrets.extend(secret_fragments(&stored_secret(MD5_USER)));
    for secret in &secrets {
        assert!(
            !log.contains(secret.as_str()),
            "{secret:?} reached the log:\n{log}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 8. peer on the unix socket, auth_query per database with the default query
// ---------------------------------------------------------------------------------------------

/// The OS user running the tests, as `peer` sees it.
fn os_user() -> String {
    let out = std::process::Command::new("id")
        .arg("-un")
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// An hba `peer` line lets a unix-socket client in when its OS user is the user name it gives, and
/// refuses any other name with 28000; the database entry forces the server login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_admits_the_os_user_on_the_unix_socket_only() {
    let pg = Postgres::shared();
    let me = os_user();
    let socket_dir = tempfile::tempdir().unwrap();
    let f = files(&[
        (
            "hba.conf",
            "local all all peer\nhost all all 127.0.0.1/32 reject\n",
        ),
        (
            "users.txt",
            userlist(&[(SCRAM_USER, SCRAM_PASSWORD)]).as_str(),
        ),
    ]);
    let s = Sluice::start_exact(
        &format!(
            "auth_type = hba\nauth_hba_file = {}\nauth_file = {}\nunix_socket_dir = {}\n",
            path_in(&f, "hba.conf"),
            path_in(&f, "users.txt"),
            socket_dir.path().display()
        ),
        &format!(
            "peerdb = host=127.0.0.1 port={} dbname=appdb user={SCRAM_USER}",
            pg.port
        ),
    )
    .await;
    let over_socket = |user: &str| {
        format!(
            "host={} port={} user={user} dbname=peerdb",
            socket_dir.path().display(),
            s.addr.port()
        )
    };
    let (c, conn) = tokio_postgres::connect(&over_socket(&me), tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("peer refused the OS user {me}: {e}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    assert_eq!(current_user(&c).await, SCRAM_USER);

    let other = if me == MD5_USER { SCRAM_USER } else { MD5_USER };
    let e = match tokio_postgres::connect(&over_socket(other), tokio_postgres::NoTls).await {
        Ok(_) => panic!("peer let {other} in for OS user {me}"),
        Err(e) => e,
    };
    let message = e
        .as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_default();
    assert_eq!(sqlstate(&e), Some("28000"), "{message}");
    assert!(message.contains("peer authentication failed"), "{message}");
    // TCP clients meet the reject line.
    let e = match s.connect_as(&me, "unused", "peerdb").await {
        Ok(_) => panic!("a TCP client got past the reject line"),
        Err(e) => e,
    };
    assert_eq!(sqlstate(&e), Some("28000"), "{}", error_text(&e));
}

/// auth_user set on one database entry, with PgBouncer's default auth_query over pg_authid: a user
/// the auth file lacks logs in there (SCRAM pass-through), a role whose password has expired
/// (rolvaliduntil in the past) is refused like a wrong password, and a database without auth_user
/// knows neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_database_auth_user_with_the_default_query_honours_valid_until() {
    let pg = Postgres::shared();
    let expired = unique("expired");
    pg.psql_super(&format!(
        "SET password_encryption = 'scram-sha-256';\
         CREATE ROLE {expired} LOGIN PASSWORD 'expired-secret' VALID UNTIL '2001-01-01'"
    ));
    let s = Sluice::start_exact(
        "auth_type = scram-sha-256\n",
        &format!(
            "looked = host=127.0.0.1 port={port} dbname=appdb auth_user=postgres auth_dbname=postgres\n\
             postgres = host=127.0.0.1 port={port} dbname=postgres\n\
             plain = host=127.0.0.1 port={port} dbname=appdb",
            port = pg.port
        ),
    )
    .await;
    logs_in(&s, QUERY_USER, QUERY_PASSWORD, "looked").await;
    let wrong = refusal(&s, QUERY_USER, "not-it", "looked").await;
    assert_eq!(wrong.code, "28P01", "{wrong:?}");
    let gone = refusal(&s, &expired, "expired-secret", "looked").await;
    assert_eq!(
        gone, wrong,
        "an expired password must look like a wrong one"
    );
    // Without auth_user on the entry there is no lookup: the user is unknown there.
    let unknown = refusal(&s, QUERY_USER, QUERY_PASSWORD, "plain").await;
    assert_eq!(unknown.code, "28P01", "{unknown:?}");
}
