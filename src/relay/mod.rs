//! The hot loop between one client and the server it holds.
//!
//! Bytes are forwarded as they arrive and are never re-encoded: each direction reads into its buffer,
//! the scanner finds frame boundaries (holding only the few frames the pooler must inspect), and the
//! forwardable prefix is split off (no copy) and written. A direction reads again only when its previous
//! bytes are written, which gives back-pressure without ever blocking the other direction. Every call
//! inside the `select!` is cancel-safe (`read_buf`, `write_buf`, `flush`), so no byte is lost when
//! another branch wins. A TLS stream may accept bytes into a buffer of its own that the socket had no
//! room for: a direction whose buffer is written out is flushed before the relay counts it done.

use crate::backend::params::ParamSet;
use crate::backend::Server;
use crate::config::PoolMode;
use crate::net::stream::{Stream, WriteHalf};
use crate::pool::PoolStats;
use crate::prepared::tracker::{Ctx, Tracker};
use crate::prepared::{ClientState, PreparedStats, Registry, ServerStatements};
use crate::proto::scan::Scanner;
use crate::proto::tx::TxTracker;
use crate::proto::ProtoError;
use bytes::BytesMut;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
    /// `message` is the server's error text, if it sent one; `in_transaction` says the client was
    /// inside a transaction block, which is lost with the server.
    ServerLost {
        in_flight: u32,
        message: Option<String>,
        in_transaction: bool,
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
    /// Set in transaction and statement mode when prepared statements are tracked.
    pub prepared: Option<Prepared<'a>>,
}

/// What the relay needs to track a client's prepared statements.
#[derive(Debug)]
pub struct Prepared<'a> {
    pub registry: &'a Registry,
    /// The client's statements, tracker and buffers, kept across attachments.
    pub state: &'a mut ClientState,
    pub stats: &'a PreparedStats,
    /// The statements this pool's servers have accepted.
    pub accepted: &'a crate::prepared::local::Accepted,
    /// `max_prepared_statements`.
    pub capacity: usize,
    /// `max_held_message`.
    pub max_held: usize,
    /// `max_client_statements`, `max_client_statement_bytes`.
    pub limits: crate::prepared::ClientLimits,
}

type Tracking<'a> = Prepared<'a>;

impl Prepared<'_> {
    /// The tracker, its context, and the replacement and local buffers, borrowed apart.
    fn parts<'b>(
        &'b mut self,
        server: &'b mut ServerStatements,
    ) -> (Ctx<'b>, &'b mut Tracker, &'b mut BytesMut, &'b mut BytesMut) {
        let state = &mut *self.state;
        (
            Ctx {
                registry: self.registry,
                client: &mut state.statements,
                server,
                stats: self.stats,
                accepted: self.accepted,
                capacity: self.capacity,
                max_held: self.max_held,
                limits: self.limits,
            },
            &mut state.tracker,
            &mut state.replacement,
            &mut state.local,
        )
    }

    /// The same, for a new server attachment.
    fn attached(self) -> Self {
        self.state.begin_attachment();
        self
    }

    fn tracker(&self) -> &Tracker {
        &self.state.tracker
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub query: Option<Duration>,
    pub idle_transaction: Option<Duration>,
}

/// What one attachment keeps track of: the transaction (sans-IO, [`TxTracker`]), how it must end,
/// and the traffic counters.
#[derive(Debug)]
struct Track<'s> {
    tx: TxTracker,
    mode: PoolMode,
    terminated: bool,
    statement_violation: bool,
    /// Since when the server has owed nothing (for `idle_transaction_timeout`); the start of the
    /// request in flight is the counters' (`Counts::busy_since`).
    idle_since: Instant,
    counts: Counts,
    /// The pool's counters, which `counts` are added to.
    stats: &'s PoolStats,
}

impl Drop for Track<'_> {
    fn drop(&mut self) {
        self.counts.add_to(self.stats);
    }
}

impl<'s> Track<'s> {
    fn clean(&self, client: &Scanner, server: &Scanner) -> bool {
        self.tx.is_clean() && client.at_boundary() && server.at_boundary()
    }

    /// `read`: what the session read before attaching (the start of the request), the client's
    /// too; a relay is released only with nothing left over, so none of it was counted before.
    fn new(stats: &'s PoolStats, mode: PoolMode, read: usize) -> Self {
        let mut t = Track {
            tx: TxTracker::default(),
            mode,
            terminated: false,
            statement_violation: false,
            idle_since: Instant::now(),
            counts: Counts::default(),
            stats,
        };
        t.counts.received += read as u64;
        t
    }

