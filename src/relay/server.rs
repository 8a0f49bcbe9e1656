//! The server's direction of the relay: finds frame boundaries in what the server sent, keeps the
//! transaction bookkeeping (ReadyForQuery, ParameterStatus, FATAL errors), lets the statement
//! tracker swallow the replies to the pooler's own messages, and splits off what goes to the client.

use super::{RelayError, Track, Tracking};
use crate::backend::params::ParamSet;
use crate::config::PoolMode;
use crate::prepared::ServerStatements;
use crate::proto::backend as msg;
use crate::proto::scan::{Event, Scanner};
use crate::proto::ProtoError;
use bytes::BytesMut;
use tokio::time::Instant;

fn server_inspects(tag: u8, _total: usize) -> bool {
    matches!(tag, b'Z' | b'S' | b'E')
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
pub(super) fn scan_server(
    rbuf: &mut BytesMut,
    sscan: &mut Scanner,
    t: &mut Track<'_>,
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
                let before = (t.pending, t.idle_since, t.counts);
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
                                if t.pending == 0 {
                                    let now = Instant::now();
                                    t.counts.requests_answered(s, now);
                                    t.idle_since = now;
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
                            (t.pending, t.idle_since, t.counts) = before;
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
