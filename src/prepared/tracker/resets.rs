//! DEALLOCATE, DEALLOCATE ALL and DISCARD ALL sent as simple queries act on the client's own
//! statements, whatever server they run on: DEALLOCATE is answered by the pooler, DISCARD ALL runs on
//! the server as well (it resets the session there). Sent through the extended protocol (psycopg
//! does in a pipeline), DEALLOCATE ALL and DISCARD ALL run on the server, and its CommandComplete
//! clears the client's names given before them.

use super::{runs, ClientAction, Ctx, Entry, Local, Marks, Reply, Tracker};
use crate::prepared::Deallocated;
use crate::proto::frontend::{self, Reset};
use crate::proto::tx::TxStatus;
use crate::proto::{encode, sqlstate};
use bytes::BytesMut;

impl Tracker {
    pub(super) fn client_query(&mut self, body: Option<&[u8]>, ctx: &mut Ctx<'_>) -> ClientAction {
        // Each reset acts on the names given before it in the client's stream, at its turn: a
        // Parse pipelined after it keeps its name, as on PostgreSQL.
        let marks = Marks::now(ctx);
        let reset = body.and_then(frontend::reset_statement);
        let name = match reset {
            // The server runs it too (it resets the session there); inside a block it refuses
            // (25001) and the statements stay. Its CommandComplete clears them (on_server).
            None | Some(Reset::DiscardAll) => {
                self.copy.on_client(b'Q');
                self.queue.push_back(runs(Reply::Ready, marks));
                return ClientAction::Forward;
            }
            Some(Reset::DeallocateAll) => None,
            Some(Reset::Deallocate(name)) => Some(name.into()),
        };
        self.queue.push_back(Entry::Local(Local::Deallocate {
            name,
            mark: marks.client,
        }));
        ClientAction::Replace
    }

    /// DEALLOCATE's answer, at its turn: in a failed transaction PostgreSQL refuses every command
    /// (25P02), DEALLOCATE included.
    pub(super) fn deallocate(
        &self,
        name: Option<&[u8]>,
        mark: u64,
        ctx: &mut Ctx<'_>,
        to_client: &mut BytesMut,
    ) {
        let refused = |code, message: &str, to_client: &mut BytesMut| {
            encode::error_response(to_client, encode::Severity::Error, code, message, None);
        };
        match name {
            _ if self.status == TxStatus::Failed => refused(
                sqlstate::IN_FAILED_TRANSACTION,
                "current transaction is aborted, commands ignored until end of transaction block",
                to_client,
            ),
            None => {
                ctx.client.clear_before(mark);
                encode::command_complete(to_client, "DEALLOCATE ALL");
            }
            // Named again by a Parse pipelined after the DEALLOCATE: it was there before it too
            // (else the application would not have deallocated it), and the new one stays.
            Some(name) if ctx.client.deallocate(name, mark) != Deallocated::Missing => {
                encode::command_complete(to_client, "DEALLOCATE")
            }
            Some(name) => refused(
                sqlstate::UNDEFINED_PSTATEMENT,
                &format!(
                    "prepared statement \"{}\" does not exist",
                    String::from_utf8_lossy(name)
                ),
                to_client,
            ),
        }
        encode::ready_for_query(to_client, self.status.byte());
    }
}
