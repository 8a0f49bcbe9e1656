//! The validated configuration model, built from the raw one (raw.rs) by [`Config::from_raw`].

use super::kinds::{AuthType, LogFormat, PoolMode, SslMode};
use super::raw::{RawDatabase, RawGeneral};
use super::{ConfigError, RawConfig};
use crate::auth::secret::Secret;
use crate::net::tls::{ClientTls, ServerTls, TlsFiles};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Where a pool's servers are and how to log in to them.
#[derive(Clone)]
pub struct Database {
    pub name: String,
    /// A host name, an IP address, or a unix socket directory (starts with `/`).
    pub host: String,
    pub port: u16,
    pub dbname: Option<String>,
    /// Forces the server login user, whatever the client's.
    pub user: Option<String>,
    pub password: Option<Secret>,
    pub auth_user: Option<String>,
    pub auth_query: Option<String>,
    pub auth_dbname: Option<String>,
    pub pool_size: Option<usize>,
    pub min_pool_size: Option<usize>,
    pub reserve_pool: Option<usize>,
    pub max_db_connections: Option<usize>,
    pub pool_mode: Option<PoolMode>,
    /// Startup parameters sent to the server (client_encoding, datestyle, timezone).
    pub startup_params: Vec<(String, String)>,
    /// Every host, whether servers must be writable, the Kubernetes Service.
    pub locate: super::Locate,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("name", &self.name)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("dbname", &self.dbname)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Default)]
pub struct User {
    pub pool_mode: Option<PoolMode>,
    pub pool_size: Option<usize>,
    pub max_user_connections: Option<usize>,
}

/// The floor of `max_held_message`: the head of a streamed Bind (its names) must fit, and so must
/// the Parse of any ordinary query.
pub const MIN_HELD_MESSAGE: usize = 8 << 10;

fn secs(s: f64) -> Option<Duration> {
    (s > 0.0).then(|| Duration::from_secs_f64(s))
}

/// Validated settings; durations that are 0 in the file are `None` here (disabled).
#[derive(Debug, Clone)]
pub struct General {
    pub listen_addr: Vec<String>,
    pub listen_port: u16,
    pub unix_socket_dir: Option<PathBuf>,
    pub max_client_conn: usize,
    pub auth_type: AuthType,
    pub pool_mode: PoolMode,
    pub default_pool_size: usize,
    pub min_pool_size: usize,
    pub reserve_pool_size: usize,
    pub reserve_pool_timeout: Duration,
    pub max_db_connections: usize,
    pub max_user_connections: usize,
    pub server_reset_query: Option<String>,
    pub server_reset_query_always: bool,
    pub max_prepared_statements: usize,
    /// The largest client message held whole for the prepared-statement tracker. A larger Bind or
    /// unnamed Parse streams through with only its head read; a larger named Parse is refused
    /// with 54000. Per-client buffered protocol state stays within a few times this.
    pub max_held_message: usize,
    /// The most named statements one client keeps in transaction and statement mode, and the most
    /// bytes of their names and query texts: a Parse past either gets 54000 and the session goes on.
    pub client_statements: crate::prepared::ClientLimits,
    pub server_check_query: Option<String>,
    pub server_check_delay: Duration,
    pub server_connect_timeout: Option<Duration>,
    pub server_login_retry: Duration,
    pub server_idle_timeout: Option<Duration>,
    pub server_lifetime: Option<Duration>,
    pub query_timeout: Option<Duration>,
    pub query_wait_timeout: Option<Duration>,
    pub client_idle_timeout: Option<Duration>,
    pub client_login_timeout: Option<Duration>,
    pub idle_transaction_timeout: Option<Duration>,
    pub ignore_startup_parameters: Vec<String>,
    /// Parameters re-applied when a client lands on a server whose values differ.
    pub tracked_parameters: Vec<String>,
    pub log_connections: bool,
    pub log_disconnections: bool,
    pub log_pooler_errors: bool,
    pub stats_period: Option<Duration>,
    pub workers: usize,
    pub log_format: LogFormat,
    /// Rules from `auth_hba_file`, for `auth_type = hba`.
    pub auth_hba: Option<Arc<crate::auth::hba::HbaRules>>,
    pub pidfile: Option<PathBuf>,
    pub logfile: Option<PathBuf>,
    pub admin_users: Vec<String>,
    pub stats_users: Vec<String>,
    /// Who runs `auth_query` for users the auth file does not know.
    pub auth_user: Option<String>,
    pub auth_query: String,
    pub auth_dbname: Option<String>,
    pub client_tls: Arc<ClientTls>,
    pub server_tls: Arc<ServerTls>,
    /// pgsluice only: where `/metrics`, `/healthz` and `/readyz` are served; off when None.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// pgsluice only: the Kubernetes API's kubeconfig for discovery (None: in-cluster/inferred).
    pub kubeconfig: Option<PathBuf>,
    /// pgsluice only: how long a transaction waits for discovery to find a primary.
    pub discovery_hold_timeout: Duration,
    /// Peers, forwarded cancels and shared budgets.
    pub peering: super::Peering,
}

