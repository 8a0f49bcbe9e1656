//! A connection count shared by every pool of one database (`max_db_connections`) or one user
//! (`max_user_connections`).

use super::{Pool, PoolKey};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use tokio::sync::Notify;

#[derive(Debug, Default)]
pub struct Limit {
    /// 0 means unlimited.
    max: AtomicUsize,
    used: AtomicUsize,
    /// Woken when a connection is released, for pools blocked by this limit.
    pub freed: Notify,
    /// The pools that share this limit, so that one blocked by it can close another's idle server.
    members: Mutex<Vec<Weak<Pool>>>,
}

impl Limit {
    pub fn new(max: usize) -> Self {
        Self {
            max: AtomicUsize::new(max),
            used: AtomicUsize::new(0),
            freed: Notify::new(),
            members: Mutex::new(Vec::new()),
        }
    }

    pub fn join(&self, pool: &Arc<Pool>) {
        let mut m = self.members.lock();
        m.retain(|w| w.strong_count() > 0);
        m.push(Arc::downgrade(pool));
    }

    /// Closes the longest-idle server of another pool under this limit, as PgBouncer does when a pool
    /// is blocked by `max_db_connections` or `max_user_connections` while others sit on idle servers.
    /// Returns whether one was closed (which frees a place in this limit).
    pub fn evict_idle_elsewhere(&self, except: &PoolKey) -> bool {
        let peers: Vec<Arc<Pool>> = self
            .members
            .lock()
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|p| &p.key != except)
            .collect();
        let oldest = peers
            .iter()
            .filter_map(|p| p.oldest_idle().map(|at| (at, p)))
            .min_by_key(|(at, _)| *at);
        oldest.is_some_and(|(_, p)| p.evict_oldest_idle())
    }

    pub fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
        self.freed.notify_waiters();
    }

    /// How many connections are held beyond the maximum (after it was lowered).
    pub fn excess(&self) -> usize {
        match self.max.load(Ordering::Relaxed) {
            0 => 0,
            max => self.used().saturating_sub(max),
        }
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub fn try_acquire(&self) -> bool {
        let max = self.max.load(Ordering::Relaxed);
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                (max == 0 || u < max).then_some(u + 1)
            })
            .is_ok()
    }

    pub fn release(&self) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| u.checked_sub(1));
        self.freed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enforces_max_and_unlimited() {
        let l = Limit::new(2);
        assert!(l.try_acquire() && l.try_acquire());
        assert!(!l.try_acquire());
        l.release();
        assert!(l.try_acquire());
        let u = Limit::new(0);
        assert!((0..1000).all(|_| u.try_acquire()));
    }
}
