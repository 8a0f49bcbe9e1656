//! What every login shares, the console's included: how a client must authenticate, and how a
//! refusal is told.

use super::tell;
use crate::auth::hba::Transport;
use crate::error::{ClientError, Side};
use crate::frontend::authenticate::{AuthError, Method};
use crate::net::stream::Stream;
use crate::proto::sqlstate;

/// Why a login ended without a session. Rejections have already been told to the client.
#[derive(Debug, thiserror::Error)]
pub enum LoginEnd {
    #[error("cancel request")]
    Cancel,
    #[error("{0}")]
    Rejected(String),
    #[error("client went away during login")]
    Gone,
}

/// Tells the client why it is refused; the refusal, for the log.
pub(super) async fn reject(
    events: &crate::metrics::Events,
    stream: &mut Stream,
    e: ClientError,
) -> LoginEnd {
    tell(events, stream, &e).await;
    LoginEnd::Rejected(e.message.into_owned())
}

/// How a failed authentication ends a login: a client that went away is gone; any other failure
/// is told, naming the user the client named.
pub(super) async fn auth_failed(
    events: &crate::metrics::Events,
    stream: &mut Stream,
    e: AuthError,
    user: &str,
) -> LoginEnd {
    match e {
        AuthError::Closed | AuthError::Io(_) => LoginEnd::Gone,
        AuthError::Failed(_) => {
            let told = ClientError::from(&AuthError::Failed(user.to_owned()));
            reject(events, stream, told).await
        }
        other => reject(events, stream, ClientError::from(&other)).await,
    }
}

/// How a client must prove who it is: `auth_type`, or the hba rule for its connection. Refused
/// (with the SQLSTATE and PostgreSQL's message) when TLS is required and missing, or no rule matches.
pub(super) fn auth_method(
    g: &crate::config::General,
    stream: &Stream,
    database: &str,
    user: &str,
) -> Result<Method, ClientError> {
    // PgBouncer's rule: TLS may be required of TCP clients, never of unix-socket ones.
    if g.client_tls.mode.requires_tls() && !stream.is_tls() && !stream.is_unix() {
        return Err(refused("SSL required".into()));
    }
    if let Some(m) = Method::from_auth_type(g.auth_type) {
        return Ok(m);
    }
    let transport = match stream.peer_ip() {
        Some(addr) => Transport::Tcp {
            addr,
            tls: stream.is_tls(),
        },
        None => Transport::Unix,
    };
    if let Some(hit) = g
        .auth_hba
        .as_ref()
        .and_then(|h| h.lookup(transport, database, user))
    {
        return Ok(Method::from_hba(hit.method));
    }
    let (host, encryption) = match transport {
        Transport::Tcp { addr, tls } => (
            addr.to_string(),
            if tls {
                "SSL encryption"
            } else {
                "no encryption"
            },
        ),
        Transport::Unix => ("[local]".to_owned(), "no encryption"),
    };
    Err(refused(format!(
        "no pg_hba.conf entry for host \"{host}\", user \"{user}\", database \"{database}\", {encryption}"
    )))
}

/// A login refused by a rule (28000).
fn refused(message: String) -> ClientError {
    ClientError::fatal(sqlstate::INVALID_AUTHORIZATION, message, Side::Client)
}
