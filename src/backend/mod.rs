//! Server connections: connecting and logging in, and the state a pooled connection carries.

pub mod cancel;
pub mod connect;
pub mod params;
pub mod query;

use crate::error::{ClientError, Retry, Side};
use crate::net::stream::Stream;
use bytes::BytesMut;
use params::ParamSet;
use std::borrow::Cow;
use std::sync::Arc;
use thiserror::Error;
use tokio::time::Instant;

/// The server's own BackendKeyData, used to forward a client's CancelRequest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendKey {
    pub pid: u32,
    pub secret: u32,
}

/// Where a server connection goes, kept for cancel requests (which need a new connection there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerAddr {
    /// Host name or IP, or a unix socket directory when it starts with `/`.
    pub host: String,
    pub port: u16,
}

/// A logged-in server connection.
#[derive(Debug)]
pub struct Server {
    pub stream: Stream,
    /// Bytes read from the server and not yet handled.
    pub rbuf: BytesMut,
    /// Parameters as the server last reported them.
    pub params: ParamSet,
    pub key: BackendKey,
    pub addr: Arc<ServerAddr>,
    pub created: Instant,
    pub last_used: Instant,
    pub id: u64,
    /// Statements the pooler has prepared on this server (transaction and statement mode).
    pub statements: crate::prepared::ServerStatements,
    /// The tracked parameters' projection, for the stamp of `params` and the tracked list it was
    /// made for: compared with a client's set at every checkout.
    pub tracked: Option<(u64, usize, ParamSet)>,
}

/// What the admin console shows of a server: copied at checkout (no allocation) and for idle ones.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    pub addr: Arc<ServerAddr>,
    pub key: BackendKey,
    pub id: u64,
    pub created: Instant,
    pub last_used: Instant,
    pub tls: bool,
    /// Statements prepared on it by the pooler (transaction and statement mode).
    pub prepared: usize,
}

impl Server {
    pub fn info(&self) -> ServerInfo {
        ServerInfo {
            addr: self.addr.clone(),
            key: self.key,
            id: self.id,
            created: self.created,
            last_used: self.last_used,
            tls: self.stream.is_tls(),
            prepared: self.statements.len(),
        }
    }

    /// Whether this server's values of the `tracked` parameters are `client`'s (a client's set
    /// holds only tracked names, as their projection). Made once per change of the server's set.
    pub fn agrees_with(&mut self, client: &ParamSet, tracked: &[String]) -> bool {
        let key = (self.params.stamp(), tracked.as_ptr() as usize);
        match &self.tracked {
            Some((stamp, list, p)) if (*stamp, *list) == key => p == client,
            _ => {
                let p = self.params.project(tracked);
                let agrees = p == *client;
                self.tracked = Some((key.0, key.1, p));
                agrees
            }
        }
    }

    /// A healthy idle server has sent nothing: EOF means it closed, bytes mean it sent an
    /// unexpected message (typically a FATAL before closing). Either way it must not be reused.
    pub fn is_healthy_idle(&self) -> bool {
        if !self.rbuf.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }
}

/// What went wrong with TLS towards a server, in words a client may hear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFailure {
    /// The server's certificate did not verify (chain or name), under verify-ca or verify-full.
    Certificate,
    /// The server refused TLS and `server_tls_sslmode` requires it.
    NotOffered,
    /// The host is no name a certificate could be checked against.
    BadName,
    /// Anything else in the handshake.
    Handshake,
}

impl TlsFailure {
    /// Sorts a failed handshake by what rustls says went wrong.
    pub fn of(e: &std::io::Error) -> Self {
        match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            Some(
                rustls::Error::InvalidCertificate(_)
                | rustls::Error::NoCertificatesPresented
                | rustls::Error::UnsupportedNameType,
            ) => TlsFailure::Certificate,
            _ => TlsFailure::Handshake,
        }
    }

    fn client_message(self) -> &'static str {
        match self {
            TlsFailure::Certificate => {
                "server login failed: the server's TLS certificate could not be verified"
            }
            TlsFailure::NotOffered => {
                "server login failed: the server does not support TLS, and server_tls_sslmode requires it"
            }
            TlsFailure::BadName => {
                "server login failed: the server's host is not a valid TLS server name"
            }
            TlsFailure::Handshake => "server login failed: TLS handshake with the server failed",
        }
    }
}

