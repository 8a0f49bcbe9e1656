//! Drives a client's login over the wire: asks for a password, an md5 response or a SCRAM exchange,
//! and checks it against the stored secret. Unknown users go through the same motions as known ones
//! and fail the same way, so a client cannot tell them apart.

use crate::auth::hba::HbaMethod;
use crate::auth::scram::{ScramError, ScramServer};
use crate::auth::secret::{ScramVerifier, Secret};
use crate::auth::store::SecretStore;
use crate::auth::verifiers::VerifierCache;
use crate::config::AuthType;
use crate::error::{ClientError, Side};
use crate::net::stream::Stream;
use crate::proto::{self, backend::cstr, encode, sqlstate, ProtoError, MAX_PRE_AUTH_MESSAGE};
use bytes::{Buf, BytesMut};
use subtle::ConstantTimeEq;
use thiserror::Error;
use tokio::io::AsyncReadExt;
use zeroize::Zeroizing;

#[derive(Debug, Error)]
pub enum AuthError {
    /// Wrong password or unknown user: the same message and SQLSTATE for both.
    #[error("password authentication failed for user \"{0}\"")]
    Failed(String),
    /// Refused by hba, or a failed certificate or peer check (SQLSTATE 28000).
    #[error("{0}")]
    Rejected(String),
    #[error("invalid authentication message: {0}")]
    Protocol(String),
    #[error("client closed the connection during authentication")]
    Closed,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// What a client whose login failed hears: PostgreSQL's words and codes.
impl From<&AuthError> for ClientError {
    fn from(e: &AuthError) -> Self {
        let code = match e {
            AuthError::Failed(_) => sqlstate::INVALID_PASSWORD,
            AuthError::Rejected(_) => sqlstate::INVALID_AUTHORIZATION,
            _ => sqlstate::PROTOCOL_VIOLATION,
        };
        ClientError::fatal(code, e.to_string(), Side::Client)
    }
}

impl From<ProtoError> for AuthError {
    fn from(e: ProtoError) -> Self {
        AuthError::Protocol(e.to_string())
    }
}

impl From<ScramError> for AuthError {
    fn from(e: ScramError) -> Self {
        match e {
            ScramError::InvalidProof => AuthError::Failed(String::new()),
            other => AuthError::Protocol(other.to_string()),
        }
    }
}

/// How one client must prove itself: from `auth_type`, or from its hba line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// No check, but the user must be known (auth file or auth_query), as in PgBouncer.
    Trust,
    /// No check at all.
    Any,
    Password,
    /// MD5, or SCRAM when the stored secret is a SCRAM verifier (PgBouncer's rule).
    Md5,
    ScramSha256,
    /// A verified TLS client certificate whose CN is the user name.
    Cert,
    /// A unix-socket peer whose OS user name is the user name.
    Peer,
    Reject,
}

impl Method {
    /// The method `auth_type` gives every client; `None` for `hba`, which decides per client.
    pub fn from_auth_type(t: AuthType) -> Option<Method> {
        Some(match t {
            AuthType::Trust => Method::Trust,
            AuthType::Any => Method::Any,
            AuthType::Plain => Method::Password,
            AuthType::Md5 => Method::Md5,
            AuthType::ScramSha256 => Method::ScramSha256,
            AuthType::Cert => Method::Cert,
            AuthType::Hba => return None,
        })
    }

    pub fn from_hba(m: HbaMethod) -> Method {
        match m {
            HbaMethod::Trust => Method::Trust,
            HbaMethod::Reject => Method::Reject,
            HbaMethod::Md5 => Method::Md5,
            HbaMethod::Password => Method::Password,
            HbaMethod::ScramSha256 => Method::ScramSha256,
            HbaMethod::Peer => Method::Peer,
            HbaMethod::Cert => Method::Cert,
        }
    }

    /// The metrics' label for logins by method.
    pub fn label(self) -> &'static str {
        match self {
            Method::Trust => "trust",
            Method::Any => "any",
            Method::Password => "password",
            Method::Md5 => "md5",
            Method::ScramSha256 => "scram-sha-256",
            Method::Cert => "cert",
            Method::Peer => "peer",
            Method::Reject => "reject",
        }
    }

    /// Whether the method needs the user's stored secret (auth file or auth_query).
    pub fn needs_secret(self) -> bool {
        !matches!(
            self,
            Method::Any | Method::Reject | Method::Cert | Method::Peer
        )
    }
}

