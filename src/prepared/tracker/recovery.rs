//! After an error the server skips every message up to the client's next Sync; the tracker does the
//! same with its queue, undoing what the skipped messages would have done (latest first, so that each
//! name gets back the meaning it had before them).

use super::{Ctx, Entry, Local, Reply, Tracker, Undo};
use crate::proto::{backend, sqlstate};

impl Tracker {
    /// The server reported an error for the front message and skips everything up to Sync.
    pub(super) fn fail(&mut self, body: Option<&[u8]>, ctx: &mut Ctx<'_>) {
        let code = body
            .and_then(|b| backend::error_fields(b).ok())
            .map(|f| f.code)
            .unwrap_or_default();
        let first = self.queue.pop_front();
        // Later messages first: undoing in reverse order restores what was there before them.
        self.skip_to_sync(ctx);
        if let Some(e) = first {
            match (&e, code) {
                // The plan behind this statement went stale (a table changed under it): the next
                // use closes and prepares it again instead of failing forever.
                (
                    Entry::Server {
                        reply: Reply::Bind,
                        statement: Some(id),
                        ..
                    },
                    sqlstate::FEATURE_NOT_SUPPORTED,
                ) => ctx.server.mark_stale(*id),
                // Describing the copy found its plan stale.
                (Entry::Describe { statement, .. }, sqlstate::FEATURE_NOT_SUPPORTED) => {
                    ctx.server.mark_stale(*statement)
                }
                // Something of that name is there, not necessarily this statement (a client may have
                // run PREPARE under a pooler name): close it and prepare afresh next time.
                (
                    Entry::Server {
                        reply: Reply::Parse,
                        statement: Some(id),
                        ..
                    },
                    sqlstate::DUPLICATE_PSTATEMENT,
                ) => ctx.server.mark_stale(*id),
                // The copy is gone (a client's DEALLOCATE under the pooler's name): prepare it again.
                (
                    Entry::Server {
                        reply: Reply::Bind,
                        statement: Some(id),
                        ..
                    },
                    sqlstate::UNDEFINED_PSTATEMENT,
                ) => ctx.server.forget(*id),
                _ => self.undo(e, ctx),
            }
        }
        self.skipping = self.queue.is_empty();
    }

    /// Drops the entries before the next Sync's, which the server skips, undoing them last first.
    pub(super) fn skip_to_sync(&mut self, ctx: &mut Ctx<'_>) {
        let mut skipped = Vec::new();
        while let Some(front) = self.queue.front() {
            if matches!(
                front,
                Entry::Server {
                    reply: Reply::Ready,
                    ..
                }
            ) {
                break;
            }
            skipped.extend(self.queue.pop_front());
        }
        for e in skipped.into_iter().rev() {
            self.undo(e, ctx);
        }
    }

    pub(super) fn undo(&self, e: Entry, ctx: &mut Ctx<'_>) {
        let undo = match e {
            Entry::Server { undo, .. } => undo,
            Entry::Local(Local::CloseComplete {
                name,
                statement: Some(s),
            }) => {
                ctx.client.put(&name, s);
                return;
            }
            Entry::Local(_) | Entry::Describe { .. } | Entry::Forced(_) => return,
        };
        match undo {
            Undo::Nothing => {}
            Undo::Server(id) => ctx.server.forget(id),
            Undo::Both { id, name, previous } => {
                ctx.server.forget(id);
                ctx.client.restore_if(&name, id, previous);
            }
            Undo::Stale(id) => ctx.server.mark_stale(id),
        }
    }
}
