//! PgBouncer's `pgbouncer.ini`, read as is into the same raw model as TOML.
//!
//! Keys are PgBouncer's. A key pgsluice does not implement is a warning (PgBouncer users expect unknown
//! settings to be tolerated); a malformed value is an error naming the file, the line and the key.

use super::connstr;
use super::ini::{self, IniEntry};
use super::{ConfigError, Loaded, PoolMode, RawConfig, RawDatabase, RawGeneral, RawPeer, RawUser};
use std::path::Path;
use std::str::FromStr;

pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let doc = ini::load(path)?;
    let mut raw = RawConfig::default();
    let mut warnings = Vec::new();
    set_from_env(&mut raw.general)?;
    for section in &doc.sections {
        match section.name.as_str() {
            "pgbouncer" => {
                let ignored = "is not implemented by pgsluice and is ignored";
                set_all(
                    &mut raw.general,
                    section,
                    set_general,
                    ignored,
                    &mut warnings,
                )?;
            }
            "pgsluice" => {
                let ignored = "is not a pgsluice setting and is ignored";
                set_all(&mut raw.general, section, set_own, ignored, &mut warnings)?;
            }
            "databases" => {
                for e in &section.entries {
                    let db = parse_database(e, &mut warnings)?;
                    raw.databases.insert(e.key.clone(), db);
                }
            }
            "users" => {
                for e in &section.entries {
                    raw.users
                        .insert(e.key.clone(), parse_user(e, &mut warnings)?);
                }
            }
            "peers" => {
                for e in &section.entries {
                    raw.peers
                        .insert(e.key.clone(), parse_peer(e, &mut warnings)?);
                }
            }
            other => warnings.push(format!(
                "{}: section [{other}] is not known and is ignored",
                path.display()
            )),
        }
    }
    Ok(Loaded { raw, warnings })
}

/// CloudNativePG writes its Pooler pods' ini itself: the pod's environment is where pgsluice's own
/// settings can be given there. `PGSLUICE_<KEY>` sets `[pgsluice]`'s `<key>` (`PGSLUICE_DISCOVERY`,
/// `PGSLUICE_PEER_SECRET`, ...); the file's own setting, if any, comes after and wins.
fn set_from_env(g: &mut RawGeneral) -> Result<(), ConfigError> {
    for (name, value) in std::env::vars() {
        let Some(key) = name.strip_prefix("PGSLUICE_") else {
            continue;
        };
        let e = IniEntry {
            key: key.to_ascii_lowercase(),
            value,
            file: std::path::PathBuf::from(format!("${name}")),
            line: 0,
        };
        // Other variables that share the prefix (a script's PGSLUICE_DSN) are not pgsluice's.
        set_own(g, &e)?;
    }
    Ok(())
}

/// The admin console's `SET key = value` pairs, each as if it were the last line of the file.
pub(super) fn apply_overrides(
    g: &mut RawGeneral,
    overrides: &[(String, String)],
) -> Result<(), ConfigError> {
    for (key, value) in overrides {
        let e = IniEntry {
            key: key.clone(),
            value: value.clone(),
            file: std::path::PathBuf::from("SET"),
            line: 0,
        };
        if !set_general(g, &e)? {
            return Err(ConfigError::Invalid(format!("unknown setting \"{key}\"")));
        }
    }
    Ok(())
}

/// Applies a settings section with `set`; a key it does not take is a warning that it is `ignored`.
fn set_all(
    g: &mut RawGeneral,
    section: &ini::IniSection,
    set: fn(&mut RawGeneral, &IniEntry) -> Result<bool, ConfigError>,
    ignored: &str,
    warnings: &mut Vec<String>,
) -> Result<(), ConfigError> {
    for e in &section.entries {
        if !set(g, e)? {
            let (file, line) = (e.file.display(), e.line);
            warnings.push(format!("{file}:{line}: setting \"{}\" {ignored}", e.key));
        }
    }
    Ok(())
}

