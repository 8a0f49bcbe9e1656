//! Server connection pools: one per (database, user).
//!
//! The synchronous state sits behind a small parking_lot mutex that is never held across `.await`.
//! A checked-out server travels as a [`Conn`], which owns a [`Slot`]: dropping a `Conn` closes the
//! server and frees its slot, so no error path can leak pool capacity. Waiting clients are served first
//! come, first served: a returned server, or a freed slot, is handed straight to the oldest waiter.

pub mod budget;
mod census;
mod checkout;
mod connect_gate;
mod control;
mod greeting;
pub mod latency;
pub mod limit;
pub mod maintenance;
mod open;
pub mod registry;
mod route;
mod settings;
pub mod stats;

pub use census::Census;
pub use greeting::Greeting;
pub use settings::{PoolSettings, Sources};
pub use stats::PoolStats;

use crate::backend::{params::ParamSet, BackendError, Server};
use crate::error::{ClientError, Retry, Side};
use connect_gate::ConnectGate;
use limit::Limit;
use open::LoginFailure;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use thiserror::Error;
use tokio::sync::oneshot;
use tokio::time::Instant;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PoolKey {
    pub database: String,
    pub user: String,
}

#[derive(Debug, Error)]
pub enum PoolError {
    #[error("query_wait_timeout: no server connection became free in time")]
    WaitTimeout,
    /// `query_wait_timeout` passed while PostgreSQL could not be reached.
    #[error("query_wait_timeout: the server could not be reached in time")]
    Unreachable,
    #[error(transparent)]
    Connect(#[from] BackendError),
}

/// The one place a pool failure becomes what a client that waited hears: PgBouncer's 08P01 for a
/// wait that ran out, the server's own code for a refused login.
impl From<&PoolError> for ClientError {
    fn from(e: &PoolError) -> Self {
        match e {
            PoolError::WaitTimeout => ClientError::fatal(
                crate::proto::sqlstate::PROTOCOL_VIOLATION,
                e.to_string(),
                Side::Internal,
            )
            .with_retry(Retry::Later),
            PoolError::Unreachable => ClientError::fatal(
                crate::proto::sqlstate::CONNECTION_FAILURE,
                e.to_string(),
                Side::Server,
            )
            .with_retry(Retry::Later),
            PoolError::Connect(e) => e.into(),
        }
    }
}

/// Why no slot could be taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Blocked {
    Pool,
    Database,
    User,
    /// Connects are failing: the next attempt waits for the backoff or a probe (connect_gate.rs).
    Connecting,
}

/// What a waiter is handed: a ready server, the right to open one, or the end of its wait.
enum Grant {
    Server(Box<Server>),
    Slot(Slot),
    /// `query_wait_timeout` passed.
    Expired,
}

/// A client queued for a server. Its deadlines are kept here and enforced by the janitor's tick
/// ([`Pool::tend_waiters`]), so a wait arms no timer of its own: in a busy pool most checkouts wait.
struct Waiter {
    tx: oneshot::Sender<Grant>,
    /// When the client began to wait, for SHOW POOLS' maxwait.
    since: Instant,
    deadline: Option<Instant>,
    reserve_at: Option<Instant>,
}

/// Where a pool stands. DISABLE is not here: it refuses logins to a database before any pool of
/// it exists, so it is the registry's, per database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PoolState {
    #[default]
    Open,
    /// PAUSE: checkouts wait for RESUME; servers that come back are closed.
    Paused,
    /// The database entry is gone after a reload: connected clients are served, and servers are
    /// closed as they come back.
    Closing,
}

/// The pool's one lock: everything that changes, kept small and never held across `.await`.
struct Inner {
    settings: Arc<PoolSettings>,
    state: PoolState,
    /// Boxed once when opened: a server changes hands at every checkout and check-in, and a
    /// pointer moves where the whole connection state (several hundred bytes) would be copied.
    #[allow(clippy::vec_box)]
    idle: Vec<Box<Server>>,
    /// Servers counted against the pool: idle, checked out, and being opened.
    total: usize,
    waiters: VecDeque<Waiter>,
    gate: ConnectGate,
    /// RECONNECT: servers opened before this are closed when released.
    retire_before: Option<Instant>,
    /// Server parameters from the latest login, shown to clients when they log in.
    welcome: Option<ParamSet>,
    /// The latest client's greeting, for the next one that logs in alike ([`Pool::greeting`]).
    greeting: greeting::LastGreeting,
    /// When and how opening a server last failed, for `server_login_retry`.
    last_login_failure: Option<LoginFailure>,
}

