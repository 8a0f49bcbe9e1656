//! A client's named statements on the server it holds: its Parse is sent on under the pooler's name,
//! and a Bind or Describe of it first makes sure this server has it (preparing it, and closing a
//! stale or evicted copy, as needed).

use super::{server, server_name, verify, Ctx, Entry, Local, Reply, Tracker, Undo, Use};
use super::{ClientAction, PreparedStats, Statement};
use crate::proto::tx::TxStatus;
use crate::proto::{encode, frontend, sqlstate, ProtoError};
use bytes::BytesMut;
use std::sync::Arc;

impl Tracker {
    pub(super) fn client_parse(
        &mut self,
        body: &[u8],
        ctx: &mut Ctx<'_>,
        out: &mut BytesMut,
    ) -> Result<ClientAction, ProtoError> {
        let p = frontend::parse(body)?;
        if p.name.is_empty() {
            self.queue.push_back(server(Reply::Parse));
            return Ok(ClientAction::Forward);
        }
        PreparedStats::bump(&ctx.stats.client_parses);
        // Only at the start of a batch, with no shape check or heal under way: with messages of the
        // batch still owed, an earlier one may fail (or be healed and replayed), and a shape check
        // takes the first forced reply in the queue for its own, so the forced error would answer
        // the wrong message (the prepared_tracker fuzz target found both: a Bind of a stale
        // statement, then a Parse of a settled name). There the name is replaced, as it was before
        // 42P05 was raised.
        if self.queue.is_empty()
            && matches!(self.verify, super::verify::Verify::Off)
            && matches!(self.heal, super::heal::Heal::Off)
            && ctx.client.get(p.name).is_some()
            && self.settled(p.name)
            && self.status != TxStatus::Failed
        {
            // PostgreSQL refuses to redefine a name: the server must fail right here too, so that
            // what follows is skipped to the Sync as there (see large.rs).
            self.force_error(out, Local::AlreadyExists(p.name.into()));
            return Ok(ClientAction::Replace);
        }
        if !ctx.client.fits(p.name, p.definition, ctx.limits) {
            // Refused where it stands, as a Parse PostgreSQL could not run: the batch ends there.
            self.force_error(out, Local::TooMany(ctx.limits));
            return Ok(ClientAction::Replace);
        }
        let stmt = ctx.registry.intern(p.definition);
        let previous = ctx.client.insert(p.name, stmt.clone());
        // A client's own Parse always reaches the server, even when the server has the statement:
        // PostgreSQL plans it afresh then, so a client that prepares after a schema change gets the
        // new result shape, not a cached plan from before it. The old copy is closed first.
        if ctx.server.touch(stmt.id) {
            ctx.server.mark_stale(stmt.id);
        }
        self.send_parse(
            &stmt,
            ctx,
            out,
            false,
            Undo::Both {
                id: stmt.id,
                name: p.name.into(),
                previous,
            },
        );
        Ok(ClientAction::Replace)
    }

    /// A Bind, whole, or only its head when `streamed` more bytes of it follow unseen (large.rs).
    pub(super) fn client_bind(
        &mut self,
        body: &[u8],
        streamed: usize,
        ctx: &mut Ctx<'_>,
        out: &mut BytesMut,
    ) -> Result<ClientAction, ProtoError> {
        let b = frontend::bind(body)?;
        let stmt = (!b.statement.is_empty())
            .then(|| ctx.client.get(b.statement).cloned())
            .flatten();
        let Some(stmt) = stmt else {
            // Unnamed, or a name the client never prepared: the server answers as it would.
            self.queue.push_back(server(Reply::Bind));
            return Ok(ClientAction::Forward);
        };
        PreparedStats::bump(&ctx.stats.binds);
        let kind = if streamed > 0 {
            Use::StreamedBind
        } else {
            Use::Bind
        };
        self.use_statement(&stmt, b.statement, ctx, out, kind, |to| {
            encode::bind_head(to, b.portal, &stmt.server_name, b.rest, streamed)
        });
        self.queue.push_back(Entry::Server {
            reply: Reply::Bind,
            swallow: false,
            undo: Undo::Nothing,
            statement: Some(stmt.id),
            marks: super::Marks::default(),
        });
        Ok(ClientAction::Replace)
    }

