//! The admin console, driven as PgBouncer's tooling drives it: real tokio-postgres and psql clients,
//! a real PostgreSQL behind. Layouts are compared with PgBouncer 1.25's, recorded here from its
//! documentation and source (column names and type OIDs); counters are checked against what the
//! test itself did.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::time::Duration;
use tokio_postgres::SimpleQueryMessage;

const TEXT: u32 = 25;
const INT4: u32 = 23;
const NUMERIC: u32 = 1700;

/// SHOW POOLS in PgBouncer 1.24+ ("ssiiiiiiiiiiiiiss").
const POOLS: [(&str, u32); 17] = [
    ("database", TEXT),
    ("user", TEXT),
    ("cl_active", INT4),
    ("cl_waiting", INT4),
    ("cl_active_cancel_req", INT4),
    ("cl_waiting_cancel_req", INT4),
    ("sv_active", INT4),
    ("sv_active_cancel", INT4),
    ("sv_being_canceled", INT4),
    ("sv_idle", INT4),
    ("sv_used", INT4),
    ("sv_tested", INT4),
    ("sv_login", INT4),
    ("maxwait", INT4),
    ("maxwait_us", INT4),
    ("pool_mode", TEXT),
    ("load_balance_hosts", TEXT),
];

/// SHOW STATS in PgBouncer 1.24.0–1.25.2: the database, then eleven totals and eleven averages,
/// all numeric (CloudNativePG up to 1.30 scans exactly these 23).
const STATS_NAMES: [&str; 11] = [
    "server_assignment_count",
    "xact_count",
    "query_count",
    "received",
    "sent",
    "xact_time",
    "query_time",
    "wait_time",
    "client_parse_count",
    "server_parse_count",
    "bind_count",
];

fn stats_layout() -> Vec<(String, u32)> {
    let mut cols = vec![("database".to_owned(), TEXT)];
    cols.extend(STATS_NAMES.iter().map(|n| (format!("total_{n}"), NUMERIC)));
    let avg = |n: &str| match n {
        "received" => "avg_recv".to_owned(),
        _ => format!("avg_{n}"),
    };
    cols.extend(STATS_NAMES.iter().map(|n| (avg(n), NUMERIC)));
    cols
}

/// A pooler with an admin user (the md5 user) and a stats user (the SCRAM user), in transaction
/// mode over a database of the test's own.
async fn pooler(prefix: &str, extra: &str) -> (Sluice, String) {
    let pg = Postgres::shared();
    let db = pg.create_database(prefix);
    let s = Sluice::start(
        &format!("pool_mode = transaction\nadmin_users = {MD5_USER}\nstats_users = {SCRAM_USER}\n{extra}"),
        &format!("{db} = host=127.0.0.1 port={} pool_size=2", pg.port),
    )
    .await;
    (s, db)
}

async fn admin(s: &Sluice) -> tokio_postgres::Client {
    s.connect_as(MD5_USER, MD5_PASSWORD, "pgbouncer")
        .await
        .expect("admin login")
}