/// What a login is checked against.
pub struct AuthContext<'a> {
    pub user: &'a str,
    /// None: unknown user.
    pub secret: Option<&'a Secret>,
    pub verifiers: &'a VerifierCache,
    /// Where a ClientKey recovered from a SCRAM proof is kept for pass-through.
    pub keys: &'a SecretStore,
    /// Our certificate's `tls-server-end-point` hash, on a TLS connection: SCRAM-SHA-256-PLUS is
    /// offered when it is known.
    pub end_point: Option<&'a [u8]>,
}

/// Authenticates the client as `method` demands. Does not send AuthenticationOk; the caller does
/// once the rest of the login is settled.
pub async fn authenticate(
    stream: &mut Stream,
    buf: &mut BytesMut,
    method: Method,
    ctx: &AuthContext<'_>,
) -> Result<(), AuthError> {
    let user = ctx.user;
    let secret = ctx.secret;
    let failed = || AuthError::Failed(user.to_owned());
    let use_scram = match method {
        Method::Trust if secret.is_none() => return Err(failed()),
        Method::Trust | Method::Any => return Ok(()),
        Method::Reject => {
            return Err(AuthError::Rejected(format!(
                "pg_hba.conf rejects connection for user \"{user}\""
            )))
        }
        Method::Cert => return check_certificate(stream, user),
        Method::Peer => return check_peer(stream, user),
        Method::Password => false,
        Method::Md5 => matches!(secret, Some(Secret::Scram(_))),
        Method::ScramSha256 => true,
    };
    let mut out = BytesMut::with_capacity(128);
    if use_scram {
        return scram(stream, buf, &mut out, ctx).await;
    }
    if method == Method::Password {
        encode::auth_cleartext(&mut out);
        send(stream, &mut out).await?;
        let body = read_password_message(stream, buf).await?;
        let (given, _) = cstr(&body)?;
        let ok = match secret {
            Some(Secret::Plain(p)) => bool::from(p.as_bytes().ct_eq(given.as_bytes())),
            Some(Secret::Md5(h)) => {
                let hashed = crate::auth::md5::md5_hex_password(user, given.as_bytes());
                bool::from(hashed.as_bytes()[3..].ct_eq(&h[..]))
            }
            Some(Secret::Scram(v)) => {
                let (given, v) = (Zeroizing::new(given.to_owned()), v.clone());
                ctx.verifiers
                    .kdf()
                    .derive(move || {
                        ScramVerifier::from_password(given.as_bytes(), &v.salt, v.iterations)
                            .stored_key
                            .ct_eq(&v.stored_key)
                    })
                    .await
                    .is_some_and(bool::from)
            }
            None => false,
        };
        return if ok { Ok(()) } else { Err(failed()) };
    }
    let salt: [u8; 4] = rand::random();
    encode::auth_md5(&mut out, salt);
    send(stream, &mut out).await?;
    let body = read_password_message(stream, buf).await?;
    let (response, _) = cstr(&body)?;
    match secret {
        Some(s) if crate::auth::md5::verify_md5_response(s, user, salt, response.as_bytes()) => {
            Ok(())
        }
        _ => Err(failed()),
    }
}

/// `cert`: the client presented a certificate the configured CA vouches for (rustls checked the
/// chain in the handshake), and its CN is the user name.
fn check_certificate(stream: &Stream, user: &str) -> Result<(), AuthError> {
    let failed = || {
        AuthError::Rejected(format!(
            "certificate authentication failed for user \"{user}\""
        ))
    };
    let Some(cert) = stream.peer_certificate() else {
        return Err(failed());
    };
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).map_err(|_| failed())?;
    let cn_matches = parsed
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .is_some_and(|cn| cn == user);
    if cn_matches {
        Ok(())
    } else {
        Err(failed())
    }
}

