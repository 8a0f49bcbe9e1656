//! All pools, keyed by (database, user), with the database and user limits they share.

use super::budget::{Budget, Split};
use super::limit::Limit;
use super::{Pool, PoolKey, PoolSettings};
use crate::config::Config;
use dashmap::DashMap;
use std::collections::HashSet;
use std::sync::Arc;

#[derive(Debug)]
pub struct Registry {
    pools: DashMap<PoolKey, Arc<Pool>>,
    db_limits: DashMap<String, Arc<Limit>>,
    user_limits: DashMap<String, Arc<Limit>>,
    /// PAUSE and DISABLE, per database (control.rs).
    pub(super) switches: parking_lot::Mutex<Switches>,
    /// This replica's share of budgets declared for the whole Service.
    budget: parking_lot::Mutex<Budget>,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            pools: DashMap::new(),
            db_limits: DashMap::new(),
            user_limits: DashMap::new(),
            switches: Default::default(),
            budget: parking_lot::Mutex::new(Budget::new(Split::Whole, Default::default())),
        }
    }
}

impl Registry {
    /// Replaces the budget (at start, when the Service's limits are shared among replicas).
    pub fn set_budget(&self, budget: Budget) {
        *self.budget.lock() = budget;
    }

    /// Reads or changes the budget; new shares take effect at the next [`Registry::reload`].
    pub fn with_budget<R>(&self, f: impl FnOnce(&mut Budget) -> R) -> R {
        f(&mut self.budget.lock())
    }

    /// Takes this replica's share of every limit the settings give for the whole Service. A cap
    /// whose share is nothing cannot be written as 0 (that is "unlimited"): the pool gets no
    /// servers instead, and its clients wait until the shares change.
    fn divide(&self, s: &mut PoolSettings) {
        let b = self.budget.lock();
        let now = tokio::time::Instant::now();
        for v in [
            &mut s.pool_size,
            &mut s.min_pool_size,
            &mut s.reserve_pool_size,
        ] {
            *v = b.share(*v, now);
        }
        let mut starved = false;
        for cap in [&mut s.max_db_connections, &mut s.max_user_connections] {
            if *cap > 0 {
                *cap = b.share(*cap, now);
                if *cap == 0 {
                    starved = true;
                    *cap = 1;
                }
            }
        }
        if starved {
            s.pool_size = 0;
            s.reserve_pool_size = 0;
        }
        s.min_pool_size = s.min_pool_size.min(s.pool_size);
    }

    /// The pool for `key`, created with `settings` on first use.
    pub fn get_or_create(&self, key: PoolKey, mut settings: PoolSettings) -> Arc<Pool> {
        if let Some(p) = self.pools.get(&key) {
            return p.clone();
        }
        self.divide(&mut settings);
        let db_limit = self.limit(&self.db_limits, &key.database, settings.max_db_connections);
        let user_limit = self.limit(&self.user_limits, &key.user, settings.max_user_connections);
        self.pools
            .entry(key.clone())
            .or_insert_with(|| {
                let paused = self.switches.lock().paused(&key.database);
                let pool = Arc::new(Pool::new(
                    key,
                    settings,
                    db_limit.clone(),
                    user_limit.clone(),
                ));
                if paused {
                    pool.pause();
                }
                db_limit.join(&pool);
                user_limit.join(&pool);
                if let Some(watch) = &pool.settings().login.discovery {
                    tokio::spawn(super::route::follow(Arc::downgrade(&pool), watch.clone()));
                }
                pool
            })
            .clone()
    }

    fn limit(&self, map: &DashMap<String, Arc<Limit>>, name: &str, max: usize) -> Arc<Limit> {
        map.entry(name.to_owned())
            .or_insert_with(|| Arc::new(Limit::new(max)))
            .clone()
    }

    pub fn all(&self) -> Vec<Arc<Pool>> {
        self.pools.iter().map(|p| p.value().clone()).collect()
    }

    /// Applies a reloaded configuration to the existing pools. A pool whose database entry is gone
    /// keeps serving its connected clients and closes servers as they come back.
    pub fn reload(&self, config: &Config, sources: &super::settings::Sources<'_>) {
        for p in self.pools.iter() {
            let key = p.key();
            match PoolSettings::resolve(config, &key.database, &key.user, sources) {
                Some(mut s) => {
                    self.divide(&mut s);
                    if let Some(l) = self.db_limits.get(&key.database) {
                        l.set_max(s.max_db_connections);
                    }
                    if let Some(l) = self.user_limits.get(&key.user) {
                        l.set_max(s.max_user_connections);
                    }
                    // A database moved (hosts, dbname or login user): its old servers drain as
                    // they are released, as after RECONNECT.
                    let moved = p.with_settings(|old| {
                        let (a, b) = (&old.login, &s.login);
                        (&a.hosts, &a.dbname, &a.user) != (&b.hosts, &b.dbname, &b.user)
                    });
                    p.update_settings(s);
                    // A database back after it was removed reopens; if it is paused, paused.
                    if self.switches.lock().paused(&key.database) {
                        p.pause();
                    }
                    if moved {
                        p.reconnect();
                    }
                }
                None => p.close(),
            }
        }
    }
}

/// PAUSE and DISABLE, per database and for all of them (set by control.rs).
#[derive(Debug, Default)]
pub(super) struct Switches {
    pub(super) all_paused: bool,
    pub(super) paused: HashSet<String>,
    pub(super) disabled: HashSet<String>,
}

impl Switches {
    pub(super) fn paused(&self, db: &str) -> bool {
        self.all_paused || self.paused.contains(db)
    }
}
