//! Opening servers while PostgreSQL cannot be reached (sans-IO; the clock is passed in).
//!
//! A connect that fails for a reason that passes (refused, timed out, reset, "the database system
//! is shutting down") closes the gate: clients waiting for the pool stay queued, and no new server
//! is opened until a backoff has passed. Then one attempt probes at a time; its success opens the
//! gate for everyone, its failure doubles the backoff. So a restart or a failover costs waiting
//! clients time, bounded by `query_wait_timeout`, and not an error each, and PostgreSQL is not
//! stormed with connects while it comes back.

use std::time::Duration;
use tokio::time::Instant;

/// The first wait after a failed connect.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// The longest wait between two attempts (less if `server_login_retry` is less).
pub const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// A probe that has not reported after this long (its client was cut off mid-connect) no longer
/// keeps others from trying.
const PROBE_LIFETIME: Duration = Duration::from_secs(30);

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum ConnectGate {
    /// Servers are opened as needed.
    #[default]
    Open,
    /// The last connect failed: nothing is tried before `until`.
    Backoff { until: Instant, failures: u32 },
    /// One attempt is under way; the others wait for its outcome.
    Probing { since: Instant, failures: u32 },
}

impl ConnectGate {
    /// Whether a server may be opened now. The first attempt after a backoff becomes the probe.
    pub fn try_pass(&mut self, now: Instant) -> bool {
        match *self {
            ConnectGate::Open => true,
            ConnectGate::Backoff { until, failures } if now >= until => {
                *self = ConnectGate::Probing {
                    since: now,
                    failures,
                };
                true
            }
            ConnectGate::Probing { since, failures }
                if now.saturating_duration_since(since) >= PROBE_LIFETIME =>
            {
                *self = ConnectGate::Probing {
                    since: now,
                    failures,
                };
                true
            }
            ConnectGate::Backoff { .. } | ConnectGate::Probing { .. } => false,
        }
    }

    pub fn is_open(&self) -> bool {
        *self == ConnectGate::Open
    }

    /// A server was opened: everyone may open servers again.
    pub fn succeeded(&mut self) {
        *self = ConnectGate::Open;
    }

    /// A connect failed for a passing reason; returns how long until the next attempt, which
    /// doubles with each failure in a row up to [`MAX_BACKOFF`] (or `ceiling`, if less).
    pub fn failed(&mut self, now: Instant, ceiling: Duration) -> Duration {
        let failures = match *self {
            ConnectGate::Open => 1,
            ConnectGate::Backoff { failures, .. } | ConnectGate::Probing { failures, .. } => {
                failures.saturating_add(1)
            }
        };
        let doubled = FIRST_BACKOFF.saturating_mul(1 << (failures - 1).min(16));
        let wait = doubled.min(MAX_BACKOFF).min(ceiling);
        *self = ConnectGate::Backoff {
            until: now + wait,
            failures,
        };
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_probe_at_a_time_after_a_backoff_that_doubles() {
        let t0 = Instant::now();
        let mut g = ConnectGate::default();
        assert!(g.try_pass(t0) && g.try_pass(t0), "open: everyone connects");
        assert_eq!(g.failed(t0, Duration::from_secs(15)), FIRST_BACKOFF);
        assert!(!g.try_pass(t0 + Duration::from_millis(49)));
        let t1 = t0 + FIRST_BACKOFF;
        assert!(g.try_pass(t1), "the first attempt after the backoff probes");
        assert!(!g.try_pass(t1), "and the others wait for it");
        assert_eq!(g.failed(t1, Duration::from_secs(15)), FIRST_BACKOFF * 2);
        for _ in 0..10 {
            g.failed(t1, Duration::from_secs(15));
        }
        assert_eq!(g.failed(t1, Duration::from_secs(15)), MAX_BACKOFF);
        assert_eq!(
            g.failed(t1, Duration::from_millis(200)),
            Duration::from_millis(200),
            "server_login_retry below the cap is the cap"
        );
        g.succeeded();
        assert!(g.is_open() && g.try_pass(t1));
    }

    #[test]
    fn a_probe_that_never_reports_stops_blocking() {
        let t0 = Instant::now();
        let mut g = ConnectGate::default();
        g.failed(t0, Duration::from_secs(15));
        assert!(g.try_pass(t0 + FIRST_BACKOFF));
        assert!(!g.try_pass(t0 + Duration::from_secs(10)));
        assert!(g.try_pass(t0 + FIRST_BACKOFF + PROBE_LIFETIME));
    }
}
