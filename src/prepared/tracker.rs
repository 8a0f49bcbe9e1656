//! The statement tracker of one client–server attachment (sans-IO).
//!
//! It sees every frame in both directions. Client frames that name a statement are rewritten to the
//! pooler's name, with a Parse added first when the server lacks the statement; Close and DEALLOCATE
//! of a client's statement are answered by the pooler. A queue holds, in order, every reply the server
//! owes and every reply the pooler owes, so replies reach the client in the order it sent its messages,
//! and replies to messages the pooler added are swallowed exactly once. After an error the server
//! skips to the next Sync, and so does the queue.

use super::{ClientEntry, ClientStatements, PreparedStats, Registry, ServerStatements, Statement};
use crate::proto::copy_in::CopyInSyncs;
use crate::proto::frontend;
use crate::proto::tx::TxStatus;
use crate::proto::{encode, ProtoError};
use bytes::BytesMut;
use std::collections::VecDeque;

/// Everything the tracker reads and updates besides its own queue.
#[derive(Debug)]
pub struct Ctx<'a> {
    pub registry: &'a Registry,
    pub client: &'a mut ClientStatements,
    pub server: &'a mut ServerStatements,
    pub stats: &'a PreparedStats,
    /// The statements this pool's servers have accepted (local.rs).
    pub accepted: &'a super::local::Accepted,
    /// `max_prepared_statements`: how many statements one server keeps.
    pub capacity: usize,
    /// `max_held_message`: the most client bytes a shape check may hold back (verify.rs).
    pub max_held: usize,
    /// How much the client may keep named.
    pub limits: super::ClientLimits,
}

/// The reply a message expects from the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    Parse,
    Bind,
    Describe,
    Execute,
    Close,
    /// Sync, simple Query and FunctionCall: answered up to ReadyForQuery.
    Ready,
}

/// What to undo when a message fails or is skipped after an earlier error.
#[derive(Debug)]
enum Undo {
    Nothing,
    /// The server never prepared this statement.
    Server(u64),
    /// The server never prepared this statement, and the client's name means what it meant before.
    Both {
        id: u64,
        name: Box<[u8]>,
        previous: ClientEntry,
    },
    /// A Close did not run: the server still has the statement.
    Stale(u64),
}

/// Stream positions (`ClientStatements::mark`, `ServerStatements::mark`).
#[derive(Debug, Clone, Copy, Default)]
struct Marks {
    client: u64,
    server: u64,
}

impl Marks {
    fn now(ctx: &Ctx<'_>) -> Self {
        Marks {
            client: ctx.client.mark(),
            server: ctx.server.mark(),
        }
    }
}

#[derive(Debug)]
enum Entry {
    /// A reply the server owes; `swallow` when the message was the pooler's own.
    Server {
        reply: Reply,
        swallow: bool,
        undo: Undo,
        /// The pooler statement a Bind used, to re-prepare it after "cached plan must not change".
        statement: Option<u64>,
        /// For an Execute or a simple Query: where the client's and the server's streams were when
        /// it was sent. If it runs DEALLOCATE ALL or DISCARD ALL, the statements named and prepared
        /// before it go (the ones pipelined after it stay).
        marks: Marks,
    },
    /// A Describe of a named statement, whose answer records a result shape (verify.rs).
    Describe {
        swallow: bool,
        statement: u64,
        of: verify::ShapeOf,
    },
    /// The pooler's own failing Parse, whose error the client hears as this reply instead: 0A000
    /// for a stale shape (verify.rs), 54000 for a named Parse too large to hold (large.rs).
    Forced(Local),
    /// A reply the pooler gives itself, once every reply before it has gone out.
    Local(Local),
}

impl Entry {
    /// The reply the server owes for this entry, if it owes one.
    fn reply(&self) -> Option<Reply> {
        match self {
            Entry::Server { reply, .. } => Some(*reply),
            Entry::Describe { .. } => Some(Reply::Describe),
            Entry::Forced(_) => Some(Reply::Parse),
            Entry::Local(_) => None,
        }
    }
}

