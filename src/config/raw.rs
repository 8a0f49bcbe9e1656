//! The configuration as read, under PgBouncer's key names, before validation: what the TOML and
//! ini readers fill and [`super::Config::from_raw`] checks.

use super::kinds::{AuthType, LogFormat, PoolMode, SslMode};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// `[pgbouncer]` settings as read. Durations are seconds (fractions allowed); 0 disables a timeout.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawGeneral {
    pub listen_addr: Vec<String>,
    pub listen_port: u16,
    pub unix_socket_dir: String,
    pub max_client_conn: usize,
    pub auth_type: AuthType,
    pub auth_file: Option<PathBuf>,
    pub pool_mode: PoolMode,
    pub default_pool_size: usize,
    pub min_pool_size: usize,
    pub reserve_pool_size: usize,
    pub reserve_pool_timeout: f64,
    pub max_db_connections: usize,
    pub max_user_connections: usize,
    pub server_reset_query: String,
    pub server_reset_query_always: bool,
    pub max_prepared_statements: usize,
    /// pgsluice only: the largest client message held in memory whole (see [`General`]).
    pub max_held_message: usize,
    /// pgsluice only: how many named statements, and how many bytes of names and query text, one
    /// client may keep (see [`General`]).
    pub max_client_statements: usize,
    pub max_client_statement_bytes: usize,
    pub server_check_query: String,
    pub server_check_delay: f64,
    pub server_connect_timeout: f64,
    pub server_login_retry: f64,
    pub server_idle_timeout: f64,
    pub server_lifetime: f64,
    pub query_timeout: f64,
    pub query_wait_timeout: f64,
    pub client_idle_timeout: f64,
    pub client_login_timeout: f64,
    pub idle_transaction_timeout: f64,
    pub ignore_startup_parameters: Vec<String>,
    pub track_extra_parameters: Vec<String>,
    pub log_connections: bool,
    pub log_disconnections: bool,
    pub log_pooler_errors: bool,
    pub stats_period: f64,
    /// pgsluice only: tokio worker threads; 0 means one per core.
    pub workers: usize,
    /// pgsluice only: `text` (PgBouncer's line shape) or `json`.
    pub log_format: LogFormat,
    pub auth_hba_file: Option<PathBuf>,
    /// The process id is written here at start (refused if a live process holds it) and removed at exit.
    pub pidfile: Option<PathBuf>,
    /// Log lines are appended here too (and only here with `--quiet` or `--daemon`).
    pub logfile: Option<PathBuf>,
    /// Users allowed every admin console command, and users allowed its read-only SHOW commands.
    pub admin_users: Vec<String>,
    pub stats_users: Vec<String>,
    pub auth_user: Option<String>,
    pub auth_query: String,
    pub auth_dbname: Option<String>,
    pub client_tls_sslmode: SslMode,
    pub client_tls_cert_file: Option<PathBuf>,
    pub client_tls_key_file: Option<PathBuf>,
    pub client_tls_ca_file: Option<PathBuf>,
    pub client_tls_protocols: String,
    pub client_tls_ciphers: String,
    pub client_tls13_ciphers: String,
    pub server_tls_sslmode: SslMode,
    pub server_tls_cert_file: Option<PathBuf>,
    pub server_tls_key_file: Option<PathBuf>,
    pub server_tls_ca_file: Option<PathBuf>,
    pub server_tls_protocols: String,
    pub server_tls_ciphers: String,
    pub server_tls13_ciphers: String,
    /// pgsluice only: `host:port` of the metrics and health endpoint; empty (the default) is off.
    pub metrics_addr: String,
    /// pgsluice only: the Kubernetes API for discovery; by default what kube infers (in-cluster).
    pub kubeconfig: Option<PathBuf>,
    /// pgsluice only: how long a transaction waits while discovery knows no primary.
    pub discovery_hold_timeout: f64,
    /// pgsluice only: the `discovery` of databases that do not set their own (`kubernetes`).
    pub discovery: String,
    /// This process's id among its peers (PgBouncer's; 0 is off).
    pub peer_id: u16,
    /// pgsluice only: `kubernetes` finds the peers in `peer_service`'s endpoints.
    pub peer_discovery: String,
    /// pgsluice only: the pooler's own Service, `name` or `namespace/name`.
    pub peer_service: String,
    /// pgsluice only: this replica's IP as its peers see it; by default `$POD_IP`.
    pub peer_address: String,
    /// pgsluice only: the secret that signs forwarded cancels (all peers share it).
    pub peer_secret: String,
    /// pgsluice only: `replica` (the default) or `service`: limits shared by all replicas.
    pub budget_scope: String,
    /// pgsluice only: seconds a replica waits before it takes a larger share of a budget.
    pub budget_settle: f64,
}