fn bad(e: &IniEntry, key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Value {
        file: e.file.clone(),
        line: e.line,
        key: key.to_owned(),
        message: message.into(),
    }
}

fn parse_bool(v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "on" | "true" | "yes" => Ok(true),
        "0" | "off" | "false" | "no" => Ok(false),
        _ => Err(format!("expected a boolean, got {v:?}")),
    }
}

fn parse_num<T: FromStr>(v: &str) -> Result<T, String> {
    v.trim()
        .parse()
        .map_err(|_| format!("expected a non-negative integer, got {v:?}"))
}

/// Seconds, fractions allowed, with optional PgBouncer-style units (`ms`, `s`, `min`, `h`).
pub fn parse_seconds(v: &str) -> Result<f64, String> {
    let v = v.trim();
    let split = v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("expected a number of seconds, got {v:?}"))?;
    let scale = match unit.trim() {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "min" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        u => return Err(format!("unknown time unit {u:?}")),
    };
    let secs = n * scale;
    if secs.is_finite() && secs >= 0.0 {
        Ok(secs)
    } else {
        Err(format!("expected a non-negative duration, got {v:?}"))
    }
}

fn path(v: &str) -> Option<std::path::PathBuf> {
    (!v.trim().is_empty()).then(|| v.trim().into())
}

fn parse_list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Applies one `[pgbouncer]` key; `Ok(false)` when the key is not one pgsluice implements.
fn set_general(g: &mut RawGeneral, e: &IniEntry) -> Result<bool, ConfigError> {
    let key = e.key.to_ascii_lowercase();
    let v = e.value.as_str();
    let err = |m: String| bad(e, &key, m);
    macro_rules! set {
        ($field:ident, $parse:expr) => {{
            g.$field = $parse(v).map_err(err)?;
        }};
    }
    match key.as_str() {
        "listen_addr" => g.listen_addr = parse_list(v),
        "listen_port" => set!(listen_port, parse_num),
        "unix_socket_dir" => g.unix_socket_dir = v.to_owned(),
        "max_client_conn" => set!(max_client_conn, parse_num),
        "auth_type" => set!(auth_type, |v: &str| v.parse()),
        "auth_file" => g.auth_file = (!v.is_empty()).then(|| v.into()),
        "pool_mode" => set!(pool_mode, PoolMode::from_str),
        "default_pool_size" => set!(default_pool_size, parse_num),
        "min_pool_size" => set!(min_pool_size, parse_num),
        "reserve_pool_size" => set!(reserve_pool_size, parse_num),
        "reserve_pool_timeout" => set!(reserve_pool_timeout, parse_seconds),
        "max_db_connections" => set!(max_db_connections, parse_num),
        "max_user_connections" => set!(max_user_connections, parse_num),
        "server_reset_query" => g.server_reset_query = v.to_owned(),
        "server_reset_query_always" => set!(server_reset_query_always, parse_bool),
        "max_prepared_statements" => set!(max_prepared_statements, parse_num),
        "server_check_query" => g.server_check_query = v.to_owned(),
        "server_check_delay" => set!(server_check_delay, parse_seconds),
        "server_connect_timeout" => set!(server_connect_timeout, parse_seconds),
        "server_login_retry" => set!(server_login_retry, parse_seconds),
        "server_idle_timeout" => set!(server_idle_timeout, parse_seconds),
        "server_lifetime" => set!(server_lifetime, parse_seconds),
        "query_timeout" => set!(query_timeout, parse_seconds),
        "query_wait_timeout" => set!(query_wait_timeout, parse_seconds),
        "client_idle_timeout" => set!(client_idle_timeout, parse_seconds),
        "client_login_timeout" => set!(client_login_timeout, parse_seconds),
        "idle_transaction_timeout" => set!(idle_transaction_timeout, parse_seconds),
        "ignore_startup_parameters" => g.ignore_startup_parameters = parse_list(v),
        "track_extra_parameters" => g.track_extra_parameters = parse_list(v),
        "log_connections" => set!(log_connections, parse_bool),
        "log_disconnections" => set!(log_disconnections, parse_bool),
        "log_pooler_errors" => set!(log_pooler_errors, parse_bool),
        "stats_period" => set!(stats_period, parse_seconds),
        "auth_hba_file" => g.auth_hba_file = path(v),
        "pidfile" => g.pidfile = path(v),
        "logfile" => g.logfile = path(v),
        "admin_users" => g.admin_users = parse_list(v),
        "stats_users" => g.stats_users = parse_list(v),
        "auth_user" => g.auth_user = (!v.is_empty()).then(|| v.to_owned()),
        "auth_query" => g.auth_query = v.to_owned(),
        "auth_dbname" => g.auth_dbname = (!v.is_empty()).then(|| v.to_owned()),
        "client_tls_sslmode" => set!(client_tls_sslmode, |v: &str| v.parse()),
        "client_tls_cert_file" => g.client_tls_cert_file = path(v),
        "client_tls_key_file" => g.client_tls_key_file = path(v),
        "client_tls_ca_file" => g.client_tls_ca_file = path(v),
        "client_tls_protocols" => g.client_tls_protocols = v.to_owned(),
        "client_tls_ciphers" => g.client_tls_ciphers = v.to_owned(),
        "client_tls13_ciphers" => g.client_tls13_ciphers = v.to_owned(),
        "server_tls_sslmode" => set!(server_tls_sslmode, |v: &str| v.parse()),
        "server_tls_cert_file" => g.server_tls_cert_file = path(v),
        "server_tls_key_file" => g.server_tls_key_file = path(v),
        "server_tls_ca_file" => g.server_tls_ca_file = path(v),
        "server_tls_protocols" => g.server_tls_protocols = v.to_owned(),
        "server_tls_ciphers" => g.server_tls_ciphers = v.to_owned(),
        "server_tls13_ciphers" => g.server_tls13_ciphers = v.to_owned(),
        "peer_id" => set!(peer_id, parse_num),
        // pgsluice's own keys belong in [pgsluice], which PgBouncer ignores; taken here too.
        _ => return set_own(g, e),
    }
    Ok(true)
}

