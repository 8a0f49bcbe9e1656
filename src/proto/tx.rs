//! Where a server stands between requests, as the frames of both sides tell it: how many requests
//! still owe a ReadyForQuery, whether an extended-protocol batch is open, and the transaction status.
//! Sans-IO: the relay feeds it every frame it forwards and every ReadyForQuery and CopyInResponse the
//! server sends, and asks whether the server may be released.

use super::copy_in::CopyInSyncs;

/// Message type bytes, by name.
pub mod tag {
    /// Frontend (client to server) messages.
    pub mod fe {
        pub const BIND: u8 = b'B';
        pub const CLOSE: u8 = b'C';
        pub const COPY_DATA: u8 = b'd';
        pub const COPY_DONE: u8 = b'c';
        pub const COPY_FAIL: u8 = b'f';
        pub const DESCRIBE: u8 = b'D';
        pub const EXECUTE: u8 = b'E';
        pub const FLUSH: u8 = b'H';
        pub const FUNCTION_CALL: u8 = b'F';
        pub const PARSE: u8 = b'P';
        pub const QUERY: u8 = b'Q';
        pub const SYNC: u8 = b'S';
        pub const TERMINATE: u8 = b'X';
    }

    /// Backend (server to client) messages.
    pub mod be {
        pub const COPY_DATA: u8 = b'd';
        pub const COPY_IN_RESPONSE: u8 = b'G';
        pub const DATA_ROW: u8 = b'D';
        pub const ERROR_RESPONSE: u8 = b'E';
        pub const FUNCTION_CALL_RESPONSE: u8 = b'V';
        pub const PARAMETER_STATUS: u8 = b'S';
        pub const READY_FOR_QUERY: u8 = b'Z';
    }
}

/// ReadyForQuery's transaction status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TxStatus {
    /// `I`: outside any transaction block.
    #[default]
    Idle,
    /// `T`: inside a transaction block.
    InBlock,
    /// `E`: inside a failed transaction block; everything is refused until it ends.
    Failed,
}

impl TxStatus {
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            b'I' => Some(TxStatus::Idle),
            b'T' => Some(TxStatus::InBlock),
            b'E' => Some(TxStatus::Failed),
            _ => None,
        }
    }

    /// The byte a ReadyForQuery carries.
    pub fn byte(self) -> u8 {
        match self {
            TxStatus::Idle => b'I',
            TxStatus::InBlock => b'T',
            TxStatus::Failed => b'E',
        }
    }
}

/// The transaction bookkeeping of one server attachment.
#[derive(Debug, Default, Clone, Copy)]
pub struct TxTracker {
    /// Requests (Query, Sync, FunctionCall) forwarded and not yet answered with ReadyForQuery.
    pending: u32,
    /// Extended-protocol messages forwarded since the last Sync: the server is not free yet.
    unsynced: bool,
    status: TxStatus,
    /// Syncs sent into a copy-in are ignored by the server: no ReadyForQuery for them.
    copy: CopyInSyncs,
}

impl TxTracker {
    /// A client frame was forwarded. True when it starts a request on a server that owed nothing:
    /// the start of the request's (and maybe the transaction's) timing.
    pub fn on_client(&mut self, t: u8) -> bool {
        use tag::fe;
        if !self.copy.on_client(t) {
            return false;
        }
        match t {
            fe::QUERY | fe::SYNC | fe::FUNCTION_CALL => {
                self.pending += 1;
                self.unsynced = false;
                self.pending == 1
            }
            // Copy data belongs to the Query that started the copy.
            fe::COPY_DATA | fe::COPY_DONE | fe::COPY_FAIL | fe::FLUSH => false,
            _ => {
                self.unsynced = true;
                false
            }
        }
    }

    /// CopyInResponse: Syncs already sent into this copy will not be answered.
    pub fn on_copy_in(&mut self) {
        self.pending = self.pending.saturating_sub(self.copy.on_copy_in());
    }

    /// ReadyForQuery with `status`. True when it answers the last request owed.
    pub fn on_ready(&mut self, status: TxStatus) -> bool {
        self.status = status;
        self.pending = self.pending.saturating_sub(1);
        self.pending == 0
    }

    /// Requests still owed a reply.
    pub fn pending(&self) -> u32 {
        self.pending
    }

    pub fn status(&self) -> TxStatus {
        self.status
    }

    /// Inside a transaction block (failed or not).
    pub fn in_transaction(&self) -> bool {
        self.status != TxStatus::Idle
    }

    /// Nothing owed, no batch open, no transaction: the server may go back to the pool (as far as
    /// the transaction goes; frame boundaries are the scanners' to say).
    pub fn is_clean(&self) -> bool {
        self.pending == 0 && !self.unsynced && self.status == TxStatus::Idle
    }
}

#[cfg(test)]
mod tests {
    use super::tag::{be, fe};
    use super::*;

    #[test]
    fn a_simple_query_is_owed_one_ready_for_query() {
        let mut t = TxTracker::default();
        assert!(t.is_clean());
        assert!(
            t.on_client(fe::QUERY),
            "the first request starts the timing"
        );
        assert!(!t.is_clean());
        assert!(t.on_ready(TxStatus::Idle));
        assert!(t.is_clean());
    }

    #[test]
    fn an_extended_batch_holds_the_server_until_its_sync_is_answered() {
        let mut t = TxTracker::default();
        for m in [fe::PARSE, fe::BIND, fe::EXECUTE] {
            assert!(!t.on_client(m));
        }
        assert!(!t.is_clean(), "unsynced: the server is not free yet");
        assert!(t.on_client(fe::SYNC));
        assert_eq!(t.pending(), 1);
        assert!(t.on_ready(TxStatus::Idle));
        assert!(t.is_clean());
    }

    #[test]
    fn pipelined_requests_end_at_the_last_answer_and_a_block_keeps_the_server() {
        let mut t = TxTracker::default();
        assert!(t.on_client(fe::QUERY));
        assert!(
            !t.on_client(fe::QUERY),
            "the second does not restart the timing"
        );
        assert!(!t.on_ready(TxStatus::InBlock));
        assert!(t.on_ready(TxStatus::InBlock));
        assert!(t.in_transaction());
        assert!(!t.is_clean(), "inside a block the server stays");
        t.on_client(fe::QUERY);
        t.on_ready(TxStatus::Failed);
        assert_eq!(t.status().byte(), b'E');
        t.on_client(fe::QUERY);
        t.on_ready(TxStatus::Idle);
        assert!(t.is_clean());
    }

    #[test]
    fn syncs_sent_into_a_copy_are_owed_nothing() {
        // tokio-postgres: Bind, Execute, Sync, then the data, CopyDone and a second Sync.
        let mut t = TxTracker::default();
        for m in [fe::BIND, fe::EXECUTE, fe::SYNC] {
            t.on_client(m);
        }
        assert_eq!(be::COPY_IN_RESPONSE, b'G');
        t.on_copy_in();
        assert_eq!(t.pending(), 0, "the first Sync went into the copy");
        for m in [fe::COPY_DATA, fe::COPY_DONE, fe::SYNC] {
            t.on_client(m);
        }
        assert_eq!(t.pending(), 1);
        assert!(t.on_ready(TxStatus::Idle));
        assert!(t.is_clean());
    }

    #[test]
    fn status_bytes_round_trip_and_others_are_refused() {
        for b in [b'I', b'T', b'E'] {
            assert_eq!(TxStatus::from_byte(b).map(TxStatus::byte), Some(b));
        }
        assert_eq!(TxStatus::from_byte(b'X'), None);
    }
}
