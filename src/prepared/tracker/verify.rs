//! Result shapes: a client's statement keeps the columns it was prepared with.
//!
//! On a direct connection, a statement prepared before `ALTER TABLE` changed its columns fails with
//! 0A000 "cached plan must not change result type" on every later use; drivers that cache the row
//! description (asyncpg) count on that error to prepare again. Through a pooler the statement may be
//! prepared afresh on another server, where it silently has the new columns. So the tracker remembers
//! the shape (RowDescription or NoData) each client was shown when it described its statement, and the
//! shape of each server's copy once known. A Bind or Describe of a statement whose client shape is
//! known goes through when the server's copy is known to have that shape. Otherwise (no copy, a copy
//! of unknown or other shape) it and what follows are held: the pooler prepares (if needed) and
//! describes the copy first, with a Flush and no Sync. A copy whose plan went stale fails that
//! Describe with 0A000; it is closed and prepared afresh (after a Sync of the pooler's own) and
//! described again. Mid-batch, where that Sync would end the client's transaction, a copy already
//! there is closed and prepared afresh before the Describe instead. Then the held messages go. If
//! the shapes differ, a Parse that cannot parse goes first: the server fails exactly where
//! PostgreSQL would have (rolling back, or aborting the transaction block, and skipping to the
//! Sync), and its error reaches the client as 0A000. One check at a time: a statement held behind
//! another's check goes unchecked (counted), unless it is the checked copy and the client was shown
//! the columns that check expects.

use super::{Entry, Local, Reply, Tracker};
use crate::prepared::{shape_of, PreparedStats, Statement};
use crate::proto::{encode, sqlstate, ProtoError};
use bytes::BytesMut;
use std::sync::Arc;

/// Whose shape a statement Describe's answer records.
#[derive(Debug)]
pub(super) enum ShapeOf {
    /// The client's own Describe of its statement `name`.
    Client(Box<[u8]>),
    /// The pooler's Describe before a held Bind.
    Verify,
    /// The pooler's Describe for a check whose held messages went unchecked (released): its answer
    /// records the copy's columns and decides nothing. Left as `Verify`, it would be taken for the
    /// answer of a later check, of another statement (the prepared_tracker fuzz target found that:
    /// a wrong forced error, and a copy forgotten while the server kept it).
    Released,
}

#[derive(Debug, Default)]
pub(super) enum Verify {
    #[default]
    Off,
    /// Client messages are held in `Tracker::replay` until the server's copy is described.
    Holding {
        statement: Arc<Statement>,
        /// The shape the client was shown.
        expected: u64,
        /// The copy was found stale and prepared afresh already: a second failure is the client's.
        reprepared: bool,
    },
}

/// What a Bind of a client statement does about shapes.
pub(super) enum BindCheck {
    /// Nothing to check: bind as usual.
    Go,
    /// The copy's shape is unknown, other, or there is no copy: prepare and describe it first.
    Hold(u64),
}

pub(super) const STALE_MESSAGE: &str = "cached plan must not change result type";

/// A Parse that fails on every server (a syntax error), named so that it can clash with nothing.
pub(super) const FORCED_ERROR_NAME: &[u8] = b"PGSLUICE_STALE";
pub(super) const FORCED_ERROR_QUERY: &[u8] =
    b"pgsluice: cached plan must not change result type\0\0\0";

impl Tracker {
    pub(super) fn holding(&self) -> bool {
        matches!(self.verify, Verify::Holding { .. })
    }

    /// Decides what a Bind or Describe of statement `id`, which the client was shown `client_shape`
    /// for (if it asked), needs.
    pub(super) fn shape_check(
        &self,
        id: u64,
        client_shape: Option<u64>,
        server_has: bool,
        server_shape: Option<u64>,
        stats: &PreparedStats,
    ) -> BindCheck {
        let Some(expected) = client_shape else {
            return BindCheck::Go;
        };
        // Behind a check of this very copy (for another of the client's names for the same query),
        // the columns recorded for it are in doubt: the check may find it stale and prepare it
        // afresh, with the columns of now. What follows the check runs only if the copy has the
        // columns the check expects, so those are the ones to compare with.
        let server_shape = match &self.verify {
            Verify::Holding {
                statement,
                expected: checked,
                ..
            } if statement.id == id => Some(*checked),
            _ => server_shape,
        };
        match (server_has, server_shape) {
            (true, Some(s)) if s == expected => BindCheck::Go,
            // One check at a time: a second statement held behind the first goes unchecked.
            _ if self.holding() => {
                PreparedStats::bump(&stats.unchecked_shapes);
                BindCheck::Go
            }
            _ => BindCheck::Hold(expected),
        }
    }