/// The `[pgsluice]` section: settings PgBouncer does not have, kept apart so that the `[pgbouncer]`
/// section stays loadable by PgBouncer itself.
fn set_own(g: &mut RawGeneral, e: &IniEntry) -> Result<bool, ConfigError> {
    let key = e.key.to_ascii_lowercase();
    let v = e.value.as_str();
    let err = |m: String| bad(e, &key, m);
    match key.as_str() {
        "max_held_message" => g.max_held_message = parse_num(v).map_err(err)?,
        "max_client_statements" => g.max_client_statements = parse_num(v).map_err(err)?,
        "max_client_statement_bytes" => {
            g.max_client_statement_bytes = parse_num(v).map_err(err)?;
        }
        "workers" => g.workers = parse_num(v).map_err(err)?,
        "metrics_addr" => g.metrics_addr = v.to_owned(),
        "kubeconfig" => g.kubeconfig = path(v),
        "discovery_hold_timeout" => g.discovery_hold_timeout = parse_seconds(v).map_err(err)?,
        "discovery" => g.discovery = v.to_owned(),
        "peer_discovery" => g.peer_discovery = v.to_owned(),
        "peer_service" => g.peer_service = v.to_owned(),
        "peer_address" => g.peer_address = v.to_owned(),
        "peer_secret" => g.peer_secret = v.to_owned(),
        "budget_scope" => g.budget_scope = v.to_owned(),
        "budget_settle" => g.budget_settle = parse_seconds(v).map_err(err)?,
        "log_format" => {
            g.log_format = match v.to_ascii_lowercase().as_str() {
                "text" => super::LogFormat::Text,
                "json" => super::LogFormat::Json,
                _ => return Err(err(format!("expected text or json, got {v:?}"))),
            }
        }
        _ => return Ok(false),
    }
    Ok(true)
}