#[derive(Debug, Error)]
pub enum BackendError {
    #[error("could not connect to server {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("server connection timed out")]
    Timeout,
    #[error("server login failed: {message}")]
    Login { code: String, message: String },
    #[error("server connection I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("server protocol error: {0}")]
    Protocol(#[from] crate::proto::ProtoError),
    #[error("server asks for {0}, which pgsluice cannot answer with the secret it holds")]
    UnsupportedAuth(&'static str),
    #[error("server closed the connection")]
    Closed,
    /// TLS towards the server failed; `detail` (rustls's words) is for the log only.
    #[error("server TLS: {detail}")]
    Tls { kind: TlsFailure, detail: String },
    #[error("server login: {0}")]
    Scram(#[from] crate::auth::scram_client::ScramClientError),
    /// Logging in failed a moment ago; no new attempt before `server_login_retry`.
    #[error("server login has been failing, try again later (server_login_retry): {last}")]
    LoginRetry { code: String, last: String },
    /// Every candidate server is in recovery or read-only, where a writable one is required.
    #[error("no writable server: every candidate is in recovery or read-only")]
    ReadOnly,
    /// Discovery found no primary within `discovery_hold_timeout`.
    #[error("no primary server found within discovery_hold_timeout")]
    NoPrimary,
}

impl BackendError {
    /// What a client may be told: no address, OS error or TLS internals, which go to the log only.
    /// PostgreSQL's own login errors are passed on as PostgreSQL worded them.
    fn client_message(&self) -> Cow<'static, str> {
        match self {
            BackendError::Connect { .. } | BackendError::Io(_) => {
                Cow::Borrowed("could not connect to server")
            }
            BackendError::Timeout => Cow::Borrowed("server connection timed out"),
            BackendError::Login { message, .. } => Cow::Owned(message.clone()),
            BackendError::Protocol(_) => Cow::Borrowed("server protocol error"),
            BackendError::UnsupportedAuth(_) | BackendError::Scram(_) => {
                Cow::Borrowed("server login failed: the pooler cannot authenticate to the server")
            }
            BackendError::Closed => Cow::Borrowed("server closed the connection"),
            BackendError::Tls { kind, .. } => Cow::Borrowed(kind.client_message()),
            BackendError::LoginRetry { last, .. } => Cow::Owned(format!(
                "server login has been failing, try again later (server_login_retry): {last}"
            )),
            BackendError::ReadOnly => Cow::Borrowed("no writable server is available"),
            BackendError::NoPrimary => {
                Cow::Borrowed("no primary server is available (discovery_hold_timeout)")
            }
        }
    }

    /// Whether the failure may pass by itself (PostgreSQL unreachable, restarting, shutting down,
    /// out of connection slots), so that clients should wait for a retry rather than hear it. A
    /// server that refuses the login itself (wrong password, no such database) or a TLS or
    /// protocol mismatch will refuse again: those reach the clients at once.
    pub fn is_transient(&self) -> bool {
        match self {
            BackendError::Connect { .. }
            | BackendError::Timeout
            | BackendError::Io(_)
            | BackendError::Closed
            // A standby may be promoted in a moment: clients wait for the next attempt.
            | BackendError::ReadOnly => true,
            BackendError::Login { code, .. } => {
                code.starts_with("57P") || code.starts_with("08") || code == "53300"
            }
            _ => false,
        }
    }

    /// SQLSTATE for the client that waited for this server.
    fn sqlstate(&self) -> Cow<'static, str> {
        match self {
            BackendError::Login { code, .. } | BackendError::LoginRetry { code, .. } => {
                Cow::Owned(code.clone())
            }
            BackendError::UnsupportedAuth(_) | BackendError::Scram(_) => {
                Cow::Borrowed(crate::proto::sqlstate::INVALID_AUTHORIZATION)
            }
            _ => Cow::Borrowed(crate::proto::sqlstate::CONNECTION_FAILURE),
        }
    }
}

/// The one place a server failure becomes what a client hears.
impl From<&BackendError> for ClientError {
    fn from(e: &BackendError) -> Self {
        let side = match e {
            // The pooler holds no secret the server accepts: its configuration's fault.
            BackendError::UnsupportedAuth(_) | BackendError::Scram(_) => Side::Internal,
            _ => Side::Server,
        };
        let retry = if e.is_transient() {
            Retry::Later
        } else {
            Retry::Never
        };
        ClientError::fatal(
            crate::proto::sqlstate::CONNECTION_FAILURE,
            e.client_message(),
            side,
        )
        .with_code(e.sqlstate())
        .with_retry(retry)
    }
}