/// PgBouncer's default auth query: the secret from pg_authid, none once `rolvaliduntil` has passed.
pub const DEFAULT_AUTH_QUERY: &str = "SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL ELSE rolpassword END FROM pg_authid WHERE rolname = $1 AND rolcanlogin";

impl Default for RawGeneral {
    fn default() -> Self {
        Self {
            listen_addr: vec!["127.0.0.1".into()],
            listen_port: 6432,
            unix_socket_dir: "/tmp".into(),
            max_client_conn: 100,
            auth_type: AuthType::Md5,
            auth_file: None,
            pool_mode: PoolMode::Session,
            default_pool_size: 20,
            min_pool_size: 0,
            reserve_pool_size: 0,
            reserve_pool_timeout: 5.0,
            max_db_connections: 0,
            max_user_connections: 0,
            server_reset_query: "DISCARD ALL".into(),
            server_reset_query_always: false,
            max_prepared_statements: 200,
            max_held_message: 1 << 20,
            max_client_statements: 1000,
            max_client_statement_bytes: 16 << 20,
            server_check_query: "select 1".into(),
            server_check_delay: 30.0,
            server_connect_timeout: 15.0,
            server_login_retry: 15.0,
            server_idle_timeout: 600.0,
            server_lifetime: 3600.0,
            query_timeout: 0.0,
            query_wait_timeout: 120.0,
            client_idle_timeout: 0.0,
            client_login_timeout: 60.0,
            idle_transaction_timeout: 0.0,
            ignore_startup_parameters: Vec::new(),
            track_extra_parameters: vec!["IntervalStyle".into()],
            log_connections: true,
            log_disconnections: true,
            log_pooler_errors: true,
            stats_period: 60.0,
            workers: 0,
            log_format: LogFormat::Text,
            auth_hba_file: None,
            pidfile: None,
            logfile: None,
            admin_users: Vec::new(),
            stats_users: Vec::new(),
            auth_user: None,
            auth_query: DEFAULT_AUTH_QUERY.into(),
            auth_dbname: None,
            client_tls_sslmode: SslMode::Disable,
            client_tls_cert_file: None,
            client_tls_key_file: None,
            client_tls_ca_file: None,
            client_tls_protocols: "secure".into(),
            client_tls_ciphers: "default".into(),
            client_tls13_ciphers: String::new(),
            server_tls_sslmode: SslMode::Prefer,
            server_tls_cert_file: None,
            server_tls_key_file: None,
            server_tls_ca_file: None,
            server_tls_protocols: "secure".into(),
            server_tls_ciphers: "default".into(),
            server_tls13_ciphers: String::new(),
            metrics_addr: String::new(),
            kubeconfig: None,
            discovery_hold_timeout: 10.0,
            discovery: String::new(),
            peer_id: 0,
            peer_discovery: String::new(),
            peer_service: String::new(),
            peer_address: String::new(),
            peer_secret: String::new(),
            budget_scope: String::new(),
            budget_settle: 2.0,
        }
    }
}

/// One `[databases]` entry as read.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawDatabase {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub dbname: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub auth_user: Option<String>,
    pub auth_query: Option<String>,
    pub auth_dbname: Option<String>,
    pub pool_size: Option<usize>,
    pub min_pool_size: Option<usize>,
    pub reserve_pool: Option<usize>,
    pub max_db_connections: Option<usize>,
    pub pool_mode: Option<PoolMode>,
    pub client_encoding: Option<String>,
    pub datestyle: Option<String>,
    pub timezone: Option<String>,
    /// libpq's: `read-write` skips a server in recovery or read-only (`any` is the default).
    pub target_session_attrs: Option<String>,
    /// pgsluice only: `kubernetes` finds the primary among a Service's endpoints.
    pub discovery: Option<String>,
    /// pgsluice only: the Service, `name` or `namespace/name`; by default from `host`.
    pub discovery_service: Option<String>,
}

impl std::fmt::Debug for RawDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawDatabase")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("dbname", &self.dbname)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

/// One `[users]` entry as read.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawUser {
    pub pool_mode: Option<PoolMode>,
    pub pool_size: Option<usize>,
    pub max_user_connections: Option<usize>,
}

/// Everything as read, before validation.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawConfig {
    #[serde(alias = "pgbouncer")]
    pub general: RawGeneral,
    pub databases: BTreeMap<String, RawDatabase>,
    pub users: BTreeMap<String, RawUser>,
    /// PgBouncer's `[peers]`: peer id → where it listens.
    pub peers: BTreeMap<String, RawPeer>,
}

/// One `[peers]` entry as read. `pool_size` (PgBouncer's cap on cancels in flight to the peer) is
/// accepted; pgsluice bounds each forwarded cancel by a timeout instead.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawPeer {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub pool_size: Option<usize>,
}

/// A raw config plus the warnings met while reading it (keys not implemented, ...).
#[derive(Debug)]
pub struct Loaded {
    pub raw: RawConfig,
    pub warnings: Vec<String>,
}
