//! TLS on both sides of the pooler, against the shared PostgreSQL (`ssl=on`, certificates from
//! `TestCerts`) with real clients: psql (libpq with OpenSSL) for every sslmode and channel binding,
//! psycopg 3 for channel binding and PostgreSQL 17's direct TLS, tokio-postgres for plain
//! connections, and tokio-rustls by hand where the exact handshake matters (direct TLS and ALPN,
//! protocol versions, cipher suites, the certificate served before and after a rotation).
//!
//! Towards PostgreSQL, the user `tlsonly` is refused by pg_hba without TLS (`hostnossl ...
//! reject`), so a login as `tlsonly` through pgsluice proves that pgsluice's server connection uses
//! TLS, and `pg_stat_ssl` says the same for any user. auth_type = cert is tested in tests/auth.rs.
#![allow(clippy::unwrap_used, clippy::err_expect)] // tokio-postgres clients are not Debug

mod common;

use common::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{
    CipherSuite, ClientConfig, ProtocolVersion, SupportedCipherSuite, SupportedProtocolVersion,
};
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Every raw read and handshake gives up after this long, so a pooler that hangs fails the test.
const WAIT: Duration = Duration::from_secs(10);

/// SSLRequest: length 8, code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

const ALPN_POSTGRESQL: &[u8] = b"postgresql";

static BOTH: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];
static ONLY_12: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];
static ONLY_13: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];

fn pg() -> &'static Postgres {
    Postgres::shared()
}

/// `client_tls_*` lines that serve `cert` and `key` in `mode`.
fn serve_tls(mode: &str, cert: &Path, key: &Path) -> String {
    format!(
        "client_tls_sslmode = {mode}\nclient_tls_cert_file = {}\nclient_tls_key_file = {}",
        cert.display(),
        key.display()
    )
}

/// The pooler's own certificate (SAN localhost, 127.0.0.1; signed by the test CA) in `mode`.
fn serve_server_cert(mode: &str) -> String {
    let c = &pg().certs;
    serve_tls(mode, &c.server_cert, &c.server_key)
}

fn der(pem: &Path) -> Vec<u8> {
    CertificateDer::from_pem_file(pem)
        .unwrap()
        .as_ref()
        .to_vec()
}

// ---------------------------------------------------------------------------------------------
// psql

/// What one psql run showed.
struct Psql {
    ok: bool,
    /// psql's `\conninfo` reported an SSL connection (only asked by [`psql_probe`]).
    tls: bool,
    stdout: String,
    /// stdout and stderr together, for messages.
    text: String,
}

async fn psql(conninfo: String, sql: &'static str) -> Psql {
    let out = tokio::task::spawn_blocking(move || psql_conninfo(&conninfo, sql))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    Psql {
        ok: out.status.success(),
        tls: stdout.contains("SSL connection ("),
        text: format!("{stdout}\n{stderr}"),
        stdout,
    }
}

/// Logs in with psql and runs `\conninfo`, which names the TLS protocol and cipher when TLS is on.
async fn psql_probe(conninfo: String) -> Psql {
    psql(conninfo, "\\conninfo").await
}

// ---------------------------------------------------------------------------------------------
// Raw TLS clients with tokio-rustls

// Accepts any server certificate (handshake signatures still checked): pgsluice's own verifier
// for server_tls_sslmode = require, for tests that look at which certificate was served.
use pgsluice::net::tls::AnyCertificate;

/// How a raw client is set up.
struct ClientSetup<'a> {
    versions: &'a [&'static SupportedProtocolVersion],
    /// Only these cipher suites (None: ring's defaults).
    suites: Option<Vec<SupportedCipherSuite>>,
    alpn: Option<&'a [u8]>,
    /// Verify the server against this CA (as name `localhost`); None: accept any certificate.
    ca: Option<&'a Path>,
}

impl Default for ClientSetup<'_> {
    fn default() -> Self {
        ClientSetup {
            versions: BOTH,
            suites: None,
            alpn: None,
            ca: None,
        }
    }
}

