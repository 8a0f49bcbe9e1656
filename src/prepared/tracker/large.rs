//! Client messages too large to hold whole (over `max_held_message`): only their head is read.
//!
//! A Bind names its statement at the start and carries its parameters after, which may be
//! megabytes: the head is rewritten to the pooler's statement name and the parameters stream
//! through untouched, so a large Bind costs time linear in its size and memory for its head only.
//! An unnamed Parse streams through as it is. A named Parse must be held to be shared between
//! servers, so one over the limit is refused: the server is sent a Parse that cannot parse, fails
//! exactly where the client's Parse stood (ending the batch as any error does), and the client
//! hears 54000 instead of its error. The session goes on.

use super::{server, Local, Reply, Tracker};
use super::{ClientAction, Ctx};
use crate::prepared::PreparedStats;
use crate::proto::{encode, frontend, sqlstate, ProtoError};
use bytes::BytesMut;

/// What the relay does with a frame reported by its head.
#[derive(Debug, PartialEq, Eq)]
pub enum HeadAction {
    /// Forward it unchanged, head and rest.
    Forward,
    /// Drop the head; the bytes written to `replacement` go in its place; the rest follows.
    Replace,
    /// Drop the head and the rest; the bytes written to `replacement` go in their place.
    Discard,
}

impl Tracker {
    /// Handles a client frame of `total` bytes of which only `head` (the start of the body) is
    /// here. Replies the pooler can give at once are appended to `to_client`.
    pub fn on_client_head(
        &mut self,
        tag: u8,
        head: &[u8],
        total: usize,
        ctx: &mut Ctx<'_>,
        replacement: &mut BytesMut,
        to_client: &mut BytesMut,
    ) -> Result<HeadAction, ProtoError> {
        let start = replacement.len();
        if self.holding() {
            // What is held must reach the server first, and this frame cannot wait behind it.
            PreparedStats::bump(&ctx.stats.unchecked_shapes);
            self.release(replacement);
        }
        // A replay needs the whole batch, and this frame is not kept.
        self.stop_recording();
        let mut action = match tag {
            b'P' | b'B' => self.statement_head(tag, head, total, ctx, replacement)?,
            _ => match self.handle_client(tag, None, ctx, replacement, to_client)? {
                ClientAction::Forward => HeadAction::Forward,
                ClientAction::Replace | ClientAction::Held => HeadAction::Discard,
            },
        };
        self.flush_local(ctx, to_client);
        if action == HeadAction::Forward && replacement.len() > start {
            // Released bytes go ahead of the frame: its head goes after them, as it came.
            replacement.extend_from_slice(&[tag]);
            let len = u32::try_from(total - 1).map_err(|_| ProtoError::Malformed("length"))?;
            replacement.extend_from_slice(&len.to_be_bytes());
            replacement.extend_from_slice(head);
            action = HeadAction::Replace;
        }
        Ok(action)
    }

    fn statement_head(
        &mut self,
        tag: u8,
        head: &[u8],
        total: usize,
        ctx: &mut Ctx<'_>,
        out: &mut BytesMut,
    ) -> Result<HeadAction, ProtoError> {
        if self.skipping {
            // After an error the server would skip it to the Sync: so does the pooler.
            return Ok(HeadAction::Discard);
        }
        if !self.copy.on_client(tag) {
            return Ok(HeadAction::Forward);
        }
        if tag == b'P' {
            if frontend::parse_name(head)?.is_empty() {
                self.queue.push_back(server(Reply::Parse));
                return Ok(HeadAction::Forward);
            }
            self.force_error(
                out,
                Local::TooLarge {
                    size: total,
                    max: ctx.max_held,
                },
            );
            return Ok(HeadAction::Discard);
        }
        let streamed = total - 5 - head.len();
        Ok(match self.client_bind(head, streamed, ctx, out)? {
            ClientAction::Forward => HeadAction::Forward,
            ClientAction::Replace | ClientAction::Held => HeadAction::Replace,
        })
    }
}

/// The 54000 a named Parse over `max_held_message` gets.
pub(super) fn too_large_error(to_client: &mut BytesMut, size: usize, max: usize) {
    let message = format!(
        "prepared statement message of {size} bytes exceeds the pooler's limit of {max} bytes"
    );
    limit_error(
        to_client,
        &message,
        "Use an unnamed statement, or raise max_held_message in the pooler's configuration.",
    );
}

/// A 54000 (`program_limit_exceeded`) with its hint: what the pooler answers for each of its limits.
pub(super) fn limit_error(to_client: &mut BytesMut, message: &str, hint: &str) {
    encode::error_with_fields(
        to_client,
        &[
            (b'S', "ERROR"),
            (b'V', "ERROR"),
            (b'C', sqlstate::PROGRAM_LIMIT_EXCEEDED),
            (b'M', message),
            (b'H', hint),
        ],
    );
}
