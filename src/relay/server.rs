//! The server's direction of the relay: finds frame boundaries in what the server sent, keeps the
//! transaction bookkeeping (ReadyForQuery, ParameterStatus, FATAL errors), lets the statement
//! tracker swallow the replies to the pooler's own messages, and splits off what goes to the client.

use super::{RelayError, Track, Tracking};
use crate::backend::params::ParamSet;
use crate::config::PoolMode;
use crate::prepared::ServerStatements;
use crate::proto::backend as msg;
use crate::proto::scan::{Event, Scanner};
use crate::proto::tx::tag::be;
use crate::proto::tx::TxStatus;
use crate::proto::ProtoError;
use bytes::BytesMut;
use tokio::time::Instant;

fn server_inspects(tag: u8, _total: usize) -> bool {
    matches!(
        tag,
        be::READY_FOR_QUERY | be::PARAMETER_STATUS | be::ERROR_RESPONSE
    )
}

/// Frames a tracked server sends that must be whole: all but the ones that can be large and say
/// nothing to the tracker (DataRow, CopyData, FunctionCallResponse).
fn tracked_server_inspects(tag: u8, _total: usize) -> bool {
    !matches!(
        tag,
        be::DATA_ROW | be::COPY_DATA | be::FUNCTION_CALL_RESPONSE
    )
}

/// The parameters a server's ParameterStatus updates: the server's own, and the client's tracked
/// ones (which follow the server's, as a direct connection's would).
pub(super) struct Params<'a> {
    pub server: &'a mut ParamSet,
    pub client: &'a mut ParamSet,
    pub tracked: &'a [String],
}

/// What one inspected server frame means to the relay.
enum Noted {
    Forward,
    /// Statement mode: a transaction block opened; stop here so the caller can refuse it.
    Stop,
    /// A FATAL error: the server is going away.
    Fatal(String),
}

/// Notes a whole server frame in the bookkeeping.
fn note_frame(
    t: &mut Track<'_>,
    p: &mut Params<'_>,
    tag: u8,
    body: &[u8],
) -> Result<Noted, ProtoError> {
    match tag {
        be::READY_FOR_QUERY => {
            let s = msg::ready_for_query(body)?;
            if t.tx.on_ready(s) {
                let now = Instant::now();
                t.counts.requests_answered(s, now);
                t.idle_since = now;
            }
            // Statement mode stops here so the caller can refuse the transaction.
            if t.mode == PoolMode::Statement && s != TxStatus::Idle {
                t.statement_violation = true;
                return Ok(Noted::Stop);
            }
        }
        be::PARAMETER_STATUS => {
            let (k, v) = msg::parameter_status(body)?;
            p.server.set(k, v);
            if p.tracked.iter().any(|n| n.eq_ignore_ascii_case(k)) {
                p.client.set(k, v);
            }
        }
        be::ERROR_RESPONSE => {
            if let Ok(f) = msg::error_fields(body) {
                if f.is_fatal() {
                    return Ok(Noted::Fatal(f.message.to_owned()));
                }
            }
        }
        _ => {}
    }
    Ok(Noted::Forward)
}

/// Scans what the server sent, updates the bookkeeping and splits off the bytes for the client.
/// A FATAL ErrorResponse is held back (the caller reports the lost server its own way) and returned.
/// With prepared statements tracked, replies to the pooler's own messages are cut out and the
/// pooler's replies to the client are put in their place in the stream.
pub(super) fn scan_server(
    rbuf: &mut BytesMut,
    sscan: &mut Scanner,
    t: &mut Track<'_>,
    p: &mut Params<'_>,
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
                // What the bookkeeping was before a ReadyForQuery, in case the tracker keeps it (a
                // copy of the counts and their histograms: taken for that frame only, as callgrind
                // found the copy for every frame among a transaction's costliest steps).
                let before = if tag == be::READY_FOR_QUERY && tracking.is_some() {
                    Some((t.tx, t.idle_since, t.counts))
                } else {
                    None
                };
                if tag == be::COPY_IN_RESPONSE {
                    t.tx.on_copy_in();
                }
                if let Some(body) = body {
                    match note_frame(t, p, tag, body) {
                        Ok(Noted::Forward) => {}
                        Ok(Noted::Stop) => go_on = false,
                        Ok(Noted::Fatal(m)) => {
                            fatal = Some((m, 5 + body.len()));
                            return false;
                        }
                        Err(e) => bad = Some(e),
                    }
                }
                if let Some(k) = tracking.as_deref_mut() {
                    let (mut ctx, tracker, _, local) = k.parts(server_statements);
                    if tracker.on_server(tag, body, &mut ctx, local, to_server) {
                        if let Some(before) = before {
                            // A ReadyForQuery the tracker keeps answers the pooler's own Sync, or
                            // one it replays: the client's requests are still owed.
                            (t.tx, t.idle_since, t.counts) = before;
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