fn connector(setup: ClientSetup<'_>) -> TlsConnector {
    let mut provider = rustls::crypto::ring::default_provider();
    if let Some(suites) = setup.suites {
        provider.cipher_suites = suites;
    }
    let provider = Arc::new(provider);
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(setup.versions)
        .unwrap();
    let mut config = match setup.ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca).unwrap() {
                roots.add(c.unwrap()).unwrap();
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth(),
    };
    if let Some(alpn) = setup.alpn {
        config.alpn_protocols = vec![alpn.to_vec()];
    }
    TlsConnector::from(Arc::new(config))
}

fn localhost() -> ServerName<'static> {
    ServerName::try_from("localhost").unwrap()
}

async fn handshake(connector: &TlsConnector, tcp: TcpStream) -> io::Result<TlsStream<TcpStream>> {
    tokio::time::timeout(WAIT, connector.connect(localhost(), tcp))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake hangs"))?
}

/// The classic way: SSLRequest, `S`, then the TLS handshake.
async fn tls_after_ssl_request(
    addr: SocketAddr,
    connector: &TlsConnector,
) -> io::Result<TlsStream<TcpStream>> {
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.write_all(&SSL_REQUEST).await?;
    let answer = tokio::time::timeout(WAIT, tcp.read_u8())
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer to SSLRequest"))??;
    if answer != b'S' {
        return Err(io::Error::other(format!(
            "SSLRequest answered {:?}",
            answer as char
        )));
    }
    handshake(connector, tcp).await
}

/// PostgreSQL 17's direct TLS: a ClientHello as the very first bytes.
async fn tls_direct(
    addr: SocketAddr,
    connector: &TlsConnector,
) -> io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    handshake(connector, tcp).await
}

/// The DER of the certificate the server presented.
fn served(t: &TlsStream<TcpStream>) -> Vec<u8> {
    t.get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .expect("the server presented a certificate")
        .as_ref()
        .to_vec()
}

// ---------------------------------------------------------------------------------------------
// The wire protocol over any stream (common::wire's readers take a TcpStream only)

