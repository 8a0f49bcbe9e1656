//! Helpers shared by the TLS tests (tests/tls.rs, tests/tls_server.rs): the `client_tls_*` lines
//! that serve a certificate, psql runs, raw TLS clients built with tokio-rustls, and the wire
//! protocol over any stream (a login and a query inside TLS).
#![allow(dead_code, clippy::unwrap_used)]

use super::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, SupportedCipherSuite, SupportedProtocolVersion};
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Every raw read and handshake gives up after this long, so a pooler that hangs fails the test.
pub const WAIT: Duration = Duration::from_secs(10);

/// SSLRequest: length 8, code 80877103.
pub const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

pub static BOTH: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

pub fn pg() -> &'static Postgres {
    Postgres::shared()
}

/// `client_tls_*` lines that serve `cert` and `key` in `mode`.
pub fn serve_tls(mode: &str, cert: &Path, key: &Path) -> String {
    format!(
        "client_tls_sslmode = {mode}\nclient_tls_cert_file = {}\nclient_tls_key_file = {}",
        cert.display(),
        key.display()
    )
}

/// The pooler's own certificate (SAN localhost, 127.0.0.1; signed by the test CA) in `mode`.
pub fn serve_server_cert(mode: &str) -> String {
    let c = &pg().certs;
    serve_tls(mode, &c.server_cert, &c.server_key)
}

pub fn der(pem: &Path) -> Vec<u8> {
    CertificateDer::from_pem_file(pem)
        .unwrap()
        .as_ref()
        .to_vec()
}

// ---------------------------------------------------------------------------------------------
// psql

/// What one psql run showed.
pub struct Psql {
    pub ok: bool,
    /// psql's `\conninfo` reported an SSL connection (only asked by [`psql_probe`]).
    pub tls: bool,
    pub stdout: String,
    /// stdout and stderr together, for messages.
    pub text: String,
}

pub async fn psql(conninfo: String, sql: &'static str) -> Psql {
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
pub async fn psql_probe(conninfo: String) -> Psql {
    psql(conninfo, "\\conninfo").await
}

// ---------------------------------------------------------------------------------------------
// Raw TLS clients with tokio-rustls

// Accepts any server certificate (handshake signatures still checked): pgsluice's own verifier
// for server_tls_sslmode = require, for tests that look at which certificate was served.
use pgsluice::net::tls::AnyCertificate;

/// How a raw client is set up.
pub struct ClientSetup<'a> {
    pub versions: &'a [&'static SupportedProtocolVersion],
    /// Only these cipher suites (None: ring's defaults).
    pub suites: Option<Vec<SupportedCipherSuite>>,
    pub alpn: Option<&'a [u8]>,
    /// Verify the server against this CA (as name `localhost`); None: accept any certificate.
    pub ca: Option<&'a Path>,
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

pub fn connector(setup: ClientSetup<'_>) -> TlsConnector {
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

pub fn localhost() -> ServerName<'static> {
    ServerName::try_from("localhost").unwrap()
}

pub async fn handshake(
    connector: &TlsConnector,
    tcp: TcpStream,
) -> io::Result<TlsStream<TcpStream>> {
    tokio::time::timeout(WAIT, connector.connect(localhost(), tcp))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake hangs"))?
}

/// The classic way: SSLRequest, `S`, then the TLS handshake.
pub async fn tls_after_ssl_request(
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

/// The DER of the certificate the server presented.
pub fn served(t: &TlsStream<TcpStream>) -> Vec<u8> {
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

pub async fn read_msg<S: AsyncRead + Unpin>(s: &mut S) -> io::Result<(u8, Vec<u8>)> {
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
pub fn error_field(body: &[u8], code: u8) -> Option<String> {
    body.split(|&b| b == 0)
        .find(|f| f.first() == Some(&code))
        .map(|f| String::from_utf8_lossy(&f[1..]).into_owned())
}

pub fn describe_error(body: &[u8]) -> String {
    format!(
        "{}: {}",
        error_field(body, b'C').unwrap_or_default(),
        error_field(body, b'M').unwrap_or_default()
    )
}

pub fn password_message(answer: &str) -> Vec<u8> {
    let mut p = vec![b'p'];
    p.extend_from_slice(&((4 + answer.len() + 1) as u32).to_be_bytes());
    p.extend_from_slice(answer.as_bytes());
    p.push(0);
    p
}

pub fn md5_answer(user: &str, password: &str, salt: &[u8]) -> String {
    use md5::{Digest, Md5};
    let inner = format!("{:x}", Md5::digest(format!("{password}{user}")));
    let mut h = Md5::new();
    h.update(inner.as_bytes());
    h.update(salt);
    format!("md5{:x}", h.finalize())
}

/// Logs in to `appdb` as `user` (trust, cleartext or md5), up to ReadyForQuery. Returns the code of
/// the first authentication request (0 ok, 3 cleartext, 5 md5), or the error the pooler sent.
pub async fn login<S: AsyncRead + AsyncWrite + Unpin>(
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
pub async fn query_value<S: AsyncRead + AsyncWrite + Unpin>(
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
