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
use crate::prepared::tracker::{ClientAction, Ctx, HeadAction, Tracker};
use crate::prepared::{ClientState, PreparedStats, Registry, ServerStatements};
use crate::proto::backend as msg;
use crate::proto::copy_in::CopyInSyncs;
use crate::proto::scan::{Event, Inspect, Scanner};
use crate::proto::ProtoError;
use bytes::{Buf, BytesMut};
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
    /// `max_prepared_statements`.
    pub capacity: usize,
    /// `max_held_message`.
    pub max_held: usize,
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
                capacity: self.capacity,
                max_held: self.max_held,
            },
            &mut state.tracker,
            &mut state.replacement,
            &mut state.local,
        )
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
    /// A timeout is configured: only then are `busy_since` and `idle_since` kept (a clock read each).
    timed: bool,
    /// Syncs sent into a copy-in are ignored by the server: no ReadyForQuery for them.
    copy: CopyInSyncs,
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

fn client_inspects(tag: u8, _total: usize) -> bool {
    tag == b'X'
}

fn server_inspects(tag: u8, _total: usize) -> bool {
    matches!(tag, b'Z' | b'S' | b'E')
}

/// Relays until the server can be released or something ends the attachment.
pub async fn run(
    client: ClientSide<'_>,
    server: &mut Server,
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
    let mut tracking = prepared;
    if let Some(k) = tracking.as_mut() {
        k.state.begin_attachment();
    }
    let mut sscan = Scanner::default();
    let mut t = Track {
        pending: 0,
        unsynced: false,
        status: b'I',
        terminated: false,
        statement_violation: false,
        busy_since: None,
        idle_since: Instant::now(),
        timed: timeouts.query.is_some() || timeouts.idle_transaction.is_some(),
        copy: CopyInSyncs::default(),
    };
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
    let mut server_error: Option<String> = None;
    let mut timer: Option<Pin<Box<Sleep>>> = None;
    tokio::pin!(stop);
    loop {
        if cbuf.capacity() == 0 && to_server.is_empty() {
            // The request moved to `to_server` whole (`take_front`); its buffer, written out,
            // takes the client's next bytes.
            std::mem::swap(cbuf, &mut to_server);
        }
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
            // A frame the client has begun keeps the server: released now, the session would see
            // the request start and take a server again before reading the rest of it.
            if mode != PoolMode::Session
                && t.clean(cscan, &sscan)
                && cbuf.is_empty()
                && tracking.as_ref().is_none_or(|k| k.tracker().is_idle())
            {
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
                        (to_client, fatal) = scan_server(&mut server.rbuf, &mut sscan, &mut t, &mut server.params, params, tracked, mode, tracking.as_mut(), &mut server.statements, &mut to_server)?;
                        if let Some(m) = fatal {
                            server_error = Some(m);
                        }
                    }
                }
            }
            r = cread.read_buf(cbuf), if to_server.is_empty() && !t.terminated && !tracking.as_ref().is_some_and(|k| k.tracker().holds_client()) => {
                match r {
                    Ok(0) | Err(_) => return Ok(Outcome::ClientGone { clean: t.clean(cscan, &sscan) && to_server.is_empty() }),
                    Ok(_) => to_server = scan_client(cbuf, cscan, &mut t, tracking.as_mut(), &mut server.statements, &mut to_client)?,
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

/// Notes a request forwarded to the server in the transaction bookkeeping.
fn note_request(t: &mut Track, tag: u8) {
    if !t.copy.on_client(tag) {
        return;
    }
    match tag {
        b'Q' | b'S' | b'F' => {
            if t.pending == 0 && t.timed {
                t.busy_since = Some(Instant::now());
            }
            t.pending += 1;
            t.unsynced = false;
        }
        // Copy data belongs to the Query that started the copy.
        b'd' | b'c' | b'f' | b'H' => {}
        _ => t.unsynced = true,
    }
}

/// How much of a large frame's body a tracked client's scan holds: enough for a Bind's portal and
/// statement names, or a Parse's statement name.
const HEAD: usize = crate::config::MIN_HELD_MESSAGE;

/// What a tracked client's frames need: whole, those that name statements, Terminate, the small
/// ones a batch may be replayed with (Execute, Flush, Sync), and queries short enough to be a
/// DEALLOCATE or DISCARD ALL; every frame while the tracker `hold`s the client's messages. Nothing
/// over `max_held` is held whole: of a Parse or Bind (or anything held) only the head is read, and
/// the scanner refuses the rest (a Describe or Close that large is no real one).
fn tracked_client_inspects(tag: u8, total: usize, hold: bool, max_held: usize) -> Inspect {
    let whole = hold
        || match tag {
            b'P' | b'B' | b'D' | b'C' | b'X' => true,
            b'E' | b'H' | b'S' => total <= 64,
            b'Q' => total <= 256,
            _ => false,
        };
    if !whole {
        Inspect::Pass
    } else if total <= max_held {
        Inspect::Whole
    } else if hold || matches!(tag, b'P' | b'B') {
        Inspect::Head(HEAD)
    } else {
        Inspect::Whole
    }
}

/// Scans what the client sent and splits off the bytes to forward. With prepared statements
/// tracked, frames the tracker rewrites or answers are cut out and its bytes put in their place;
/// its own replies go to `to_client`.
fn scan_client(
    cbuf: &mut BytesMut,
    cscan: &mut Scanner,
    t: &mut Track,
    tracking: Option<&mut Tracking<'_>>,
    server_statements: &mut ServerStatements,
    to_client: &mut BytesMut,
) -> Result<BytesMut, RelayError> {
    let Some(k) = tracking else {
        return scan_client_plain(cbuf, cscan, t);
    };
    let mut out = BytesMut::new();
    loop {
        // Length of a frame (or a frame's head) at the end of the scanned bytes that must not be
        // forwarded as is.
        let mut cut: Option<usize> = None;
        let mut bad: Option<ProtoError> = None;
        // The rest of the frame whose head was cut goes nowhere.
        let mut discard = false;
        // While the tracker holds messages it needs every frame whole.
        let hold = std::cell::Cell::new(k.tracker().holds_client());
        let max_held = k.max_held;
        let scanned = cscan
            .scan(
                cbuf,
                |tag, total| tracked_client_inspects(tag, total, hold.get(), max_held),
                |e| {
                    let (tag, body) = match e {
                        Event::Whole { tag, body } => (tag, Some(body)),
                        Event::Passing { tag } => (tag, None),
                        Event::Head { tag, head, total } => {
                            let (mut ctx, tracker, replacement, _) = k.parts(server_statements);
                            let r = tracker.on_client_head(
                                tag,
                                head,
                                total,
                                &mut ctx,
                                replacement,
                                to_client,
                            );
                            hold.set(tracker.holds_client());
                            let replaced = !replacement.is_empty();
                            return match r {
                                Ok(HeadAction::Forward) => {
                                    note_request(t, tag);
                                    true
                                }
                                Ok(a) => {
                                    if replaced {
                                        note_request(t, tag);
                                    }
                                    discard = a == HeadAction::Discard;
                                    cut = Some(5 + head.len());
                                    false
                                }
                                Err(e) => {
                                    bad = Some(e);
                                    false
                                }
                            };
                        }
                    };
                    let len = body.map(|b| 5 + b.len());
                    if tag == b'X' {
                        t.terminated = true;
                        cut = len;
                        return false;
                    }
                    let (mut ctx, tracker, replacement, _) = k.parts(server_statements);
                    let r = tracker.on_client(tag, body, &mut ctx, replacement, to_client);
                    hold.set(tracker.holds_client());
                    match r {
                        Ok(ClientAction::Forward) => {
                            note_request(t, tag);
                            true
                        }
                        // A frame streaming through cannot be cut; the tracker drops one only while
                        // the server skips to Sync, which ignores it anyway.
                        Ok(ClientAction::Replace) if len.is_none() => true,
                        Ok(ClientAction::Replace) => {
                            if !k.state.replacement.is_empty() {
                                note_request(t, tag);
                            }
                            cut = len;
                            false
                        }
                        // Held frames count as sent: they go to the server when the hold ends.
                        Ok(ClientAction::Held) => {
                            note_request(t, tag);
                            cut = len;
                            false
                        }
                        Err(e) => {
                            bad = Some(e);
                            false
                        }
                    }
                },
            )
            .map_err(RelayError::ClientProto)?;
        if let Some(e) = bad {
            return Err(RelayError::ClientProto(e));
        }
        if discard {
            cscan.discard_rest();
        }
        cbuf.advance(scanned.skip);
        let mut prefix = take_front(cbuf, scanned.forward - scanned.skip);
        let Some(len) = cut else {
            out.unsplit(prefix);
            return Ok(out);
        };
        prefix.truncate(prefix.len() - len);
        out.unsplit(prefix);
        out.extend_from_slice(&k.state.replacement);
        k.state.replacement.clear();
        if t.terminated {
            return Ok(out);
        }
    }
}

/// The first `n` bytes of `buf`. All of it, the usual case, moves as it is: splitting a buffer fresh
/// from the allocator would allocate the header its two halves share. The relay hands the spent
/// write buffer back to the reader (see [`run`]).
///
/// Nothing at all is a new empty buffer, never `split_to(0)`: that would leave `buf` shared with an
/// empty handle, and each read into a shared buffer copies all it holds. With a large frame held
/// whole for the tracker, every read would copy the frame again: quadratic in its size.
fn take_front(buf: &mut BytesMut, n: usize) -> BytesMut {
    if n == buf.len() {
        std::mem::take(buf)
    } else if n == 0 {
        BytesMut::new()
    } else {
        buf.split_to(n)
    }
}

/// [`scan_client`] without statement tracking: frames go through untouched, without a copy.
fn scan_client_plain(
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
            Event::Whole { tag, .. } | Event::Passing { tag } | Event::Head { tag, .. } => {
                note_request(t, tag);
                true
            }
        })
        .map_err(RelayError::ClientProto)?;
    let out = take_front(cbuf, scanned.forward - terminate_len);
    if terminate_len > 0 {
        let _ = cbuf.split_to(terminate_len);
    }
    Ok(out)
}

