//! SHOW: PgBouncer 1.25's result sets, column for column (names, order, wire types, NULLs).

use super::table::{Col, Table, Val};
use super::{sockets, Console};
use crate::proto::encode;
use bytes::BytesMut;
use Col::{Int4, Int8, Numeric, Text};

const POOLS: &[(&str, Col)] = &[
    ("database", Text),
    ("user", Text),
    ("cl_active", Int4),
    ("cl_waiting", Int4),
    ("cl_active_cancel_req", Int4),
    ("cl_waiting_cancel_req", Int4),
    ("sv_active", Int4),
    ("sv_active_cancel", Int4),
    ("sv_being_canceled", Int4),
    ("sv_idle", Int4),
    ("sv_used", Int4),
    ("sv_tested", Int4),
    ("sv_login", Int4),
    ("maxwait", Int4),
    ("maxwait_us", Int4),
    ("pool_mode", Text),
    ("load_balance_hosts", Text),
];

const STATS: &[(&str, Col)] = &[
    ("database", Text),
    ("total_server_assignment_count", Numeric),
    ("total_xact_count", Numeric),
    ("total_query_count", Numeric),
    ("total_received", Numeric),
    ("total_sent", Numeric),
    ("total_xact_time", Numeric),
    ("total_query_time", Numeric),
    ("total_wait_time", Numeric),
    ("total_client_parse_count", Numeric),
    ("total_server_parse_count", Numeric),
    ("total_bind_count", Numeric),
    ("avg_server_assignment_count", Numeric),
    ("avg_xact_count", Numeric),
    ("avg_query_count", Numeric),
    ("avg_recv", Numeric),
    ("avg_sent", Numeric),
    ("avg_xact_time", Numeric),
    ("avg_query_time", Numeric),
    ("avg_wait_time", Numeric),
    ("avg_client_parse_count", Numeric),
    ("avg_server_parse_count", Numeric),
    ("avg_bind_count", Numeric),
];

const STATS_TOTALS: &[(&str, Col)] = &[
    ("database", Text),
    ("server_assignment_count", Numeric),
    ("xact_count", Numeric),
    ("query_count", Numeric),
    ("bytes_received", Numeric),
    ("bytes_sent", Numeric),
    ("xact_time", Numeric),
    ("query_time", Numeric),
    ("wait_time", Numeric),
    ("client_parse_count", Numeric),
    ("server_parse_count", Numeric),
    ("bind_count", Numeric),
];

const STATS_AVERAGES: &[(&str, Col)] = &[
    ("database", Text),
    ("server_assignment_count", Numeric),
    ("xact_count", Numeric),
    ("query_count", Numeric),
    ("bytes_received", Numeric),
    ("bytes_sent", Numeric),
    ("xact_time", Numeric),
    ("query_time", Numeric),
    ("wait_time", Numeric),
    ("avg_client_parse_count", Numeric),
    ("avg_server_parse_count", Numeric),
    ("avg_bind_count", Numeric),
];

/// SHOW TOTALS row names, after PgBouncer's struct fields; each comes as `total_` and `avg_`.
const TOTALS_NAMES: [&str; 11] = [
    "server_assignment_count",
    "xact_count",
    "query_count",
    "client_bytes",
    "server_bytes",
    "xact_time",
    "query_time",
    "wait_time",
    "ps_client_parse_count",
    "ps_server_parse_count",
    "ps_bind_count",
];

const DATABASES: &[(&str, Col)] = &[
    ("name", Text),
    ("host", Text),
    ("port", Int4),
    ("database", Text),
    ("force_user", Text),
    ("pool_size", Int4),
    ("min_pool_size", Int4),
    ("reserve_pool_size", Int4),
    ("server_lifetime", Int4),
    ("pool_mode", Text),
    ("load_balance_hosts", Text),
    ("max_connections", Int4),
    ("current_connections", Int4),
    ("max_client_connections", Int4),
    ("current_client_connections", Int4),
    ("paused", Int4),
    ("disabled", Int4),
];

const USERS: &[(&str, Col)] = &[
    ("name", Text),
    ("pool_size", Text),
    ("reserve_pool_size", Text),
    ("pool_mode", Text),
    ("max_user_connections", Int4),
    ("current_connections", Int4),
    ("max_user_client_connections", Int4),
    ("current_client_connections", Int4),
];

/// SHOW LISTS rows, in PgBouncer's order.
const LISTS: [&str; 14] = [
    "databases",
    "users",
    "peers",
    "pools",
    "peer_pools",
    "free_clients",
    "used_clients",
    "login_clients",
    "free_servers",
    "used_servers",
    "dns_names",
    "dns_zones",
    "dns_queries",
    "dns_pending",
];

/// What SHOW HELP lists, as PgBouncer's NOTICE does.
const HELP: &str =
    "\n\tSHOW HELP|CONFIG|DATABASES|POOLS|STATS|STATS_TOTALS|STATS_AVERAGES|TOTALS\n\
\tSHOW LISTS|USERS|STATE|VERSION|PEERS|PEER_POOLS|DNS_HOSTS|DNS_ZONES\n\
\tSET key = arg\n\
\tRELOAD\n\
\tPAUSE [<db>]\n\
\tRESUME [<db>]\n\
\tDISABLE <db>\n\
\tENABLE <db>\n\
\tRECONNECT [<db>]\n\
\tSHUTDOWN\n\
\tSHUTDOWN WAIT_FOR_SERVERS|WAIT_FOR_CLIENTS";