    /// With everything written, whether the attachment ends and how. `client_idle`: the client has
    /// nothing buffered and the statement tracker owes nothing.
    fn ending(
        &self,
        server_error: &mut Option<String>,
        cscan: &Scanner,
        sscan: &Scanner,
        client_idle: bool,
    ) -> Option<Outcome> {
        if self.terminated {
            return Some(Outcome::ClientGone {
                clean: self.clean(cscan, sscan),
            });
        }
        if server_error.is_some() {
            return Some(self.server_lost(server_error.take()));
        }
        if self.statement_violation {
            return Some(Outcome::TransactionInStatementMode);
        }
        // A frame the client has begun keeps the server: released now, the session would see the
        // request start and take a server again before reading the rest of it.
        (self.mode != PoolMode::Session && self.clean(cscan, sscan) && client_idle)
            .then_some(Outcome::Released)
    }

    /// Adds the counts to the pool's once a transaction has ended, so the shared counters are
    /// written once per transaction, not per message.
    fn add_ended_transactions(&mut self) {
        if self.counts.xacts != 0 {
            self.counts.add_to(self.stats);
        }
    }

    /// The timeout due now, if one is configured: the query's while a request is owed, the idle
    /// transaction's inside a block.
    fn deadline(&self, timeouts: Timeouts) -> Option<(Instant, Expiry)> {
        if self.tx.pending() > 0 {
            timeouts
                .query
                .zip(self.counts.busy_since())
                .map(|(d, s)| (s + d, Expiry::Query))
        } else if self.tx.in_transaction() {
            timeouts
                .idle_transaction
                .map(|d| (self.idle_since + d, Expiry::IdleTransaction))
        } else {
            None
        }
    }

    /// The server is gone; `message` is its FATAL error's text, if it sent one.
    fn server_lost(&self, message: Option<String>) -> Outcome {
        Outcome::ServerLost {
            in_flight: self.tx.pending(),
            message,
            in_transaction: self.tx.in_transaction(),
        }
    }
}

/// Relays until the server can be released or something ends the attachment.
pub async fn run(
    client: ClientSide<'_>,
    server: &mut Server,
    stats: &PoolStats,
    mode: PoolMode,
    timeouts: Timeouts,
    stop: impl Future<Output = ()>,
) -> Result<Outcome, RelayError> {
    let ClientSide {
        stream: cstream,
        buf: cbuf,
        scanner: cscan,
        params,
        tracked,
        prepared,
    } = client;
    let mut tracking = prepared.map(Prepared::attached);
    let mut sscan = Scanner::default();
    let mut t = Track::new(stats, mode, cbuf.len());
    let mut to_client = BytesMut::new();
    let mut to_server = scan_client(
        cbuf,
        cscan,
        &mut t,
        tracking.as_mut(),
        &mut server.statements,
        &mut to_client,
    )?;
    let (mut cread, mut cwrite) = cstream.split();
    let (mut sread, mut swrite) = server.stream.split();
    // Written bytes a TLS stream may still hold (see the module comment).
    let (mut server_unflushed, mut client_unflushed) = (false, false);
    let mut server_error: Option<String> = None;
    let mut timer: Option<Pin<Box<Sleep>>> = None;
    tokio::pin!(stop);
    loop {
        reuse_request_buffer(cbuf, &mut to_server);
        if to_server.is_empty() && to_client.is_empty() && !server_unflushed && !client_unflushed {
            // Everything is written: the attachment may end here.
            let client_idle =
                cbuf.is_empty() && tracking.as_ref().is_none_or(|k| k.tracker().is_idle());
            if let Some(end) = t.ending(&mut server_error, cscan, &sscan, client_idle) {
                return Ok(end);
            }
        }
        let deadline = t.deadline(timeouts);
        arm(&mut timer, deadline);
        ensure_room(cbuf, cscan, to_server.is_empty());
        ensure_room(&mut server.rbuf, &sscan, to_client.is_empty());
        tokio::select! {
            biased;
            r = write_or_flush(&mut swrite, &mut to_server), if !to_server.is_empty() || server_unflushed => {
                match r {
                    Ok(flushed) => server_unflushed = !flushed && swrite.buffers(),
                    // An OS error is for the log; the client hears only that the server is gone.
                    Err(e) => return server_gone(&t, &sscan, Some(e)),
                }
            }
            r = write_or_flush(&mut cwrite, &mut to_client), if !to_client.is_empty() || client_unflushed => {
                client_unflushed = !r.map_err(RelayError::ClientIo)? && cwrite.buffers();
            }
            r = sread.read_buf(&mut server.rbuf), if to_client.is_empty() && server_error.is_none() => {
                match r {
                    Ok(0) | Err(_) => return server_gone(&t, &sscan, None),
                    Ok(n) => {
                        t.counts.sent += n as u64;
                        let mut p = Params { server: &mut server.params, client: params, tracked };
                        // Read only while no FATAL is held: `server_error` was None.
                        (to_client, server_error) = scan_server(&mut server.rbuf, &mut sscan, &mut t, &mut p, tracking.as_mut(), &mut server.statements, &mut to_server)?;
                        t.add_ended_transactions();
                    }
                }
            }
            r = cread.read_buf(cbuf), if to_server.is_empty() && !t.terminated && !tracking.as_ref().is_some_and(|k| k.tracker().holds_client()) => {
                match r {
                    Ok(0) | Err(_) => return Ok(Outcome::ClientGone { clean: t.clean(cscan, &sscan) && to_server.is_empty() }),
                    Ok(n) => to_server = {
                        t.counts.received += n as u64;
                        scan_client(cbuf, cscan, &mut t, tracking.as_mut(), &mut server.statements, &mut to_client)?
                    },
                }
            }
            () = async { if let Some(t) = timer.as_mut() { t.as_mut().await } }, if deadline.is_some() => {
                return Ok(deadline.map_or(Outcome::QueryTimeout, |(_, e)| e.outcome()));
            }
            () = &mut stop => return Ok(Outcome::Shutdown),
        }
    }
}

