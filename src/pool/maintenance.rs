//! The janitor: once a second it closes idle servers past `server_idle_timeout` or
//! `server_lifetime`, and opens servers up to `min_pool_size`.

use super::registry::Registry;
use super::Pool;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

const PERIOD: Duration = Duration::from_secs(1);

pub async fn run(registry: Arc<Registry>) {
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for pool in registry.all() {
            tidy(&pool);
        }
    }
}

fn tidy(pool: &Arc<Pool>) {
    let s = pool.settings();
    let now = Instant::now();
    pool.evict_idle(|server, total| {
        let too_old = s
            .server_lifetime
            .is_some_and(|l| now.duration_since(server.created) >= l);
        let idle_too_long = total > s.min_pool_size
            && s.server_idle_timeout
                .is_some_and(|t| now.duration_since(server.last_used) >= t);
        too_old || idle_too_long || s.closing || !server.is_healthy_idle()
    });
    if s.closing || s.min_pool_size == 0 {
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
