//! What the admin console reads from and asks of the running pooler: `impl Console for App`.
//!
//! Rows are gathered from the pools' census and counters at the time of the command; nothing here
//! is kept up to date on the data path.

use super::App;
use crate::admin::{
    ClientRow, ConfigRow, Console, Counters, DatabaseRow, DatabaseStats, Lists, PeerRow, PoolRow,
    ServerRow, ShutdownMode, UserRow,
};
use crate::backend::ServerInfo;
use crate::clients::Link;
use crate::config::{Config, PoolMode};
use crate::pool::stats::averages;
use crate::pool::{Pool, PoolKey, PoolState};
use crate::shutdown::Phase;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

fn mode_name(m: PoolMode) -> &'static str {
    match m {
        PoolMode::Session => "session",
        PoolMode::Transaction => "transaction",
        PoolMode::Statement => "statement",
    }
}

fn counters(v: [u64; 11]) -> Counters {
    Counters {
        server_assignment_count: v[0],
        xact_count: v[1],
        query_count: v[2],
        received: v[3],
        sent: v[4],
        xact_time: v[5],
        query_time: v[6],
        wait_time: v[7],
        client_parse_count: v[8],
        server_parse_count: v[9],
        bind_count: v[10],
    }
}

fn seconds(d: Option<Duration>) -> String {
    d.map_or_else(|| "0".to_owned(), |d| d.as_secs_f64().to_string())
}

/// PgBouncer's time text for SHOW CLIENTS and SERVERS.
fn time_text(t: std::time::SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t)
        .format("%Y-%m-%d %H:%M:%S UTC")
        .to_string()
}

/// A monotonic instant as wall time.
fn wall_time(t: tokio::time::Instant) -> String {
    let now = std::time::SystemTime::now();
    time_text(now.checked_sub(t.elapsed()).unwrap_or(now))
}

/// Servers and clients of the pools whose key `mine` picks (a database's, or a user's).
fn usage(pools: &[Arc<Pool>], mine: impl Fn(&PoolKey) -> bool) -> (usize, usize) {
    pools
        .iter()
        .filter(|p| mine(&p.key))
        .fold((0, 0), |(s, c), p| {
            let n = p.census();
            (s + n.servers, c + n.clients)
        })
}

/// SHOW CONFIG's rows: the settings pgsluice implements, as in force, and whether RELOAD (or SET)
/// changes them.
fn config_rows(c: &Config) -> Vec<ConfigRow> {
    let g = &c.general;
    let d = crate::config::RawGeneral::default();
    let n = |v: usize| v.to_string();
    let secs = |v: f64| {
        if v == 0.0 {
            "0".to_owned()
        } else {
            v.to_string()
        }
    };
    let socket = g
        .unix_socket_dir
        .as_ref()
        .map_or(String::new(), |p| p.display().to_string());
    // (key, value in force, default, changeable): a table, kept one row a line.
    #[rustfmt::skip]
    let rows = [
        ("listen_addr", g.listen_addr.join(","), d.listen_addr.join(","), false),
        ("listen_port", g.listen_port.to_string(), d.listen_port.to_string(), false),
        ("unix_socket_dir", socket, d.unix_socket_dir.clone(), false),
        ("max_client_conn", n(g.max_client_conn), n(d.max_client_conn), true),
        ("pool_mode", mode_name(g.pool_mode).into(), mode_name(d.pool_mode).into(), true),
        ("default_pool_size", n(g.default_pool_size), n(d.default_pool_size), true),
        ("min_pool_size", n(g.min_pool_size), n(d.min_pool_size), true),
        ("reserve_pool_size", n(g.reserve_pool_size), n(d.reserve_pool_size), true),
        ("max_db_connections", n(g.max_db_connections), n(d.max_db_connections), true),
        ("max_user_connections", n(g.max_user_connections), n(d.max_user_connections), true),
        ("max_prepared_statements", n(g.max_prepared_statements), n(d.max_prepared_statements), true),
        ("query_timeout", seconds(g.query_timeout), secs(d.query_timeout), true),
        ("query_wait_timeout", seconds(g.query_wait_timeout), secs(d.query_wait_timeout), true),
        ("idle_transaction_timeout", seconds(g.idle_transaction_timeout), secs(d.idle_transaction_timeout), true),
        ("client_idle_timeout", seconds(g.client_idle_timeout), secs(d.client_idle_timeout), true),
        ("server_idle_timeout", seconds(g.server_idle_timeout), secs(d.server_idle_timeout), true),
        ("server_lifetime", seconds(g.server_lifetime), secs(d.server_lifetime), true),
        ("stats_period", seconds(g.stats_period), secs(d.stats_period), true),
        ("admin_users", g.admin_users.join(","), String::new(), true),
        ("stats_users", g.stats_users.join(","), String::new(), true),
    ];
    rows.into_iter()
        .map(|(key, value, default, changeable)| ConfigRow {
            key: key.to_owned(),
            value,
            default,
            changeable,
        })
        .collect()
}

