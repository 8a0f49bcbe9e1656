//! The per-pool families: one series per (database, user) pool and state, none per client, read
//! from the pools' census, settings and counters when scraped.

use super::family::Family;
use crate::pool::registry::Registry;
use crate::pool::stats::ConnectFailure;
use crate::pool::Pool;
use prometheus::proto::MetricFamily;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

fn n(c: &AtomicU64) -> f64 {
    c.load(Ordering::Relaxed) as f64
}

/// Every per-pool family, for the pools in `pools` (the registry's, sorted or not).
pub fn families(registry: &Registry) -> Vec<MetricFamily> {
    let mut pools = registry.all();
    pools.sort_by(|a, b| a.key.cmp(&b.key));
    let mut out = gauges(&pools, registry);
    out.extend(limit_gauges(&pools));
    out.extend(counters(&pools));
    out.extend(histograms(&pools));
    out
}

fn gauges(pools: &[Arc<Pool>], registry: &Registry) -> Vec<MetricFamily> {
    let mut clients = Family::gauge(
        "pgsluice_pool_clients",
        "Logged-in clients of the pool: active (holding a server), waiting (for one), idle.",
    );
    let mut servers = Family::gauge(
        "pgsluice_pool_servers",
        "Server connections of the pool: active (lent to a client), idle, login (being opened).",
    );
    let mut max_wait = Family::gauge(
        "pgsluice_pool_max_wait_seconds",
        "How long the pool's oldest waiting client has waited.",
    );
    let mut paused = Family::gauge(
        "pgsluice_pool_paused",
        "1 while the pool's database is PAUSEd.",
    );
    let mut disabled = Family::gauge(
        "pgsluice_pool_disabled",
        "1 while the pool's database is DISABLEd.",
    );
    for p in pools {
        let (db, user) = (p.key.database.as_str(), p.key.user.as_str());
        let c = p.census();
        let active_servers = c.active_servers();
        // A client holding a server is active; one lent no server and not queued is idle.
        let idle_clients = c.clients.saturating_sub(c.waiting + active_servers);
        for (state, v) in [
            ("active", active_servers.min(c.clients)),
            ("waiting", c.waiting),
            ("idle", idle_clients),
        ] {
            clients.add(
                &[("database", db), ("user", user), ("state", state)],
                v as f64,
            );
        }
        for (state, v) in [
            ("active", active_servers),
            ("idle", c.idle),
            ("login", c.opening),
        ] {
            servers.add(
                &[("database", db), ("user", user), ("state", state)],
                v as f64,
            );
        }
        let pair = [("database", db), ("user", user)];
        max_wait.add(&pair, c.max_wait_us as f64 / 1e6);
        paused.add(&pair, f64::from(u8::from(p.is_paused())));
        disabled.add(&pair, f64::from(u8::from(registry.is_disabled(db))));
    }
    vec![
        clients.done(),
        servers.done(),
        max_wait.done(),
        paused.done(),
        disabled.done(),
    ]
}

/// The limits in force for each pool (after a Service-wide budget divided them).
fn limit_gauges(pools: &[Arc<Pool>]) -> [MetricFamily; 5] {
    let mut limits = [
        (
            "pgsluice_pool_size",
            "Servers the pool may open (pool_size).",
        ),
        (
            "pgsluice_pool_min_size",
            "Servers kept open (min_pool_size).",
        ),
        (
            "pgsluice_pool_reserve_size",
            "Extra servers for long waits (reserve_pool_size).",
        ),
        (
            "pgsluice_pool_max_db_connections",
            "Servers the pool's database may have across pools; 0 is unlimited.",
        ),
        (
            "pgsluice_pool_max_user_connections",
            "Servers the pool's user may have across pools; 0 is unlimited.",
        ),
    ]
    .map(|(name, help)| Family::gauge(name, help));
    for p in pools {
        let pair = [
            ("database", p.key.database.as_str()),
            ("user", p.key.user.as_str()),
        ];
        let s = p.settings();
        let values = [
            s.pool_size,
            s.min_pool_size,
            s.reserve_pool_size,
            s.max_db_connections,
            s.max_user_connections,
        ];
        for (f, v) in limits.iter_mut().zip(values) {
            f.add(&pair, v as f64);
        }
    }
    limits.map(Family::done)
}

