//! Opening a server connection and logging in (trust, cleartext, md5, SCRAM-SHA-256 through
//! postgres-protocol's client), then collecting ParameterStatus and BackendKeyData up to ReadyForQuery.

use super::params::ParamSet;
use super::{BackendError, BackendKey, Server, ServerAddr};
use crate::auth::secret::Secret;
use crate::net::stream::Stream;
use crate::proto::{self, backend as msg};
use bytes::{Buf, BytesMut};
use md5::{Digest, Md5};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::time::Instant;

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
    let mut out = BytesMut::with_capacity(256);
    let mut params: Vec<(&str, &str)> = vec![("user", p.user), ("database", p.database)];
    params.extend(p.startup.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    frontend::startup_message(params, &mut out)?;
    stream.write_all(&out).await?;
    out.clear();

    let mut rbuf = BytesMut::with_capacity(4096);
    let mut scram: Option<ScramSha256> = None;
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
                        let Some(Secret::Plain(pw)) = p.secret else {
                            return Err(BackendError::UnsupportedAuth(
                                "a SCRAM-SHA-256 login (needs the password)",
                            ));
                        };
                        let offered = body.split(|&b| b == 0).any(|m| m == b"SCRAM-SHA-256");
                        if !offered {
                            return Err(BackendError::UnsupportedAuth(
                                "a SASL mechanism other than SCRAM-SHA-256",
                            ));
                        }
                        let s = ScramSha256::new(pw.as_bytes(), ChannelBinding::unsupported());
                        frontend::sasl_initial_response("SCRAM-SHA-256", s.message(), &mut out)?;
                        scram = Some(s);
                    }
                    11 => {
                        let s = scram.as_mut().ok_or(proto::ProtoError::Unexpected('R'))?;
                        s.update(&body)?;
                        frontend::sasl_response(s.message(), &mut out)?;
                    }
                    12 => {
                        let s = scram.as_mut().ok_or(proto::ProtoError::Unexpected('R'))?;
                        s.finish(&body)?;
                        continue;
                    }
                    _ => {
                        return Err(BackendError::UnsupportedAuth(
                            "an authentication method pgsluice does not know",
                        ))
                    }
                }
                stream.write_all(&out).await?;
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
