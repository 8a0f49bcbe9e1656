//! What a client hears when pgsluice itself fails it, and why a client's session ended.
//!
//! Every module error converts into a [`ClientError`] in one place, beside its definition (`From<&E>`),
//! and only a `ClientError` reaches the wire: its text is written for clients and never carries a
//! server's address, an OS error or TLS internals, which stay in the module error for the log. Errors
//! a server sends are passed through unchanged and never become a `ClientError`.

use crate::proto::encode::{self, Severity};
use crate::proto::sqlstate;
use bytes::BytesMut;
use std::borrow::Cow;
use std::fmt;

/// Whose fault a failure is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client's: what it sent, how it logged in, how long it waited or idled.
    Client,
    /// The server's: unreachable, refusing, gone.
    Server,
    /// The pooler's own: shutting down, killed by an admin, a limit of its configuration.
    Internal,
}

/// Whether the same request may succeed if tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Nothing of the request reached a server: pgsluice runs it on another one, unseen by the
    /// client (a reused server found dead at checkout, before any byte is written; see
    /// `pool/checkout.rs`).
    Transparent,
    /// The client may try again later: the cause may pass (a server restarting, a full pool).
    Later,
    /// It will fail the same way.
    Never,
}

/// A failure told to the client as an ErrorResponse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientError {
    pub severity: Severity,
    pub code: Cow<'static, str>,
    /// Client-safe: PostgreSQL's or PgBouncer's words where clients and tools match on them.
    pub message: Cow<'static, str>,
    pub detail: Option<Cow<'static, str>>,
    pub side: Side,
    pub retry: Retry,
}

impl ClientError {
    /// An error that ends the session (FATAL).
    pub fn fatal(code: &'static str, message: impl Into<Cow<'static, str>>, side: Side) -> Self {
        Self {
            severity: Severity::Fatal,
            code: Cow::Borrowed(code),
            message: message.into(),
            detail: None,
            side,
            retry: Retry::Never,
        }
    }

    /// An error the session survives (ERROR, followed by ReadyForQuery).
    pub fn error(code: &'static str, message: impl Into<Cow<'static, str>>, side: Side) -> Self {
        Self {
            severity: Severity::Error,
            ..Self::fatal(code, message, side)
        }
    }

    /// The client sent what the protocol does not allow (08P01); it is closed.
    pub fn protocol_violation(message: impl Into<Cow<'static, str>>) -> Self {
        Self::fatal(sqlstate::PROTOCOL_VIOLATION, message, Side::Client)
    }

    pub fn with_code(mut self, code: impl Into<Cow<'static, str>>) -> Self {
        self.code = code.into();
        self
    }

    pub fn with_detail(mut self, detail: impl Into<Cow<'static, str>>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn with_retry(mut self, retry: Retry) -> Self {
        self.retry = retry;
        self
    }

    /// The same error with the other severity: FATAL where the session cannot go on, ERROR where
    /// it can.
    pub fn with_severity(mut self, severity: Severity) -> Self {
        self.severity = severity;
        self
    }

    /// Appends the ErrorResponse.
    pub fn encode(&self, out: &mut BytesMut) {
        encode::error_response(
            out,
            self.severity,
            &self.code,
            &self.message,
            self.detail.as_deref(),
        );
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

/// Why a client's session ended: the disconnect log line, and the kind metrics count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disconnect {
    /// Terminate, or the socket closed between requests.
    ClientClose,
    /// The socket closed or failed in the middle of something.
    ClientEof,
    ClientIdleTimeout,
    /// The client broke the protocol; the text says how.
    ClientProtocol(String),
    /// A server was needed and could not be had; the text is the log's (it may name the server).
    PoolerError(String),
    /// The server died where the client could not be kept (in a transaction, in session mode, or
    /// mid-message).
    ServerLost,
    /// The server broke the protocol.
    ServerProtocol(String),
    /// The client's parameters could not be applied on the server it was given.
    ServerParameterSync,
    TransactionInStatementMode,
    QueryTimeout,
    IdleTransactionTimeout,
    Shutdown,
    AdminKill,
}

impl Disconnect {
    /// Every kind, for metrics that start at zero.
    pub const KINDS: [&'static str; 13] = [
        "client_close",
        "client_eof",
        "client_idle_timeout",
        "client_protocol",
        "pooler_error",
        "server_lost",
        "server_protocol",
        "server_parameter_sync",
        "transaction_in_statement_mode",
        "query_timeout",
        "idle_transaction_timeout",
        "shutdown",
        "admin_kill",
    ];