    /// Gets `stmt` (the client's `name`) ready on this server for a message that uses it, a Bind or
    /// a statement Describe, and writes that message with `write`: into `out`, or into the held
    /// bytes when the statement's columns must be checked first (verify.rs). A batch opening with
    /// a Bind may be replayed after a stale plan (heal.rs); a streamed Bind is neither held nor
    /// replayed, since its bytes are not kept.
    pub(super) fn use_statement(
        &mut self,
        stmt: &Arc<Statement>,
        name: &[u8],
        ctx: &mut Ctx<'_>,
        out: &mut BytesMut,
        kind: Use,
        write: impl FnOnce(&mut BytesMut),
    ) {
        let client_shape = ctx.client.shape(name);
        let mut server_has = ctx.server.touch(stmt.id);
        let mut check = self.shape_check(
            stmt.id,
            client_shape,
            server_has,
            ctx.server.shape(stmt.id),
            ctx.stats,
        );
        if kind == Use::StreamedBind && matches!(check, verify::BindCheck::Hold(_)) {
            PreparedStats::bump(&ctx.stats.unchecked_shapes);
            check = verify::BindCheck::Go;
        }
        let may_heal = kind == Use::Bind;
        let opened = self.queue.is_empty() && self.status == TxStatus::Idle;
        if server_has && !opened && matches!(check, verify::BindCheck::Hold(_)) {
            // A copy of unknown or other columns may have been planned before a schema change (for
            // another client, or another name of this one's with the same query), and describing it
            // would fail with 0A000. Mid-batch the pooler cannot recover from that with a Sync of its
            // own (verify.rs), and the error would reach a client whose statement PostgreSQL would
            // run: one prepared after the change, elsewhere. So the copy is closed and prepared
            // afresh first; a fresh copy has the columns of now, which is what PostgreSQL compares
            // the client's statement with.
            ctx.server.mark_stale(stmt.id);
            server_has = false;
        }
        if server_has {
            PreparedStats::bump(&ctx.stats.hits);
            if may_heal && client_shape.is_none() {
                self.consider_recording(stmt);
            }
        } else {
            self.send_parse(stmt, ctx, out, true, Undo::Server(stmt.id));
        }
        match check {
            verify::BindCheck::Hold(expected) => {
                self.start_hold(stmt, expected, opened, out);
                write(&mut self.replay);
            }
            verify::BindCheck::Go => write(out),
        }
    }

    pub(super) fn send_parse(
        &mut self,
        stmt: &Arc<Statement>,
        ctx: &mut Ctx<'_>,
        out: &mut BytesMut,
        swallow: bool,
        undo: Undo,
    ) {
        if ctx.server.take_stale(stmt.id) {
            self.close_on_server(stmt.id, out);
        }
        encode::parse_message(out, &stmt.server_name, &stmt.definition);
        PreparedStats::bump(&ctx.stats.server_parses);
        self.queue.push_back(Entry::Server {
            reply: Reply::Parse,
            swallow,
            undo,
            statement: Some(stmt.id),
            marks: super::Marks::default(),
        });
        if let Some(victim) = ctx.server.insert(stmt.id, ctx.capacity) {
            PreparedStats::bump(&ctx.stats.evictions);
            self.close_on_server(victim, out);
        }
    }

    pub(super) fn close_on_server(&mut self, id: u64, out: &mut BytesMut) {
        encode::statement_target(out, b'C', &server_name(id));
        self.queue.push_back(Entry::Server {
            reply: Reply::Close,
            swallow: true,
            undo: Undo::Stale(id),
            statement: None,
            marks: super::Marks::default(),
        });
    }
}

impl Tracker {
    /// Whether what `name` means now is what it will mean when this message's turn comes: no
    /// Parse, Close, DEALLOCATE or DISCARD ALL of it is still on its way (each may yet fail or
    /// succeed). Otherwise a second Parse goes to the server as it is and the outcome decides.
    fn settled(&self, name: &[u8]) -> bool {
        !self.queue.iter().any(|e| match e {
            Entry::Server {
                undo: Undo::Both { name: n, .. },
                ..
            } => &**n == name,
            Entry::Local(Local::CloseComplete { name: n, .. }) => &**n == name,
            Entry::Local(Local::Deallocate { name: n, .. }) => {
                n.as_deref().is_none_or(|n| n == name)
            }
            _ => false,
        })
    }
}

/// The 54000 a Parse past the client's limits gets.
pub(super) fn too_many(to_client: &mut BytesMut, limits: super::super::ClientLimits) {
    let message = format!(
        "too many prepared statements on this connection: the pooler keeps at most {} named \
         statements and {} bytes of their names and query texts per client",
        limits.statements, limits.bytes
    );
    super::large::limit_error(
        to_client,
        &message,
        "Close or DEALLOCATE statements no longer used, or raise max_client_statements or \
         max_client_statement_bytes in the pooler's configuration.",
    );
}

/// The 42P05 a second Parse of a name gets, as PostgreSQL words it.
pub(super) fn already_exists(to_client: &mut BytesMut, name: &[u8]) {
    let message = format!(
        "prepared statement \"{}\" already exists",
        String::from_utf8_lossy(name)
    );
    encode::error_response(
        to_client,
        encode::Severity::Error,
        sqlstate::DUPLICATE_PSTATEMENT,
        &message,
        None,
    );
}
