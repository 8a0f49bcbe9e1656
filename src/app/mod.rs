//! The application: owns the configuration, the pools, the cancel map and the shutdown state, and
//! hands them out explicitly (no process-global state, so tests can run many Apps side by side).

mod console;
mod metrics;
mod peers;

use crate::auth::store::SecretStore;
use crate::auth::verifiers::VerifierCache;
use crate::clients::CancelMap;
use crate::config::Config;
use crate::pool::registry::Registry;
use crate::shutdown::Shutdown;
use parking_lot::RwLock;
use std::sync::Arc;

#[derive(Debug)]
pub struct App {
    config: RwLock<Arc<Config>>,
    pub pools: Arc<Registry>,
    pub cancels: Arc<CancelMap>,
    pub shutdown: Arc<Shutdown>,
    pub verifiers: VerifierCache,
    /// The bound on PBKDF2 derivations running at once, for client and server logins alike.
    pub kdf: Arc<crate::auth::kdf::Kdf>,
    /// ClientKeys for SCRAM pass-through and `auth_query` answers.
    pub secrets: Arc<SecretStore>,
    /// Prepared statement definitions shared by all clients (transaction and statement mode).
    pub statements: crate::prepared::Registry,
    /// Logins, errors, reloads and TLS handshakes, for the metrics endpoint.
    pub events: crate::metrics::Events,
    /// The Kubernetes Services watched for primaries (and peers), one watcher each.
    pub discovery: crate::discovery::Discovery,
    /// The other replicas of this pooler: forwarded cancels, shared budgets.
    pub peers: crate::peers::Peers,
    /// The admin console's `SET key = value`s, applied over the file at every reload until restart.
    overrides: parking_lot::Mutex<Vec<(String, String)>>,
}

impl App {
    pub fn new(config: Config) -> Arc<Self> {
        let discovery = crate::discovery::Discovery::default();
        let g = &config.general;
        let peers = crate::peers::Peers::new(
            &g.peering,
            &discovery,
            g.kubeconfig.as_deref(),
            g.listen_port,
        );
        let pools = Arc::new(Registry::default());
        if g.peering.budget == crate::config::BudgetScope::Service {
            let budget = crate::pool::budget::Budget::new(
                peers.split(crate::pool::budget::Split::Joining),
                g.peering.settle,
            );
            pools.set_budget(budget);
        }
        let kdf = Arc::new(crate::auth::kdf::Kdf::default());
        Arc::new(Self {
            config: RwLock::new(Arc::new(config)),
            pools,
            cancels: Arc::default(),
            shutdown: Arc::default(),
            verifiers: VerifierCache::new(kdf.clone()),
            kdf,
            secrets: Arc::default(),
            statements: Default::default(),
            events: Default::default(),
            discovery,
            peers,
            overrides: Default::default(),
        })
    }

    /// What pool settings draw on besides the configuration.
    pub fn sources(&self) -> crate::pool::Sources<'_> {
        crate::pool::Sources {
            store: &self.secrets,
            discovery: &self.discovery,
            kdf: &self.kdf,
        }
    }

    /// The configuration in force; a reload swaps it for clients that log in afterwards.
    pub fn config(&self) -> Arc<Config> {
        self.config.read().clone()
    }

    /// Reads the configuration in place, without bumping the reference count every thread shares.
    pub fn with_config<R>(&self, f: impl FnOnce(&Config) -> R) -> R {
        f(&self.config.read())
    }

    /// Re-reads the configuration file. Listeners are kept (a changed listen address needs a
    /// restart, as in PgBouncer); pools take their new settings at once.
    pub fn reload(&self) -> Result<(), crate::config::ConfigError> {
        let source = self.config().source.clone();
        let overrides = self.overrides.lock().clone();
        let loaded = crate::config::load_with(&source, &overrides);
        self.events.reload(loaded.is_ok());
        self.install(loaded?);
        tracing::info!(file = %source.display(), "configuration reloaded");
        Ok(())
    }

    /// The admin console's `SET key = value`: the file re-read with the value over it, applied as
    /// a reload. The value holds until restart, later RELOADs included.
    pub fn set(&self, key: &str, value: &str) -> Result<(), crate::config::ConfigError> {
        let source = self.config().source.clone();
        let mut overrides = self.overrides.lock().clone();
        overrides.retain(|(k, _)| k != key);
        overrides.push((key.to_owned(), value.to_owned()));
        let new = crate::config::load_with(&source, &overrides)?;
        self.install(new);
        *self.overrides.lock() = overrides;
        tracing::info!(key, value, "configuration changed by SET");
        Ok(())
    }

    /// Puts a loaded configuration in force.
    fn install(&self, new: Config) {
        for w in &new.warnings {
            tracing::warn!("{w}");
        }
        self.peers.reload(&new.general.peering);
        // The scope stays as started; static [peers] may have changed the split.
        if self.with_config(|c| c.general.peering.budget) == crate::config::BudgetScope::Service {
            let split = self.peers.split(self.pools.with_budget(|b| b.current()));
            let now = tokio::time::Instant::now();
            self.pools.with_budget(|b| b.observe(split, now));
        }
        self.pools.reload(&new, &self.sources());
        *self.config.write() = Arc::new(new);
    }
}