    /// The kind, as a metrics label (one of [`Disconnect::KINDS`]).
    pub fn kind(&self) -> &'static str {
        match self {
            Disconnect::ClientClose => "client_close",
            Disconnect::ClientEof => "client_eof",
            Disconnect::ClientIdleTimeout => "client_idle_timeout",
            Disconnect::ClientProtocol(_) => "client_protocol",
            Disconnect::PoolerError(_) => "pooler_error",
            Disconnect::ServerLost => "server_lost",
            Disconnect::ServerProtocol(_) => "server_protocol",
            Disconnect::ServerParameterSync => "server_parameter_sync",
            Disconnect::TransactionInStatementMode => "transaction_in_statement_mode",
            Disconnect::QueryTimeout => "query_timeout",
            Disconnect::IdleTransactionTimeout => "idle_transaction_timeout",
            Disconnect::Shutdown => "shutdown",
            Disconnect::AdminKill => "admin_kill",
        }
    }
}

/// PgBouncer's wording of its disconnect lines where it has one.
impl fmt::Display for Disconnect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Disconnect::ClientClose => f.write_str("client close request"),
            Disconnect::ClientEof => f.write_str("client unexpected eof"),
            Disconnect::ClientIdleTimeout => f.write_str("client_idle_timeout"),
            Disconnect::ClientProtocol(e) => write!(f, "client protocol violation: {e}"),
            Disconnect::PoolerError(e) => write!(f, "pooler error: {e}"),
            Disconnect::ServerLost => f.write_str("server connection lost"),
            Disconnect::ServerProtocol(e) => write!(f, "server protocol violation: {e}"),
            Disconnect::ServerParameterSync => f.write_str("server parameter sync failed"),
            Disconnect::TransactionInStatementMode => {
                f.write_str("transaction blocks not allowed in statement pooling mode")
            }
            Disconnect::QueryTimeout => f.write_str("query_timeout"),
            Disconnect::IdleTransactionTimeout => f.write_str("idle_transaction_timeout"),
            Disconnect::Shutdown => f.write_str("pooler shutdown"),
            Disconnect::AdminKill => f.write_str("admin forced disconnect"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::backend::error_fields;

    #[test]
    fn encodes_what_it_holds_and_nothing_else() {
        let e = ClientError::error(
            sqlstate::CONNECTION_FAILURE,
            "server connection lost",
            Side::Server,
        )
        .with_detail("terminating connection due to administrator command");
        let mut out = BytesMut::new();
        e.encode(&mut out);
        assert_eq!(out[0], b'E');
        let f = error_fields(&out[5..]).unwrap();
        assert_eq!(
            (f.severity, f.code, f.message),
            ("ERROR", "08006", "server connection lost")
        );
        assert!(
            out.windows(14).any(|w| w == b"administrator "),
            "the detail is sent"
        );
        assert_eq!(
            e.retry,
            Retry::Never,
            "errors are not retried unless said so"
        );
    }

    #[test]
    fn every_disconnect_has_a_listed_kind() {
        let all = [
            Disconnect::ClientClose,
            Disconnect::ClientEof,
            Disconnect::ClientIdleTimeout,
            Disconnect::ClientProtocol(String::new()),
            Disconnect::PoolerError(String::new()),
            Disconnect::ServerLost,
            Disconnect::ServerProtocol(String::new()),
            Disconnect::ServerParameterSync,
            Disconnect::TransactionInStatementMode,
            Disconnect::QueryTimeout,
            Disconnect::IdleTransactionTimeout,
            Disconnect::Shutdown,
            Disconnect::AdminKill,
        ];
        let kinds: Vec<&str> = all.iter().map(Disconnect::kind).collect();
        assert_eq!(kinds, Disconnect::KINDS);
    }
}
