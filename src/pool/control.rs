//! The admin console's levers on pools: PAUSE and RESUME, RECONNECT, DISABLE and ENABLE.
//!
//! PAUSE lets the transactions under way finish and holds new requests at checkout; servers that
//! come back are closed, as PgBouncer does, so that after a switchover no connection to the old
//! primary is reused. It is done when the target pools hold no server at all. RECONNECT closes idle
//! servers at once and the others as they are released. DISABLE refuses new clients of a database.
//! A pool created while its database is paused starts paused.

use super::registry::Registry;
use super::{Pool, PoolState};
use std::sync::Arc;
use tokio::time::Instant;

impl Pool {
    pub fn is_paused(&self) -> bool {
        self.state() == PoolState::Paused
    }

    /// PAUSE: a closing pool stays closing (it closes its servers anyway).
    pub(super) fn pause(self: &Arc<Self>) {
        {
            let mut inner = self.inner.lock();
            if inner.state == PoolState::Open {
                inner.state = PoolState::Paused;
            }
        }
        self.evict_idle(|_, _| true);
    }

    fn resume(&self) {
        {
            let mut inner = self.inner.lock();
            if inner.state == PoolState::Paused {
                inner.state = PoolState::Open;
            }
        }
        self.resumed.notify_waiters();
    }

    /// Waits while the pool is paused; the caller checked [`Pool::is_paused`] first.
    pub(super) async fn wait_resumed(&self) {
        loop {
            let resumed = self.resumed.notified();
            tokio::pin!(resumed);
            resumed.as_mut().enable();
            if !self.is_paused() {
                return;
            }
            resumed.await;
        }
    }

    /// No server in use, idle or being opened.
    fn drained(&self) -> bool {
        self.inner.lock().total == 0
    }

    /// When the last RECONNECT was: servers opened before it are closed as they come back.
    pub fn retired_before(&self) -> Option<Instant> {
        self.inner.lock().retire_before
    }

    /// Servers opened before now are closed: idle ones at once, the others when released.
    pub(super) fn reconnect(self: &Arc<Self>) {
        self.inner.lock().retire_before = Some(Instant::now());
        self.evict_idle(|_, _| true);
    }
}

impl Registry {
    fn targets(&self, db: Option<&str>) -> Vec<Arc<Pool>> {
        self.all()
            .into_iter()
            .filter(|p| db.is_none_or(|d| p.key.database == d))
            .collect()
    }

    /// Pauses one database, or all.
    pub fn pause(&self, db: Option<&str>) {
        {
            let mut s = self.switches.lock();
            match db {
                Some(d) => {
                    s.paused.insert(d.to_owned());
                }
                None => s.all_paused = true,
            }
        }
        for p in self.targets(db) {
            p.pause();
        }
    }

    /// Resumes one database, or all; false if it was not paused.
    pub fn resume(&self, db: Option<&str>) -> bool {
        let was = {
            let mut s = self.switches.lock();
            match db {
                Some(d) => s.paused.remove(d),
                None => {
                    let was = s.all_paused || !s.paused.is_empty();
                    s.all_paused = false;
                    s.paused.clear();
                    was
                }
            }
        };
        let s = self.switches.lock();
        for p in self.targets(db) {
            if !s.paused(&p.key.database) {
                p.resume();
            }
        }
        was
    }

    pub fn is_paused(&self, db: Option<&str>) -> bool {
        let s = self.switches.lock();
        match db {
            Some(d) => s.paused(d),
            None => s.all_paused,
        }
    }

    /// The paused target holds no server any more.
    pub fn drained(&self, db: Option<&str>) -> bool {
        self.targets(db).iter().all(|p| p.drained())
    }

    pub fn reconnect(&self, db: Option<&str>) {
        for p in self.targets(db) {
            p.reconnect();
        }
    }

    pub fn set_disabled(&self, db: &str, disabled: bool) {
        let mut s = self.switches.lock();
        if disabled {
            s.disabled.insert(db.to_owned());
        } else {
            s.disabled.remove(db);
        }
    }

    pub fn is_disabled(&self, db: &str) -> bool {
        self.switches.lock().disabled.contains(db)
    }
}
