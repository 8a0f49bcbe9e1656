//! What a pool holds, counted: its logged-in clients, its waiters and its servers by state, for the
//! admin console and the tests.

use super::Pool;
use std::sync::atomic::Ordering;
use tokio::time::Instant;

/// A pool's clients and servers by state, for the admin console.
#[derive(Debug, Clone, Copy, Default)]
pub struct Census {
    pub clients: usize,
    pub waiting: usize,
    pub servers: usize,
    pub idle: usize,
    pub opening: usize,
    /// Microseconds the longest-waiting client has waited.
    pub max_wait_us: u64,
}

impl Census {
    /// Servers lent to clients: neither idle nor being opened.
    pub fn active_servers(&self) -> usize {
        self.servers.saturating_sub(self.idle + self.opening)
    }
}

impl Pool {
    pub fn client_joined(&self) {
        self.clients.fetch_add(1, Ordering::Relaxed);
    }

    pub fn client_left(&self) {
        self.clients.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn census(&self) -> Census {
        let now = Instant::now();
        let i = self.inner.lock();
        let live = i.waiters.iter().filter(|w| !w.tx.is_closed());
        let (waiting, oldest) = live.fold((0, None), |(n, o): (usize, Option<Instant>), w| {
            (n + 1, Some(o.map_or(w.since, |o| o.min(w.since))))
        });
        Census {
            clients: self.clients.load(Ordering::Relaxed),
            waiting,
            servers: i.total,
            idle: i.idle.len(),
            opening: self.opening.load(Ordering::Relaxed),
            max_wait_us: oldest.map_or(0, |o| {
                u64::try_from(now.saturating_duration_since(o).as_micros()).unwrap_or(u64::MAX)
            }),
        }
    }

    /// (idle, total) server counts.
    pub fn counts(&self) -> (usize, usize) {
        let i = self.inner.lock();
        (i.idle.len(), i.total)
    }

    pub fn waiting(&self) -> usize {
        self.inner
            .lock()
            .waiters
            .iter()
            .filter(|w| !w.tx.is_closed())
            .count()
    }

    /// The idle servers, for SHOW SERVERS.
    pub fn idle_servers(&self) -> Vec<crate::backend::ServerInfo> {
        self.inner.lock().idle.iter().map(|s| s.info()).collect()
    }
}
