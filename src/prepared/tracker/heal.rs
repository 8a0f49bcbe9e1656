//! Self-healing of stale plans: "cached plan must not change result type" (SQLSTATE 0A000).
//!
//! A server keeps a pooler statement prepared for every client that uses the same query. When a
//! table changes under it, the next Bind on that server fails with 0A000, even for a client that
//! prepared the query after the change (on another server) and would never see the error on a direct
//! connection. When the failing batch is simple enough to replay (one Bind of a statement the server
//! already had, first in its batch, outside a transaction block, answered with nothing yet), the
//! tracker swallows the error and the ReadyForQuery after it, closes and re-prepares the statement,
//! and sends the batch again. Once only: a second failure reaches the client.

use super::{Entry, Reply, Tracker, Undo};
use crate::prepared::{PreparedStats, Statement};
use crate::proto::tx::TxStatus;
use crate::proto::{backend, encode, sqlstate};
use bytes::BytesMut;
use std::sync::Arc;

#[derive(Debug, Default)]
pub(super) enum Heal {
    #[default]
    Off,
    /// A batch that began with a Bind of this statement, found already on the server, is being
    /// recorded into `Tracker::replay`.
    Recording(Arc<Statement>),
    /// Recorded up to its Sync: replayable if that Bind fails with 0A000.
    Armed(Arc<Statement>),
    /// The Bind failed; the server skips to the Sync, whose ReadyForQuery starts the replay.
    Replaying(Arc<Statement>),
}

impl Tracker {
    /// While a batch is replayed, or messages are held for a shape check (verify.rs), the client's
    /// next messages must wait: they would reach the server ahead of those. Held messages are kept
    /// whole, so the relay must not stream any frame through meanwhile.
    pub fn holds_client(&self) -> bool {
        matches!(self.heal, Heal::Replaying(_)) || self.holding()
    }

    /// A Bind of `stmt` the server already has: start recording if it opens a batch outside a
    /// transaction block (so nothing before it can be lost by replaying).
    pub(super) fn consider_recording(&mut self, stmt: &Arc<Statement>) {
        if self.queue.is_empty() && self.status == TxStatus::Idle {
            self.replay.clear();
            self.heal = Heal::Recording(stmt.clone());
        } else {
            self.heal = Heal::Off;
        }
    }

    /// A frame that is not kept went to the server: no batch around it can be replayed.
    pub(super) fn stop_recording(&mut self) {
        if matches!(self.heal, Heal::Recording(_) | Heal::Armed(_)) {
            self.heal = Heal::Off;
            self.replay.clear();
        }
    }

    /// Records one client frame as it goes to the server (`sent`: the bytes that went, or `None` for
    /// the frame unchanged, which `body` holds).
    pub(super) fn record(&mut self, tag: u8, body: Option<&[u8]>, sent: Option<&[u8]>) {
        if self.holding() {
            // The replay buffer belongs to the hold (verify.rs).
            self.heal = Heal::Off;
            return;
        }
        match &self.heal {
            Heal::Recording(_) => {}
            Heal::Armed(_) => {
                // Something after the Sync: a replay would come after it, out of order.
                self.heal = Heal::Off;
                return;
            }
            Heal::Off | Heal::Replaying(_) => return,
        }
        let first = self.replay.is_empty();
        let replayable = match tag {
            b'B' => first,
            b'D' | b'E' | b'H' | b'S' => !first,
            _ => false,
        };
        match (replayable, sent, body) {
            (true, Some(bytes), _) => self.replay.extend_from_slice(bytes),
            (true, None, Some(body)) => {
                self.replay.extend_from_slice(&[tag]);
                self.replay
                    .extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
                self.replay.extend_from_slice(body);
            }
            _ => {
                self.heal = Heal::Off;
                return;
            }
        }
        if tag == b'S' {
            if let Heal::Recording(stmt) = std::mem::take(&mut self.heal) {
                self.heal = Heal::Armed(stmt);
            }
        }
    }

    /// Sees a server frame first. Returns `Some(swallow)` when healing decides what happens to it;
    /// replayed bytes go to `to_server`.
    pub(super) fn heal_on_server(
        &mut self,
        tag: u8,
        body: Option<&[u8]>,
        ctx: &mut super::Ctx<'_>,
        to_server: &mut BytesMut,
    ) -> Option<bool> {
        let stats = ctx.stats;
        match (&self.heal, tag) {
            (Heal::Off, _) => None,
            (Heal::Replaying(_), b'Z') => {
                let Heal::Replaying(stmt) = std::mem::take(&mut self.heal) else {
                    return None;
                };
                encode::statement_target(to_server, b'C', &stmt.server_name);
                encode::parse_message(to_server, &stmt.server_name, &stmt.definition);
                to_server.extend_from_slice(&self.replay);
                self.replay.clear();
                // The batch's own entries are still queued, owed to the client as before.
                self.queue.push_front(Entry::Server {
                    reply: Reply::Parse,
                    swallow: true,
                    undo: Undo::Server(stmt.id),
                    statement: Some(stmt.id),
                    marks: super::Marks::default(),
                });
                self.queue.push_front(Entry::Server {
                    reply: Reply::Close,
                    swallow: true,
                    undo: Undo::Stale(stmt.id),
                    statement: None,
                    marks: super::Marks::default(),
                });
                // A fresh copy: whatever columns were recorded for the old one no longer hold.
                ctx.server.forget(stmt.id);
                let _ = ctx.server.insert(stmt.id, usize::MAX);
                PreparedStats::bump(&stats.healed);
                PreparedStats::bump(&stats.server_parses);
                Some(true)
            }
            // Notices and the like while the server skips to Sync.
            (Heal::Replaying(_), _) => Some(false),
            (Heal::Armed(stmt), b'E') if self.stale_plan_error(stmt.id, body) => {
                if let Heal::Armed(stmt) = std::mem::take(&mut self.heal) {
                    self.heal = Heal::Replaying(stmt);
                }
                Some(true)
            }
            (_, b'E' | b'Z') => {
                self.heal = Heal::Off;
                self.replay.clear();
                None
            }
            _ => None,
        }
    }

    /// The error is 0A000 for the recorded Bind, the first reply of its batch.
    fn stale_plan_error(&self, id: u64, body: Option<&[u8]>) -> bool {
        let code_matches = body
            .and_then(|b| backend::error_fields(b).ok())
            .is_some_and(|f| f.code == sqlstate::FEATURE_NOT_SUPPORTED);
        let front_is_the_bind = matches!(
            self.queue.front(),
            Some(Entry::Server {
                reply: Reply::Bind,
                statement: Some(s),
                ..
            }) if *s == id
        );
        code_matches && front_is_the_bind
    }
}