/// The whole validated configuration. Immutable; a reload builds a new one.
#[derive(Debug, Clone)]
pub struct Config {
    pub source: PathBuf,
    pub general: General,
    pub databases: BTreeMap<String, Database>,
    pub users: BTreeMap<String, User>,
    /// Secrets from the auth file, by user name.
    pub auth_secrets: BTreeMap<String, Secret>,
    pub warnings: Vec<String>,
}

/// Always tracked, as PgBouncer does; `track_extra_parameters` adds to these.
const BASE_TRACKED: [&str; 5] = [
    "client_encoding",
    "DateStyle",
    "TimeZone",
    "standard_conforming_strings",
    "application_name",
];

impl Config {
    pub fn from_raw(
        raw: RawConfig,
        source: &Path,
        mut warnings: Vec<String>,
    ) -> Result<Self, ConfigError> {
        let peering = super::peering::parse(&raw)?;
        let g = raw.general;
        check_durations(&g)?;
        if g.listen_addr.is_empty() && g.unix_socket_dir.is_empty() {
            return Err(ConfigError::Invalid(
                "nothing to listen on: listen_addr and unix_socket_dir are both empty".into(),
            ));
        }
        let auth_secrets = match &g.auth_file {
            Some(path) => load_auth_file(&resolve(source, path))?,
            None => BTreeMap::new(),
        };
        let (client_tls, server_tls) = load_tls(&g, source, &mut warnings)?;
        // Without a CA no client certificate is ever verified, so every cert login would fail.
        if g.auth_type == AuthType::Cert
            && (g.client_tls_ca_file.is_none() || g.client_tls_sslmode == SslMode::Disable)
        {
            return Err(ConfigError::Invalid(
                "auth_type = cert needs client_tls_ca_file and a client_tls_sslmode other than disable"
                    .into(),
            ));
        }
        let auth_hba = match &g.auth_hba_file {
            Some(path) => Some(Arc::new(load_hba_file(&resolve(source, path))?)),
            None if g.auth_type == AuthType::Hba => {
                return Err(ConfigError::Invalid(
                    "auth_type = hba needs auth_hba_file".into(),
                ))
            }
            None => None,
        };
        let default_discovery = Some(g.discovery.clone()).filter(|d| !d.is_empty());
        let general = general(g, source, auth_hba, (client_tls, server_tls), peering)?;
        let mut databases = BTreeMap::new();
        for (name, d) in raw.databases {
            let db = database(&name, d, default_discovery.as_deref())?;
            databases.insert(name, db);
        }
        let users = raw
            .users
            .into_iter()
            .map(|(n, u)| {
                (
                    n,
                    User {
                        pool_mode: u.pool_mode,
                        pool_size: u.pool_size,
                        max_user_connections: u.max_user_connections,
                    },
                )
            })
            .collect();
        Ok(Config {
            source: source.to_owned(),
            general,
            databases,
            users,
            auth_secrets,
            warnings,
        })
    }
}

/// Every duration is a number of seconds, finite and not negative.
fn check_durations(g: &RawGeneral) -> Result<(), ConfigError> {
    for (name, v) in [
        ("reserve_pool_timeout", g.reserve_pool_timeout),
        ("server_check_delay", g.server_check_delay),
        ("server_connect_timeout", g.server_connect_timeout),
        ("server_login_retry", g.server_login_retry),
        ("server_idle_timeout", g.server_idle_timeout),
        ("server_lifetime", g.server_lifetime),
        ("query_timeout", g.query_timeout),
        ("query_wait_timeout", g.query_wait_timeout),
        ("client_idle_timeout", g.client_idle_timeout),
        ("client_login_timeout", g.client_login_timeout),
        ("idle_transaction_timeout", g.idle_transaction_timeout),
        ("stats_period", g.stats_period),
        ("discovery_hold_timeout", g.discovery_hold_timeout),
        ("budget_settle", g.budget_settle),
    ] {
        if !(v.is_finite() && (0.0..=1.0e9).contains(&v)) {
            return Err(ConfigError::Invalid(format!(
                "{name} must be a number of seconds ≥ 0, got {v}"
            )));
        }
    }
    Ok(())
}

