//! Drives a client's login over the wire: asks for a password, an md5 response or a SCRAM exchange,
//! and checks it against the stored secret. Unknown users go through the same motions as known ones
//! and fail the same way, so a client cannot tell them apart.

use super::scram::{ScramError, ScramServer};
use crate::auth::secret::{ScramVerifier, Secret};
use crate::config::AuthType;
use crate::net::stream::Stream;
use crate::proto::{self, backend::cstr, encode, sqlstate, ProtoError, MAX_PRE_AUTH_MESSAGE};
use bytes::{Buf, BytesMut};
use dashmap::DashMap;
use std::sync::Arc;
use subtle::ConstantTimeEq;
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Error)]
pub enum AuthError {
    /// Wrong password or unknown user: the same message and SQLSTATE for both.
    #[error("password authentication failed for user \"{0}\"")]
    Failed(String),
    #[error("invalid authentication message: {0}")]
    Protocol(String),
    #[error("client closed the connection during authentication")]
    Closed,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl AuthError {
    pub fn sqlstate(&self) -> &'static str {
        match self {
            AuthError::Failed(_) => sqlstate::INVALID_PASSWORD,
            _ => sqlstate::PROTOCOL_VIOLATION,
        }
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

/// SCRAM verifiers derived from plain-text secrets, per user, so that PBKDF2 runs once per user and
/// secret rather than once per login. The secret is kept beside the verifier so that a changed
/// secret is never served a stale verifier.
#[derive(Default)]
pub struct VerifierCache {
    entries: DashMap<String, Arc<(Secret, ScramVerifier)>>,
}

impl std::fmt::Debug for VerifierCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifierCache")
            .field("users", &self.entries.len())
            .finish()
    }
}

impl VerifierCache {
    async fn verifier(&self, user: &str, secret: &Secret) -> Option<ScramVerifier> {
        let password = match secret {
            Secret::Scram(v) => return Some(v.clone()),
            Secret::Md5(_) => return None,
            Secret::Plain(p) => p.clone(),
        };
        if let Some(hit) = self.entries.get(user) {
            if let (Secret::Plain(cached), v) = (&hit.0, &hit.1) {
                if bool::from(cached.as_bytes().ct_eq(password.as_bytes())) {
                    return Some(v.clone());
                }
            }
        }
        // PBKDF2 is deliberately slow: keep it off the async worker threads.
        let salt: [u8; 16] = rand::random();
        let derived = tokio::task::spawn_blocking(move || {
            ScramVerifier::from_password(
                password.as_bytes(),
                &salt,
                crate::auth::secret::DEFAULT_ITERATIONS,
            )
        })
        .await
        .ok()?;
        self.entries
            .insert(user.to_owned(), Arc::new((secret.clone(), derived.clone())));
        Some(derived)
    }
}

/// Authenticates `user` with `secret` (None: unknown user) as `auth_type` demands. Does not send
/// AuthenticationOk; the caller does once the rest of the login is settled.
pub async fn authenticate(
    stream: &mut Stream,
    buf: &mut BytesMut,
    auth_type: AuthType,
    user: &str,
    secret: Option<&Secret>,
    cache: &VerifierCache,
) -> Result<(), AuthError> {
    let failed = || AuthError::Failed(user.to_owned());
    let use_scram = match auth_type {
        // PgBouncer's trust still wants the user in the auth file; any takes every name.
        AuthType::Trust if secret.is_none() => return Err(failed()),
        AuthType::Trust | AuthType::Any => return Ok(()),
        AuthType::Plain => false,
        // PgBouncer's rule: md5 with a stored SCRAM verifier asks the client for SCRAM.
        AuthType::Md5 => matches!(secret, Some(Secret::Scram(_))),
        AuthType::ScramSha256 => true,
    };
    let mut out = BytesMut::with_capacity(128);
    if use_scram {
        return scram(stream, buf, &mut out, user, secret, cache).await;
    }
    if auth_type == AuthType::Plain {
        encode::auth_cleartext(&mut out);
        send(stream, &mut out).await?;
        let body = read_password_message(stream, buf).await?;
        let (given, _) = cstr(&body)?;
        let ok = match secret {
            Some(Secret::Plain(p)) => bool::from(p.as_bytes().ct_eq(given.as_bytes())),
            Some(Secret::Md5(h)) => {
                let hashed = super::md5::md5_hex_password(user, given.as_bytes());
                bool::from(hashed.as_bytes()[3..].ct_eq(&h[..]))
            }
            Some(Secret::Scram(v)) => {
                let (given, v) = (given.to_owned(), v.clone());
                let derived = tokio::task::spawn_blocking(move || {
                    ScramVerifier::from_password(given.as_bytes(), &v.salt, v.iterations)
                        .stored_key
                        .ct_eq(&v.stored_key)
                })
                .await
                .map(bool::from)
                .unwrap_or(false);
                derived
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
        Some(s) if super::md5::verify_md5_response(s, user, salt, response.as_bytes()) => Ok(()),
        _ => Err(failed()),
    }
}

async fn scram(
    stream: &mut Stream,
    buf: &mut BytesMut,
    out: &mut BytesMut,
    user: &str,
    secret: Option<&Secret>,
    cache: &VerifierCache,
) -> Result<(), AuthError> {
    let nonce: [u8; 18] = rand::random();
    let verifier = match secret {
        Some(s) => cache.verifier(user, s).await,
        None => None,
    };
    let server = match verifier {
        Some(v) => ScramServer::new(v, nonce),
        None => ScramServer::new_mock(user.as_bytes(), nonce),
    };
    encode::auth_sasl(out, &["SCRAM-SHA-256"]);
    send(stream, out).await?;
    let mut body = read_password_message(stream, buf).await?;
    let (mechanism, rest) = cstr(&body)?;
    if mechanism != "SCRAM-SHA-256" {
        return Err(AuthError::Protocol(format!(
            "client selected an invalid SASL authentication mechanism {mechanism:?}"
        )));
    }
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
    stream.write_all(out).await?;
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