/// Parameters psql and drivers may ask the console for, with PgBouncer's answers.
const FAKE_PARAMS: [(&str, &str); 5] = [
    ("client_encoding", "UTF-8"),
    ("default_transaction_isolation", "read committed"),
    ("standard_conforming_strings", "on"),
    ("datestyle", "ISO"),
    ("timezone", "GMT"),
];

pub(super) fn show(console: &impl Console, target: &str, out: &mut BytesMut) -> Result<(), String> {
    match target {
        "help" => help(out),
        "version" => version(console, out),
        "pools" => pools(console, out),
        "clients" => sockets::clients(console, out),
        "sockets" => sockets::sockets(console, out, false),
        "active_sockets" => sockets::sockets(console, out, true),
        "servers" => sockets::servers(console, out),
        "stats" => stats(console, out),
        "stats_totals" => stats_table(console, out, false),
        "stats_averages" => stats_table(console, out, true),
        "totals" => totals(console, out),
        "lists" => lists(console, out),
        "databases" => databases(console, out),
        "users" => users(console, out),
        "config" => config(console, out),
        "state" => state(console, out),
        "peers" => peers(console, out),
        "peer_pools" => peer_pools(out),
        "dns_hosts" => dns_hosts(out),
        "dns_zones" => dns_zones(out),
        other => return unusual(out, other),
    }
    Ok(())
}

/// A fake parameter PgBouncer answers SHOW for, or the commands pgsluice refuses with a reason.
fn unusual(out: &mut BytesMut, other: &str) -> Result<(), String> {
    if let Some((name, value)) = FAKE_PARAMS.iter().find(|(n, _)| *n == other) {
        let cols: &'static [(&'static str, Col)] = match *name {
            "client_encoding" => &[("client_encoding", Text)],
            "default_transaction_isolation" => &[("default_transaction_isolation", Text)],
            "standard_conforming_strings" => &[("standard_conforming_strings", Text)],
            "datestyle" => &[("datestyle", Text)],
            _ => &[("timezone", Text)],
        };
        let mut t = Table::new(out, cols);
        t.row(&[(*value).into()]);
        t.finish();
        Ok(())
    } else if other == "fds" {
        // FDS hands sockets to a new process in an online restart (-R).
        Err("SHOW FDS is not supported: pgsluice has no online restart".to_owned())
    } else if other == "mem" {
        // MEM lists PgBouncer's slab caches; pgsluice allocates per task instead.
        Err("SHOW MEM is not supported: pgsluice has no slab caches".to_owned())
    } else {
        Err(super::command::invalid(&format!("SHOW {other}")))
    }
}

/// HELP, as NOTICEs.
fn help(out: &mut BytesMut) {
    encode::notice_with_fields(
        out,
        &[
            (b'S', "NOTICE"),
            (b'C', "00000"),
            (b'M', "Console usage"),
            (b'D', HELP),
        ],
    );
    encode::command_complete(out, "SHOW");
}

fn version(console: &impl Console, out: &mut BytesMut) {
    let mut t = Table::new(out, &[("version", Text)]);
    t.row(&[console.version().into()]);
    t.finish();
}

fn totals(console: &impl Console, out: &mut BytesMut) {
    let (mut totals, mut averages) = ([0u64; 11], [0u64; 11]);
    for db in console.stats() {
        for (i, v) in db.totals.values().into_iter().enumerate() {
            totals[i] += v;
        }
        for (i, v) in db.averages.values().into_iter().enumerate() {
            averages[i] += v;
        }
    }
    let mut t = Table::new(out, &[("name", Text), ("value", Numeric)]);
    for (prefix, values) in [("total_", totals), ("avg_", averages)] {
        for (name, v) in TOTALS_NAMES.iter().zip(values) {
            t.row(&[format!("{prefix}{name}").into(), v.into()]);
        }
    }
    t.finish();
}

fn lists(console: &impl Console, out: &mut BytesMut) {
    let l = console.lists();
    let counts = [
        l.databases,
        l.users,
        0,
        l.pools,
        0,
        l.free_clients,
        l.used_clients,
        l.login_clients,
        l.free_servers,
        l.used_servers,
        0,
        0,
        0,
        0,
    ];
    let mut t = Table::new(out, &[("list", Text), ("items", Int4)]);
    for (name, n) in LISTS.iter().zip(counts) {
        t.row(&[(*name).into(), n.into()]);
    }
    t.finish();
}

fn users(console: &impl Console, out: &mut BytesMut) {
    let mut t = Table::new(out, USERS);
    for u in console.users() {
        // PgBouncer right-aligns these in nine characters, or sends an empty string.
        let sized = |n: Option<usize>| n.map_or(String::new(), |n| format!("{n:9}"));
        t.row(&[
            u.name.into(),
            sized(u.pool_size).into(),
            sized(u.reserve_pool_size).into(),
            u.pool_mode.as_deref().into(),
            u.max_user_connections.into(),
            u.current_connections.into(),
            u.max_user_client_connections.into(),
            u.current_client_connections.into(),
        ]);
    }
    t.finish();
}