/// Both sides' TLS settings, their files read and checked.
fn load_tls(
    g: &RawGeneral,
    source: &Path,
    warnings: &mut Vec<String>,
) -> Result<(ClientTls, ServerTls), ConfigError> {
    let files = |cert: &Option<PathBuf>,
                 key: &Option<PathBuf>,
                 ca: &Option<PathBuf>,
                 protocols: &str,
                 ciphers: &str,
                 tls13: &str| TlsFiles {
        cert: cert.as_ref().map(|p| resolve(source, p)),
        key: key.as_ref().map(|p| resolve(source, p)),
        ca: ca.as_ref().map(|p| resolve(source, p)),
        protocols: protocols.to_owned(),
        ciphers: ciphers.to_owned(),
        tls13_ciphers: tls13.to_owned(),
    };
    let client_tls = ClientTls::load(
        g.client_tls_sslmode,
        &files(
            &g.client_tls_cert_file,
            &g.client_tls_key_file,
            &g.client_tls_ca_file,
            &g.client_tls_protocols,
            &g.client_tls_ciphers,
            &g.client_tls13_ciphers,
        ),
        warnings,
    )?;
    let server_tls = ServerTls::load(
        g.server_tls_sslmode,
        &files(
            &g.server_tls_cert_file,
            &g.server_tls_key_file,
            &g.server_tls_ca_file,
            &g.server_tls_protocols,
            &g.server_tls_ciphers,
            &g.server_tls13_ciphers,
        ),
        warnings,
    )?;
    if client_tls.mode != SslMode::Disable && client_tls.end_point.is_none() {
        warnings.push(
            "client_tls_cert_file: the certificate's signature hash is not one channel binding \
             can use, so SCRAM-SHA-256-PLUS is not offered"
                .into(),
        );
    }
    Ok((client_tls, server_tls))
}

/// The `[pgbouncer]` section, validated.
fn general(
    g: RawGeneral,
    source: &Path,
    auth_hba: Option<Arc<crate::auth::hba::HbaRules>>,
    (client_tls, server_tls): (ClientTls, ServerTls),
    peering: super::peering::Peering,
) -> Result<General, ConfigError> {
    let metrics_addr = match g.metrics_addr.trim() {
        "" => None,
        a => Some(a.parse().map_err(|_| {
            ConfigError::Invalid(format!(
                "metrics_addr: \"{a}\" is not an address and port such as 127.0.0.1:9930"
            ))
        })?),
    };
    let mut tracked: Vec<String> = BASE_TRACKED.iter().map(|s| (*s).to_owned()).collect();
    for p in &g.track_extra_parameters {
        if !tracked.iter().any(|t| t.eq_ignore_ascii_case(p)) {
            tracked.push(p.clone());
        }
    }
    Ok(General {
        listen_addr: g.listen_addr,
        listen_port: g.listen_port,
        unix_socket_dir: (!g.unix_socket_dir.is_empty()).then(|| PathBuf::from(&g.unix_socket_dir)),
        max_client_conn: g.max_client_conn,
        auth_type: g.auth_type,
        pool_mode: g.pool_mode,
        default_pool_size: g.default_pool_size,
        min_pool_size: g.min_pool_size,
        reserve_pool_size: g.reserve_pool_size,
        reserve_pool_timeout: Duration::from_secs_f64(g.reserve_pool_timeout),
        max_db_connections: g.max_db_connections,
        max_user_connections: g.max_user_connections,
        server_reset_query: (!g.server_reset_query.trim().is_empty())
            .then_some(g.server_reset_query),
        server_reset_query_always: g.server_reset_query_always,
        max_prepared_statements: g.max_prepared_statements,
        // Below a few KiB even a Parse of an ordinary query would be refused.
        max_held_message: g.max_held_message.max(MIN_HELD_MESSAGE),
        client_statements: crate::prepared::ClientLimits {
            statements: g.max_client_statements,
            bytes: g.max_client_statement_bytes,
        },
        server_check_query: (!g.server_check_query.trim().is_empty())
            .then_some(g.server_check_query),
        server_check_delay: Duration::from_secs_f64(g.server_check_delay),
        server_connect_timeout: secs(g.server_connect_timeout),
        server_login_retry: Duration::from_secs_f64(g.server_login_retry),
        server_idle_timeout: secs(g.server_idle_timeout),
        server_lifetime: secs(g.server_lifetime),
        query_timeout: secs(g.query_timeout),
        query_wait_timeout: secs(g.query_wait_timeout),
        client_idle_timeout: secs(g.client_idle_timeout),
        client_login_timeout: secs(g.client_login_timeout),
        idle_transaction_timeout: secs(g.idle_transaction_timeout),
        ignore_startup_parameters: g.ignore_startup_parameters,
        tracked_parameters: tracked,
        log_connections: g.log_connections,
        log_disconnections: g.log_disconnections,
        log_pooler_errors: g.log_pooler_errors,
        stats_period: secs(g.stats_period),
        workers: g.workers,
        log_format: g.log_format,
        auth_hba,
        pidfile: g.pidfile.as_deref().map(|p| resolve(source, p)),
        logfile: g.logfile.as_deref().map(|p| resolve(source, p)),
        admin_users: g.admin_users,
        stats_users: g.stats_users,
        auth_user: g.auth_user,
        auth_query: g.auth_query,
        auth_dbname: g.auth_dbname,
        client_tls: Arc::new(client_tls),
        server_tls: Arc::new(server_tls),
        metrics_addr,
        kubeconfig: g.kubeconfig.as_deref().map(|p| resolve(source, p)),
        discovery_hold_timeout: Duration::from_secs_f64(g.discovery_hold_timeout),
        peering,
    })
}

