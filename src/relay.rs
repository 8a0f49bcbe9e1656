//! The hot loop between one client and the server it holds.
//!
//! Bytes are forwarded as they arrive and are never re-encoded: each direction reads into its buffer,
//! the scanner finds frame boundaries (holding only the few frames the pooler must inspect), and the
//! forwardable prefix is split off (no copy) and written. A direction reads again only when its previous
//! bytes are written, which gives back-pressure without ever blocking the other direction. Every call
//! inside the `select!` is cancel-safe (`read_buf`, `write_buf`), so no byte is lost when another branch
//! wins.

use crate::backend::params::ParamSet;
use crate::backend::Server;
use crate::config::PoolMode;
use crate::net::stream::Stream;
use crate::proto::backend as msg;
use crate::proto::scan::{Event, Scanner};
use crate::proto::ProtoError;
use crate::shutdown::Phase;
use bytes::BytesMut;
use std::pin::Pin;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant, Sleep};

/// Why the relay handed control back.
#[derive(Debug)]
pub enum Outcome {
    /// The server is idle and clean (ReadyForQuery `I`, nothing outstanding): release it.
    Released,
    /// The client sent Terminate or closed; `clean` says whether the server is idle and clean.
    ClientGone {
        clean: bool,
    },
    /// The server closed or sent a FATAL error. `in_flight` requests are still owed a reply;
    /// `message` is the server's error text, if it sent one.
    ServerLost {
        in_flight: u32,
        message: Option<String>,
    },
    /// A multi-statement transaction in statement mode.
    TransactionInStatementMode,
    QueryTimeout,
    IdleTransactionTimeout,
    /// Shutdown says close now.
    Shutdown,
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("client: {0}")]
    ClientIo(std::io::Error),
    #[error("client protocol violation: {0}")]
    ClientProto(ProtoError),
    #[error("server protocol violation: {0}")]
    ServerProto(ProtoError),
    /// The server failed while a frame was half-forwarded to the client: the client's stream cannot
    /// be resynchronised and must be closed.
    #[error("server connection lost mid-message")]
    ServerLostMidMessage,
}

/// The client's half of the relay: its stream, its read buffer and its scanner state, which outlive
/// one server attachment.
#[derive(Debug)]
pub struct ClientSide<'a> {
    pub stream: &'a mut Stream,
    pub buf: &'a mut BytesMut,
    pub scanner: &'a mut Scanner,
    pub params: &'a mut ParamSet,
    pub tracked: &'a [String],
}

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub query: Option<Duration>,
    pub idle_transaction: Option<Duration>,
}

/// Transaction bookkeeping for one attachment.
#[derive(Debug)]
struct Track {
    /// Requests (Query, Sync, FunctionCall) forwarded and not yet answered with ReadyForQuery.
    pending: u32,
    /// Extended-protocol messages forwarded since the last Sync: the server is not free yet.
    unsynced: bool,
    status: u8,
    terminated: bool,
    statement_violation: bool,
    busy_since: Option<Instant>,
    idle_since: Instant,
}

impl Track {
    fn clean(&self, client: &Scanner, server: &Scanner) -> bool {
        self.pending == 0
            && !self.unsynced
            && self.status == b'I'
            && client.at_boundary()
            && server.at_boundary()
    }
}

fn client_inspects(tag: u8) -> bool {
    tag == b'X'
}

fn server_inspects(tag: u8) -> bool {
    matches!(tag, b'Z' | b'S' | b'E')
}