fn config(console: &impl Console, out: &mut BytesMut) {
    let cols = &[
        ("key", Text),
        ("value", Text),
        ("default", Text),
        ("changeable", Text),
    ];
    let mut t = Table::new(out, cols);
    for c in console.config() {
        let changeable = if c.changeable { "yes" } else { "no" };
        t.row(&[
            c.key.into(),
            c.value.into(),
            c.default.into(),
            changeable.into(),
        ]);
    }
    t.finish();
}

fn state(console: &impl Console, out: &mut BytesMut) {
    let (paused, shutting_down) = console.state();
    let yes = |b: bool| if b { "yes" } else { "no" };
    let mut t = Table::new(out, &[("key", Text), ("value", Text)]);
    t.row(&["active".into(), yes(!paused && !shutting_down).into()]);
    t.row(&["paused".into(), yes(paused).into()]);
    t.row(&["suspended".into(), "no".into()]);
    t.finish();
}

fn peers(console: &impl Console, out: &mut BytesMut) {
    let cols = &[
        ("peer_id", Int4),
        ("host", Text),
        ("port", Int4),
        ("pool_size", Int4),
    ];
    let mut t = Table::new(out, cols);
    for p in console.peers() {
        t.row(&[
            usize::from(p.id).into(),
            p.host.into(),
            usize::from(p.port).into(),
            p.pool_size.into(),
        ]);
    }
    t.finish();
}

/// Cancels are forwarded on one-shot connections: the layout, and no rows.
fn peer_pools(out: &mut BytesMut) {
    let cols = &[
        ("peer_id", Int4),
        ("cl_active_cancel_req", Int4),
        ("cl_waiting_cancel_req", Int4),
        ("sv_active_cancel", Int4),
        ("sv_login", Int4),
    ];
    Table::new(out, cols).finish();
}

/// No DNS cache of pgsluice's own: the layout, and no rows.
fn dns_hosts(out: &mut BytesMut) {
    Table::new(out, &[("hostname", Text), ("ttl", Int8), ("addrs", Text)]).finish();
}

/// No DNS cache of pgsluice's own: the layout, and no rows.
fn dns_zones(out: &mut BytesMut) {
    Table::new(
        out,
        &[("zonename", Text), ("serial", Int8), ("count", Int4)],
    )
    .finish();
}

/// SHOW STATS_TOTALS or, with `averages`, STATS_AVERAGES.
fn stats_table(console: &impl Console, out: &mut BytesMut, averages: bool) {
    let cols = if averages {
        STATS_AVERAGES
    } else {
        STATS_TOTALS
    };
    let mut t = Table::new(out, cols);
    for db in console.stats() {
        let c = if averages { db.averages } else { db.totals };
        let mut row: Vec<Val<'_>> = vec![db.database.clone().into()];
        row.extend(c.values().into_iter().map(Val::from));
        t.row(&row);
    }
    t.finish();
}

fn pools(console: &impl Console, out: &mut BytesMut) {
    let mut t = Table::new(out, POOLS);
    for p in console.pools() {
        t.row(&[
            p.database.into(),
            p.user.into(),
            p.cl_active.into(),
            p.cl_waiting.into(),
            0i32.into(),
            0i32.into(),
            p.sv_active.into(),
            0i32.into(),
            0i32.into(),
            p.sv_idle.into(),
            p.sv_used.into(),
            p.sv_tested.into(),
            p.sv_login.into(),
            (p.maxwait_us / 1_000_000).into(),
            (p.maxwait_us % 1_000_000).into(),
            p.pool_mode.into(),
            Val::Null,
        ]);
    }
    t.finish();
}

fn stats(console: &impl Console, out: &mut BytesMut) {
    let mut t = Table::new(out, STATS);
    for db in console.stats() {
        let mut row: Vec<Val<'_>> = vec![db.database.clone().into()];
        row.extend(db.totals.values().into_iter().map(Val::from));
        row.extend(db.averages.values().into_iter().map(Val::from));
        t.row(&row);
    }
    t.finish();
}

fn databases(console: &impl Console, out: &mut BytesMut) {
    let mut t = Table::new(out, DATABASES);
    for d in console.databases() {
        t.row(&[
            d.name.into(),
            d.host.into_iter().next().map_or(Val::Null, Val::from),
            (d.port as u64).into(),
            d.database.into(),
            d.force_user.map_or(Val::Null, Val::from),
            d.pool_size.into(),
            d.min_pool_size.into(),
            d.reserve_pool_size.into(),
            d.server_lifetime.into(),
            d.pool_mode.map_or(Val::Null, Val::from),
            Val::Null,
            d.max_connections.into(),
            d.current_connections.into(),
            d.max_client_connections.into(),
            d.current_client_connections.into(),
            u64::from(d.paused).into(),
            u64::from(d.disabled).into(),
        ]);
    }
    t.finish();
}
