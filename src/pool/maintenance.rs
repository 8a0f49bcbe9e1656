//! The janitor: once a second it closes idle servers past `server_idle_timeout` or
//! `server_lifetime`, and opens servers up to `min_pool_size`; ten times a second it tends the
//! clients queued for a server (their timeouts and the reserve pool).

use super::registry::Registry;
use super::Pool;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How late `query_wait_timeout` and `reserve_pool_timeout` may act.
const WAITER_TICK: Duration = Duration::from_millis(100);
/// Idle servers and `min_pool_size` are tended every this many waiter ticks.
const TIDY_EVERY: u32 = 10;

pub async fn run(registry: Arc<Registry>) {
    let mut tick = tokio::time::interval(WAITER_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u32 = 0;
    loop {
        tick.tick().await;
        let now = Instant::now();
        for pool in registry.all() {
            pool.tend_waiters(now);
            if n.is_multiple_of(TIDY_EVERY) {
                tidy(&pool);
            }
        }
        n = n.wrapping_add(1);
    }
}

fn tidy(pool: &Arc<Pool>) {
    let s = pool.settings();
    let now = Instant::now();
    // Idle servers beyond a lowered limit go first (busy ones close as they are checked in).
    let (_, total) = pool.counts();
    let mut excess = [
        total.saturating_sub(s.pool_size + s.reserve_pool_size),
        pool.db_limit.excess(),
        pool.user_limit.excess(),
    ]
    .into_iter()
    .max()
    .unwrap_or(0);
    if excess > 0 {
        pool.evict_idle(|_, _| {
            let hit = excess > 0;
            excess = excess.saturating_sub(1);
            hit
        });
    }
    // Read before evict_idle, which holds the pool's lock while it asks.
    let closing = pool.state() == super::PoolState::Closing;
    pool.evict_idle(|server, total| {
        let too_old = s
            .server_lifetime
            .is_some_and(|l| now.duration_since(server.created) >= l);
        let idle_too_long = total > s.min_pool_size
            && s.server_idle_timeout
                .is_some_and(|t| now.duration_since(server.last_used) >= t);
        too_old || idle_too_long || closing || !server.is_healthy_idle()
    });
    if pool.state() != super::PoolState::Open || s.min_pool_size == 0 {
        return;
    }
    let (_, total) = pool.counts();
    if total < s.min_pool_size && pool.may_retry_login(now) {
        let pool = pool.clone();
        tokio::spawn(async move {
            if let Err(e) = pool.warm_one().await {
                tracing::warn!(db = %pool.key.database, user = %pool.key.user, error = %e, "could not open min_pool_size server");
            }
        });
    }
}
