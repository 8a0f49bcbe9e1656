//! What every login shares, the console's included: how a client must authenticate, and how a
//! refusal is told.

use super::send_error;
use crate::auth::hba::Transport;
use crate::frontend::authenticate::Method;
use crate::net::stream::Stream;
use crate::proto::encode::Severity;
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

pub(super) async fn reject(
    events: &crate::metrics::Events,
    stream: &mut Stream,
    code: &str,
    message: String,
) -> LoginEnd {
    send_error(events, stream, Severity::Fatal, code, &message, None).await;
    LoginEnd::Rejected(message)
}

/// How a client must prove who it is: `auth_type`, or the hba rule for its connection. Refused
/// (with the SQLSTATE and PostgreSQL's message) when TLS is required and missing, or no rule matches.
pub(super) fn auth_method(
    g: &crate::config::General,
    stream: &Stream,
    database: &str,
    user: &str,
) -> Result<Method, (&'static str, String)> {
    // PgBouncer's rule: TLS may be required of TCP clients, never of unix-socket ones.
    if g.client_tls.mode.requires_tls() && !stream.is_tls() && !stream.is_unix() {
        return Err((sqlstate::INVALID_AUTHORIZATION, "SSL required".into()));
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
    Err((
        sqlstate::INVALID_AUTHORIZATION,
        format!("no pg_hba.conf entry for host \"{host}\", user \"{user}\", database \"{database}\", {encryption}"),
    ))
}
