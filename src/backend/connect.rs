//! Opening a server connection, TLS as `server_tls_sslmode` says, and logging in (trust, cleartext,
//! md5, SCRAM-SHA-256 with a password or passed-through keys, SCRAM-SHA-256-PLUS over TLS), then
//! collecting ParameterStatus and BackendKeyData up to ReadyForQuery.

use super::params::ParamSet;
use super::{BackendError, BackendKey, Server, ServerAddr, TlsFailure};
use crate::auth::scram_client::{self, ClientSecret, ScramClient};
use crate::auth::secret::Secret;
use crate::config::SslMode;
use crate::net::stream::Stream;
use crate::net::tls::ServerTls;
use crate::proto::{self, backend as msg};
use bytes::{Buf, BytesMut};
use md5::{Digest, Md5};
use postgres_protocol::message::frontend;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::time::Instant;
use zeroize::Zeroizing;

/// Largest message accepted from a server during login.
const MAX_LOGIN_MESSAGE: usize = 64 * 1024;

static NEXT_SERVER_ID: AtomicU64 = AtomicU64::new(1);

/// What a login needs.
#[derive(Debug)]
pub struct LoginParams<'a> {
    pub addr: Arc<ServerAddr>,
    pub user: &'a str,
    pub database: &'a str,
    pub secret: Option<&'a Secret>,
    /// Extra startup parameters (client_encoding, datestyle, timezone, application_name).
    pub startup: &'a [(String, String)],
    pub tls: &'a ServerTls,
    /// For a SCRAM verifier secret: the ClientKey a client proved it has (pass-through).
    pub client_key: Option<Zeroizing<[u8; 32]>>,
}

/// Connects and logs in within `timeout`.
/// Opens and logs in a server connection, within `timeout` when there is one.
pub async fn connect(
    p: &LoginParams<'_>,
    timeout: Option<Duration>,
) -> Result<Server, BackendError> {
    match timeout {
        Some(t) => tokio::time::timeout(t, connect_inner(p))
            .await
            .map_err(|_| BackendError::Timeout)?,
        None => connect_inner(p).await,
    }
}

/// SSLRequest: length 8, code 1234.5679.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// Asks for TLS on a fresh TCP connection as `server_tls_sslmode` says. Unix sockets never use TLS,
/// as with libpq; `allow` connects in the clear (libpq would retry with TLS only after a refusal).
async fn negotiate_tls(
    stream: &mut Stream,
    addr: &ServerAddr,
    tls: &ServerTls,
) -> Result<(), BackendError> {
    let Some(connector) = &tls.connector else {
        return Ok(());
    };
    if tls.mode <= SslMode::Allow || !matches!(stream, Stream::Tcp(_)) {
        return Ok(());
    }
    stream.write_all(&SSL_REQUEST).await?;
    let mut answer = [0u8; 1];
    stream.read_exact(&mut answer).await?;
    match answer[0] {
        b'S' => {
            let name =
                rustls::pki_types::ServerName::try_from(addr.host.clone()).map_err(|_| {
                    BackendError::Tls {
                        kind: TlsFailure::BadName,
                        detail: format!("{:?} is not a valid TLS server name", addr.host),
                    }
                })?;
            stream
                .connect_tls(connector, name)
                .await
                .map_err(|e| match TlsFailure::of(&e) {
                    // The connection itself broke mid-handshake (a server going down): that
                    // passes, unlike a TLS disagreement.
                    TlsFailure::Handshake
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::UnexpectedEof
                                | std::io::ErrorKind::ConnectionReset
                                | std::io::ErrorKind::BrokenPipe
                        ) =>
                    {
                        BackendError::Io(e)
                    }
                    kind => BackendError::Tls {
                        kind,
                        detail: e.to_string(),
                    },
                })
        }
        b'N' if tls.mode.requires_tls() => Err(BackendError::Tls {
            kind: TlsFailure::NotOffered,
            detail: "server does not support TLS, and server_tls_sslmode requires it".into(),
        }),
        b'N' => Ok(()),
        _ => Err(proto::ProtoError::Malformed("answer to SSLRequest").into()),
    }
}

