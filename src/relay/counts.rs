//! PgBouncer's traffic counters for one attachment: bytes, queries, transactions and their times.
//!
//! Counted in plain fields while relaying and added to the pool's shared atomics once per
//! transaction (and for what is left when the attachment ends): the hot path touches no cache line
//! that other workers write.

use crate::pool::latency::LocalLatency;
use crate::pool::PoolStats;
use crate::proto::tx::TxStatus;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::time::Instant;

/// What an attachment moved since it last added to the pool's counters.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Counts {
    /// Bytes from the client, and bytes from the server (to the client).
    pub received: u64,
    pub sent: u64,
    /// ReadyForQuery answers: one per simple Query or extended-protocol Sync.
    pub queries: u64,
    /// Transactions ended (ReadyForQuery `I`), explicit blocks and single statements alike.
    pub xacts: u64,
    pub query_us: u64,
    pub xact_us: u64,
    /// The same times, bucketed for the metrics endpoint's histograms.
    query_latency: LocalLatency,
    xact_latency: LocalLatency,
    /// When the request now in flight, and the transaction it belongs to, began.
    query_start: Option<Instant>,
    xact_start: Option<Instant>,
}

impl Counts {
    /// A request goes out to an idle server, at `now`.
    pub fn request_started(&mut self, now: Instant) {
        self.query_start = Some(now);
        self.xact_start.get_or_insert(now);
    }

    /// When the request in flight began (for `query_timeout`); None while nothing is owed.
    pub fn busy_since(&self) -> Option<Instant> {
        self.query_start
    }

    /// The server answered every request in flight; `status` is its ReadyForQuery status.
    pub fn requests_answered(&mut self, status: TxStatus, now: Instant) {
        let since = |t: Option<Instant>| t.map_or(0, |t| micros(now.saturating_duration_since(t)));
        let query = since(self.query_start.take());
        self.queries += 1;
        self.query_us += query;
        self.query_latency.observe_us(query);
        if status == TxStatus::Idle {
            let xact = since(self.xact_start.take());
            self.xacts += 1;
            self.xact_us += xact;
            self.xact_latency.observe_us(xact);
        }
    }

    /// Adds what was counted to `stats` and starts again (a transaction under way keeps its start).
    pub fn add_to(&mut self, stats: &PoolStats) {
        let add = |c: &AtomicU64, v: u64| {
            if v != 0 {
                c.fetch_add(v, Ordering::Relaxed);
            }
        };
        add(&stats.received, self.received);
        add(&stats.sent, self.sent);
        add(&stats.queries, self.queries);
        add(&stats.xacts, self.xacts);
        add(&stats.query_us, self.query_us);
        add(&stats.xact_us, self.xact_us);
        stats.query_latency.add(&mut self.query_latency);
        stats.xact_latency.add(&mut self.xact_latency);
        *self = Counts {
            query_start: self.query_start,
            xact_start: self.xact_start,
            ..Counts::default()
        };
    }
}

fn micros(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_block_of_two_queries_is_one_transaction_with_both_times() {
        let stats = PoolStats::default();
        let t0 = Instant::now();
        let mut c = Counts::default();
        c.request_started(t0);
        c.requests_answered(TxStatus::InBlock, t0 + Duration::from_micros(100));
        c.request_started(t0 + Duration::from_micros(1_000));
        c.requests_answered(TxStatus::Idle, t0 + Duration::from_micros(1_300));
        c.received = 50;
        c.add_to(&stats);
        let totals = stats.totals();
        use crate::pool::stats::idx;
        assert_eq!(totals[idx::QUERIES], 2);
        assert_eq!(totals[idx::XACTS], 1);
        assert_eq!(totals[idx::QUERY_US], 400, "100 + 300 µs");
        assert_eq!(
            totals[idx::XACT_US],
            1_300,
            "from the first request to the end"
        );
        assert_eq!(totals[idx::RECEIVED], 50);
        assert_eq!(stats.query_latency.snapshot().count(), 2);
        let xact = stats.xact_latency.snapshot();
        assert_eq!((xact.count(), xact.sum_us), (1, 1_300));
        // Added once: a second add adds nothing.
        c.add_to(&stats);
        assert_eq!(stats.totals(), totals);
        assert_eq!(stats.query_latency.snapshot().count(), 2);
    }
}