/// The rows of a SHOW, as maps from column name to text (None for NULL).
async fn show(
    c: &tokio_postgres::Client,
    what: &str,
) -> Vec<std::collections::HashMap<String, Option<String>>> {
    c.simple_query(what)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                r.columns()
                    .iter()
                    .enumerate()
                    .map(|(i, col)| (col.name().to_owned(), r.get(i).map(str::to_owned)))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

fn num(row: &std::collections::HashMap<String, Option<String>>, col: &str) -> i64 {
    row[col].as_deref().unwrap().parse().unwrap()
}

/// Column names and type OIDs of a console result, read off the wire (a Describe is refused by
/// the console, as by PgBouncer, so the RowDescription of a simple query is read directly).
async fn layout(s: &Sluice, what: &str) -> Vec<(String, u32)> {
    use tokio::io::AsyncWriteExt;
    let mut raw = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    wire::login_md5_to(&mut raw, "pgbouncer").await;
    raw.write_all(&wire::query(what)).await.unwrap();
    loop {
        let (tag, body) = wire::read_message(&mut raw).await;
        assert_ne!(tag, b'E', "{what} failed");
        if tag == b'T' {
            return wire::row_description(&body);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_pools_and_stats_have_pgbouncer_layouts_and_count_what_happened() {
    let (s, db) = pooler("admin_show", "").await;
    let want_pools: Vec<(String, u32)> = POOLS.iter().map(|(n, t)| (n.to_string(), *t)).collect();
    assert_eq!(layout(&s, "SHOW POOLS").await, want_pools);
    assert_eq!(layout(&s, "SHOW STATS").await, stats_layout());

    let a = s.connect(&db).await;
    let b = s.connect(&db).await;
    let console = admin(&s).await;
    let before = show(&console, "SHOW STATS").await;
    let base = before
        .iter()
        .find(|r| r["database"].as_deref() == Some(db.as_str()));
    let (x0, q0, r0) = base.map_or((0, 0, 0), |r| {
        (
            num(r, "total_xact_count"),
            num(r, "total_query_count"),
            num(r, "total_received"),
        )
    });
    for i in 0..5 {
        a.simple_query(&format!("SELECT {i}")).await.unwrap();
    }
    // One explicit block of three statements: one transaction, three queries.
    b.batch_execute("BEGIN").await.unwrap();
    b.simple_query("SELECT 1").await.unwrap();
    b.batch_execute("COMMIT").await.unwrap();

    let after = show(&console, "SHOW STATS").await;
    let row = after
        .iter()
        .find(|r| r["database"].as_deref() == Some(db.as_str()))
        .expect("a STATS row for the test's database");
    assert_eq!(
        num(row, "total_xact_count") - x0,
        6,
        "5 single statements and one block"
    );
    assert_eq!(num(row, "total_query_count") - q0, 8, "5 + 3 queries");
    // Each `SELECT i` is a 14-byte Query frame; the block's three are more.
    assert!(
        num(row, "total_received") - r0 >= 5 * 14,
        "every byte from clients is counted, also what was read before a server was attached"
    );
    assert!(num(row, "total_sent") > 0);
    assert!(num(row, "total_query_time") > 0);

    let pools = show(&console, "SHOW POOLS").await;
    let p = pools
        .iter()
        .find(|r| r["database"].as_deref() == Some(db.as_str()))
        .expect("a POOLS row for the test's database");
    assert_eq!(p["user"].as_deref(), Some(SCRAM_USER));
    assert_eq!(num(p, "cl_active"), 2, "two clients logged in");
    assert_eq!(num(p, "cl_waiting"), 0);
    assert_eq!(
        num(p, "sv_active"),
        0,
        "between transactions no server is held"
    );
    assert!(num(p, "sv_idle") >= 1);
    assert_eq!(p["pool_mode"].as_deref(), Some("transaction"));
    assert_eq!(p["load_balance_hosts"], None, "NULL without a host list");
    drop(b);
    // The client count follows a client that leaves.
    let mut left = 2;
    for _ in 0..50 {
        let pools = show(&console, "SHOW POOLS").await;
        let p = pools
            .iter()
            .find(|r| r["database"].as_deref() == Some(db.as_str()));
        left = num(p.unwrap(), "cl_active");
        if left == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(left, 1);
    drop(a);

    let version = first_value(&console.simple_query("SHOW VERSION").await.unwrap()).unwrap();
    assert!(version.contains("pgsluice"), "{version}");
    let lists = show(&console, "SHOW LISTS").await;
    let names: Vec<_> = lists.iter().map(|r| r["list"].clone().unwrap()).collect();
    for n in [
        "databases",
        "users",
        "pools",
        "used_clients",
        "free_servers",
        "used_servers",
    ] {
        assert!(
            names.iter().any(|x| x == n),
            "SHOW LISTS has {n}: {names:?}"
        );
    }
    let dbs = show(&console, "SHOW DATABASES").await;
    assert!(dbs
        .iter()
        .any(|r| r["name"].as_deref() == Some(db.as_str())));
    assert!(dbs
        .iter()
        .any(|r| r["name"].as_deref() == Some("pgbouncer")));
    let state = show(&console, "SHOW STATE").await;
    assert_eq!(state[1]["value"].as_deref(), Some("no"), "not paused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_waits_for_the_open_transaction_and_holds_new_queries_until_resume() {
    let (s, db) = pooler("admin_pause", "").await;
    let a = s.connect(&db).await;
    let b = s.connect(&db).await;
    a.batch_execute("BEGIN; SELECT 1").await.unwrap();

    let console = admin(&s).await;
    let pause = tokio::spawn(async move {
        console.simple_query("PAUSE").await.unwrap();
        console
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !pause.is_finished(),
        "PAUSE returned while a transaction held a server"
    );
    a.batch_execute("COMMIT").await.unwrap();
    let console = tokio::time::timeout(Duration::from_secs(10), pause)
        .await
        .expect("PAUSE returns once the transaction ends")
        .unwrap();
    let state = show(&console, "SHOW STATE").await;
    assert_eq!(state[1]["value"].as_deref(), Some("yes"), "paused");

    // A new query waits for RESUME, then succeeds.
    let query =
        tokio::spawn(async move { b.simple_query("SELECT 42").await.map(|m| first_value(&m)) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!query.is_finished(), "a query ran while paused");
    console.simple_query("RESUME").await.unwrap();
    let v = tokio::time::timeout(Duration::from_secs(10), query)
        .await
        .expect("the held query runs after RESUME")
        .unwrap()
        .unwrap();
    assert_eq!(v.as_deref(), Some("42"));
    // RESUME twice is PgBouncer's error, and the console goes on.
    let e = console.simple_query("RESUME").await.unwrap_err();
    assert_eq!(sqlstate(&e), Some("08P01"), "{}", error_text(&e));
    console.simple_query("SHOW VERSION").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_users_may_look_but_not_act_and_others_are_refused() {
    let (s, db) = pooler("admin_roles", "").await;
    let stats = s
        .connect_as(SCRAM_USER, SCRAM_PASSWORD, "pgbouncer")
        .await
        .expect("stats user login");
    show(&stats, "SHOW POOLS").await;
    let e = stats.simple_query("PAUSE").await.unwrap_err();
    assert_eq!(sqlstate(&e), Some("42501"), "{}", error_text(&e));
    let e = stats
        .simple_query(&format!("DISABLE {db}"))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), Some("42501"));
    // Still usable.
    show(&stats, "SHOW STATS").await;

    let e = s
        .connect_as(MD5_USER, "wrong", "pgbouncer")
        .await
        .expect_err("a wrong password is refused");
    assert_eq!(sqlstate(&e), Some("28P01"), "{}", error_text(&e));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_console_input_gets_an_error_and_keeps_the_connection() {
    let (s, _db) = pooler("admin_bad", "").await;
    let c = admin(&s).await;
    for bad in [
        "SHOW NONSENSE",
        "FROBNICATE",
        "SHOW POOLS; SHOW STATS",
        "SET x 日本",
        &format!("SHOW {}", "x".repeat(200_000)),
    ] {
        let e = c.simple_query(bad).await.unwrap_err();
        assert!(sqlstate(&e).is_some(), "{bad:.40}: {}", error_text(&e));
        c.simple_query("SHOW VERSION").await.unwrap();
    }
    // The extended protocol (tokio-postgres' query) is refused, and the console goes on.
    let e = c.query("SHOW POOLS", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&e), Some("08P01"), "{}", error_text(&e));
    c.simple_query("SHOW VERSION").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_refuses_new_clients_and_reconnect_replaces_servers() {
    let (s, db) = pooler("admin_switch", "").await;
    let console = admin(&s).await;
    let c = s.connect(&db).await;
    let pid = |m: Vec<SimpleQueryMessage>| first_value(&m).unwrap();
    let before = pid(c.simple_query("SELECT pg_backend_pid()").await.unwrap());

    console
        .simple_query(&format!("DISABLE {db}"))
        .await
        .unwrap();
    let e = s
        .connect_as(SCRAM_USER, SCRAM_PASSWORD, &db)
        .await
        .expect_err("a disabled database refuses new clients");
    assert!(error_text(&e).contains("disabled"), "{}", error_text(&e));
    // Clients already in are not touched.
    c.simple_query("SELECT 1").await.unwrap();
    console.simple_query(&format!("ENABLE {db}")).await.unwrap();
    s.connect(&db).await;

    console
        .simple_query(&format!("RECONNECT {db}"))
        .await
        .unwrap();
    let after = pid(c.simple_query("SELECT pg_backend_pid()").await.unwrap());
    assert_ne!(
        before, after,
        "RECONNECT closes the servers opened before it"
    );
    let e = console.simple_query("DISABLE nosuchdb").await.unwrap_err();
    assert!(
        error_text(&e).contains("no such database"),
        "{}",
        error_text(&e)
    );
}

/// CloudNativePG's Pooler pods: psql as user `pgbouncer` over the unix socket, from the pooler's
/// own uid, with no password at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_over_the_unix_socket_as_pgbouncer_needs_no_password() {
    let sock = tempfile::tempdir().unwrap();
    let (s, _db) = pooler(
        "admin_unix",
        &format!("unix_socket_dir = {}", sock.path().display()),
    )
    .await;
    let out = std::process::Command::new(psql_bin())
        .args(["-X", "-A", "-t", "-h"])
        .arg(sock.path())
        .args([
            "-p",
            &s.addr.port().to_string(),
            "-U",
            "pgbouncer",
            "pgbouncer",
            "-c",
            "SHOW VERSION",
        ])
        .env_remove("PGPASSWORD")
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("pgsluice"),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Over TCP the same user needs a password it does not have.
    let e = s
        .connect_as("pgbouncer", "", "pgbouncer")
        .await
        .expect_err("user pgbouncer over TCP is refused");
    assert!(
        sqlstate(&e).is_some_and(|c| c.starts_with("28")),
        "{}",
        error_text(&e)
    );
}

/// SHOW CLIENTS (and SERVERS) in PgBouncer 1.24+: "ssssssisiTTiiississii", the times as text.
const SOCKETS: [(&str, u32); 21] = [
    ("type", TEXT),
    ("user", TEXT),
    ("database", TEXT),
    ("replication", TEXT),
    ("state", TEXT),
    ("addr", TEXT),
    ("port", INT4),
    ("local_addr", TEXT),
    ("local_port", INT4),
    ("connect_time", TEXT),
    ("request_time", TEXT),
    ("wait", INT4),
    ("wait_us", INT4),
    ("close_needed", INT4),
    ("ptr", TEXT),
    ("link", TEXT),
    ("remote_pid", INT4),
    ("tls", TEXT),
    ("application_name", TEXT),
    ("prepared_statements", INT4),
    ("id", INT4),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_clients_lists_each_client_with_its_state() {
    let (s, db) = pooler("admin_clients", "").await;
    let want: Vec<(String, u32)> = SOCKETS.iter().map(|(n, t)| (n.to_string(), *t)).collect();
    assert_eq!(layout(&s, "SHOW CLIENTS").await, want);

    let a = s.connect(&db).await;
    let b = s.connect_with(&db, "application_name=reporting").await;
    let c = s.connect(&db).await;
    // One holds a server inside its transaction; the others are between transactions.
    a.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let server_pid =
        first_value(&a.simple_query("SELECT pg_backend_pid()").await.unwrap()).unwrap();
    let console = admin(&s).await;
    let mine = |rows: Vec<std::collections::HashMap<String, Option<String>>>| {
        rows.into_iter()
            .filter(|r| r["database"].as_deref() == Some(db.as_str()))
            .collect::<Vec<_>>()
    };
    let rows = mine(show(&console, "SHOW CLIENTS").await);
    assert_eq!(rows.len(), 3, "three clients, three rows");
    let states: Vec<_> = rows.iter().map(|r| r["state"].clone().unwrap()).collect();
    assert_eq!(
        states.iter().filter(|s| *s == "active").count(),
        1,
        "{states:?}"
    );
    assert_eq!(
        states.iter().filter(|s| *s == "idle").count(),
        2,
        "{states:?}"
    );
    let active = rows
        .iter()
        .find(|r| r["state"].as_deref() == Some("active"))
        .unwrap();
    assert!(
        active["link"].as_deref().unwrap().contains(&server_pid),
        "the active client names its server: {active:?}"
    );
    for r in &rows {
        assert_eq!(r["type"].as_deref(), Some("C"));
        assert_eq!(r["user"].as_deref(), Some(SCRAM_USER));
        assert_eq!(r["addr"].as_deref(), Some("127.0.0.1"));
        assert!(num(r, "port") > 0);
        assert_eq!(num(r, "local_port"), i64::from(s.addr.port()));
    }
    let mut names: Vec<_> = rows
        .iter()
        .map(|r| r["application_name"].clone().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["", "", "reporting"], "the name each client gave");
    let mut ids: Vec<i64> = rows.iter().map(|r| num(r, "id")).collect();
    ids.dedup();
    assert_eq!(ids.len(), 3, "ids are distinct: {ids:?}");

    a.batch_execute("COMMIT").await.unwrap();
    drop(b);
    drop(c);
    let mut left = 3;
    for _ in 0..50 {
        left = mine(show(&console, "SHOW CLIENTS").await).len();
        if left == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(left, 1, "clients that leave leave the list");
    let rows = mine(show(&console, "SHOW CLIENTS").await);
    assert_eq!(rows[0]["state"].as_deref(), Some("idle"), "after COMMIT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_client_closes_that_client_only_idle_or_mid_transaction() {
    let (s, db) = pooler("admin_kill", "").await;
    let console = admin(&s).await;
    let ids = |rows: Vec<std::collections::HashMap<String, Option<String>>>, state: &str| {
        rows.into_iter()
            .filter(|r| r["database"].as_deref() == Some(db.as_str()))
            .filter(|r| r["state"].as_deref() == Some(state))
            .map(|r| num(&r, "id"))
            .collect::<Vec<_>>()
    };
    // An idle client, on the raw wire: it hears why it is closed.
    let mut raw = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    wire::login_md5_to(&mut raw, &db).await;
    let bystander = s.connect(&db).await;
    let idle = ids(show(&console, "SHOW CLIENTS").await, "idle");
    assert_eq!(idle.len(), 2);
    // The raw client logged in first: the lower id.
    let victim = *idle.iter().min().unwrap();
    console
        .simple_query(&format!("KILL_CLIENT {victim}"))
        .await
        .unwrap();
    let (tag, body) = tokio::time::timeout(Duration::from_secs(5), wire::read_message(&mut raw))
        .await
        .expect("the killed client is told at once");
    assert_eq!(tag, b'E');
    assert!(
        String::from_utf8_lossy(&body).contains("admin forced disconnect"),
        "{}",
        String::from_utf8_lossy(&body)
    );

    // A client inside a transaction: closed too, and its server is not handed to anyone.
    let busy = s.connect(&db).await;
    busy.batch_execute("BEGIN; CREATE TEMP TABLE t (x int)")
        .await
        .unwrap();
    let active = ids(show(&console, "SHOW CLIENTS").await, "active");
    assert_eq!(active.len(), 1);
    console
        .simple_query(&format!("KILL_CLIENT {}", active[0]))
        .await
        .unwrap();
    let mut closed = false;
    for _ in 0..50 {
        if busy.simple_query("SELECT 1").await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(closed, "the killed client's connection is closed");
    // The bystander goes on, and never sees the killed transaction's temp table.
    let e = bystander.simple_query("SELECT * FROM t").await.unwrap_err();
    assert_eq!(sqlstate(&e), Some("42P01"), "{}", error_text(&e));
    bystander.simple_query("SELECT 1").await.unwrap();
    let e = console
        .simple_query("KILL_CLIENT 999999")
        .await
        .unwrap_err();
    assert!(
        error_text(&e).contains("client not found"),
        "{}",
        error_text(&e)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_db_closes_its_clients_and_holds_new_ones_until_resume() {
    let (s, db) = pooler("admin_killdb", "").await;
    let other = Postgres::shared().create_database("admin_killdb_other");
    let console = admin(&s).await;
    let idle = s.connect(&db).await;
    let busy = s.connect(&db).await;
    busy.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let elsewhere = s.connect(&other).await;
    elsewhere.simple_query("SELECT 1").await.unwrap();

    console.simple_query(&format!("KILL {db}")).await.unwrap();
    for c in [&idle, &busy] {
        let mut closed = false;
        for _ in 0..50 {
            if c.simple_query("SELECT 1").await.is_err() {
                closed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(closed, "a client of the killed database is closed");
    }
    elsewhere.simple_query("SELECT 1").await.unwrap();
    let e = console
        .simple_query(&format!("KILL {db}"))
        .await
        .unwrap_err();
    assert!(error_text(&e).contains("paused"), "{}", error_text(&e));

    // A new client of the killed database waits for RESUME.
    let fresh = s.connect(&db).await;
    let q = tokio::spawn(async move {
        fresh
            .simple_query("SELECT 5")
            .await
            .map(|m| first_value(&m))
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !q.is_finished(),
        "a query ran on a killed database before RESUME"
    );
    console.simple_query(&format!("RESUME {db}")).await.unwrap();
    let v = tokio::time::timeout(Duration::from_secs(10), q)
        .await
        .expect("RESUME lets it run")
        .unwrap()
        .unwrap();
    assert_eq!(v.as_deref(), Some("5"));
    let e = console.simple_query("KILL pgbouncer").await.unwrap_err();
    assert!(
        error_text(&e).contains("cannot kill admin db"),
        "{}",
        error_text(&e)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_servers_lists_held_and_idle_servers_by_backend_pid() {
    let (s, db) = pooler("admin_servers", "").await;
    let want: Vec<(String, u32)> = SOCKETS.iter().map(|(n, t)| (n.to_string(), *t)).collect();
    assert_eq!(layout(&s, "SHOW SERVERS").await, want);
    let a = s.connect(&db).await;
    let b = s.connect(&db).await;
    a.batch_execute("BEGIN").await.unwrap();
    let held = first_value(&a.simple_query("SELECT pg_backend_pid()").await.unwrap()).unwrap();
    // b needs a second server while a holds the first; it goes idle afterwards.
    let other = first_value(&b.simple_query("SELECT pg_backend_pid()").await.unwrap()).unwrap();
    assert_ne!(held, other);
    // b's server goes back to the pool just after b has its answer.
    let pool = s
        .app
        .pools
        .all()
        .into_iter()
        .find(|p| p.key.database == db)
        .unwrap();
    pool_settles(&pool, (1, 2)).await;

    let console = admin(&s).await;
    let rows: Vec<_> = show(&console, "SHOW SERVERS")
        .await
        .into_iter()
        .filter(|r| r["database"].as_deref() == Some(db.as_str()))
        .collect();
    assert_eq!(rows.len(), 2, "{rows:?}");
    let by_pid = |pid: &str| {
        rows.iter()
            .find(|r| r["remote_pid"].as_deref() == Some(pid))
            .unwrap_or_else(|| panic!("no server with pid {pid}: {rows:?}"))
    };
    assert_eq!(by_pid(&held)["state"].as_deref(), Some("active"));
    assert_eq!(by_pid(&other)["state"].as_deref(), Some("idle"));
    // The held server names its client, as SHOW CLIENTS numbers it.
    let clients = show(&console, "SHOW CLIENTS").await;
    let holder = clients
        .iter()
        .find(|r| r["state"].as_deref() == Some("active"))
        .unwrap();
    assert_eq!(
        by_pid(&held)["link"].as_deref(),
        Some(format!("{:x}", num(holder, "id")).as_str())
    );
    for r in &rows {
        assert_eq!(r["type"].as_deref(), Some("S"));
        assert_eq!(r["user"].as_deref(), Some(SCRAM_USER));
        assert_eq!(num(r, "port"), i64::from(Postgres::shared().port));
        assert_eq!(num(r, "close_needed"), 0, "nothing retired yet");
    }
    // A named statement b prepares runs on the other server, which counts it once idle again.
    let statement = b.prepare("SELECT $1::int + 1").await.unwrap();
    b.query_one(&statement, &[&1i32]).await.unwrap();
    pool_settles(&pool, (1, 2)).await;
    let by_remote_pid = |rows: Vec<std::collections::HashMap<String, Option<String>>>,
                         pid: &str| {
        rows.into_iter()
            .find(|r| r["remote_pid"].as_deref() == Some(pid))
            .unwrap()
    };
    let idle = by_remote_pid(show(&console, "SHOW SERVERS").await, &other);
    assert!(num(&idle, "prepared_statements") >= 1, "{idle:?}");
    let held_row = |rows| by_remote_pid(rows, &held);
    // RECONNECT: the held server is closed when released, and says so meanwhile.
    let admin_console = s
        .connect_as(MD5_USER, MD5_PASSWORD, "pgbouncer")
        .await
        .unwrap();
    admin_console
        .simple_query(&format!("RECONNECT {db}"))
        .await
        .unwrap();
    let retired = held_row(show(&console, "SHOW SERVERS").await);
    assert_eq!(num(&retired, "close_needed"), 1, "{retired:?}");
    a.batch_execute("COMMIT").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_client_shows_how_long_it_has_waited() {
    let (s, db) = pooler("admin_wait", "").await;
    let console = admin(&s).await;
    // Two servers, both held inside transactions: the third client waits.
    let holders = [s.connect(&db).await, s.connect(&db).await];
    for h in &holders {
        h.batch_execute("BEGIN; SELECT 1").await.unwrap();
    }
    let waiter = s.connect(&db).await;
    let waiting = tokio::spawn(async move {
        waiter.simple_query("SELECT 1").await.unwrap();
    });
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let rows = show(&console, "SHOW CLIENTS").await;
    let mine: Vec<_> = rows
        .iter()
        .filter(|r| r["database"].as_deref() == Some(db.as_str()))
        .collect();
    let waited = mine
        .iter()
        .find(|r| r["state"].as_deref() == Some("waiting"))
        .unwrap_or_else(|| panic!("no waiting client: {mine:?}"));
    assert!(num(waited, "wait") >= 1, "{waited:?}");
    assert!(
        (0..1_000_000).contains(&num(waited, "wait_us")),
        "{waited:?}"
    );
    for r in mine
        .iter()
        .filter(|r| r["state"].as_deref() != Some("waiting"))
    {
        assert_eq!((num(r, "wait"), num(r, "wait_us")), (0, 0), "{r:?}");
    }
    holders[0].batch_execute("COMMIT").await.unwrap();
    waiting.await.unwrap();
    holders[1].batch_execute("COMMIT").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_close_returns_once_the_servers_reconnect_retired_are_gone() {
    let (s, db) = pooler("admin_waitclose", "").await;
    let console = admin(&s).await;
    let a = s.connect(&db).await;
    a.batch_execute("BEGIN").await.unwrap();
    let before = first_value(&a.simple_query("SELECT pg_backend_pid()").await.unwrap()).unwrap();
    // Nothing retired yet: WAIT_CLOSE has nothing to wait for.
    console
        .simple_query(&format!("WAIT_CLOSE {db}"))
        .await
        .unwrap();

    console
        .simple_query(&format!("RECONNECT {db}"))
        .await
        .unwrap();
    let wait = tokio::spawn(async move {
        console.simple_query("WAIT_CLOSE").await.unwrap();
        console
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !wait.is_finished(),
        "WAIT_CLOSE returned while a retired server was held"
    );
    a.batch_execute("COMMIT").await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .expect("WAIT_CLOSE returns once the transaction releases the server")
        .unwrap();
    let after = first_value(&a.simple_query("SELECT pg_backend_pid()").await.unwrap()).unwrap();
    assert_ne!(before, after, "the retired server was closed, not reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_moving_a_database_drains_its_old_servers_without_dropping_clients() {
    let pg = Postgres::shared();
    let first = pg.create_database("admin_move_a");
    let second = pg.create_database("admin_move_b");
    let s = Sluice::start(
        &format!("pool_mode = transaction\nadmin_users = {MD5_USER}"),
        &format!(
            "moving = host=127.0.0.1 port={} dbname={first} pool_size=2",
            pg.port
        ),
    )
    .await;
    let console = admin(&s).await;
    let idle = s.connect("moving").await;
    let busy = s.connect("moving").await;
    assert_eq!(database_of(&idle).await, first);
    busy.batch_execute("BEGIN").await.unwrap();
    assert_eq!(database_of(&busy).await, first);

    let ini = s.dir.path().join("pgbouncer.ini");
    let text = std::fs::read_to_string(&ini)
        .unwrap()
        .replace(&format!("dbname={first}"), &format!("dbname={second}"));
    std::fs::write(&ini, text).unwrap();
    console.simple_query("RELOAD").await.unwrap();

    // The transaction under way keeps its server; everything after goes to the new place.
    assert_eq!(database_of(&busy).await, first);
    busy.batch_execute("COMMIT").await.unwrap();
    assert_eq!(database_of(&busy).await, second);
    assert_eq!(database_of(&idle).await, second);
}

/// The database a client's next transaction runs in.
async fn database_of(c: &tokio_postgres::Client) -> String {
    let rows = c.simple_query("SELECT current_database()").await.unwrap();
    first_value(&rows).unwrap()
}

/// SHOW CONFIG's value of `key`.
async fn config_value(console: &tokio_postgres::Client, key: &str) -> String {
    show(console, "SHOW CONFIG")
        .await
        .into_iter()
        .find(|r| r["key"].as_deref() == Some(key))
        .and_then(|r| r["value"].clone())
        .unwrap_or_else(|| panic!("SHOW CONFIG has no {key}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_changes_a_setting_at_once_and_it_outlives_reload() {
    let (s, db) = pooler("admin_set", "").await;
    // The database entry's pool_size=2 would hide default_pool_size: use one without it.
    let ini = s.dir.path().join("pgbouncer.ini");
    let text = std::fs::read_to_string(&ini)
        .unwrap()
        .replace(" pool_size=2", "")
        .replace(
            "pool_mode = transaction",
            "pool_mode = transaction\ndefault_pool_size = 1",
        );
    std::fs::write(&ini, text).unwrap();
    let console = admin(&s).await;
    console.simple_query("RELOAD").await.unwrap();
    assert_eq!(config_value(&console, "default_pool_size").await, "1");

    // One server: a second transaction waits while the first is open.
    let clients = [s.connect(&db).await, s.connect(&db).await];
    clients[0].batch_execute("BEGIN").await.unwrap();
    let second = tokio::time::timeout(
        Duration::from_millis(500),
        clients[1].batch_execute("BEGIN"),
    );
    assert!(
        second.await.is_err(),
        "a second server with default_pool_size = 1"
    );

    let tags = console
        .simple_query("SET default_pool_size = 3")
        .await
        .unwrap();
    assert!(
        matches!(tags.last(), Some(SimpleQueryMessage::CommandComplete(_))),
        "{tags:?}"
    );
    assert_eq!(config_value(&console, "default_pool_size").await, "3");
    tokio::time::timeout(Duration::from_secs(5), clients[1].batch_execute("BEGIN"))
        .await
        .expect("the waiting transaction gets a server once SET raised the pool")
        .unwrap();
    for c in &clients {
        c.batch_execute("COMMIT").await.unwrap();
    }

    // RELOAD re-reads the file, which does not name the key differently: SET's value holds.
    console.simple_query("RELOAD").await.unwrap();
    assert_eq!(config_value(&console, "default_pool_size").await, "3");

    // Refusals are errors, and the console goes on.
    for (sql, want) in [
        ("SET listen_port = 7000", "cannot be changed online"),
        (
            "SET default_pool_size = many",
            "invalid value for default_pool_size",
        ),
        (
            "SET no_such_key = 1",
            "unknown config parameter: no_such_key",
        ),
    ] {
        let e = console.simple_query(sql).await.unwrap_err();
        assert!(error_text(&e).contains(want), "{sql}: {}", error_text(&e));
    }
    assert_eq!(config_value(&console, "default_pool_size").await, "3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_sockets_lists_clients_and_servers_by_list_and_active_sockets_those_at_work() {
    let (s, db) = pooler("admin_sockets", "").await;
    let mut want: Vec<(String, u32)> = SOCKETS.iter().map(|(n, t)| (n.to_string(), *t)).collect();
    for n in [
        "recv_pos",
        "pkt_pos",
        "pkt_remain",
        "send_pos",
        "send_remain",
        "pkt_avail",
        "send_avail",
    ] {
        want.push((n.to_owned(), INT4));
    }
    assert_eq!(layout(&s, "SHOW SOCKETS").await, want);
    assert_eq!(layout(&s, "SHOW ACTIVE_SOCKETS").await, want);

    let busy = s.connect(&db).await;
    let _idle = s.connect(&db).await;
    busy.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let console = admin(&s).await;
    let of_db = |rows: Vec<std::collections::HashMap<String, Option<String>>>| {
        let mut v: Vec<(String, String)> = rows
            .into_iter()
            .filter(|r| r["database"].as_deref() == Some(db.as_str()))
            .map(|r| (r["type"].clone().unwrap(), r["state"].clone().unwrap()))
            .collect();
        v.sort();
        v
    };
    let pair = |t: &str, st: &str| (t.to_owned(), st.to_owned());
    assert_eq!(
        of_db(show(&console, "SHOW SOCKETS").await),
        [
            pair("C", "cl_active"),
            pair("C", "cl_active"),
            pair("S", "sv_active")
        ]
    );
    assert_eq!(
        of_db(show(&console, "SHOW ACTIVE_SOCKETS").await),
        [pair("C", "cl_active"), pair("S", "sv_active")]
    );
    busy.batch_execute("COMMIT").await.unwrap();
    // PgBouncer's online-restart commands are refused, and the console goes on.
    for (sql, want) in [
        ("SHOW FDS", "no online restart"),
        ("SUSPEND", "no online restart"),
        ("SHOW MEM", "no slab caches"),
    ] {
        let e = console.simple_query(sql).await.unwrap_err();
        assert!(error_text(&e).contains(want), "{sql}: {}", error_text(&e));
    }
    assert!(!show(&console, "SHOW VERSION").await.is_empty());
}