    /// Starts holding: the Describe (after a Parse if needed, already in `out`) goes out with a Flush;
    /// the Bind's own bytes, written by the caller into the replay buffer, wait.
    /// `opened`: nothing was owed before this message and no transaction block is open, so the
    /// pooler may end the implicit transaction with a Sync of its own if the copy must be prepared
    /// afresh.
    pub(super) fn start_hold(
        &mut self,
        stmt: &Arc<Statement>,
        expected: u64,
        opened: bool,
        out: &mut BytesMut,
    ) {
        encode::statement_target(out, b'D', &stmt.server_name);
        out.extend_from_slice(&[b'H', 0, 0, 0, 4]);
        self.queue.push_back(Entry::Describe {
            swallow: true,
            statement: stmt.id,
            of: ShapeOf::Verify,
        });
        self.replay.clear();
        // The replay buffer is the hold's now.
        self.heal = super::heal::Heal::Off;
        self.verify = Verify::Holding {
            statement: stmt.clone(),
            expected,
            // Re-preparing needs a Sync of the pooler's own, which would end (or, in a block, find
            // aborted) a transaction the client's earlier messages are part of: only at a batch's start.
            // Elsewhere the copy was prepared afresh just now (use_statement), so it is not stale.
            reprepared: !opened,
        };
    }

    /// Holds a client frame that arrived while holding: what would have gone to the server goes to
    /// the replay buffer instead. Returns whether anything was held (not for a frame the pooler
    /// answered or dropped).
    pub(super) fn hold_frame(
        &mut self,
        tag: u8,
        body: Option<&[u8]>,
        forwarded: bool,
        replacement: &mut BytesMut,
        from: usize,
    ) -> Result<bool, ProtoError> {
        if forwarded {
            // The relay holds every frame whole while the tracker holds.
            let body = body.ok_or(ProtoError::Malformed("held frame"))?;
            self.replay.extend_from_slice(&[tag]);
            self.replay
                .extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
            self.replay.extend_from_slice(body);
        } else {
            let held = replacement.len() > from;
            self.replay.extend_from_slice(&replacement[from..]);
            replacement.truncate(from);
            return Ok(held);
        }
        Ok(true)
    }

    /// The answer to a statement Describe (`tag` T or n) completes the front entry.
    pub(super) fn described(
        &mut self,
        tag: u8,
        body: Option<&[u8]>,
        ctx: &mut super::Ctx<'_>,
        to_server: &mut BytesMut,
    ) -> bool {
        let shape = body.map(|b| shape_of(tag, b));
        let Some(Entry::Describe {
            swallow,
            statement,
            of,
        }) = self.queue.pop_front()
        else {
            return false;
        };
        let Some(shape) = shape else {
            self.release(to_server);
            return swallow;
        };
        ctx.server.set_shape(statement, shape);
        match of {
            ShapeOf::Client(name) => ctx.client.set_shape(&name, statement, shape),
            ShapeOf::Verify => self.verified(shape, ctx, to_server),
            ShapeOf::Released => {}
        }
        swallow
    }

    /// An error while holding. When it is the pooler's Describe finding the copy's plan stale
    /// (0A000), the copy is closed and prepared afresh and the check starts again: returns true (the
    /// error is the pooler's). Otherwise the caller releases what is held.
    pub(super) fn verify_failed(
        &mut self,
        body: Option<&[u8]>,
        ctx: &mut super::Ctx<'_>,
        to_server: &mut BytesMut,
    ) -> bool {
        let stale = body
            .and_then(|b| crate::proto::backend::error_fields(b).ok())
            .is_some_and(|f| f.code == sqlstate::FEATURE_NOT_SUPPORTED);
        if !matches!(
            self.queue.front(),
            Some(Entry::Describe {
                of: ShapeOf::Verify,
                ..
            })
        ) {
            return false;
        }
        let Verify::Holding {
            statement,
            reprepared,
            ..
        } = &mut self.verify
        else {
            return false;
        };
        if !stale || *reprepared {
            return false;
        }
        *reprepared = true;
        let stmt = statement.clone();
        let id = stmt.id;
        self.queue.pop_front();
        // The server now skips to a Sync: the pooler sends its own, then prepares afresh.
        encode::sync(to_server);
        encode::statement_target(to_server, b'C', &stmt.server_name);
        encode::parse_message(to_server, &stmt.server_name, &stmt.definition);
        encode::statement_target(to_server, b'D', &stmt.server_name);
        to_server.extend_from_slice(&[b'H', 0, 0, 0, 4]);
        let own = |reply| Entry::Server {
            reply,
            swallow: true,
            undo: super::Undo::Nothing,
            statement: None,
            marks: super::Marks::default(),
        };
        self.queue.push_front(Entry::Describe {
            swallow: true,
            statement: id,
            of: ShapeOf::Verify,
        });
        self.queue.push_front(Entry::Server {
            reply: Reply::Parse,
            swallow: true,
            undo: super::Undo::Server(id),
            statement: Some(id),
            marks: super::Marks::default(),
        });
        self.queue.push_front(own(Reply::Close));
        self.queue.push_front(own(Reply::Ready));
        // The fresh copy takes the old one's place ahead of the held messages, which were counted
        // in when they were held (one may close this very copy, to evict it): only what was known
        // of its columns goes.
        ctx.server.forget_shape(id);
        PreparedStats::bump(&ctx.stats.healed);
        PreparedStats::bump(&ctx.stats.server_parses);
        true
    }