/// One `[databases]` entry, validated; `default_discovery` is the `[pgbouncer]` section's.
fn database(
    name: &str,
    d: RawDatabase,
    default_discovery: Option<&str>,
) -> Result<Database, ConfigError> {
    let mut startup_params = Vec::new();
    for (k, v) in [
        ("client_encoding", &d.client_encoding),
        ("datestyle", &d.datestyle),
        ("timezone", &d.timezone),
    ] {
        if let Some(v) = v {
            startup_params.push((k.to_owned(), v.clone()));
        }
    }
    let host = d.host.unwrap_or_else(|| "127.0.0.1".into());
    let port = d.port.unwrap_or(5432);
    let locate = super::Locate::parse(
        name,
        &host,
        port,
        d.target_session_attrs.as_deref(),
        d.discovery.as_deref().or(default_discovery),
        d.discovery_service.as_deref(),
    )?;
    Ok(Database {
        name: name.to_owned(),
        host: locate.hosts[0].0.clone(),
        port: locate.hosts[0].1,
        dbname: d.dbname,
        user: d.user,
        password: d.password.map(|p| Secret::parse(&p)),
        auth_user: d.auth_user,
        auth_query: d.auth_query,
        auth_dbname: d.auth_dbname,
        pool_size: d.pool_size,
        min_pool_size: d.min_pool_size,
        reserve_pool: d.reserve_pool,
        max_db_connections: d.max_db_connections,
        pool_mode: d.pool_mode,
        startup_params,
        locate,
    })
}

impl Config {
    /// The `[databases]` entry for a client's database name, falling back to `*`.
    pub fn database(&self, name: &str) -> Option<&Database> {
        self.databases.get(name).or_else(|| self.databases.get("*"))
    }

    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.get(name)
    }
}

/// Paths in a config file are relative to the directory of that file.
pub fn resolve(source: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_owned()
    } else {
        source
            .parent()
            .map(|d| d.join(path))
            .unwrap_or_else(|| path.to_owned())
    }
}

fn load_hba_file(path: &Path) -> Result<crate::auth::hba::HbaRules, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Io {
        file: path.to_owned(),
        error,
    })?;
    crate::auth::hba::HbaRules::parse(&text).map_err(|e| ConfigError::AuthFile {
        file: path.to_owned(),
        line: e.line,
        message: e.message,
    })
}

fn load_auth_file(path: &Path) -> Result<BTreeMap<String, Secret>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Io {
        file: path.to_owned(),
        error,
    })?;
    let entries = super::userlist::parse(&text).map_err(|e| ConfigError::AuthFile {
        file: path.to_owned(),
        line: e.line(),
        message: e.to_string(),
    })?;
    Ok(entries
        .into_iter()
        .map(|e| (e.user, Secret::parse(&e.secret)))
        .collect())
}