/// `peer`: only on a unix socket, for a peer whose OS user name is the user name.
fn check_peer(stream: &Stream, user: &str) -> Result<(), AuthError> {
    let failed = || AuthError::Rejected(format!("peer authentication failed for user \"{user}\""));
    let uid = stream.peer_uid().ok_or_else(failed)?;
    match os_user_name(uid) {
        Some(name) if name == user => Ok(()),
        _ => Err(failed()),
    }
}

/// The name /etc/passwd gives `uid` (no libc call, so no unsafe code).
fn os_user_name(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut f = line.split(':');
        let name = f.next()?;
        let _password = f.next()?;
        (f.next()?.parse::<u32>().ok()? == uid).then(|| name.to_owned())
    })
}

async fn scram(
    stream: &mut Stream,
    buf: &mut BytesMut,
    out: &mut BytesMut,
    ctx: &AuthContext<'_>,
) -> Result<(), AuthError> {
    let user = ctx.user;
    let nonce: [u8; 18] = rand::random();
    let verifier = match ctx.secret {
        Some(s) => ctx.verifiers.verifier(user, s).await,
        None => None,
    };
    let server = match &verifier {
        Some(v) => ScramServer::new(v.clone(), nonce),
        None => ScramServer::new_mock(&ctx.verifiers.mock_seed(user), nonce),
    };
    let plus = ctx.end_point.filter(|_| stream.is_tls());
    if plus.is_some() {
        encode::auth_sasl(out, &["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]);
    } else {
        encode::auth_sasl(out, &["SCRAM-SHA-256"]);
    }
    send(stream, out).await?;
    let mut body = read_password_message(stream, buf).await?;
    let (mechanism, rest) = cstr(&body)?;
    let server = match (mechanism, plus) {
        ("SCRAM-SHA-256", None) => server,
        ("SCRAM-SHA-256", Some(_)) => server.offered_channel_binding(None),
        ("SCRAM-SHA-256-PLUS", Some(end_point)) => {
            server.offered_channel_binding(Some(end_point.to_vec()))
        }
        _ => {
            return Err(AuthError::Protocol(format!(
                "client selected an invalid SASL authentication mechanism {mechanism:?}"
            )))
        }
    };
    let consumed = body.len() - rest.len();
    body.advance(consumed);
    if body.len() < 4 {
        return Err(ProtoError::Malformed("SASLInitialResponse").into());
    }
    let declared = body.get_i32();
    if usize::try_from(declared).ok() != Some(body.len()) {
        return Err(ProtoError::Malformed("SASLInitialResponse").into());
    }
    let (waiting, server_first) = server.client_first(&body).map_err(|e| fail_as(e, user))?;
    encode::auth_sasl_continue(out, &server_first);
    send(stream, out).await?;
    let body = read_password_message(stream, buf).await?;
    let success = waiting.client_final(&body).map_err(|e| fail_as(e, user))?;
    // A stored verifier: the recovered ClientKey is how the pool logs in as this user.
    if let (Some(Secret::Scram(v)), Some(_)) = (ctx.secret, &verifier) {
        ctx.keys.remember_client_key(user, v, success.client_key);
    }
    encode::auth_sasl_final(out, &success.server_final);
    send(stream, out).await?;
    Ok(())
}

fn fail_as(e: ScramError, user: &str) -> AuthError {
    match e {
        ScramError::InvalidProof => AuthError::Failed(user.to_owned()),
        other => other.into(),
    }
}

async fn send(stream: &mut Stream, out: &mut BytesMut) -> Result<(), AuthError> {
    stream.write_flushed(out).await?;
    out.clear();
    Ok(())
}

/// Reads one PasswordMessage-family frame (`p`), bounded by [`MAX_PRE_AUTH_MESSAGE`].
async fn read_password_message(
    stream: &mut Stream,
    buf: &mut BytesMut,
) -> Result<bytes::Bytes, AuthError> {
    loop {
        if let Some((tag, body)) = proto::take_frame(buf, MAX_PRE_AUTH_MESSAGE)? {
            return match tag {
                b'p' => Ok(body),
                other => Err(ProtoError::Unexpected(other as char).into()),
            };
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(AuthError::Closed);
        }
    }
}