/// Relays until the server can be released or something ends the attachment.
pub async fn run(
    client: ClientSide<'_>,
    server: &mut Server,
    mode: PoolMode,
    timeouts: Timeouts,
    shutdown: &mut watch::Receiver<Phase>,
) -> Result<Outcome, RelayError> {
    let ClientSide {
        stream: cstream,
        buf: cbuf,
        scanner: cscan,
        params,
        tracked,
    } = client;
    let mut sscan = Scanner::default();
    let mut t = Track {
        pending: 0,
        unsynced: false,
        status: b'I',
        terminated: false,
        statement_violation: false,
        busy_since: None,
        idle_since: Instant::now(),
    };
    let mut to_server = scan_client(cbuf, cscan, &mut t)?;
    let (mut cread, mut cwrite) = cstream.split();
    let (mut sread, mut swrite) = server.stream.split();
    let mut to_client = BytesMut::new();
    let mut server_error: Option<String> = None;
    let mut timer: Option<Pin<Box<Sleep>>> = None;
    let stop = crate::shutdown::reached(shutdown, Phase::Immediate);
    tokio::pin!(stop);
    loop {
        if to_server.is_empty() && to_client.is_empty() {
            if t.terminated {
                return Ok(Outcome::ClientGone {
                    clean: t.clean(cscan, &sscan),
                });
            }
            if server_error.is_some() {
                return Ok(Outcome::ServerLost {
                    in_flight: t.pending,
                    message: server_error,
                });
            }
            if t.statement_violation {
                return Ok(Outcome::TransactionInStatementMode);
            }
            if mode != PoolMode::Session && t.clean(cscan, &sscan) {
                return Ok(Outcome::Released);
            }
        }
        let deadline = if t.pending > 0 {
            timeouts
                .query
                .zip(t.busy_since)
                .map(|(d, s)| (s + d, Expiry::Query))
        } else if t.status != b'I' {
            timeouts
                .idle_transaction
                .map(|d| (t.idle_since + d, Expiry::IdleTransaction))
        } else {
            None
        };
        // The timer is armed only when a timeout is configured and due, and re-armed only when
        // its deadline moves: no timer work per message otherwise.
        if let Some((at, _)) = deadline {
            match timer.as_mut() {
                Some(sleep) if sleep.deadline() == at => {}
                Some(sleep) => sleep.as_mut().reset(at),
                None => timer = Some(Box::pin(sleep_until(at))),
            }
        }
        tokio::select! {
            biased;
            r = swrite.write_buf(&mut to_server), if !to_server.is_empty() => {
                if let Err(e) = r {
                    return server_gone(&t, Some(e.to_string()), &sscan);
                }
            }
            r = cwrite.write_buf(&mut to_client), if !to_client.is_empty() => {
                r.map_err(RelayError::ClientIo)?;
            }
            r = sread.read_buf(&mut server.rbuf), if to_client.is_empty() && server_error.is_none() => {
                match r {
                    Ok(0) | Err(_) => return server_gone(&t, None, &sscan),
                    Ok(_) => {
                        let fatal;
                        (to_client, fatal) = scan_server(&mut server.rbuf, &mut sscan, &mut t, &mut server.params, params, tracked, mode)?;
                        if let Some(m) = fatal {
                            server_error = Some(m);
                        }
                    }
                }
            }
            r = cread.read_buf(cbuf), if to_server.is_empty() && !t.terminated => {
                match r {
                    Ok(0) | Err(_) => return Ok(Outcome::ClientGone { clean: t.clean(cscan, &sscan) && to_server.is_empty() }),
                    Ok(_) => to_server = scan_client(cbuf, cscan, &mut t)?,
                }
            }
            () = async { if let Some(t) = timer.as_mut() { t.as_mut().await } }, if deadline.is_some() => {
                return Ok(match deadline {
                    Some((_, Expiry::Query)) => Outcome::QueryTimeout,
                    _ => Outcome::IdleTransactionTimeout,
                });
            }
            () = &mut stop => return Ok(Outcome::Shutdown),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Expiry {
    Query,
    IdleTransaction,
}

fn server_gone(t: &Track, message: Option<String>, sscan: &Scanner) -> Result<Outcome, RelayError> {
    if !sscan.at_boundary() {
        return Err(RelayError::ServerLostMidMessage);
    }
    Ok(Outcome::ServerLost {
        in_flight: t.pending,
        message,
    })
}

/// Scans what the client sent and splits off the bytes to forward.
fn scan_client(
    cbuf: &mut BytesMut,
    cscan: &mut Scanner,
    t: &mut Track,
) -> Result<BytesMut, RelayError> {
    let mut terminate_len = 0;
    let scanned = cscan
        .scan(cbuf, client_inspects, |e| match e {
            Event::Whole { tag: b'X', body } => {
                terminate_len = 5 + body.len();
                t.terminated = true;
                false
            }
            Event::Whole { tag, .. } | Event::Passing { tag } => {
                match tag {
                    b'Q' | b'S' | b'F' => {
                        if t.pending == 0 {
                            t.busy_since = Some(Instant::now());
                        }
                        t.pending += 1;
                        t.unsynced = false;
                    }
                    // Copy data belongs to the Query that started the copy.
                    b'd' | b'c' | b'f' | b'H' => {}
                    _ => t.unsynced = true,
                }
                true
            }
        })
        .map_err(RelayError::ClientProto)?;
    let out = cbuf.split_to(scanned.forward - terminate_len);
    if terminate_len > 0 {
        let _ = cbuf.split_to(terminate_len);
    }
    Ok(out)
}

/// Scans what the server sent, updates the bookkeeping and splits off the bytes for the client.
/// A FATAL ErrorResponse is held back (the caller reports the lost server its own way) and returned.
#[allow(clippy::too_many_arguments)]
fn scan_server(
    rbuf: &mut BytesMut,
    sscan: &mut Scanner,
    t: &mut Track,
    params: &mut ParamSet,
    client_params: &mut ParamSet,
    tracked: &[String],
    mode: PoolMode,
) -> Result<(BytesMut, Option<String>), RelayError> {
    let mut fatal: Option<(String, usize)> = None;
    let mut bad: Option<ProtoError> = None;
    let scanned = sscan
        .scan(rbuf, server_inspects, |e| {
            if let Event::Whole { tag, body } = e {
                match tag {
                    b'Z' => match msg::ready_for_query(body) {
                        Ok(s) => {
                            t.status = s;
                            t.pending = t.pending.saturating_sub(1);
                            if t.pending == 0 {
                                t.busy_since = None;
                                t.idle_since = Instant::now();
                            }
                            // Statement mode stops here so the caller can refuse the transaction.
                            if mode == PoolMode::Statement && s != b'I' {
                                t.statement_violation = true;
                                return false;
                            }
                        }
                        Err(e) => bad = Some(e),
                    },
                    b'S' => match msg::parameter_status(body) {
                        Ok((k, v)) => {
                            params.set(k, v);
                            if tracked.iter().any(|n| n.eq_ignore_ascii_case(k)) {
                                client_params.set(k, v);
                            }
                        }
                        Err(e) => bad = Some(e),
                    },
                    b'E' => {
                        if let Ok(f) = msg::error_fields(body) {
                            if f.is_fatal() {
                                fatal = Some((f.message.to_owned(), 5 + body.len()));
                                return false;
                            }
                        }
                    }
                    _ => {}
                }
            }
            bad.is_none()
        })
        .map_err(RelayError::ServerProto)?;
    if let Some(e) = bad {
        return Err(RelayError::ServerProto(e));
    }
    match fatal {
        Some((message, len)) => {
            let out = rbuf.split_to(scanned.forward - len);
            rbuf.clear();
            Ok((out, Some(message)))
        }
        None => Ok((rbuf.split_to(scanned.forward), None)),
    }
}