/// When the request moved to `to_server` whole (`take_front`) and is written out, its buffer takes
/// the client's next bytes.
fn reuse_request_buffer(cbuf: &mut BytesMut, to_server: &mut BytesMut) {
    if cbuf.capacity() == 0 && to_server.is_empty() {
        std::mem::swap(cbuf, to_server);
    }
}

/// Writes what `buf` holds, or flushes the stream once it is all written: returns whether it
/// flushed. Either step is cancel-safe.
async fn write_or_flush(w: &mut WriteHalf<'_>, buf: &mut BytesMut) -> std::io::Result<bool> {
    if buf.is_empty() {
        w.flush().await?;
        Ok(true)
    } else {
        w.write_buf(buf).await?;
        Ok(false)
    }
}

/// Least room a read is given, and the room while a frame streams through.
const READ_ROOM: usize = 512;
const STREAM_READ_ROOM: usize = 64 * 1024;

/// Makes room for the next read into `buf`, once the direction's bytes are all `written` (only then
/// does it read). `read_buf` alone reserves 64 bytes in a full buffer, and a buffer it reclaims can
/// stay that small: a large message then arrives 64 bytes per read, a syscall, a scan and a write
/// each (tens of seconds for 64 MiB, depending on how reads happened to split). While a frame
/// streams through (`scanner` mid-frame), reads are large; otherwise the buffer in hand is reused
/// as it is.
fn ensure_room(buf: &mut BytesMut, scanner: &Scanner, written: bool) {
    if !written {
        return;
    }
    let want = if scanner.at_boundary() {
        READ_ROOM
    } else {
        STREAM_READ_ROOM
    };
    if buf.capacity() - buf.len() < want {
        buf.reserve(want);
    }
}

#[derive(Debug, Clone, Copy)]
enum Expiry {
    Query,
    IdleTransaction,
}

impl Expiry {
    fn outcome(self) -> Outcome {
        match self {
            Expiry::Query => Outcome::QueryTimeout,
            Expiry::IdleTransaction => Outcome::IdleTransactionTimeout,
        }
    }
}

/// Arms the timer for `deadline`: only when a timeout is configured and due, and again only when
/// its deadline moves, so no timer work is done per message otherwise.
fn arm(timer: &mut Option<Pin<Box<Sleep>>>, deadline: Option<(Instant, Expiry)>) {
    let Some((at, _)) = deadline else { return };
    match timer.as_mut() {
        Some(sleep) if sleep.deadline() == at => {}
        Some(sleep) => sleep.as_mut().reset(at),
        None => *timer = Some(Box::pin(sleep_until(at))),
    }
}

/// The server closed or failed (`error`, for the log): lost, or, mid-message, a client that cannot
/// be resynchronised.
fn server_gone(
    t: &Track<'_>,
    sscan: &Scanner,
    error: Option<std::io::Error>,
) -> Result<Outcome, RelayError> {
    if let Some(e) = error {
        tracing::debug!(error = %e, "write to server failed");
    }
    if !sscan.at_boundary() {
        return Err(RelayError::ServerLostMidMessage);
    }
    Ok(t.server_lost(None))
}

/// Notes a request forwarded to the server in the transaction bookkeeping.
fn note_request(t: &mut Track<'_>, tag: u8) {
    if t.tx.on_client(tag) {
        t.counts.request_started(Instant::now());
    }
}

mod client;
mod counts;
mod server;

use client::scan_client;
use counts::Counts;
use server::{scan_server, Params};