#[derive(Debug)]
enum Local {
    /// The client's Close of its statement. Its name is gone from the client's map at once, so that
    /// later messages see it gone; if an earlier error makes the server skip the Close, the name
    /// comes back.
    CloseComplete {
        name: Box<[u8]>,
        statement: Option<ClientEntry>,
    },
    /// A client's DEALLOCATE (`None`: ALL), sent at the client's stream position `mark`, answered
    /// and applied at its turn.
    Deallocate { name: Option<Box<[u8]>>, mark: u64 },
    /// 0A000 for a Bind of a statement whose columns changed since the client prepared it.
    StaleStatement,
    /// 54000 for a named Parse of `size` bytes, over `max_held_message`.
    TooLarge { size: usize, max: usize },
    /// 42P05 for a Parse of a name the client already has.
    AlreadyExists(Box<[u8]>),
    /// 54000 for a Parse past the client's limits.
    TooMany(super::ClientLimits),
}

/// The message [`Tracker::use_statement`] readies a statement for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Use {
    Describe,
    Bind,
    /// A Bind too large to hold: its head is rewritten and the rest streams (large.rs).
    StreamedBind,
}

/// What the relay does with a client frame.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientAction {
    /// Send it as it is.
    Forward,
    /// Drop it; the bytes the tracker wrote to `replacement` (maybe none) go in its place.
    Replace,
    /// Drop it: its bytes are held by the tracker and go to the server later.
    Held,
}

#[derive(Debug)]
pub struct Tracker {
    queue: VecDeque<Entry>,
    /// The transaction status of the latest ReadyForQuery, for the pooler's own ReadyForQuery.
    status: TxStatus,
    /// Syncs the server ignores in copy-in mode owe no ReadyForQuery.
    copy: CopyInSyncs,
    /// The server reported an error and is skipping the client's messages until its next Sync, which
    /// the client had not sent yet: its messages until then are dropped, as the server would.
    skipping: bool,
    /// A batch kept to be replayed once if its statement's cached plan went stale (heal.rs).
    heal: heal::Heal,
    /// The bytes of that batch, from its Bind to its Sync, or the messages held while a copy's shape
    /// is checked; the buffer is reused.
    replay: BytesMut,
    /// Holding the client's messages until a copy's result shape is known (verify.rs).
    verify: verify::Verify,
}

impl Default for Tracker {
    fn default() -> Self {
        Self {
            queue: VecDeque::new(),
            status: TxStatus::Idle,
            copy: CopyInSyncs::default(),
            skipping: false,
            heal: heal::Heal::Off,
            replay: BytesMut::new(),
            verify: verify::Verify::Off,
        }
    }
}

fn server(reply: Reply) -> Entry {
    runs(reply, Marks::default())
}

/// An Execute or simple Query, sent at `marks`.
fn runs(reply: Reply, marks: Marks) -> Entry {
    Entry::Server {
        reply,
        swallow: false,
        undo: Undo::Nothing,
        statement: None,
        marks,
    }
}

/// The name a statement has on servers.
pub fn server_name(id: u64) -> Vec<u8> {
    format!("PGSLUICE_{id}").into_bytes()
}

