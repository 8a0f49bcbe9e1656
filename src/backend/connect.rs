//! Opening a server connection, TLS as `server_tls_sslmode` says, and logging in (trust, cleartext,
//! md5, SCRAM-SHA-256 with a password or passed-through keys, SCRAM-SHA-256-PLUS over TLS), then
//! collecting ParameterStatus and BackendKeyData up to ReadyForQuery.

use super::params::ParamSet;
use super::{BackendError, BackendKey, Server, ServerAddr, TlsFailure};
use crate::auth::kdf::Kdf;
use crate::auth::scram_client::{self, ClientSecret, ScramClient};
use crate::auth::secret::Secret;
use crate::config::SslMode;
use crate::net::stream::Stream;
use crate::net::tls::ServerTls;
use crate::proto;
use crate::proto::backend::{self as msg, AuthRequest};
use bytes::BytesMut;
use postgres_protocol::message::frontend;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
    /// The bound a SCRAM login's key derivation runs under.
    pub kdf: &'a Kdf,
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
    crate::net::connect::connect(&addr.host, addr.port)
        .await
        .map_err(|source| BackendError::Connect {
            addr: crate::net::connect::describe(&addr.host, addr.port),
            source,
        })
}

async fn connect_inner(p: &LoginParams<'_>) -> Result<Server, BackendError> {
    let mut stream = open(&p.addr).await?;
    negotiate_tls(&mut stream, &p.addr, p.tls).await?;
    let mut out = BytesMut::with_capacity(256);
    let mut params: Vec<(&str, &str)> = vec![("user", p.user), ("database", p.database)];
    params.extend(p.startup.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    frontend::startup_message(params, &mut out)?;
    stream.write_flushed(&out).await?;

    let mut rbuf = BytesMut::with_capacity(4096);
    authenticate(&mut stream, &mut rbuf, p).await?;
    let (params, key) = await_ready(&mut stream, &mut rbuf).await?;
    let now = Instant::now();
    Ok(Server {
        stream,
        rbuf,
        params,
        key,
        addr: p.addr.clone(),
        created: now,
        last_used: now,
        id: NEXT_SERVER_ID.fetch_add(1, Ordering::Relaxed),
        statements: Default::default(),
        tracked: None,
    })
}

/// The authentication phase: answers each request the server makes until AuthenticationOk.
async fn authenticate(
    stream: &mut Stream,
    rbuf: &mut BytesMut,
    p: &LoginParams<'_>,
) -> Result<(), BackendError> {
    let mut out = BytesMut::with_capacity(256);
    let mut scram: Option<ScramClient> = None;
    loop {
        let (tag, body) = read_message(stream, rbuf).await?;
        match tag {
            b'R' => {}
            b'E' => return Err(login_error(&body)),
            b'v' | b'N' => continue,
            other => return Err(proto::ProtoError::Unexpected(other as char).into()),
        }
        match msg::authentication(&body)? {
            AuthRequest::Ok => return Ok(()),
            AuthRequest::CleartextPassword => {
                let Some(Secret::Plain(pw)) = p.secret else {
                    return Err(BackendError::UnsupportedAuth("a cleartext password"));
                };
                frontend::password_message(pw.as_bytes(), &mut out)?;
            }
            AuthRequest::Md5Password { salt } => {
                let response = p
                    .secret
                    .and_then(|s| crate::auth::md5::client_response(s, p.user, salt))
                    .ok_or(BackendError::UnsupportedAuth("an md5 password"))?;
                frontend::password_message(&response, &mut out)?;
            }
            request @ AuthRequest::Sasl { .. } => {
                let offered: Vec<&[u8]> = request.mechanisms().collect();
                let (s, mechanism) = scram_start(stream, &offered, p)?;
                frontend::sasl_initial_response(mechanism, &s.client_first(), &mut out)?;
                scram = Some(s);
            }
            AuthRequest::SaslContinue(challenge) => {
                let s = scram.as_mut().ok_or(proto::ProtoError::Unexpected('R'))?;
                let reply = scram_continue(s, challenge, p.secret, p.kdf).await?;
                frontend::sasl_response(&reply, &mut out)?;
            }
            AuthRequest::SaslFinal(outcome) => {
                let s = scram.as_ref().ok_or(proto::ProtoError::Unexpected('R'))?;
                s.server_final(outcome)?;
                continue;
            }
            AuthRequest::Other(_) => {
                return Err(BackendError::UnsupportedAuth(
                    "an authentication method pgsluice does not know",
                ))
            }
        }
        stream.write_flushed(&out).await?;
        out.clear();
    }
}

/// The SCRAM client for a server's SASL offer, with the secret the login has: the password, or
/// the keys a client proved (pass-through); and the name of the mechanism chosen.
fn scram_start(
    stream: &Stream,
    offered: &[&[u8]],
    p: &LoginParams<'_>,
) -> Result<(ScramClient, &'static str), BackendError> {
    let end_point = stream
        .peer_certificate()
        .and_then(|c| crate::net::tls::end_point_hash(&c));
    let mechanism = scram_client::choose(offered, stream.is_tls(), end_point.as_deref()).ok_or(
        BackendError::UnsupportedAuth("a SASL mechanism other than SCRAM-SHA-256"),
    )?;
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
    let client = ScramClient::new(secret, &mechanism, rand::random());
    Ok((client, mechanism.name()))
}

/// The client-final message for the server's challenge. With a password, the salted password is
/// derived off the async workers (PBKDF2 is slow on purpose).
async fn scram_continue(
    s: &mut ScramClient,
    challenge: &[u8],
    secret: Option<&Secret>,
    kdf: &Kdf,
) -> Result<Vec<u8>, BackendError> {
    let salted = match secret {
        Some(Secret::Plain(pw)) => {
            let (salt, iterations) = ScramClient::server_first_params(challenge)?;
            let pw = pw.clone();
            let derived =
                kdf.derive(move || scram_client::salted_password(pw.as_bytes(), &salt, iterations));
            Some(derived.await.ok_or(BackendError::Closed)?)
        }
        _ => None,
    };
    Ok(s.client_final(challenge, salted.as_deref())?)
}

/// After AuthenticationOk, up to the first ReadyForQuery: the server's parameters and its key.
async fn await_ready(
    stream: &mut Stream,
    rbuf: &mut BytesMut,
) -> Result<(ParamSet, BackendKey), BackendError> {
    let mut params = ParamSet::default();
    let mut key = BackendKey { pid: 0, secret: 0 };
    loop {
        let (tag, body) = read_message(stream, rbuf).await?;
        match tag {
            b'S' => {
                let (k, v) = msg::parameter_status(&body)?;
                params.set(k, v);
            }
            b'K' => {
                let (pid, secret) = msg::backend_key_data(&body)?;
                key = BackendKey { pid, secret };
            }
            b'Z' => return Ok((params, key)),
            b'E' => return Err(login_error(&body)),
            b'N' => {}
            other => return Err(proto::ProtoError::Unexpected(other as char).into()),
        }
    }
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