fn parse_database(e: &IniEntry, warnings: &mut Vec<String>) -> Result<RawDatabase, ConfigError> {
    let pairs = connstr::parse(&e.value).map_err(|m| bad(e, &e.key, m.to_string()))?;
    let mut d = RawDatabase::default();
    for (k, v) in pairs {
        let err = |m: String| bad(e, &format!("{}: {k}", e.key), m);
        match k.as_str() {
            "host" => d.host = Some(v),
            "port" => d.port = Some(parse_num(&v).map_err(err)?),
            "dbname" => d.dbname = Some(v),
            "user" => d.user = Some(v),
            "password" => d.password = Some(v),
            "auth_user" => d.auth_user = Some(v),
            "auth_query" => d.auth_query = Some(v),
            "auth_dbname" => d.auth_dbname = Some(v),
            "pool_size" => d.pool_size = Some(parse_num(&v).map_err(err)?),
            "min_pool_size" => d.min_pool_size = Some(parse_num(&v).map_err(err)?),
            "reserve_pool" | "reserve_pool_size" => {
                d.reserve_pool = Some(parse_num(&v).map_err(err)?)
            }
            "max_db_connections" => d.max_db_connections = Some(parse_num(&v).map_err(err)?),
            "pool_mode" => d.pool_mode = Some(v.parse().map_err(err)?),
            "client_encoding" => d.client_encoding = Some(v),
            "datestyle" => d.datestyle = Some(v),
            "timezone" => d.timezone = Some(v),
            "target_session_attrs" => d.target_session_attrs = Some(v),
            "discovery" => d.discovery = Some(v),
            "discovery_service" => d.discovery_service = Some(v),
            _ => warnings.push(format!(
                "{}:{}: database option \"{k}\" is not implemented by pgsluice and is ignored",
                e.file.display(),
                e.line
            )),
        }
    }
    Ok(d)
}

fn parse_user(e: &IniEntry, warnings: &mut Vec<String>) -> Result<RawUser, ConfigError> {
    let pairs = connstr::parse(&e.value).map_err(|m| bad(e, &e.key, m.to_string()))?;
    let mut u = RawUser::default();
    for (k, v) in pairs {
        let err = |m: String| bad(e, &format!("{}: {k}", e.key), m);
        match k.as_str() {
            "pool_mode" => u.pool_mode = Some(v.parse().map_err(err)?),
            "pool_size" => u.pool_size = Some(parse_num(&v).map_err(err)?),
            "max_user_connections" => u.max_user_connections = Some(parse_num(&v).map_err(err)?),
            _ => warnings.push(format!(
                "{}:{}: user option \"{k}\" is not implemented by pgsluice and is ignored",
                e.file.display(),
                e.line
            )),
        }
    }
    Ok(u)
}

/// A `[peers]` entry: `id = host=... port=... pool_size=...`.
fn parse_peer(e: &IniEntry, warnings: &mut Vec<String>) -> Result<RawPeer, ConfigError> {
    let pairs = connstr::parse(&e.value).map_err(|m| bad(e, &e.key, m.to_string()))?;
    let mut p = RawPeer::default();
    for (k, v) in pairs {
        let err = |m: String| bad(e, &format!("{}: {k}", e.key), m);
        match k.as_str() {
            "host" => p.host = Some(v),
            "port" => p.port = Some(parse_num(&v).map_err(err)?),
            "pool_size" => p.pool_size = Some(parse_num(&v).map_err(err)?),
            _ => warnings.push(format!(
                "{}:{}: peer option \"{k}\" is not implemented by pgsluice and is ignored",
                e.file.display(),
                e.line
            )),
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests;
