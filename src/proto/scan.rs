//! Frame scanning for the relay: finds message boundaries in a byte stream without copying.
//!
//! The relay forwards bytes as soon as it knows where they belong. A frame the pooler does not need to
//! inspect (DataRow, CopyData, ...) streams through even when it is larger than the buffer: the scanner
//! remembers how many of its bytes are still to come. A frame it must inspect (ReadyForQuery,
//! ParameterStatus, ...) is held until it is complete, up to [`super::MAX_INSPECTED_MESSAGE`]. A frame
//! the pooler must see the start of but not hold (a large Bind, whose statement name it rewrites) is
//! held only up to its head: the head is reported, and the rest streams through, or is dropped.

use super::ProtoError;

/// The 5-byte header of a tagged frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub tag: u8,
    /// Whole frame size: tag byte + length word + body.
    pub total: usize,
}

/// Parses a frame header at the start of `buf`, or `Ok(None)` if fewer than 5 bytes are there.
/// The length word counts itself, so anything below 4 is a violation; the sum cannot overflow `usize`
/// on 64-bit targets and is checked elsewhere.
pub fn header(buf: &[u8]) -> Result<Option<Header>, ProtoError> {
    let Some(&[tag, a, b, c, d]) = buf.get(..5) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([a, b, c, d]);
    if len < 4 {
        return Err(ProtoError::BadLength(len));
    }
    let total = (len as usize)
        .checked_add(1)
        .ok_or(ProtoError::BadLength(len))?;
    Ok(Some(Header { tag, total }))
}

/// How much of a frame the caller must see before any of it is forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inspect {
    /// Nothing: the frame streams through, only its tag is reported.
    Pass,
    /// All of it, held until complete.
    Whole,
    /// Its first `n` body bytes (fewer if the body is shorter); the rest streams through.
    Head(usize),
}

impl From<bool> for Inspect {
    fn from(whole: bool) -> Self {
        if whole {
            Inspect::Whole
        } else {
            Inspect::Pass
        }
    }
}

/// What the caller must know about one frame found by [`Scanner::scan`].
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A frame whose tag the caller asked to see whole; `body` excludes tag and length.
    Whole { tag: u8, body: &'a [u8] },
    /// The start of a frame that streams through; only its tag is known.
    Passing { tag: u8 },
    /// The head of a frame the caller asked to see the start of: `head` is the start of the body
    /// (excluding tag and length), `total` the whole frame's size. Its other bytes are still to come.
    Head {
        tag: u8,
        head: &'a [u8],
        total: usize,
    },
}

/// Finds frame boundaries in one direction of a connection.
#[derive(Debug, Default, Clone)]
pub struct Scanner {
    /// Bytes of a streaming frame that are still to come from the peer.
    remaining: usize,
    /// The bytes still to come of the current frame are dropped, not forwarded (see
    /// [`Scanner::discard_rest`]).
    discarding: bool,
    /// Largest frame accepted at all, streaming or not (`None`: no limit).
    max_frame: Option<usize>,
    /// Largest frame held whole for inspection (`None`: [`super::MAX_INSPECTED_MESSAGE`]).
    max_inspected: Option<usize>,
}

/// Result of one scan: how many leading bytes of the buffer are done with. The first `skip` of them
/// belong to a frame being discarded and must be dropped; the rest, up to `forward`, may be
/// forwarded now. `skip` is 0 unless [`Scanner::discard_rest`] was called.
#[derive(Debug, PartialEq, Eq)]
pub struct Scanned {
    pub skip: usize,
    pub forward: usize,
}

impl Scanner {
    /// A scanner for what a client sends: frames longer than PostgreSQL itself accepts from a client
    /// are refused here, before any of their bytes reach a server. A Parse or Bind the statement
    /// tracker rewrites is held whole, up to that same limit (PostgreSQL would buffer it too).
    pub fn for_client() -> Self {
        Self {
            remaining: 0,
            discarding: false,
            max_frame: Some(super::MAX_CLIENT_MESSAGE),
            max_inspected: Some(super::MAX_CLIENT_MESSAGE),
        }
    }

    /// A client scanner that holds no frame whole above `max_inspected` bytes: a larger frame asked
    /// for whole is a protocol violation. Frames asked for by head are not affected.
    pub fn for_client_holding_at_most(max_inspected: usize) -> Self {
        Self {
            max_inspected: Some(max_inspected),
            ..Self::for_client()
        }
    }

    /// Passes over up to `available` bytes of the frame in progress, and never into the next one;
    /// returns how many.
    pub fn pass_rest(&mut self, available: usize) -> usize {
        let n = self.remaining.min(available);
        self.remaining -= n;
        n
    }

    /// Drops the rest of the frame whose head was just reported, instead of forwarding it: the
    /// next scans report those bytes in [`Scanned::skip`].
    pub fn discard_rest(&mut self) {
        self.discarding = self.remaining > 0;
    }

    /// True when no frame is half-forwarded, i.e. the stream is at a message boundary.
    pub fn at_boundary(&self) -> bool {
        self.remaining == 0
    }

    /// Scans `buf` from the start. `inspect(tag, total)` says how much of each frame (by tag and
    /// whole size) must be here before any of it is forwarded; `on_event` sees every frame start.
    /// Returns how many bytes may be forwarded; bytes after that belong to an incomplete frame and
    /// stay in the buffer. Scanning stops early, right after a frame (or a frame's head), when
    /// `on_event` returns `false`: the caller wants to act before more is forwarded.
    pub fn scan<I: Into<Inspect>>(
        &mut self,
        buf: &[u8],
        inspect: impl Fn(u8, usize) -> I,
        mut on_event: impl FnMut(Event<'_>) -> bool,
    ) -> Result<Scanned, ProtoError> {
        let mut pos = self.remaining.min(buf.len());
        self.remaining -= pos;
        let skip = if self.discarding { pos } else { 0 };
        self.discarding &= self.remaining > 0;
        while self.remaining == 0 {
            let Some(rest) = buf.get(pos..) else { break };
            let Some(h) = header(rest)? else { break };
            if let Some(max) = self.max_frame.filter(|&m| h.total > m) {
                return Err(ProtoError::TooLarge { len: h.total, max });
            }
            match inspect(h.tag, h.total).into() {
                Inspect::Whole => {
                    let max = self.max_inspected.unwrap_or(super::MAX_INSPECTED_MESSAGE);
                    if h.total > max {
                        return Err(ProtoError::TooLarge { len: h.total, max });
                    }
                    let Some(body) = rest.get(5..h.total) else {
                        break;
                    };
                    pos += h.total;
                    if !on_event(Event::Whole { tag: h.tag, body }) {
                        break;
                    }
                }
                Inspect::Head(n) => {
                    let end = 5 + n.min(h.total - 5);
                    let Some(head) = rest.get(5..end) else {
                        break;
                    };
                    pos += end;
                    self.remaining = h.total - end;
                    let event = Event::Head {
                        tag: h.tag,
                        head,
                        total: h.total,
                    };
                    if !on_event(event) {
                        break;
                    }
                    // Going on: what is here of the rest streams now, as for a passing frame.
                    let here = self.remaining.min(rest.len() - end);
                    pos += here;
                    self.remaining -= here;
                }
                Inspect::Pass => {
                    let here = h.total.min(rest.len());
                    pos += here;
                    self.remaining = h.total - here;
                    if !on_event(Event::Passing { tag: h.tag }) {
                        break;
                    }
                }
            }
        }
        Ok(Scanned { skip, forward: pos })
    }
}

#[cfg(test)]
mod tests;