async fn open(addr: &ServerAddr) -> Result<Stream, BackendError> {
    let described = || format!("{}:{}", addr.host, addr.port);
    if addr.host.starts_with('/') {
        let path = format!("{}/.s.PGSQL.{}", addr.host, addr.port);
        let s = UnixStream::connect(&path)
            .await
            .map_err(|source| BackendError::Connect { addr: path, source })?;
        Ok(s.into())
    } else {
        let s = TcpStream::connect((addr.host.as_str(), addr.port))
            .await
            .map_err(|source| BackendError::Connect {
                addr: described(),
                source,
            })?;
        Ok(s.into())
    }
}

async fn connect_inner(p: &LoginParams<'_>) -> Result<Server, BackendError> {
    let mut stream = open(&p.addr).await?;
    negotiate_tls(&mut stream, &p.addr, p.tls).await?;
    let mut out = BytesMut::with_capacity(256);
    let mut params: Vec<(&str, &str)> = vec![("user", p.user), ("database", p.database)];
    params.extend(p.startup.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    frontend::startup_message(params, &mut out)?;
    stream.write_flushed(&out).await?;
    out.clear();

    let mut rbuf = BytesMut::with_capacity(4096);
    let mut scram: Option<ScramClient> = None;
    // Authentication phase.
    loop {
        let (tag, mut body) = read_message(&mut stream, &mut rbuf).await?;
        match tag {
            b'R' => {
                if body.len() < 4 {
                    return Err(proto::ProtoError::Malformed("Authentication").into());
                }
                let code = body.get_u32();
                match code {
                    0 => break,
                    3 => {
                        let Some(Secret::Plain(pw)) = p.secret else {
                            return Err(BackendError::UnsupportedAuth("a cleartext password"));
                        };
                        frontend::password_message(pw.as_bytes(), &mut out)?;
                    }
                    5 => {
                        let salt: [u8; 4] = body
                            .get(..4)
                            .and_then(|s| s.try_into().ok())
                            .ok_or(proto::ProtoError::Malformed("AuthenticationMD5Password"))?;
                        let hashed = match p.secret {
                            Some(Secret::Plain(pw)) => {
                                crate::auth::md5::md5_hex_password(p.user, pw.as_bytes())
                            }
                            Some(Secret::Md5(h)) => {
                                format!("md5{}", String::from_utf8_lossy(&h[..]))
                            }
                            _ => return Err(BackendError::UnsupportedAuth("an md5 password")),
                        };
                        frontend::password_message(salted_md5(&hashed, salt).as_bytes(), &mut out)?;
                    }
                    10 => {
                        let offered: Vec<&[u8]> =
                            body.split(|&b| b == 0).filter(|m| !m.is_empty()).collect();
                        let end_point = stream
                            .peer_certificate()
                            .and_then(|c| crate::net::tls::end_point_hash(&c));
                        let mechanism =
                            scram_client::choose(&offered, stream.is_tls(), end_point.as_deref())
                                .ok_or(BackendError::UnsupportedAuth(
                                "a SASL mechanism other than SCRAM-SHA-256",
                            ))?;
                        let secret = match (p.secret, &p.client_key) {
                            (Some(Secret::Plain(pw)), _) => ClientSecret::Password(pw.clone()),
                            (Some(Secret::Scram(v)), Some(key)) => ClientSecret::Keys {
                                client_key: key.clone(),
                                server_key: Zeroizing::new(v.server_key),
                                salt: v.salt.clone(),
                                iterations: v.iterations,
                            },
                            (Some(Secret::Scram(_)), None) => {
                                return Err(BackendError::UnsupportedAuth(
                                    "a SCRAM-SHA-256 login, and no client has yet proved this user's SCRAM secret to pass through",
                                ))
                            }
                            _ => {
                                return Err(BackendError::UnsupportedAuth(
                                    "a SCRAM-SHA-256 login (needs the password or a SCRAM secret)",
                                ))
                            }
                        };
                        let s = ScramClient::new(secret, &mechanism, rand::random());
                        frontend::sasl_initial_response(
                            mechanism.name(),
                            &s.client_first(),
                            &mut out,
                        )?;
                        scram = Some(s);
                    }
                    11 => {
                        let s = scram.as_mut().ok_or(proto::ProtoError::Unexpected('R'))?;
                        let salted = match p.secret {
                            Some(Secret::Plain(pw)) => {
                                let (salt, iterations) = ScramClient::server_first_params(&body)?;
                                let pw = pw.clone();
                                Some(
                                    crate::auth::kdf::derive(move || {
                                        scram_client::salted_password(
                                            pw.as_bytes(),
                                            &salt,
                                            iterations,
                                        )
                                    })
                                    .await
                                    .ok_or(BackendError::Closed)?,
                                )
                            }
                            _ => None,
                        };
                        let reply = s.client_final(&body, salted.as_deref())?;
                        frontend::sasl_response(&reply, &mut out)?;
                    }
                    12 => {
                        let s = scram.as_mut().ok_or(proto::ProtoError::Unexpected('R'))?;
                        s.server_final(&body)?;
                        continue;
                    }
                    _ => {
                        return Err(BackendError::UnsupportedAuth(
                            "an authentication method pgsluice does not know",
                        ))
                    }
                }
                stream.write_flushed(&out).await?;
                out.clear();
            }
            b'E' => return Err(login_error(&body)),
            b'v' | b'N' => {}
            other => return Err(proto::ProtoError::Unexpected(other as char).into()),
        }
    }
    // Up to the first ReadyForQuery.
    let mut server_params = ParamSet::default();
    let mut key = BackendKey { pid: 0, secret: 0 };
    loop {
        let (tag, body) = read_message(&mut stream, &mut rbuf).await?;
        match tag {
            b'S' => {
                let (k, v) = msg::parameter_status(&body)?;
                server_params.set(k, v);
            }
            b'K' => {
                let mut b = body;
                if b.len() < 8 {
                    return Err(proto::ProtoError::Malformed("BackendKeyData").into());
                }
                key = BackendKey {
                    pid: b.get_u32(),
                    secret: b.get_u32(),
                };
            }
            b'Z' => break,
            b'E' => return Err(login_error(&body)),
            b'N' => {}
            other => return Err(proto::ProtoError::Unexpected(other as char).into()),
        }
    }
    let now = Instant::now();
    Ok(Server {
        stream,
        rbuf,
        params: server_params,
        key,
        addr: p.addr.clone(),
        created: now,
        last_used: now,
        id: NEXT_SERVER_ID.fetch_add(1, Ordering::Relaxed),
        statements: Default::default(),
        tracked: None,
    })
}

/// md5 response from the hashed password (`md5` + hex) and the salt.
fn salted_md5(hashed: &str, salt: [u8; 4]) -> String {
    let mut h = Md5::new();
    h.update(hashed.strip_prefix("md5").unwrap_or(hashed).as_bytes());
    h.update(salt);
    let digest = h.finalize();
    let mut out = String::with_capacity(35);
    out.push_str("md5");
    for b in digest {
        use std::fmt::Write;
        let _ = write!(out, "{b:02x}");
    }
    out
}

fn login_error(body: &[u8]) -> BackendError {
    match msg::error_fields(body) {
        Ok(f) => BackendError::Login {
            code: f.code.to_owned(),
            message: f.message.to_owned(),
        },
        Err(e) => e.into(),
    }
}

pub(crate) async fn read_message(
    stream: &mut Stream,
    rbuf: &mut BytesMut,
) -> Result<(u8, bytes::Bytes), BackendError> {
    loop {
        if let Some(frame) = proto::take_frame(rbuf, MAX_LOGIN_MESSAGE)? {
            return Ok(frame);
        }
        if stream.read_buf(rbuf).await? == 0 {
            return Err(BackendError::Closed);
        }
    }
}