    /// Sends whatever is held, unchecked (the server failed or the shape could not be read).
    pub(super) fn release(&mut self, to_server: &mut BytesMut) {
        if let Verify::Holding { .. } = std::mem::take(&mut self.verify) {
            to_server.extend_from_slice(&self.replay);
            self.replay.clear();
            for entry in &mut self.queue {
                if let Entry::Describe {
                    of: of @ ShapeOf::Verify,
                    ..
                } = entry
                {
                    *of = ShapeOf::Released;
                }
            }
        }
    }

    fn verified(&mut self, shape: u64, ctx: &mut super::Ctx<'_>, to_server: &mut BytesMut) {
        let Verify::Holding { expected, .. } = std::mem::take(&mut self.verify) else {
            return;
        };
        if shape == expected {
            to_server.extend_from_slice(&self.replay);
            self.replay.clear();
            return;
        }
        PreparedStats::bump(&ctx.stats.stale_shapes);
        // The client's statement would fail right here on PostgreSQL: the server must fail here too,
        // so that what ran before is rolled back and what follows is skipped to the Sync, exactly
        // as there. A Parse that cannot parse does that; its error reaches the client as 0A000.
        encode::parse_message(to_server, FORCED_ERROR_NAME, FORCED_ERROR_QUERY);
        to_server.extend_from_slice(&self.replay);
        self.replay.clear();
        self.queue.push_front(Entry::Forced(Local::StaleStatement));
    }

    /// Sends a Parse that cannot parse where a client's message stood, so that the server fails
    /// right there (ending the batch as any error does), and queues `reply` for the client to hear
    /// instead of the server's error (see [`Tracker::forced_error`]).
    pub(super) fn force_error(&mut self, out: &mut BytesMut, reply: Local) {
        encode::parse_message(out, FORCED_ERROR_NAME, FORCED_ERROR_QUERY);
        self.queue.push_back(Entry::Forced(reply));
    }

    /// The pooler's failing Parse failed: the client hears the forced reply (0A000, 54000, 42P05)
    /// instead, and the server now skips what follows to the Sync, as after any error. Returns
    /// whether the server's error is swallowed: in an aborted transaction block PostgreSQL refuses
    /// a Parse with 25P02 before it would see a duplicate name, so that error is the client's.
    pub(super) fn forced_error(&mut self, body: Option<&[u8]>, ctx: &mut super::Ctx<'_>) -> bool {
        let Some(Entry::Forced(reply)) = self.queue.pop_front() else {
            return false;
        };
        self.skip_to_sync(ctx);
        self.skipping = self.queue.is_empty();
        let aborted = body
            .and_then(|b| crate::proto::backend::error_fields(b).ok())
            .is_some_and(|f| f.code == sqlstate::IN_FAILED_TRANSACTION);
        if aborted && matches!(reply, Local::AlreadyExists(_)) {
            return false;
        }
        self.queue.push_front(Entry::Local(reply));
        true
    }

    /// The 0A000 a stale statement gets, as PostgreSQL sends it: drivers recognise it by the source
    /// routine (asyncpg re-prepares on RevalidateCachedQuery), not by the localisable message.
    pub(super) fn stale_error(to_client: &mut BytesMut) {
        encode::error_with_fields(
            to_client,
            &[
                (b'S', "ERROR"),
                (b'V', "ERROR"),
                (b'C', sqlstate::FEATURE_NOT_SUPPORTED),
                (b'M', STALE_MESSAGE),
                (b'F', "plancache.c"),
                (b'R', "RevalidateCachedQuery"),
            ],
        );
    }
}