pub struct Pool {
    pub key: PoolKey,
    inner: Mutex<Inner>,
    db_limit: Arc<Limit>,
    user_limit: Arc<Limit>,
    pub stats: PoolStats,
    /// The statements this pool's servers have accepted a Parse of (prepared::local).
    pub accepted: crate::prepared::local::Accepted,
    /// Clients logged in to this pool ([`Pool::client_joined`], [`Pool::client_left`]).
    clients: AtomicUsize,
    /// Servers being opened.
    opening: AtomicUsize,
    /// Wakes checkouts waiting while the pool is paused (control.rs).
    resumed: tokio::sync::Notify,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// One unit of pool capacity, counted in the pool and in the database and user limits.
/// Dropping it gives the capacity back (and to the oldest waiter, if any).
pub struct Slot {
    pool: Option<Arc<Pool>>,
}

impl Slot {
    /// Turns the slot into a count the pool keeps by itself (the server goes idle).
    fn disarm(mut self) {
        self.pool = None;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            pool.release_slot();
        }
    }
}

/// A checked-out server. Return it with [`Pool::checkin`]; dropping it closes the server.
pub struct Conn {
    pub server: Box<Server>,
    slot: Slot,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("server", &self.server.id)
            .finish()
    }
}

impl Pool {
    pub fn new(
        key: PoolKey,
        settings: PoolSettings,
        db_limit: Arc<Limit>,
        user_limit: Arc<Limit>,
    ) -> Self {
        Self {
            key,
            inner: Mutex::new(Inner {
                settings: Arc::new(settings),
                state: PoolState::Open,
                idle: Vec::new(),
                total: 0,
                waiters: VecDeque::new(),
                gate: ConnectGate::default(),
                retire_before: None,
                welcome: None,
                greeting: Default::default(),
                last_login_failure: None,
            }),
            db_limit,
            user_limit,
            stats: PoolStats::default(),
            accepted: Default::default(),
            clients: AtomicUsize::new(0),
            opening: AtomicUsize::new(0),
            resumed: tokio::sync::Notify::new(),
        }
    }

    pub fn settings(&self) -> Arc<PoolSettings> {
        self.inner.lock().settings.clone()
    }

    /// Reads the settings in place: no reference count to bump on a line every thread shares.
    /// `f` must not call back into the pool.
    pub fn with_settings<R>(&self, f: impl FnOnce(&PoolSettings) -> R) -> R {
        f(&self.inner.lock().settings)
    }

    /// New settings from a reload; a pool that was closing opens again (its database is back).
    pub fn update_settings(&self, s: PoolSettings) {
        let mut inner = self.inner.lock();
        inner.settings = Arc::new(s);
        if inner.state == PoolState::Closing {
            inner.state = PoolState::Open;
        }
    }

    /// The database entry is gone: see [`PoolState::Closing`].
    pub fn close(&self) {
        self.inner.lock().state = PoolState::Closing;
    }

    pub fn state(&self) -> PoolState {
        self.inner.lock().state
    }

    pub fn welcome_params(&self) -> Option<ParamSet> {
        self.inner.lock().welcome.clone()
    }

    /// Takes a slot if the pool, database and user limits allow; `reserve` allows the reserve pool.
    fn try_take_slot(
        self: &Arc<Self>,
        inner: &mut Inner,
        settings: &PoolSettings,
        reserve: bool,
    ) -> Result<Slot, Blocked> {
        let cap = settings.pool_size
            + if reserve {
                settings.reserve_pool_size
            } else {
                0
            };
        if inner.total >= cap {
            return Err(Blocked::Pool);
        }
        // The clock is read only while connects are failing.
        if !inner.gate.is_open() && !inner.gate.try_pass(Instant::now()) {
            return Err(Blocked::Connecting);
        }
        if !self.db_limit.try_acquire() {
            return Err(Blocked::Database);
        }
        if !self.user_limit.try_acquire() {
            self.db_limit.release();
            return Err(Blocked::User);
        }
        inner.total += 1;
        Ok(Slot {
            pool: Some(self.clone()),
        })
    }

    /// When the longest-idle server was last used, if any server is idle.
    fn oldest_idle(&self) -> Option<Instant> {
        self.inner.lock().idle.iter().map(|s| s.last_used).min()
    }

    /// Closes the longest-idle server; false if none is idle (any more).
    fn evict_oldest_idle(self: &Arc<Self>) -> bool {
        let mut first = true;
        let oldest = self.oldest_idle();
        self.evict_idle(|s, _| {
            let hit = first && Some(s.last_used) == oldest;
            first &= !hit;
            hit
        }) > 0
    }