async fn read_msg<S: AsyncRead + Unpin>(s: &mut S) -> io::Result<(u8, Vec<u8>)> {
    tokio::time::timeout(WAIT, async {
        let tag = s.read_u8().await?;
        let len = s.read_u32().await? as usize;
        let mut body = vec![0; len.saturating_sub(4)];
        s.read_exact(&mut body).await?;
        Ok::<_, io::Error>((tag, body))
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no message within 10 s"))?
}

/// A field (`C` SQLSTATE, `M` message) of an ErrorResponse body.
fn error_field(body: &[u8], code: u8) -> Option<String> {
    body.split(|&b| b == 0)
        .find(|f| f.first() == Some(&code))
        .map(|f| String::from_utf8_lossy(&f[1..]).into_owned())
}

fn describe_error(body: &[u8]) -> String {
    format!(
        "{}: {}",
        error_field(body, b'C').unwrap_or_default(),
        error_field(body, b'M').unwrap_or_default()
    )
}

fn password_message(answer: &str) -> Vec<u8> {
    let mut p = vec![b'p'];
    p.extend_from_slice(&((4 + answer.len() + 1) as u32).to_be_bytes());
    p.extend_from_slice(answer.as_bytes());
    p.push(0);
    p
}

fn md5_answer(user: &str, password: &str, salt: &[u8]) -> String {
    use md5::{Digest, Md5};
    let inner = format!("{:x}", Md5::digest(format!("{password}{user}")));
    let mut h = Md5::new();
    h.update(inner.as_bytes());
    h.update(salt);
    format!("md5{:x}", h.finalize())
}

/// Logs in to `appdb` as `user` (trust, cleartext or md5), up to ReadyForQuery. Returns the code of
/// the first authentication request (0 ok, 3 cleartext, 5 md5), or the error the pooler sent.
async fn login<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    user: &str,
    password: Option<&str>,
) -> Result<u32, String> {
    s.write_all(&wire::startup(
        196608,
        &[("user", user), ("database", "appdb")],
    ))
    .await
    .map_err(|e| e.to_string())?;
    let mut first_request = None;
    loop {
        let (tag, body) = read_msg(s).await.map_err(|e| format!("read: {e}"))?;
        match tag {
            b'R' => {
                let code = u32::from_be_bytes(body[..4].try_into().unwrap());
                first_request = first_request.or(Some(code));
                let answer = match code {
                    0 => continue,
                    3 => password.expect("a password was asked for").to_owned(),
                    5 => md5_answer(user, password.expect("md5 asked for"), &body[4..8]),
                    other => return Err(format!("unexpected authentication request {other}")),
                };
                s.write_all(&password_message(&answer))
                    .await
                    .map_err(|e| e.to_string())?;
            }
            b'E' => return Err(describe_error(&body)),
            b'Z' => return first_request.ok_or_else(|| "ReadyForQuery before any R".into()),
            _ if first_request.is_none() => {
                return Err(format!(
                    "{:?} before any authentication request",
                    tag as char
                ))
            }
            _ => {}
        }
    }
}

/// The first column of the first row of a simple query, read up to ReadyForQuery.
async fn query_value<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    sql: &str,
) -> Result<String, String> {
    s.write_all(&wire::query(sql))
        .await
        .map_err(|e| e.to_string())?;
    let mut value = None;
    let mut error = None;
    loop {
        let (tag, body) = read_msg(s).await.map_err(|e| format!("read: {e}"))?;
        match tag {
            b'D' if value.is_none() => {
                let len = i32::from_be_bytes(body[2..6].try_into().unwrap());
                value = Some(String::from_utf8_lossy(&body[6..6 + len as usize]).into_owned());
            }
            b'E' => error = Some(describe_error(&body)),
            b'Z' => {
                return match error {
                    Some(e) => Err(e),
                    None => value.ok_or_else(|| "no row".into()),
                }
            }
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 1. client_tls_sslmode

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_sslmode_disable_answers_n_even_with_certificate_files() {
    let s = Sluice::start(&serve_server_cert("disable"), "").await;
    let base = s.conn_str(SCRAM_USER, SCRAM_PASSWORD, "appdb");

    let p = psql_probe(format!("{base} sslmode=require")).await;
    assert!(!p.ok, "sslmode=require must fail without TLS:\n{}", p.text);
    assert!(
        p.text.contains("server does not support SSL"),
        "libpq should report the refusal:\n{}",
        p.text
    );
    let p = psql_probe(format!("{base} sslmode=prefer")).await;
    assert!(p.ok, "sslmode=prefer falls back to plain:\n{}", p.text);
    assert!(
        !p.tls,
        "no TLS with client_tls_sslmode=disable:\n{}",
        p.text
    );

    let mut raw = TcpStream::connect(s.addr).await.unwrap();
    raw.write_all(&SSL_REQUEST).await.unwrap();
    assert_eq!(raw.read_u8().await.unwrap(), b'N');
    // A ClientHello is not taken for direct TLS when TLS is off: refused, not hung.
    let direct = tls_direct(s.addr, &connector(ClientSetup::default())).await;
    assert!(
        direct.is_err(),
        "direct TLS to a pooler without TLS succeeded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_sslmodes_allow_and_prefer_accept_plain_and_tls() {
    for mode in ["allow", "prefer"] {
        let s = Sluice::start(&serve_server_cert(mode), "").await;
        let base = s.conn_str(SCRAM_USER, SCRAM_PASSWORD, "appdb");
        let p = psql_probe(format!("{base} sslmode=disable")).await;
        assert!(p.ok && !p.tls, "{mode}: plain login:\n{}", p.text);
        let p = psql_probe(format!("{base} sslmode=require")).await;
        assert!(p.ok && p.tls, "{mode}: TLS login:\n{}", p.text);
        let p = psql_probe(format!("{base} sslmode=prefer")).await;
        assert!(p.ok && p.tls, "{mode}: prefer chooses TLS:\n{}", p.text);
        let c = s.connect("appdb").await;
        assert_eq!(
            first_value(&c.simple_query("SELECT 7").await.unwrap()).as_deref(),
            Some("7"),
            "{mode}: tokio-postgres without TLS"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_sslmode_require_refuses_plaintext_with_28000() {
    let s = Sluice::start(&serve_server_cert("require"), "").await;
    let err = s
        .connect_as(SCRAM_USER, SCRAM_PASSWORD, "appdb")
        .await
        .err()
        .expect("a plaintext client is refused");
    assert_eq!(sqlstate(&err), Some("28000"), "{err:?}");
    assert!(error_text(&err).contains("SSL required"), "{err:?}");

    let base = s.conn_str(SCRAM_USER, SCRAM_PASSWORD, "appdb");
    let p = psql_probe(format!("{base} sslmode=disable")).await;
    assert!(!p.ok, "plain psql must be refused:\n{}", p.text);
    assert!(p.text.contains("SSL required"), "{}", p.text);
    // libpq's allow tries plain first and retries with TLS after the refusal.
    let p = psql_probe(format!("{base} sslmode=allow")).await;
    assert!(p.ok && p.tls, "sslmode=allow retries with TLS:\n{}", p.text);
    let p = psql_probe(format!("{base} sslmode=require")).await;
    assert!(p.ok && p.tls, "{}", p.text);
    let p = psql(format!("{base} sslmode=require"), "SELECT current_user").await;
    assert!(p.ok, "{}", p.text);
    assert_eq!(p.stdout, SCRAM_USER);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_verify_modes_demand_a_certificate_from_the_client_ca() {
    let c = &pg().certs;
    for mode in ["verify-ca", "verify-full"] {
        let s = Sluice::start(
            &format!(
                "{}\nclient_tls_ca_file = {}",
                serve_server_cert(mode),
                c.ca.display()
            ),
            "",
        )
        .await;
        let base = format!(
            "{} sslmode=require",
            s.conn_str(SCRAM_USER, SCRAM_PASSWORD, "appdb")
        );
        let p = psql_probe(base.clone()).await;
        assert!(
            !p.ok,
            "{mode}: no client certificate must fail:\n{}",
            p.text
        );
        let p = psql_probe(format!(
            "{base} sslcert={} sslkey={}",
            c.untrusted_cert.display(),
            c.untrusted_key.display()
        ))
        .await;
        assert!(
            !p.ok,
            "{mode}: a certificate from another CA must fail:\n{}",
            p.text
        );
        let p = psql_probe(format!(
            "{base} sslcert={} sslkey={}",
            c.app_client_cert.display(),
            c.app_client_key.display()
        ))
        .await;
        assert!(
            p.ok && p.tls,
            "{mode}: the CA's client certificate is accepted:\n{}",
            p.text
        );
        let p = psql_probe(format!(
            "{} sslmode=disable",
            s.conn_str(SCRAM_USER, SCRAM_PASSWORD, "appdb")
        ))
        .await;
        assert!(!p.ok, "{mode}: plaintext refused:\n{}", p.text);
        assert!(p.text.contains("SSL required"), "{mode}:\n{}", p.text);
    }

    // Below verify-ca a configured CA makes the certificate optional (auth_type cert may use it).
    let s = Sluice::start(
        &format!(
            "{}\nclient_tls_ca_file = {}",
            serve_server_cert("require"),
            c.ca.display()
        ),
        "",
    )
    .await;
    let p = psql_probe(format!(
        "{} sslmode=require",
        s.conn_str(SCRAM_USER, SCRAM_PASSWORD, "appdb")
    ))
    .await;
    assert!(p.ok && p.tls, "require + CA, no certificate:\n{}", p.text);
}

// ---------------------------------------------------------------------------------------------
// 2. libpq verifying the pooler's certificate

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_verify_full_and_verify_ca_against_the_pooler_certificate() {
    let c = &pg().certs;
    let ca = c.ca.display();

    let s = Sluice::start(&serve_server_cert("require"), "").await;
    let port = s.addr.port();
    let login = format!("user={SCRAM_USER} password={SCRAM_PASSWORD} dbname=appdb port={port}");
    for host in ["127.0.0.1", "localhost"] {
        let p = psql_probe(format!(
            "host={host} {login} sslmode=verify-full sslrootcert={ca}"
        ))
        .await;
        assert!(p.ok && p.tls, "verify-full, host={host}:\n{}", p.text);
    }
    let p = psql_probe(format!(
        "host=127.0.0.1 {login} sslmode=verify-full sslrootcert={}",
        c.other_ca.display()
    ))
    .await;
    assert!(
        !p.ok,
        "a root that did not sign the certificate:\n{}",
        p.text
    );
    assert!(p.text.contains("certificate verify failed"), "{}", p.text);

    // A certificate for another name: the chain is good, the name is not.
    let s = Sluice::start(
        &serve_tls("require", &c.wrong_name_cert, &c.wrong_name_key),
        "",
    )
    .await;
    let login = format!(
        "host=127.0.0.1 port={} user={SCRAM_USER} password={SCRAM_PASSWORD} dbname=appdb sslrootcert={ca}",
        s.addr.port()
    );
    let p = psql_probe(format!("{login} sslmode=verify-full")).await;
    assert!(
        !p.ok,
        "verify-full must fail on a name mismatch:\n{}",
        p.text
    );
    assert!(p.text.contains("does not match host name"), "{}", p.text);
    let p = psql_probe(format!("{login} sslmode=verify-ca")).await;
    assert!(p.ok && p.tls, "verify-ca ignores the name:\n{}", p.text);

    // Signed by a CA the client does not trust: verify-ca fails, require does not look.
    let s = Sluice::start(
        &serve_tls("require", &c.untrusted_cert, &c.untrusted_key),
        "",
    )
    .await;
    let login = format!(
        "host=127.0.0.1 port={} user={SCRAM_USER} password={SCRAM_PASSWORD} dbname=appdb",
        s.addr.port()
    );
    let p = psql_probe(format!("{login} sslmode=verify-ca sslrootcert={ca}")).await;
    assert!(
        !p.ok,
        "verify-ca must fail on an unknown issuer:\n{}",
        p.text
    );
    assert!(p.text.contains("certificate verify failed"), "{}", p.text);
    let p = psql_probe(format!("{login} sslmode=require")).await;
    assert!(p.ok && p.tls, "{}", p.text);
}

// ---------------------------------------------------------------------------------------------
// 3. Channel binding (SCRAM-SHA-256-PLUS, tls-server-end-point)

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
// 4. TLS towards PostgreSQL

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
// 5. PostgreSQL 17 direct TLS

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_tls_with_alpn_postgresql_is_served_and_without_alpn_refused() {
    let c = &pg().certs;
    let s = Sluice::start(&serve_server_cert("require"), "").await;

    // The ClientHello first, naming "postgresql"; the certificate verifies against the test CA.
    let with_alpn = connector(ClientSetup {
        alpn: Some(ALPN_POSTGRESQL),
        ca: Some(c.ca.as_path()),
        ..ClientSetup::default()
    });
    let mut tls = tls_direct(s.addr, &with_alpn).await.expect("direct TLS");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(ALPN_POSTGRESQL));
    assert_eq!(served(&tls), der(&c.server_cert));
    // The startup packet inside TLS gets an authentication request (md5), and with
    // client_tls_sslmode = require the connection counts as TLS.
    assert_eq!(
        login(&mut tls, MD5_USER, Some(MD5_PASSWORD)).await,
        Ok(5),
        "an md5 request, then ReadyForQuery"
    );
    assert_eq!(
        query_value(&mut tls, "SELECT 17").await.as_deref(),
        Ok("17")
    );

    // No ALPN: PostgreSQL 17 refuses such a connection, and so must the pooler (an error or a
    // close; never an authentication request).
    let no_alpn = connector(ClientSetup::default());
    if let Ok(mut tls) = tls_direct(s.addr, &no_alpn).await {
        let _ = tls
            .write_all(&wire::startup(
                196608,
                &[("user", MD5_USER), ("database", "appdb")],
            ))
            .await;
        match read_msg(&mut tls).await {
            Ok((b'E', body)) => assert_eq!(
                error_field(&body, b'C').as_deref(),
                Some("08P01"),
                "{}",
                describe_error(&body)
            ),
            Ok((tag, _)) => panic!("direct TLS without ALPN answered {:?}", tag as char),
            Err(e) => assert_ne!(e.kind(), io::ErrorKind::TimedOut, "the pooler hung: {e}"),
        }
    }
    // Another protocol by ALPN: refused in the handshake (no_application_protocol).
    let http = connector(ClientSetup {
        alpn: Some(&b"http/1.1"[..]),
        ..ClientSetup::default()
    });
    assert!(
        tls_direct(s.addr, &http).await.is_err(),
        "ALPN http/1.1 must be refused"
    );
    // The SSLRequest way is still served, ALPN or not.
    let mut tls = tls_after_ssl_request(s.addr, &no_alpn).await.unwrap();
    assert_eq!(login(&mut tls, MD5_USER, Some(MD5_PASSWORD)).await, Ok(5));
    let mut tls = tls_after_ssl_request(s.addr, &with_alpn).await.unwrap();
    assert_eq!(login(&mut tls, MD5_USER, Some(MD5_PASSWORD)).await, Ok(5));
}

// ---------------------------------------------------------------------------------------------
// 6. Certificate rotation

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

// ---------------------------------------------------------------------------------------------
// 7. client_tls_protocols, client_tls_ciphers, client_tls13_ciphers

fn suite_of(t: &TlsStream<TcpStream>) -> CipherSuite {
    t.get_ref()
        .1
        .negotiated_cipher_suite()
        .expect("a negotiated suite")
        .suite()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_tls_protocols_limit_the_versions() {
    // TLS 1.3 only.
    let s = Sluice::start(
        &format!(
            "{}\nclient_tls_protocols = tlsv1.3",
            serve_server_cert("require")
        ),
        "",
    )
    .await;
    let only12 = connector(ClientSetup {
        versions: ONLY_12,
        ..ClientSetup::default()
    });
    assert!(
        tls_after_ssl_request(s.addr, &only12).await.is_err(),
        "a TLS 1.2 client must be refused by tlsv1.3"
    );
    let only13 = connector(ClientSetup {
        versions: ONLY_13,
        ..ClientSetup::default()
    });
    let mut t = tls_after_ssl_request(s.addr, &only13).await.unwrap();
    assert_eq!(
        t.get_ref().1.protocol_version(),
        Some(ProtocolVersion::TLSv1_3)
    );
    assert_eq!(login(&mut t, MD5_USER, Some(MD5_PASSWORD)).await, Ok(5));
    assert_eq!(query_value(&mut t, "SELECT 13").await.as_deref(), Ok("13"));
    let base = s.conn_str(SCRAM_USER, SCRAM_PASSWORD, "appdb");
    let p = psql_probe(format!(
        "{base} sslmode=require ssl_max_protocol_version=TLSv1.2"
    ))
    .await;
    assert!(!p.ok, "libpq capped at TLS 1.2:\n{}", p.text);
    let p = psql_probe(format!("{base} sslmode=require")).await;
    assert!(p.ok && p.text.contains("protocol: TLSv1.3"), "{}", p.text);

    // TLS 1.2 only, one named suite.
    let s = Sluice::start(
        &format!(
            "{}\nclient_tls_protocols = tlsv1.2\nclient_tls_ciphers = ECDHE-ECDSA-CHACHA20-POLY1305",
            serve_server_cert("require")
        ),
        "",
    )
    .await;
    assert!(
        tls_after_ssl_request(s.addr, &only13).await.is_err(),
        "a TLS 1.3 client must be refused by tlsv1.2"
    );
    let mut t = tls_after_ssl_request(s.addr, &connector(ClientSetup::default()))
        .await
        .unwrap();
    assert_eq!(
        t.get_ref().1.protocol_version(),
        Some(ProtocolVersion::TLSv1_2)
    );
    assert_eq!(
        suite_of(&t),
        CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
    );
    assert_eq!(login(&mut t, MD5_USER, Some(MD5_PASSWORD)).await, Ok(5));
    let aes_only = connector(ClientSetup {
        versions: ONLY_12,
        suites: Some(vec![
            rustls::crypto::ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        ]),
        ..ClientSetup::default()
    });
    assert!(
        tls_after_ssl_request(s.addr, &aes_only).await.is_err(),
        "a suite left out by client_tls_ciphers must not be negotiated"
    );
    let base = s.conn_str(SCRAM_USER, SCRAM_PASSWORD, "appdb");
    let p = psql_probe(format!("{base} sslmode=require")).await;
    assert!(
        p.ok && p.text.contains("protocol: TLSv1.2")
            && p.text.contains("ECDHE-ECDSA-CHACHA20-POLY1305"),
        "{}",
        p.text
    );

    // One TLS 1.3 suite.
    let s = Sluice::start(
        &format!(
            "{}\nclient_tls13_ciphers = TLS_CHACHA20_POLY1305_SHA256",
            serve_server_cert("require")
        ),
        "",
    )
    .await;
    let t = tls_after_ssl_request(s.addr, &only13).await.unwrap();
    assert_eq!(suite_of(&t), CipherSuite::TLS13_CHACHA20_POLY1305_SHA256);
    let aes13 = connector(ClientSetup {
        versions: ONLY_13,
        suites: Some(vec![
            rustls::crypto::ring::cipher_suite::TLS13_AES_256_GCM_SHA384,
        ]),
        ..ClientSetup::default()
    });
    assert!(
        tls_after_ssl_request(s.addr, &aes13).await.is_err(),
        "a TLS 1.3 suite left out by client_tls13_ciphers must not be negotiated"
    );
    let base = s.conn_str(SCRAM_USER, SCRAM_PASSWORD, "appdb");
    let p = psql_probe(format!("{base} sslmode=require")).await;
    assert!(
        p.ok && p.text.contains("TLS_CHACHA20_POLY1305_SHA256"),
        "{}",
        p.text
    );
}

// ---------------------------------------------------------------------------------------------
// Settings that cannot work are refused when the configuration is loaded

#[test]
fn tls_settings_that_cannot_work_are_configuration_errors() {
    let dir = tempfile::tempdir().unwrap();
    let certs = common::certs::TestCerts::generate(&dir.path().join("certs"));
    std::fs::write(dir.path().join("userlist.txt"), "\"app\" \"x\"\n").unwrap();
    let load = |extra: &str| {
        let path = dir.path().join("pgbouncer.ini");
        std::fs::write(
            &path,
            format!(
                "[databases]\n* = host=127.0.0.1\n\n[pgbouncer]\nlisten_addr = 127.0.0.1\n\
                 listen_port = 0\nunix_socket_dir =\nauth_type = md5\nauth_file = userlist.txt\n\
                 stats_period = 0\n{extra}\n"
            ),
        )
        .unwrap();
        pgsluice::config::load(&path).map(|_| ())
    };
    let serve = serve_tls("require", &certs.server_cert, &certs.server_key);
    let ca = format!("client_tls_ca_file = {}", certs.ca.display());
    load(&serve).expect("a working client TLS configuration");
    load(&format!(
        "{}\n{ca}",
        serve_tls("verify-full", &certs.server_cert, &certs.server_key)
    ))
    .expect("verify-full with a CA");
    load(&format!(
        "server_tls_sslmode = verify-full\nserver_tls_ca_file = {}",
        certs.ca.display()
    ))
    .expect("server verify-full with a CA");

    for (extra, want) in [
        (
            serve_tls("verify-ca", &certs.server_cert, &certs.server_key),
            "needs client_tls_ca_file",
        ),
        (
            "client_tls_sslmode = require".to_owned(),
            "needs client_tls_cert_file and client_tls_key_file",
        ),
        (
            "server_tls_sslmode = verify-full".to_owned(),
            "needs server_tls_ca_file",
        ),
        (
            format!("{serve}\nclient_tls_protocols = tlsv1.1"),
            "leaves no protocol",
        ),
        (
            format!(
                "server_tls_sslmode = require\nserver_tls_cert_file = {}",
                certs.pooler_client_cert.display()
            ),
            "go together",
        ),
        (
            serve_tls(
                "require",
                &certs.server_cert,
                &dir.path().join("missing.key"),
            ),
            "missing.key",
        ),
    ] {
        match load(&extra) {
            Ok(()) => panic!("accepted:\n{extra}"),
            Err(e) => assert!(e.to_string().contains(want), "{extra}\n=> {e}"),
        }
    }
}
