//! DEALLOCATE, DEALLOCATE ALL and DISCARD ALL sent as simple queries act on the client's own
//! statements, whatever server they run on: DEALLOCATE is answered by the pooler, DISCARD ALL runs on
//! the server as well (it resets the session there).

use super::{server, ClientAction, Ctx, Entry, Local, Reply, Tracker};
use crate::proto::frontend::{self, Reset};
use crate::proto::tx::TxStatus;
use crate::proto::{encode, sqlstate};
use bytes::BytesMut;

impl Tracker {
    pub(super) fn client_query(&mut self, body: Option<&[u8]>, ctx: &mut Ctx<'_>) -> ClientAction {
        let Some(reset) = body.and_then(frontend::reset_statement) else {
            self.copy.on_client(b'Q');
            self.queue.push_back(server(Reply::Ready));
            return ClientAction::Forward;
        };
        // With replies still owed, the transaction state the reset meets is not known yet: it is
        // decided when the reset's turn comes.
        let settled = self.queue.is_empty();
        match reset {
            Reset::DiscardAll => {
                // The server runs it too. Inside a block it refuses (25001) and the statements stay;
                // when that is not known yet, they go when the server reports success.
                if settled && self.status == TxStatus::Idle {
                    ctx.client.clear();
                } else if !settled {
                    self.discard_pending = true;
                }
                self.copy.on_client(b'Q');
                self.queue.push_back(server(Reply::Ready));
                return ClientAction::Forward;
            }
            Reset::DeallocateAll => self.queue.push_back(Entry::Local(Local::Deallocate(None))),
            Reset::Deallocate(name) => self
                .queue
                .push_back(Entry::Local(Local::Deallocate(Some(name.into())))),
        }
        ClientAction::Replace
    }

    /// DEALLOCATE's answer, at its turn: in a failed transaction PostgreSQL refuses every command
    /// (25P02), DEALLOCATE included.
    pub(super) fn deallocate(
        &self,
        name: Option<&[u8]>,
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
                ctx.client.clear();
                encode::command_complete(to_client, "DEALLOCATE ALL");
            }
            Some(name) if ctx.client.remove(name) => {
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