impl App {
    /// A `[databases]` entry by its own name, or one the `*` entry has opened a pool for: as
    /// PgBouncer, where the wildcard's databases exist once used.
    fn known_database(&self, name: &str) -> bool {
        name != "*"
            && (self.with_config(|c| c.databases.contains_key(name))
                || self.pools.all().iter().any(|p| p.key.database == name))
    }
}

impl Console for App {
    fn version(&self) -> String {
        crate::admin::VERSION.to_owned()
    }

    fn pools(&self) -> Vec<PoolRow> {
        let mut rows: Vec<PoolRow> = self
            .pools
            .all()
            .iter()
            .map(|p| {
                let c = p.census();
                PoolRow {
                    database: p.key.database.clone(),
                    user: p.key.user.clone(),
                    cl_active: c.clients.saturating_sub(c.waiting),
                    cl_waiting: c.waiting,
                    sv_active: c.active_servers(),
                    sv_idle: c.idle,
                    sv_used: 0,
                    sv_tested: 0,
                    sv_login: c.opening,
                    maxwait_us: c.max_wait_us,
                    pool_mode: mode_name(p.with_settings(|s| s.mode)),
                }
            })
            .collect();
        rows.sort_by(|a, b| (&a.database, &a.user).cmp(&(&b.database, &b.user)));
        rows
    }