fn counters(pools: &[Arc<Pool>]) -> Vec<MetricFamily> {
    let mut simple = [
        (
            "pgsluice_transactions_total",
            "Transactions ended (ReadyForQuery idle), blocks and single statements alike.",
        ),
        (
            "pgsluice_queries_total",
            "Requests answered: simple queries and extended-protocol Syncs.",
        ),
        (
            "pgsluice_received_bytes_total",
            "Bytes from clients passed to servers.",
        ),
        (
            "pgsluice_sent_bytes_total",
            "Bytes from servers passed to clients.",
        ),
        (
            "pgsluice_server_assignments_total",
            "Times a server was lent to a client.",
        ),
        (
            "pgsluice_server_connects_total",
            "Server connections opened.",
        ),
    ]
    .map(|(name, help)| Family::counter(name, help));
    let mut failures = Family::counter(
        "pgsluice_server_connect_failures_total",
        "Attempts to open a server connection that failed, by reason.",
    );
    let mut prepared = Family::counter(
        "pgsluice_prepared_statements_total",
        "Prepared-statement events: client_parse, server_parse (prepared on a server, also \
         re-prepared on another), bind, reused (already on the server), evicted, healed, \
         answered_without_server (a Parse + Sync batch answered from what servers have shown).",
    );
    for p in pools {
        let pair = [
            ("database", p.key.database.as_str()),
            ("user", p.key.user.as_str()),
        ];
        let s = &p.stats;
        let values = [
            &s.xacts,
            &s.queries,
            &s.received,
            &s.sent,
            &s.checkouts,
            &s.connects,
        ];
        for (f, v) in simple.iter_mut().zip(values) {
            f.add(&pair, n(v));
        }
        for reason in ConnectFailure::ALL {
            let [d, u] = pair;
            failures.add(
                &[d, u, ("reason", reason.label())],
                n(&s.connect_failures[reason as usize]),
            );
        }
        let ps = &s.prepared;
        for (event, v) in [
            ("client_parse", &ps.client_parses),
            ("server_parse", &ps.server_parses),
            ("bind", &ps.binds),
            ("reused", &ps.hits),
            ("evicted", &ps.evictions),
            ("healed", &ps.healed),
            ("answered_without_server", &ps.answered_without_server),
        ] {
            let [d, u] = pair;
            prepared.add(&[d, u, ("event", event)], n(v));
        }
    }
    let mut out: Vec<_> = simple.into_iter().map(Family::done).collect();
    out.push(failures.done());
    out.push(prepared.done());
    out
}

fn histograms(pools: &[Arc<Pool>]) -> Vec<MetricFamily> {
    let mut families = [
        (
            "pgsluice_transaction_duration_seconds",
            "Transactions, from the first request to the server's ReadyForQuery idle.",
        ),
        (
            "pgsluice_query_duration_seconds",
            "Requests, from leaving pgsluice to the server's ReadyForQuery.",
        ),
        (
            "pgsluice_client_wait_seconds",
            "How long a client waited for a server; 0 when one was free.",
        ),
        (
            "pgsluice_server_connect_seconds",
            "Opening a server connection: connect, TLS and login, failed or not.",
        ),
    ]
    .map(|(name, help)| Family::histogram(name, help));
    for p in pools {
        let pair = [
            ("database", p.key.database.as_str()),
            ("user", p.key.user.as_str()),
        ];
        let s = &p.stats;
        let latencies = [
            &s.xact_latency,
            &s.query_latency,
            &s.wait_latency,
            &s.connect_latency,
        ];
        for (f, l) in families.iter_mut().zip(latencies) {
            f.add_latency(&pair, &l.snapshot());
        }
    }
    families.into_iter().map(Family::done).collect()
}
