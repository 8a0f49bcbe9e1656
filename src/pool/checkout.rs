//! Checking a server out: an idle one, a new one, or the next one freed, in that order, with the
//! queue's deadlines and the reserve pool. A reused server found dead (closed, or sent something
//! while idle) is discarded before any byte of the request is written, and the next one is taken:
//! the client never hears of it (the transparent retry of [`crate::error::Retry::Transparent`]).

use super::{Blocked, Conn, Grant, Pool, PoolError, PoolSettings, Slot, Waiter};
use crate::backend::Server;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// One client's checkout under way: its clock and its place in the queue.
struct Attempt {
    started: Instant,
    wait_deadline: Option<Instant>,
    reserve_at: Option<Instant>,
    /// Set while the client is queued.
    waiter: Option<oneshot::Receiver<Grant>>,
    /// Whether the client queued: the clock is read again only then.
    waited: bool,
    /// The client's own connect failed: it queues ahead of those who came after it.
    requeue_first: bool,
}

impl Pool {
    /// Gets a server for a client, waiting at most `query_wait_timeout` (the reserve pool opens
    /// after `reserve_pool_timeout`).
    pub async fn checkout(self: &Arc<Self>) -> Result<Conn, PoolError> {
        // The state and the settings under one lock, not two.
        let (paused, mut settings) = {
            let inner = self.inner.lock();
            (
                inner.state == super::PoolState::Paused,
                inner.settings.clone(),
            )
        };
        if paused {
            self.wait_resumed().await;
            settings = self.settings();
        }
        let started = Instant::now();
        let mut a = Attempt {
            started,
            wait_deadline: settings.query_wait_timeout.map(|t| started + t),
            reserve_at: (settings.reserve_pool_size > 0)
                .then(|| started + settings.reserve_pool_timeout),
            waiter: None,
            waited: false,
            requeue_first: false,
        };
        let mut handed: Option<Grant> = None;
        loop {
            let (grant, blocked) = match handed.take() {
                Some(g) => (Some(g), Blocked::Pool),
                None => self.take_or_queue(&mut a, &settings),
            };
            // Blocked by a shared limit while another pool sits on idle servers: close one of those
            // (outside our lock) and try again.
            let evicted = grant.is_none()
                && match blocked {
                    Blocked::Database => self.db_limit.evict_idle_elsewhere(&self.key),
                    Blocked::User => self.user_limit.evict_idle_elsewhere(&self.key),
                    _ => false,
                };
            if evicted {
                continue;
            }
            match grant {
                Some(Grant::Server(server)) => {
                    if let Some(conn) = self.reuse(server, &settings, started).await {
                        self.note_wait(started, a.waited);
                        return Ok(conn);
                    }
                }
                Some(Grant::Slot(slot)) => match self.open(&settings).await {
                    Ok(server) => {
                        self.note_wait(started, a.waited);
                        return Ok(Conn { server, slot });
                    }
                    // PostgreSQL is down for now: the slot goes back and the client queues
                    // again, at the front, for the next attempt or a server someone releases.
                    Err(e) if e.is_transient() => {
                        drop(slot);
                        a.requeue_first = true;
                    }
                    Err(e) => return Err(e.into()),
                },
                Some(Grant::Expired) => {
                    return Err(if self.inner.lock().gate.is_open() {
                        PoolError::WaitTimeout
                    } else {
                        PoolError::Unreachable
                    })
                }
                None => handed = self.wait_for_grant(&mut a, blocked).await,
            }
        }
    }

    /// Under the lock: an idle server, else a slot to open one, else a place in the queue (once)
    /// and why the client must wait.
    fn take_or_queue(
        self: &Arc<Self>,
        a: &mut Attempt,
        settings: &PoolSettings,
    ) -> (Option<Grant>, Blocked) {
        let use_reserve = a.reserve_at.is_some_and(|r| Instant::now() >= r);
        let mut inner = self.inner.lock();
        if let Some(s) = inner.idle.pop() {
            return (Some(Grant::Server(s)), Blocked::Pool);
        }
        let why = match self.try_take_slot(&mut inner, settings, use_reserve) {
            Ok(slot) => return (Some(Grant::Slot(slot)), Blocked::Pool),
            Err(why) => why,
        };
        if a.waiter.is_none() {
            let (tx, rx) = oneshot::channel();
            let w = Waiter {
                tx,
                since: a.started,
                deadline: a.wait_deadline,
                reserve_at: a.reserve_at,
            };
            if std::mem::take(&mut a.requeue_first) {
                inner.waiters.push_front(w);
            } else {
                inner.waiters.push_back(w);
            }
            a.waiter = Some(rx);
            a.waited = true;
        }
        (None, why)
    }

    /// Waits in the queue: for what it hands over (released servers and slots; the janitor's tick
    /// covers deadlines, see `Waiter`). Blocked by a limit shared with other pools, the wait also
    /// ends on that limit's releases, and on a short re-check: another pool's server going idle
    /// frees nothing, but closing it would. `None` means look again.
    async fn wait_for_grant(&self, a: &mut Attempt, blocked: Blocked) -> Option<Grant> {
        let rx = a.waiter.as_mut()?;
        let shared_limit = matches!(blocked, Blocked::Database | Blocked::User);
        let recheck = std::time::Duration::from_millis(200);
        tokio::select! {
            g = rx => {
                a.waiter = None;
                g.ok()
            }
            _ = self.db_limit.freed.notified(), if blocked == Blocked::Database => None,
            _ = self.user_limit.freed.notified(), if blocked == Blocked::User => None,
            // Not evaluated unless `shared_limit`, so an ordinary wait arms no timer.
            _ = tokio::time::sleep(recheck), if shared_limit => None,
        }
    }

    /// An idle server, if it may serve again: young enough, healthy, and checked when
    /// `server_check_query` asks for it. Otherwise it is closed (its slot freed) and `None`.
    async fn reuse(
        self: &Arc<Self>,
        server: Box<Server>,
        settings: &PoolSettings,
        started: Instant,
    ) -> Option<Conn> {
        let mut conn = Conn {
            server,
            slot: Slot {
                pool: Some(self.clone()),
            },
        };
        let fit = self.reusable(&conn.server, settings, started)
            && Self::checked(&mut conn.server, settings, started).await;
        fit.then_some(conn)
    }

    /// Counts a checkout, and the time it spent queued; one served at once waited for nothing.
    fn note_wait(&self, started: Instant, waited: bool) {
        let us = if waited {
            let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            self.stats.wait_us.fetch_add(us, Ordering::Relaxed);
            us
        } else {
            0
        };
        self.stats.wait_latency.observe_us(us);
        self.stats.checkouts.fetch_add(1, Ordering::Relaxed);
    }

    /// `now` is the checkout's start: a server's age is told to the request, not to the microsecond.
    fn reusable(&self, s: &Server, settings: &PoolSettings, now: Instant) -> bool {
        if settings
            .server_lifetime
            .is_some_and(|l| now.saturating_duration_since(s.created) >= l)
        {
            return false;
        }
        s.is_healthy_idle()
    }

    /// Runs `server_check_query` on a server idle for longer than `server_check_delay`.
    async fn checked(server: &mut Server, settings: &PoolSettings, now: Instant) -> bool {
        let Some(sql) = &settings.server_check_query else {
            return true;
        };
        if now.saturating_duration_since(server.last_used) < settings.server_check_delay {
            return true;
        }
        match Box::pin(crate::backend::query::run_simple(server, sql)).await {
            Ok(()) => true,
            Err(e) => {
                tracing::info!(error = %e, "server_check_query failed; closing server");
                false
            }
        }
    }
}
