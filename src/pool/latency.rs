//! Latency histograms for the metrics endpoint: fixed buckets from 50 µs to 30 s, counted in
//! atomics that the relay adds to once per transaction from a local copy ([`LocalLatency`]), so a
//! query costs a few additions in task-local memory and no shared write.

use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds of the buckets in microseconds; a last, unbounded bucket (+Inf) follows.
pub const BOUNDS_US: [u64; 18] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000, 30_000_000,
];

const SLOTS: usize = BOUNDS_US.len() + 1;

fn slot(us: u64) -> usize {
    BOUNDS_US.partition_point(|&b| b < us)
}

/// A histogram shared by the workers: counts per bucket (not cumulative) and the sum.
#[derive(Debug, Default)]
pub struct Latency {
    counts: [AtomicU64; SLOTS],
    sum_us: AtomicU64,
}

/// What a scrape reads: cumulative counts per bound (the last is +Inf, the total) and the sum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatencySnapshot {
    pub cumulative: [u64; SLOTS],
    pub sum_us: u64,
}

impl LatencySnapshot {
    pub fn count(&self) -> u64 {
        self.cumulative[SLOTS - 1]
    }
}

impl Latency {
    pub fn observe_us(&self, us: u64) {
        self.counts[slot(us)].fetch_add(1, Ordering::Relaxed);
        if us != 0 {
            self.sum_us.fetch_add(us, Ordering::Relaxed);
        }
    }

    pub fn observe(&self, d: std::time::Duration) {
        self.observe_us(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }

    /// Adds a local histogram's counts (only the buckets it used) and empties it. Called once per
    /// transaction: it visits the used buckets only (callgrind put the loop over all 19 at 4 % of
    /// a `pgbench -S` transaction's instructions).
    pub fn add(&self, local: &mut LocalLatency) {
        let mut used = std::mem::take(&mut local.used);
        while used != 0 {
            let i = used.trailing_zeros() as usize;
            used &= used - 1;
            self.counts[i].fetch_add(u64::from(local.counts[i]), Ordering::Relaxed);
            local.counts[i] = 0;
        }
        if local.sum_us != 0 {
            self.sum_us.fetch_add(local.sum_us, Ordering::Relaxed);
            local.sum_us = 0;
        }
    }

    pub fn snapshot(&self) -> LatencySnapshot {
        let mut cumulative = [0u64; SLOTS];
        let mut running = 0u64;
        for (c, n) in cumulative.iter_mut().zip(self.counts.iter()) {
            running += n.load(Ordering::Relaxed);
            *c = running;
        }
        LatencySnapshot {
            cumulative,
            sum_us: self.sum_us.load(Ordering::Relaxed),
        }
    }
}

/// A task's own histogram, added to a shared [`Latency`] in one go.
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalLatency {
    counts: [u32; SLOTS],
    sum_us: u64,
    /// Bit `i` set: `counts[i]` is not 0.
    used: u32,
}

impl LocalLatency {
    pub fn observe_us(&mut self, us: u64) {
        let i = slot(us);
        self.counts[i] = self.counts[i].saturating_add(1);
        self.used |= 1 << i;
        self.sum_us = self.sum_us.saturating_add(us);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_inclusive_and_cumulative_counts_end_at_the_total() {
        let h = Latency::default();
        for us in [
            0,
            50,
            51,
            1_000,
            29_999_999,
            30_000_000,
            31_000_000,
            u64::MAX / 4,
        ] {
            h.observe_us(us);
        }
        let s = h.snapshot();
        assert_eq!(
            s.cumulative[0], 2,
            "0 and 50 µs are within the first bound (le=50µs)"
        );
        assert_eq!(s.cumulative[1], 3, "51 µs is in le=100µs");
        assert_eq!(s.cumulative[4], 4, "1 ms is in le=1ms");
        assert_eq!(s.cumulative[BOUNDS_US.len() - 1], 6, "up to 30 s");
        assert_eq!(s.count(), 8, "the last two only in +Inf");
        assert!(s.cumulative.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn a_local_histogram_adds_what_it_saw_once() {
        let h = Latency::default();
        let mut l = LocalLatency::default();
        l.observe_us(120);
        l.observe_us(130);
        l.observe_us(2_000_000);
        h.add(&mut l);
        h.add(&mut l);
        let s = h.snapshot();
        assert_eq!(s.count(), 3);
        assert_eq!(s.sum_us, 2_000_250);
        assert_eq!(s.cumulative[2], 2, "two in le=250µs");
    }
}