    fn release_slot(self: &Arc<Self>) {
        let settings = self.settings();
        let mut inner = self.inner.lock();
        inner.total = inner.total.saturating_sub(1);
        self.db_limit.release();
        self.user_limit.release();
        self.grant_free_slots(&mut inner, &settings);
    }

    /// Hands free capacity to the oldest waiters.
    fn grant_free_slots(self: &Arc<Self>, inner: &mut Inner, settings: &PoolSettings) {
        while inner.waiters.front().is_some() {
            let Ok(slot) = self.try_take_slot(inner, settings, false) else {
                break;
            };
            let Some(w) = inner.waiters.pop_front() else {
                break;
            };
            self.grant_slot(inner, w, slot);
        }
    }

    fn grant_slot(&self, inner: &mut Inner, w: Waiter, slot: Slot) {
        if let Err(Grant::Slot(slot)) = w.tx.send(Grant::Slot(slot)) {
            // That waiter is gone; undo the count without recursing into `release_slot`.
            slot.disarm();
            inner.total -= 1;
            self.db_limit.release();
            self.user_limit.release();
        }
    }

    /// The janitor's tick for queued clients: ends waits past `query_wait_timeout`, opens the
    /// reserve pool to those waiting longer than `reserve_pool_timeout`, and grants capacity that
    /// no release announced (a reload that raised `pool_size`, a limit freed while a client was
    /// between its try and its wait).
    pub fn tend_waiters(self: &Arc<Self>, now: Instant) {
        let settings = self.settings();
        let mut inner = self.inner.lock();
        if inner.waiters.is_empty() {
            return;
        }
        self.grant_free_slots(&mut inner, &settings);
        let queued = std::mem::take(&mut inner.waiters);
        for w in queued {
            if w.tx.is_closed() {
                continue;
            }
            if w.deadline.is_some_and(|d| now >= d) {
                let _ = w.tx.send(Grant::Expired);
                continue;
            }
            if w.reserve_at.is_some_and(|r| now >= r) {
                if let Ok(slot) = self.try_take_slot(&mut inner, &settings, true) {
                    self.grant_slot(&mut inner, w, slot);
                    continue;
                }
            }
            inner.waiters.push_back(w);
        }
    }

    /// Returns a clean server (ReadyForQuery `I`, nothing outstanding) to the pool.
    pub fn checkin(self: &Arc<Self>, conn: Conn) {
        let now = Instant::now();
        let mut inner = self.inner.lock();
        let s = &inner.settings;
        let expired = inner.state != PoolState::Open
            || s.server_lifetime
                .is_some_and(|l| now.saturating_duration_since(conn.server.created) >= l);
        let cap = s.pool_size + s.reserve_pool_size;
        if expired {
            return;
        }
        // A lowered limit (a reload, or a budget shared with more replicas now) closes servers
        // as they come back until the pool is within it.
        let over = inner.total > cap || self.db_limit.excess() > 0 || self.user_limit.excess() > 0;
        if over
            || inner
                .retire_before
                .is_some_and(|t| conn.server.created <= t)
        {
            // Closed outside the lock: the slot's release takes it.
            drop(inner);
            drop(conn);
            return;
        }
        let Conn { mut server, slot } = conn;
        server.last_used = now;
        slot.disarm();
        let mut grant = Grant::Server(server);
        while let Some(w) = inner.waiters.pop_front() {
            match w.tx.send(grant) {
                Ok(()) => return,
                Err(g) => grant = g,
            }
        }
        if let Grant::Server(s) = grant {
            inner.idle.push(s);
        }
    }

    /// Removes idle servers for which `expired` says so; they are closed outside the lock.
    pub fn evict_idle(self: &Arc<Self>, mut expired: impl FnMut(&Server, usize) -> bool) -> usize {
        let evicted: Vec<Box<Server>> = {
            let mut inner = self.inner.lock();
            let total = inner.total;
            let mut out = Vec::new();
            let mut i = 0;
            while i < inner.idle.len() {
                if expired(&inner.idle[i], total - out.len()) {
                    out.push(inner.idle.swap_remove(i));
                } else {
                    i += 1;
                }
            }
            out
        };
        let n = evicted.len();
        for s in evicted {
            drop(Slot {
                pool: Some(self.clone()),
            });
            drop(s);
        }
        n
    }
}

#[cfg(test)]
mod tests;
