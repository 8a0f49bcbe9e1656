//! The client's direction of the relay: finds frame boundaries in what the client sent, lets the
//! statement tracker rewrite or answer the frames it must, and splits off what goes to the server.

use super::RelayError;
use super::{note_request, Track, Tracking};
use crate::prepared::tracker::{ClientAction, HeadAction};
use crate::prepared::ServerStatements;
use crate::proto::scan::{Event, Inspect, Scanner};
use crate::proto::ProtoError;
use bytes::{Buf, BytesMut};

pub(super) fn client_inspects(tag: u8, _total: usize) -> bool {
    tag == b'X'
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
pub(super) fn scan_client(
    cbuf: &mut BytesMut,
    cscan: &mut Scanner,
    t: &mut Track<'_>,
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
/// write buffer back to the reader (see [`super::run`]).
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
    t: &mut Track<'_>,
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
