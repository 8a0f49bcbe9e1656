//! Logins that go wrong on the wire, sent byte by byte: a client that stalls mid-login is cut off
//! at client_login_timeout, malformed SASL messages get 08P01 and a close; and the real binary's
//! debug log, which must never show a password or a secret fetched by auth_query.
#![allow(clippy::unwrap_used, clippy::zombie_processes)]

mod common;

use common::auth::*;
use common::wire::{self, error_code, error_message};
use common::*;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// 1. Stalled logins
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
// 2. Malformed SASL
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
// 3. The log
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

/// The salt of an unknown user's mock SCRAM exchange is stable, as a real user's is, and cannot be
/// computed from the user name alone (PostgreSQL keys it with a secret too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_users_mock_salt_is_stable_and_not_derivable_from_the_name() {
    let s = Sluice::start("auth_type = scram-sha-256", "").await;
    let salt_of = |user: &'static str| {
        let s = &s;
        async move {
            let mut raw = send_startup(s, user, "appdb").await;
            let (code, _) = read_auth(&mut raw).await;
            assert_eq!(code, AUTH_SASL);
            let first = client_first();
            raw.write_all(&sasl_initial("SCRAM-SHA-256", first.len() as i32, &first))
                .await
                .unwrap();
            let (code, data) = read_auth(&mut raw).await;
            assert_eq!(code, AUTH_SASL_CONTINUE);
            let server_first = String::from_utf8(data).unwrap();
            server_first
                .split(',')
                .find_map(|a| a.strip_prefix("s="))
                .unwrap()
                .to_owned()
        }
    };
    let first = salt_of("no_such_user_x").await;
    assert_eq!(salt_of("no_such_user_x").await, first, "stable per user");
    assert_ne!(salt_of("no_such_user_y").await, first, "distinct per user");
    use base64::Engine;
    let from_name = base64::engine::general_purpose::STANDARD
        .encode(&pgsluice::auth::scram::mock_verifier(b"no_such_user_x").salt);
    assert_ne!(
        first, from_name,
        "the salt must not be derivable from the name alone"
    );
}
