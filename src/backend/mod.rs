//! Server connections: connecting and logging in, and the state a pooled connection carries.

pub mod cancel;
pub mod connect;
pub mod params;
pub mod query;

use crate::net::stream::Stream;
use bytes::BytesMut;
use params::ParamSet;
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

impl Server {
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
    #[error("server TLS: {0}")]
    Tls(String),
    #[error("server login: {0}")]
    Scram(#[from] crate::auth::scram_client::ScramClientError),
    /// Logging in failed a moment ago; no new attempt before `server_login_retry`.
    #[error("server login has been failing, try again later (server_login_retry): {last}")]
    LoginRetry { code: String, last: String },
}

impl BackendError {
    /// SQLSTATE for the client that waited for this server.
    pub fn sqlstate(&self) -> &str {
        match self {
            BackendError::Login { code, .. } | BackendError::LoginRetry { code, .. } => code,
            BackendError::UnsupportedAuth(_) | BackendError::Scram(_) => {
                crate::proto::sqlstate::INVALID_AUTHORIZATION
            }
            _ => crate::proto::sqlstate::CONNECTION_FAILURE,
        }
    }
}
