//! A pool's counters, PgBouncer's eleven, and their averages over the last `stats_period`.
//!
//! Counters are plain atomics, added once per checkout or per transaction, never per message: the
//! relay counts bytes, queries and times locally (relay/counts.rs) and adds them as each
//! transaction ends.

use super::latency::Latency;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Positions in [`PoolStats::totals`], in PgBouncer's SHOW STATS order.
pub mod idx {
    pub const ASSIGNMENTS: usize = 0;
    pub const XACTS: usize = 1;
    pub const QUERIES: usize = 2;
    pub const RECEIVED: usize = 3;
    pub const SENT: usize = 4;
    pub const XACT_US: usize = 5;
    pub const QUERY_US: usize = 6;
    pub const WAIT_US: usize = 7;
    pub const CLIENT_PARSES: usize = 8;
    pub const SERVER_PARSES: usize = 9;
    pub const BINDS: usize = 10;
}

/// Counters for the stats line, the admin console and, later, metrics.
#[derive(Debug, Default)]
pub struct PoolStats {
    /// Checkouts: a server assigned to a client.
    pub checkouts: AtomicU64,
    pub xacts: AtomicU64,
    pub queries: AtomicU64,
    /// Bytes from clients to servers, and back.
    pub received: AtomicU64,
    pub sent: AtomicU64,
    pub xact_us: AtomicU64,
    pub query_us: AtomicU64,
    pub wait_us: AtomicU64,
    pub prepared: crate::prepared::PreparedStats,
    /// For the metrics endpoint: how long transactions, queries, waits for a server and server
    /// logins took.
    pub xact_latency: Latency,
    pub query_latency: Latency,
    pub wait_latency: Latency,
    pub connect_latency: Latency,
    /// Servers opened, and attempts that failed, by [`ConnectFailure`].
    pub connects: AtomicU64,
    pub connect_failures: [AtomicU64; ConnectFailure::ALL.len()],
    /// Servers opened over TLS (failed handshakes are `ConnectFailure::Tls`).
    pub tls_handshakes: AtomicU64,
    period: Mutex<Period>,
}

/// Why opening a server failed, as the metrics label it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFailure {
    /// Unreachable, refused, reset.
    Network,
    Timeout,
    Tls,
    /// The server refused the login (password, database, too many connections).
    Login,
    /// pgsluice could not answer the server's authentication request.
    Auth,
    /// The server broke the protocol or hung up.
    Protocol,
    /// Every candidate was in recovery or read-only.
    ReadOnly,
}

impl ConnectFailure {
    pub const ALL: [ConnectFailure; 7] = [
        Self::Network,
        Self::Timeout,
        Self::Tls,
        Self::Login,
        Self::Auth,
        Self::Protocol,
        Self::ReadOnly,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::Network => "network",
            Self::Timeout => "timeout",
            Self::Tls => "tls",
            Self::Login => "login",
            Self::Auth => "auth",
            Self::Protocol => "protocol",
            Self::ReadOnly => "read_only",
        }
    }

    /// None for a refusal pgsluice made itself (within `server_login_retry`): no attempt was made.
    pub fn of(e: &crate::backend::BackendError) -> Option<Self> {
        use crate::backend::BackendError as E;
        Some(match e {
            E::Connect { .. } | E::Io(_) => Self::Network,
            E::Timeout => Self::Timeout,
            E::Tls { .. } => Self::Tls,
            E::Login { .. } => Self::Login,
            E::UnsupportedAuth(_) | E::Scram(_) => Self::Auth,
            E::Protocol(_) | E::Closed => Self::Protocol,
            E::ReadOnly => Self::ReadOnly,
            // No attempt was made: refused within server_login_retry, or no primary known.
            E::LoginRetry { .. } | E::NoPrimary => return None,
        })
    }
}

/// The totals at the last tick, and how they moved over the period before it.
#[derive(Debug, Default)]
struct Period {
    last: [u64; 11],
    delta: [u64; 11],
    micros: u64,
}

impl PoolStats {
    /// Counts an attempt to open a server that took `took`, and why it failed if it did.
    pub fn note_connect(
        &self,
        opened: Result<&crate::backend::Server, &crate::backend::BackendError>,
        took: Duration,
    ) {
        let counter = match opened {
            Ok(server) => {
                if server.info().tls {
                    self.tls_handshakes.fetch_add(1, Ordering::Relaxed);
                }
                &self.connects
            }
            Err(e) => match ConnectFailure::of(e) {
                Some(f) => &self.connect_failures[f as usize],
                // Refused within server_login_retry: no attempt was made.
                None => return,
            },
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.connect_latency.observe(took);
    }

    pub fn totals(&self) -> [u64; 11] {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let p = &self.prepared;
        [
            l(&self.checkouts),
            l(&self.xacts),
            l(&self.queries),
            l(&self.received),
            l(&self.sent),
            l(&self.xact_us),
            l(&self.query_us),
            l(&self.wait_us),
            l(&p.client_parses),
            l(&p.server_parses),
            l(&p.binds),
        ]
    }

    /// Closes a `stats_period` of `micros` microseconds: the averages now describe it.
    pub fn roll(&self, micros: u64) {
        let now = self.totals();
        let mut p = self.period.lock();
        for (i, v) in now.iter().enumerate() {
            p.delta[i] = v.saturating_sub(p.last[i]);
        }
        p.last = now;
        p.micros = micros;
    }

    /// How the counters moved over the last period, and its length in microseconds.
    pub fn last_period(&self) -> ([u64; 11], u64) {
        let p = self.period.lock();
        (p.delta, p.micros)
    }
}

/// PgBouncer's averages from summed period deltas: counts and bytes per second, times per event.
pub fn averages(delta: &[u64; 11], micros: u64) -> [u64; 11] {
    let per_second = |n: u64| {
        (u128::from(n) * 1_000_000)
            .checked_div(u128::from(micros))
            .map_or(0, |v| v as u64)
    };
    let per = |t: u64, n: u64| t.checked_div(n).unwrap_or(0);
    let mut a = delta.map(per_second);
    a[idx::XACT_US] = per(delta[idx::XACT_US], delta[idx::XACTS]);
    a[idx::QUERY_US] = per(delta[idx::QUERY_US], delta[idx::QUERIES]);
    a[idx::WAIT_US] = per(delta[idx::WAIT_US], delta[idx::ASSIGNMENTS]);
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn averages_are_rates_and_times_per_event() {
        let s = PoolStats::default();
        s.roll(1_000_000);
        s.xacts.fetch_add(20, Ordering::Relaxed);
        s.xact_us.fetch_add(2_000, Ordering::Relaxed);
        s.checkouts.fetch_add(20, Ordering::Relaxed);
        s.received.fetch_add(4_000, Ordering::Relaxed);
        s.roll(2_000_000);
        let (delta, micros) = s.last_period();
        let a = averages(&delta, micros);
        assert_eq!(a[idx::XACTS], 10, "20 in 2 s");
        assert_eq!(a[idx::RECEIVED], 2_000);
        assert_eq!(a[idx::XACT_US], 100, "2 ms over 20 transactions");
        assert_eq!(a[idx::WAIT_US], 0);
        assert_eq!(averages(&[0; 11], 0), [0; 11]);
    }
}