    fn clients(&self) -> Vec<ClientRow> {
        self.cancels
            .all()
            .iter()
            .map(|c| {
                let who = &c.who;
                let (state, server_pid, wait_us) = match c.link() {
                    Link::Idle => ("idle", 0, 0),
                    Link::Waiting(since) => {
                        let us = u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX);
                        ("waiting", 0, us)
                    }
                    Link::Active(server) => ("active", server.key.pid, 0),
                };
                ClientRow {
                    user: who.pool.key.user.clone(),
                    database: who.pool.key.database.clone(),
                    state,
                    addr: who.peer.map_or("unix".into(), |a| a.ip().to_string()),
                    port: who.peer.map_or(0, |a| a.port()),
                    local_addr: who.local.map_or("unix".into(), |a| a.ip().to_string()),
                    local_port: who.local.map_or(0, |a| a.port()),
                    connect_time: time_text(who.connected),
                    server_pid,
                    tls: who.tls,
                    id: c.id,
                    application_name: who.application_name.as_deref().unwrap_or("").to_owned(),
                    wait_us,
                }
            })
            .collect()
    }

    fn servers(&self) -> Vec<ServerRow> {
        let row = |p: &Pool, s: &ServerInfo, client: Option<u64>| ServerRow {
            // Closed when released: retired by RECONNECT or a moved database, or its database gone.
            close_needed: p.state() == PoolState::Closing
                || p.retired_before().is_some_and(|t| s.created <= t),
            prepared_statements: s.prepared,
            user: p.key.user.clone(),
            database: p.key.database.clone(),
            state: if client.is_some() { "active" } else { "idle" },
            addr: s.addr.host.clone(),
            port: s.addr.port,
            connect_time: wall_time(s.created),
            request_time: wall_time(s.last_used),
            remote_pid: s.key.pid,
            tls: s.tls,
            id: s.id,
            client,
        };
        // Held servers are known from their clients, idle ones from their pools.
        let mut rows: Vec<ServerRow> = self
            .cancels
            .all()
            .iter()
            .filter_map(|c| match c.link() {
                Link::Active(s) => Some(row(&c.who.pool, &s, Some(c.id))),
                _ => None,
            })
            .collect();
        for p in self.pools.all() {
            rows.extend(p.idle_servers().iter().map(|s| row(&p, s, None)));
        }
        rows.sort_by(|a, b| (&a.database, &a.user, a.id).cmp(&(&b.database, &b.user, b.id)));
        rows
    }

    fn stats(&self) -> Vec<DatabaseStats> {
        // PgBouncer's STATS are per database: the pools of each are summed.
        let mut by_db: BTreeMap<String, ([u64; 11], [u64; 11], u64)> = BTreeMap::new();
        for p in self.pools.all() {
            let e = by_db.entry(p.key.database.clone()).or_default();
            let (delta, micros) = p.stats.last_period();
            for (i, v) in p.stats.totals().into_iter().enumerate() {
                e.0[i] += v;
                e.1[i] += delta[i];
            }
            e.2 = e.2.max(micros);
        }
        by_db
            .into_iter()
            .map(|(database, (totals, delta, micros))| DatabaseStats {
                database,
                totals: counters(totals),
                averages: counters(averages(&delta, micros)),
            })
            .collect()
    }

    fn databases(&self) -> Vec<DatabaseRow> {
        let config = self.config();
        let pools = self.pools.all();
        let mut rows: Vec<DatabaseRow> = config
            .databases
            .values()
            .filter(|d| d.name != "*")
            .map(|d| {
                let (servers, clients) = usage(&pools, |k| k.database == d.name);
                let g = &config.general;
                DatabaseRow {
                    name: d.name.clone(),
                    host: Some(d.host.clone()),
                    port: d.port,
                    database: d.dbname.clone().unwrap_or_else(|| d.name.clone()),
                    force_user: d.user.clone(),
                    pool_size: d.pool_size.unwrap_or(g.default_pool_size),
                    min_pool_size: d.min_pool_size.unwrap_or(g.min_pool_size),
                    reserve_pool_size: d.reserve_pool.unwrap_or(g.reserve_pool_size),
                    server_lifetime: g.server_lifetime.map_or(0, |l| l.as_secs()),
                    pool_mode: d.pool_mode.map(|m| mode_name(m).to_owned()),
                    max_connections: d.max_db_connections.unwrap_or(g.max_db_connections),
                    current_connections: servers,
                    max_client_connections: 0,
                    current_client_connections: clients,
                    paused: self.pools.is_paused(Some(&d.name)),
                    disabled: self.pools.is_disabled(&d.name),
                }
            })
            .collect();
        // The console itself, as PgBouncer lists it.
        rows.push(DatabaseRow {
            name: "pgbouncer".into(),
            host: None,
            port: config.general.listen_port,
            database: "pgbouncer".into(),
            force_user: Some("pgbouncer".into()),
            pool_size: 2,
            pool_mode: Some("statement".into()),
            ..DatabaseRow::default()
        });
        rows.sort_by(|a, b| a.name.cmp(&b.name));
        rows
    }

    fn users(&self) -> Vec<UserRow> {
        let config = self.config();
        let pools = self.pools.all();
        config
            .users
            .iter()
            .map(|(name, u)| {
                let (servers, clients) = usage(&pools, |k| &k.user == name);
                UserRow {
                    name: name.clone(),
                    pool_size: u.pool_size,
                    reserve_pool_size: None,
                    pool_mode: u.pool_mode.map(|m| mode_name(m).to_owned()),
                    max_user_connections: u
                        .max_user_connections
                        .unwrap_or(config.general.max_user_connections),
                    current_connections: servers,
                    max_user_client_connections: 0,
                    current_client_connections: clients,
                }
            })
            .collect()
    }

    fn config(&self) -> Vec<ConfigRow> {
        config_rows(&self.config())
    }

    fn peers(&self) -> Vec<PeerRow> {
        let default_size = self.config().general.default_pool_size;
        self.peers
            .list()
            .into_iter()
            .map(|(id, a)| PeerRow {
                id,
                host: a.host,
                port: a.port,
                pool_size: a.pool_size.unwrap_or(default_size),
            })
            .collect()
    }

    fn lists(&self) -> Lists {
        let config = self.config();
        let pools = self.pools.all();
        let (mut clients, mut servers, mut idle) = (0, 0, 0);
        for p in &pools {
            let c = p.census();
            clients += c.clients;
            servers += c.servers;
            idle += c.idle;
        }
        Lists {
            databases: config.databases.len(),
            users: config.users.len(),
            pools: pools.len(),
            free_clients: 0,
            used_clients: clients,
            login_clients: 0,
            free_servers: idle,
            used_servers: servers.saturating_sub(idle),
        }
    }

    fn state(&self) -> (bool, bool) {
        (
            self.pools.is_paused(None),
            self.shutdown.phase() != Phase::Running,
        )
    }

    fn pause(&self, db: Option<&str>) -> Result<(), String> {
        if let Some(d) = db {
            if crate::admin::is_console(d) {
                return Err(format!("cannot pause admin db: {d}"));
            }
            if !self.known_database(d) {
                return Err(format!("no such database: {d}"));
            }
        }
        if self.pools.is_paused(db) {
            return Err("already suspended/paused".into());
        }
        self.pools.pause(db);
        Ok(())
    }

    fn paused(&self, db: Option<&str>) -> bool {
        self.pools.drained(db)
    }

    fn closed(&self, db: Option<&str>) -> bool {
        let wanted = |key: &PoolKey| db.is_none_or(|d| key.database == d);
        // The servers a RECONNECT retired: idle ones are closed at once, held ones when released.
        let retired: Vec<(PoolKey, tokio::time::Instant)> = self
            .pools
            .all()
            .iter()
            .filter(|p| wanted(&p.key))
            .filter_map(|p| p.retired_before().map(|t| (p.key.clone(), t)))
            .collect();
        let still_held = self.cancels.all().iter().any(|c| match c.link() {
            Link::Active(s) => retired
                .iter()
                .any(|(k, t)| *k == c.who.pool.key && s.created <= *t),
            _ => false,
        });
        !still_held
    }

    fn has_database(&self, db: &str) -> bool {
        self.known_database(db)
    }

    fn resume(&self, db: Option<&str>) -> Result<(), String> {
        if self.shutdown.phase() != Phase::Running {
            return Err("pooler is shutting down".into());
        }
        if self.pools.resume(db) {
            Ok(())
        } else {
            Err(match db {
                Some(d) => format!("database {d} is not paused"),
                None => "pooler is not paused/suspended".into(),
            })
        }
    }

    fn reload(&self) -> Result<(), String> {
        App::reload(self).map_err(|e| e.to_string())
    }

    fn set(&self, key: &str, value: &str) -> Result<(), String> {
        let rows = config_rows(&self.config());
        match rows.iter().find(|r| r.key == key) {
            None => return Err(format!("unknown config parameter: {key}")),
            Some(r) if !r.changeable => {
                return Err(format!("config parameter {key} cannot be changed online"))
            }
            Some(_) => {}
        }
        App::set(self, key, value).map_err(|e| match e {
            crate::config::ConfigError::Value { key, message, .. } => {
                format!("invalid value for {key}: {message}")
            }
            // The file itself no longer loads: what RELOAD would say, without paths.
            _ => "SET failed, see logs for additional details".to_owned(),
        })
    }

    fn set_disabled(&self, db: &str, disabled: bool) -> Result<(), String> {
        if !self.known_database(db) {
            return Err(format!("no such database: {db}"));
        }
        self.pools.set_disabled(db, disabled);
        Ok(())
    }

    fn reconnect(&self, db: Option<&str>) -> Result<(), String> {
        if let Some(d) = db {
            if !self.known_database(d) {
                return Err(format!("no such database: {d}"));
            }
        }
        self.pools.reconnect(db);
        Ok(())
    }

    fn kill(&self, db: Option<&str>) -> Result<(), String> {
        if let Some(d) = db {
            if crate::admin::is_console(d) {
                return Err(format!("cannot kill admin db: {d}"));
            }
            if !self.known_database(d) {
                return Err(format!("no such database: {d}"));
            }
        }
        if self.pools.is_paused(db) {
            return Err("already suspended/paused".into());
        }
        // Paused first: the clients closed now cannot be replaced by new requests before RESUME.
        self.pools.pause(db);
        for c in self.cancels.all() {
            if db.is_none_or(|d| c.who.pool.key.database == d) {
                c.nudge.kill();
            }
        }
        Ok(())
    }

    fn kill_client(&self, id: u64) -> Result<(), String> {
        let client = self.cancels.all().into_iter().find(|c| c.id == id);
        let client = client.ok_or_else(|| "client not found".to_owned())?;
        client.nudge.kill();
        Ok(())
    }

    fn shutdown(&self, mode: ShutdownMode) {
        self.shutdown.request(match mode {
            ShutdownMode::Immediate => Phase::Immediate,
            ShutdownMode::WaitForServers => Phase::WaitForServers,
            ShutdownMode::WaitForClients => Phase::WaitForClients,
        });
    }
}