/// Frames a tracked server sends that must be whole: all but the ones that can be large and say
/// nothing to the tracker (DataRow, CopyData, FunctionCallResponse).
fn tracked_server_inspects(tag: u8, _total: usize) -> bool {
    !matches!(tag, b'D' | b'd' | b'V')
}

/// Scans what the server sent, updates the bookkeeping and splits off the bytes for the client.
/// A FATAL ErrorResponse is held back (the caller reports the lost server its own way) and returned.
/// With prepared statements tracked, replies to the pooler's own messages are cut out and the
/// pooler's replies to the client are put in their place in the stream.
#[allow(clippy::too_many_arguments)]
fn scan_server(
    rbuf: &mut BytesMut,
    sscan: &mut Scanner,
    t: &mut Track,
    params: &mut ParamSet,
    client_params: &mut ParamSet,
    tracked: &[String],
    mode: PoolMode,
    mut tracking: Option<&mut Tracking<'_>>,
    server_statements: &mut ServerStatements,
    to_server: &mut BytesMut,
) -> Result<(BytesMut, Option<String>), RelayError> {
    let inspect: fn(u8, usize) -> bool = if tracking.is_some() {
        tracked_server_inspects
    } else {
        server_inspects
    };
    let mut out = BytesMut::new();
    loop {
        let mut fatal: Option<(String, usize)> = None;
        let mut bad: Option<ProtoError> = None;
        // Length of a swallowed frame at the end of the scanned bytes.
        let mut cut: Option<usize> = None;
        let scanned = sscan
            .scan(rbuf, inspect, |e| {
                let (tag, body) = match e {
                    Event::Whole { tag, body } => (tag, Some(body)),
                    Event::Passing { tag } | Event::Head { tag, .. } => (tag, None),
                };
                let mut go_on = true;
                // What the bookkeeping was before this frame, for a ReadyForQuery the tracker keeps.
                let before = (t.pending, t.busy_since, t.idle_since);
                if tag == b'G' {
                    // CopyInResponse: Syncs already sent into this copy will not be answered.
                    t.pending = t.pending.saturating_sub(t.copy.on_copy_in());
                }
                if let Some(body) = body {
                    match tag {
                        b'Z' => match msg::ready_for_query(body) {
                            Ok(s) => {
                                t.status = s;
                                t.pending = t.pending.saturating_sub(1);
                                if t.pending == 0 && t.timed {
                                    t.busy_since = None;
                                    t.idle_since = Instant::now();
                                }
                                // Statement mode stops here so the caller can refuse the transaction.
                                if mode == PoolMode::Statement && s != b'I' {
                                    t.statement_violation = true;
                                    go_on = false;
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
                if let Some(k) = tracking.as_deref_mut() {
                    let (mut ctx, tracker, _, local) = k.parts(server_statements);
                    let sw = tracker.on_server(tag, body, &mut ctx, local, to_server);
                    if sw {
                        if tag == b'Z' {
                            // A ReadyForQuery the tracker keeps answers the pooler's own Sync, or
                            // one it replays: the client's requests are still owed.
                            (t.pending, t.busy_since, t.idle_since) = before;
                        }
                        cut = body.map(|b| 5 + b.len());
                        return false;
                    }
                    // The pooler's replies go right after this frame.
                    go_on &= k.state.local.is_empty();
                }
                go_on && bad.is_none()
            })
            .map_err(RelayError::ServerProto)?;
        if let Some(e) = bad {
            return Err(RelayError::ServerProto(e));
        }
        if let Some((message, len)) = fatal {
            out.unsplit(rbuf.split_to(scanned.forward - len));
            rbuf.clear();
            return Ok((out, Some(message)));
        }
        // Nothing to forward yet (a frame held whole is still arriving) must leave `rbuf` unshared:
        // see `take_front`.
        let mut prefix = if scanned.forward == 0 {
            BytesMut::new()
        } else {
            rbuf.split_to(scanned.forward)
        };
        if let Some(len) = cut {
            prefix.truncate(prefix.len() - len);
        }
        out.unsplit(prefix);
        let mut more = cut.is_some();
        if let Some(k) = tracking.as_deref_mut() {
            more |= !k.state.local.is_empty();
            out.extend_from_slice(&k.state.local);
            k.state.local.clear();
        }
        if !more || t.statement_violation || rbuf.is_empty() {
            return Ok((out, None));
        }
    }
}
