//! The settings one pool runs with, resolved from the global, database and user configuration.

use crate::auth::kdf::Kdf;
use crate::auth::secret::Secret;
use crate::auth::store::{FetchKey, SecretStore};
use crate::backend::ServerAddr;
use crate::config::{Config, PoolMode};
use crate::discovery::{Discovery, Watch};
use crate::net::tls::ServerTls;
use std::sync::Arc;
use std::time::Duration;

/// How the pool logs in to its servers.
#[derive(Clone)]
pub struct LoginInfo {
    /// The database's first host: what the secrets fetched by auth_query are filed under.
    pub addr: Arc<ServerAddr>,
    /// Every configured host, tried in order; the DNS fallback when discovery is used.
    pub hosts: Arc<[Arc<ServerAddr>]>,
    /// The candidates come from here when set (route.rs).
    pub discovery: Option<Watch>,
    /// A server in recovery or read-only is not used.
    pub read_write: bool,
    /// How long an opening waits while discovery knows no endpoint.
    pub hold: Duration,
    pub user: String,
    pub dbname: String,
    /// From the configuration (database entry or auth file); `None` leaves it to what `auth_query`
    /// found, in `store`.
    pub secret: Option<Secret>,
    pub startup: Vec<(String, String)>,
    pub tls: Arc<ServerTls>,
    pub store: Arc<SecretStore>,
    pub kdf: Arc<Kdf>,
}

impl LoginInfo {
    /// The secret to log in with, and for a SCRAM verifier the ClientKey a client proved.
    pub fn credentials(&self) -> (Option<Secret>, Option<zeroize::Zeroizing<[u8; 32]>>) {
        let secret = self.secret.clone().or_else(|| {
            self.store.last_fetched(&FetchKey {
                host: self.addr.host.clone(),
                port: self.addr.port,
                user: self.user.clone(),
            })
        });
        let key = match &secret {
            Some(Secret::Scram(v)) => self.store.client_key(&self.user, v),
            _ => None,
        };
        (secret, key)
    }
}

impl std::fmt::Debug for LoginInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginInfo")
            .field("addr", &self.addr)
            .field("user", &self.user)
            .field("dbname", &self.dbname)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub mode: PoolMode,
    pub pool_size: usize,
    pub min_pool_size: usize,
    pub reserve_pool_size: usize,
    pub reserve_pool_timeout: Duration,
    pub max_db_connections: usize,
    pub max_user_connections: usize,
    pub query_wait_timeout: Option<Duration>,
    pub server_lifetime: Option<Duration>,
    pub server_idle_timeout: Option<Duration>,
    pub server_connect_timeout: Option<Duration>,
    pub server_login_retry: Duration,
    pub server_check_query: Option<String>,
    pub server_check_delay: Duration,
    pub login: LoginInfo,
}

/// What pool settings draw on besides the configuration, all owned by the App.
#[derive(Debug, Clone, Copy)]
pub struct Sources<'a> {
    /// Secrets fetched by auth_query and ClientKeys for SCRAM pass-through.
    pub store: &'a Arc<SecretStore>,
    /// The watched Services, for databases located by Kubernetes.
    pub discovery: &'a Discovery,
    /// The bound on key derivations, which server logins share with client logins.
    pub kdf: &'a Arc<Kdf>,
}

impl PoolSettings {
    /// Resolves the settings of the pool for `database` (a `[databases]` name) and client `user`.
    /// `None` when no database entry (nor `*`) matches.
    pub fn resolve(
        config: &Config,
        database: &str,
        user: &str,
        sources: &Sources<'_>,
    ) -> Option<PoolSettings> {
        let Sources {
            store,
            discovery,
            kdf,
        } = sources;
        let g = &config.general;
        let db = config.database(database)?;
        let u = config.user(user);
        let server_user = db.user.clone().unwrap_or_else(|| user.to_owned());
        // The database entry's password goes with its forced user; otherwise the auth file's secret.
        let secret = match (&db.user, &db.password) {
            (_, Some(p)) => Some(p.clone()),
            _ => config.auth_secrets.get(&server_user).cloned(),
        };
        Some(PoolSettings {
            mode: u
                .and_then(|u| u.pool_mode)
                .or(db.pool_mode)
                .unwrap_or(g.pool_mode),
            pool_size: u
                .and_then(|u| u.pool_size)
                .or(db.pool_size)
                .unwrap_or(g.default_pool_size),
            min_pool_size: db.min_pool_size.unwrap_or(g.min_pool_size),
            reserve_pool_size: db.reserve_pool.unwrap_or(g.reserve_pool_size),
            reserve_pool_timeout: g.reserve_pool_timeout,
            max_db_connections: db.max_db_connections.unwrap_or(g.max_db_connections),
            max_user_connections: u
                .and_then(|u| u.max_user_connections)
                .unwrap_or(g.max_user_connections),
            query_wait_timeout: g.query_wait_timeout,
            server_lifetime: g.server_lifetime,
            server_idle_timeout: g.server_idle_timeout,
            server_connect_timeout: g.server_connect_timeout,
            server_login_retry: g.server_login_retry,
            server_check_query: g.server_check_query.clone(),
            server_check_delay: g.server_check_delay,
            login: LoginInfo {
                addr: Arc::new(ServerAddr {
                    host: db.host.clone(),
                    port: db.port,
                }),
                hosts: db
                    .locate
                    .hosts
                    .iter()
                    .map(|(host, port)| {
                        Arc::new(ServerAddr {
                            host: host.clone(),
                            port: *port,
                        })
                    })
                    .collect(),
                discovery: db
                    .locate
                    .kubernetes
                    .as_ref()
                    .map(|k| discovery.service(k, g.kubeconfig.as_deref(), db.port)),
                read_write: db.locate.read_write,
                hold: g.discovery_hold_timeout,
                user: server_user,
                dbname: db.dbname.clone().unwrap_or_else(|| database.to_owned()),
                secret,
                startup: db.startup_params.clone(),
                tls: g.server_tls.clone(),
                store: Arc::clone(store),
                kdf: Arc::clone(kdf),
            },
        })
    }
}