impl Tracker {
    /// True when no reply is owed by anyone: the server may be released.
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty()
    }

    /// A new server attachment: whatever was owed on the last one is gone with it (buffers stay).
    pub fn begin_attachment(&mut self) {
        self.queue.clear();
        self.status = TxStatus::Idle;
        self.copy = CopyInSyncs::default();
        self.skipping = false;
        self.heal = heal::Heal::Off;
        self.replay.clear();
        self.verify = verify::Verify::Off;
    }

    /// Handles one client frame. `body` is `None` for a frame that streams through (its body is not
    /// held); Parse, Bind, Describe and Close always come whole. Replies the pooler can give at once
    /// are appended to `to_client`.
    pub fn on_client(
        &mut self,
        tag: u8,
        body: Option<&[u8]>,
        ctx: &mut Ctx<'_>,
        replacement: &mut BytesMut,
        to_client: &mut BytesMut,
    ) -> Result<ClientAction, ProtoError> {
        if !self.holding() {
            return self.handle_client(tag, body, ctx, replacement, to_client);
        }
        let from = replacement.len();
        let action = self.handle_client(tag, body, ctx, replacement, to_client)?;
        let held = self.hold_frame(
            tag,
            body,
            action == ClientAction::Forward,
            replacement,
            from,
        )?;
        if self.replay.len() > ctx.max_held {
            // Holding more than a message's worth for a check: it goes now, unchecked.
            PreparedStats::bump(&ctx.stats.unchecked_shapes);
            self.release(replacement);
        }
        Ok(if held {
            ClientAction::Held
        } else {
            ClientAction::Replace
        })
    }

    fn handle_client(
        &mut self,
        tag: u8,
        body: Option<&[u8]>,
        ctx: &mut Ctx<'_>,
        replacement: &mut BytesMut,
        to_client: &mut BytesMut,
    ) -> Result<ClientAction, ProtoError> {
        if self.skipping {
            if tag != b'S' {
                return Ok(ClientAction::Replace);
            }
            self.skipping = false;
        }
        // A simple Query counts only if it reaches the server (see client_query).
        if tag != b'Q' && !self.copy.on_client(tag) {
            return Ok(ClientAction::Forward);
        }
        let rewritten_from = replacement.len();
        let action = match (tag, body) {
            (b'P', Some(body)) => self.client_parse(body, ctx, replacement)?,
            (b'B', Some(body)) => self.client_bind(body, 0, ctx, replacement)?,
            (b'D', Some(body)) => {
                let d = frontend::target(body, "Describe")?;
                let known = (d.kind == b'S' && !d.name.is_empty())
                    .then(|| ctx.client.get(d.name).cloned())
                    .flatten();
                match known {
                    Some(stmt) => {
                        // A statement described before (its columns known) is checked like a Bind.
                        self.use_statement(&stmt, d.name, ctx, replacement, Use::Describe, |to| {
                            encode::statement_target(to, b'D', &stmt.server_name)
                        });
                        self.queue.push_back(Entry::Describe {
                            swallow: false,
                            statement: stmt.id,
                            of: verify::ShapeOf::Client(d.name.into()),
                        });
                        ClientAction::Replace
                    }
                    None => {
                        self.queue.push_back(server(Reply::Describe));
                        ClientAction::Forward
                    }
                }
            }
            (b'C', Some(body)) => {
                let c = frontend::target(body, "Close")?;
                if c.kind == b'S' && !c.name.is_empty() {
                    // The server copy stays for other clients; closing an unknown name is no error.
                    let statement = ctx.client.take(c.name);
                    self.queue.push_back(Entry::Local(Local::CloseComplete {
                        name: c.name.into(),
                        statement,
                    }));
                    ClientAction::Replace
                } else {
                    self.queue.push_back(server(Reply::Close));
                    ClientAction::Forward
                }
            }
            (b'P' | b'B' | b'D' | b'C', None) => return Err(ProtoError::Malformed("extended")),
            (b'E', _) => {
                self.queue.push_back(runs(Reply::Execute, Marks::now(ctx)));
                ClientAction::Forward
            }
            (b'Q', body) => self.client_query(body, ctx),
            (b'S' | b'F', _) => {
                self.queue.push_back(server(Reply::Ready));
                ClientAction::Forward
            }
            // Flush, copy data and anything else: no reply of their own.
            _ => ClientAction::Forward,
        };
        let sent = match action {
            ClientAction::Forward => None,
            ClientAction::Replace | ClientAction::Held => Some(&replacement[rewritten_from..]),
        };
        self.record(tag, body, sent);
        self.flush_local(ctx, to_client);
        Ok(action)
    }

    /// Handles one server frame; returns true when the frame must be swallowed (a reply to the
    /// pooler's own message). Pooler replies that come due after it are appended to `to_client`; a
    /// batch replayed after a stale plan goes to `to_server`.
    pub fn on_server(
        &mut self,
        tag: u8,
        body: Option<&[u8]>,
        ctx: &mut Ctx<'_>,
        to_client: &mut BytesMut,
        to_server: &mut BytesMut,
    ) -> bool {
        // Rows answer only the client's own Executes (the pooler sends none): nothing to track, and
        // the commonest frame of all.
        if tag == b'D' {
            return false;
        }
        if let Some(swallow) = self.heal_on_server(tag, body, ctx, to_server) {
            return swallow;
        }
        if tag == b'C'
            && body
                .is_some_and(|b| b.starts_with(b"DISCARD ALL") || b.starts_with(b"DEALLOCATE ALL"))
        {
            // Run by the server (a simple query, or an Execute, as psycopg sends it in a
            // pipeline): the server's statements are gone, and the client's named before it.
            match self.queue.front() {
                Some(Entry::Server { marks, .. }) => {
                    ctx.server.clear_before(marks.server);
                    ctx.client.clear_before(marks.client);
                }
                _ => ctx.server.clear(),
            }
        }
        if tag == b'G' {
            let ignored = self.copy.on_copy_in();
            self.drop_ignored_syncs(ignored);
        }
        let Some(reply) = self.queue.front().and_then(Entry::reply) else {
            // Asynchronous messages, or replies the tracker does not own: pass them on.
            return false;
        };
        let swallow = match (tag, reply) {
            (b'T' | b'n', Reply::Describe)
                if matches!(self.queue.front(), Some(Entry::Describe { .. })) =>
            {
                self.described(tag, body, ctx, to_server)
            }
            // ParameterDescription, before the shape: the pooler's own Describe swallows it too.
            (b't', Reply::Describe) => matches!(
                self.queue.front(),
                Some(Entry::Describe { swallow: true, .. })
            ),
            (b'1', Reply::Parse) => {
                // Later Parse + Sync batches of it may be answered without a server (local.rs).
                if let Some(Entry::Server {
                    statement: Some(id),
                    ..
                }) = self.queue.front()
                {
                    ctx.accepted.learn(*id);
                }
                self.complete()
            }
            (b'2', Reply::Bind)
            | (b'3', Reply::Close)
            | (b'T' | b'n', Reply::Describe)
            | (b'C' | b'I' | b's', Reply::Execute) => self.complete(),
            (b'Z', _) => {
                if let Some(s) = body.and_then(|b| b.first().copied().and_then(TxStatus::from_byte))
                {
                    self.status = s;
                }
                // Normally the front is the Sync; anything before it was skipped.
                self.skip_to_sync(ctx);
                // The pooler's own Sync (verify.rs) is answered to the pooler.
                matches!(
                    self.queue.pop_front(),
                    Some(Entry::Server { swallow: true, .. })
                )
            }
            (b'E', _) if self.holding() && self.verify_failed(body, ctx, to_server) => true,
            (b'E', _) if matches!(self.queue.front(), Some(Entry::Forced(_))) => {
                // What a shape check holds goes now, as after any error: the server skips it to
                // the Sync, which is among it. Held back, that Sync would never be answered.
                self.release(to_server);
                self.forced_error(body, ctx)
            }
            (b'E', r) if r != Reply::Ready => {
                // What is held goes now: the server skips it to the Sync, as it would have.
                self.release(to_server);
                self.fail(body, ctx);
                false
            }
            _ => false,
        };
        self.flush_local(ctx, to_client);
        swallow
    }

    /// The server went into copy-in mode for the front message: the first `n` Syncs queued after it
    /// will get no ReadyForQuery.
    fn drop_ignored_syncs(&mut self, mut n: u32) {
        let mut i = 1;
        while n > 0 && i < self.queue.len() {
            if matches!(
                self.queue[i],
                Entry::Server {
                    reply: Reply::Ready,
                    ..
                }
            ) {
                let _ = self.queue.remove(i);
                n -= 1;
            } else {
                i += 1;
            }
        }
    }

    /// Pops the front entry, which the current frame completes; returns whether to swallow it.
    fn complete(&mut self) -> bool {
        match self.queue.pop_front() {
            Some(Entry::Server { swallow, .. } | Entry::Describe { swallow, .. }) => swallow,
            _ => false,
        }
    }

    /// Sends the pooler's own replies that have come to the front of the queue.
    fn flush_local(&mut self, ctx: &mut Ctx<'_>, to_client: &mut BytesMut) {
        while let Some(Entry::Local(_)) = self.queue.front() {
            let Some(Entry::Local(local)) = self.queue.pop_front() else {
                break;
            };
            match local {
                Local::CloseComplete { .. } => encode::close_complete(to_client),
                Local::StaleStatement => Self::stale_error(to_client),
                Local::TooLarge { size, max } => large::too_large_error(to_client, size, max),
                Local::AlreadyExists(name) => statements::already_exists(to_client, &name),
                Local::TooMany(limits) => statements::too_many(to_client, limits),
                Local::Deallocate { name, mark } => {
                    self.deallocate(name.as_deref(), mark, ctx, to_client);
                }
            }
        }
    }
}

mod heal;
mod large;
pub use large::HeadAction;
mod recovery;
mod resets;
mod statements;
mod verify;

#[cfg(test)]
mod tests;
