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

/// What stops forwarding in one scan of a tracked client's bytes.
#[derive(Default)]
struct Stop {
    /// Length of a frame (or a frame's head) at the end of the scanned bytes that must not be
    /// forwarded as is.
    cut: Option<usize>,
    bad: Option<ProtoError>,
    /// The rest of the frame whose head was cut goes nowhere.
    discard: bool,
}

/// What a tracked client's frames are handed to, borrowed for one scan.
struct Frames<'a, 'k, 's> {
    k: &'a mut Tracking<'k>,
    server_statements: &'a mut ServerStatements,
    to_client: &'a mut BytesMut,
    t: &'a mut Track<'s>,
    stop: Stop,
}

impl Frames<'_, '_, '_> {
    /// The head of a frame too large to hold (a Parse's or Bind's names); false stops the scan.
    fn head(&mut self, tag: u8, head: &[u8], total: usize) -> bool {
        let (mut ctx, tracker, replacement, _) = self.k.parts(self.server_statements);
        let r = tracker.on_client_head(tag, head, total, &mut ctx, replacement, self.to_client);
        let replaced = !replacement.is_empty();
        match r {
            Ok(HeadAction::Forward) => {
                note_request(self.t, tag);
                true
            }
            Ok(a) => {
                if replaced {
                    note_request(self.t, tag);
                }
                self.stop.discard = a == HeadAction::Discard;
                self.stop.cut = Some(5 + head.len());
                false
            }
            Err(e) => {
                self.stop.bad = Some(e);
                false
            }
        }
    }

    /// A whole frame (`body`), or one streaming through (`None`); false stops the scan.
    fn frame(&mut self, tag: u8, body: Option<&[u8]>) -> bool {
        let len = body.map(|b| 5 + b.len());
        if tag == b'X' {
            self.t.terminated = true;
            self.stop.cut = len;
            return false;
        }
        let (mut ctx, tracker, replacement, _) = self.k.parts(self.server_statements);
        match tracker.on_client(tag, body, &mut ctx, replacement, self.to_client) {
            Ok(ClientAction::Forward) => {
                note_request(self.t, tag);
                true
            }
            // A frame streaming through cannot be cut; the tracker drops one only while the
            // server skips to Sync, which ignores it anyway.
            Ok(ClientAction::Replace) if len.is_none() => true,
            Ok(ClientAction::Replace) => {
                if !self.k.state.replacement.is_empty() {
                    note_request(self.t, tag);
                }
                self.stop.cut = len;
                false
            }
            // Held frames count as sent: they go to the server when the hold ends.
            Ok(ClientAction::Held) => {
                note_request(self.t, tag);
                self.stop.cut = len;
                false
            }
            Err(e) => {
                self.stop.bad = Some(e);
                false
            }
        }
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
        // While the tracker holds messages it needs every frame whole.
        let hold = std::cell::Cell::new(k.tracker().holds_client());
        let max_held = k.max_held;
        let mut frames = Frames {
            k: &mut *k,
            server_statements: &mut *server_statements,
            to_client: &mut *to_client,
            t: &mut *t,
            stop: Stop::default(),
        };
        let scanned = cscan
            .scan(
                cbuf,
                |tag, total| tracked_client_inspects(tag, total, hold.get(), max_held),
                |e| {
                    let go_on = match e {
                        Event::Whole { tag, body } => frames.frame(tag, Some(body)),
                        Event::Passing { tag } => frames.frame(tag, None),
                        Event::Head { tag, head, total } => frames.head(tag, head, total),
                    };
                    hold.set(frames.k.tracker().holds_client());
                    go_on
                },
            )
            .map_err(RelayError::ClientProto)?;
        let Stop { cut, bad, discard } = frames.stop;
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
