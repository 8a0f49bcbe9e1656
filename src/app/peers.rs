//! Follows the pooler's own Service while budgets are shared among its replicas: each change in
//! the live replicas, and each bound that runs out (pool/budget.rs), re-applies the shares to the
//! pools as a reload would.

use super::App;
use crate::config::BudgetScope;
use std::sync::Arc;
use tokio::time::Instant;

impl App {
    /// Runs until the peers' watch ends; returns at once unless budgets are the Service's.
    pub async fn follow_peers(self: Arc<Self>) {
        if self.with_config(|c| c.general.peering.budget) != BudgetScope::Service {
            return;
        }
        let mut watch = self.peers.watch();
        self.rebudget(Instant::now());
        loop {
            let deadline = self.pools.with_budget(|b| b.next_change());
            tokio::select! {
                alive = async {
                    match watch.as_mut() {
                        Some(w) => w.changed().await,
                        None => std::future::pending().await,
                    }
                } => {
                    if !alive {
                        watch = None;
                    }
                    self.rebudget(Instant::now());
                }
                () = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                } => {
                    let now = Instant::now();
                    if self.pools.with_budget(|b| b.tick(now)) {
                        self.apply_budget();
                    }
                }
            }
        }
    }

    /// Takes the replicas as they are now; applies the shares if they changed.
    fn rebudget(&self, now: Instant) {
        let split = self.peers.split(self.pools.with_budget(|b| b.current()));
        if self.pools.with_budget(|b| b.observe(split, now)) {
            tracing::info!(?split, "live pooler replicas changed: budgets re-divided");
            self.apply_budget();
        }
    }

    fn apply_budget(&self) {
        let config = self.config();
        self.pools.reload(&config, &self.sources());
    }
}
