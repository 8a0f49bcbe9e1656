//! Pool, database, user and client limits, the reserve pool and min_pool_size, observed where a user
//! would look: server connections in pg_stat_activity and the errors clients get.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::time::Duration;
use tokio::time::Instant;

/// `clients` tokio-postgres clients of `user` each run `rounds` short transactions on `db`;
/// returns how many of them failed.
async fn hammer(
    s: &Sluice,
    user: &str,
    password: &str,
    db: &str,
    clients: usize,
    rounds: usize,
) -> usize {
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let conn = s.conn_str(user, password, db);
        tasks.push(tokio::spawn(async move {
            let (c, conn) = tokio_postgres::connect(&conn, tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            for _ in 0..rounds {
                c.simple_query("SELECT pg_sleep(0.01)").await?;
            }
            Ok::<_, tokio_postgres::Error>(())
        }));
    }
    let mut failed = 0;
    for t in tasks {
        if let Err(e) = t.await.unwrap() {
            eprintln!("client failed: {e:?}");
            failed += 1;
        }
    }
    failed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_size_holds_under_load() {
    let pg = Postgres::shared();
    let db = pg.create_database("lim_pool");
    let s = Sluice::start(
        "pool_mode = transaction",
        &format!("{db} = host=127.0.0.1 port={} pool_size=3", pg.port),
    )
    .await;
    let (failed, peak) = peak_backends_while(
        &db,
        None,
        hammer(&s, SCRAM_USER, SCRAM_PASSWORD, &db, 30, 10),
    )
    .await;
    assert_eq!(failed, 0);
    assert!(
        peak <= 3,
        "pool_size=3 but {peak} server connections were open"
    );
    assert!(
        peak >= 2,
        "30 busy clients should have used the pool, peak was {peak}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_db_connections_holds_across_users() {
    let pg = Postgres::shared();
    let db = pg.create_database("lim_db");
    pg.psql_super(&format!("GRANT ALL ON DATABASE {db} TO {MD5_USER}"));
    let s = Sluice::start(
        "pool_mode = transaction",
        &format!(
            "{db} = host=127.0.0.1 port={} pool_size=5 max_db_connections=2",
            pg.port
        ),
    )
    .await;
    let both = async {
        let (a, b) = tokio::join!(
            hammer(&s, SCRAM_USER, SCRAM_PASSWORD, &db, 10, 10),
            hammer(&s, MD5_USER, MD5_PASSWORD, &db, 10, 10)
        );
        a + b
    };
    let (failed, peak) = peak_backends_while(&db, None, both).await;
    assert_eq!(failed, 0);
    assert!(
        peak <= 2,
        "max_db_connections=2 but {peak} server connections were open"
    );
    assert!(peak >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_user_connections_holds_across_databases() {
    let pg = Postgres::shared();
    let db1 = pg.create_database("lim_user_a");
    let db2 = pg.create_database("lim_user_b");
    // Each pool could open 5; the user may hold 2 in all.
    let s = Sluice::start(
        &format!("pool_mode = transaction\n[users]\n{SCRAM_USER} = max_user_connections=2"),
        &format!(
            "{db1} = host=127.0.0.1 port={p} pool_size=5\n{db2} = host=127.0.0.1 port={p} pool_size=5",
            p = pg.port
        ),
    )
    .await;
    let watcher = pg.super_client().await;
    let work = async {
        let (a, b) = tokio::join!(
            hammer(&s, SCRAM_USER, SCRAM_PASSWORD, &db1, 8, 10),
            hammer(&s, SCRAM_USER, SCRAM_PASSWORD, &db2, 8, 10)
        );
        a + b
    };
    tokio::pin!(work);
    let mut peak = 0;
    let failed = loop {
        tokio::select! {
            f = &mut work => break f,
            () = tokio::time::sleep(Duration::from_millis(20)) => {
                let n = backends_in(&watcher, &db1, Some(SCRAM_USER)).await
                    + backends_in(&watcher, &db2, Some(SCRAM_USER)).await;
                peak = peak.max(n);
            }
        }
    };
    assert_eq!(failed, 0);
    assert!(
        peak <= 2,
        "max_user_connections=2 but the user had {peak} server connections"
    );
    assert!(peak >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserve_pool_opens_after_reserve_pool_timeout() {
    let pg = Postgres::shared();
    let db = pg.create_database("lim_reserve");
    let s = Sluice::start(
        "pool_mode = transaction\nreserve_pool_timeout = 0.3\nquery_wait_timeout = 10",
        &format!(
            "{db} = host=127.0.0.1 port={} pool_size=1 reserve_pool=1",
            pg.port
        ),
    )
    .await;
    let holder = s.connect(&db).await;
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let waiter = s.connect(&db).await;
    let started = Instant::now();
    waiter.simple_query("SELECT 1").await.unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250),
        "the reserve server opened before reserve_pool_timeout ({waited:?})"
    );
    assert!(
        waited < Duration::from_secs(5),
        "the reserve pool never opened ({waited:?})"
    );
    assert_eq!(
        await_backends(&db, None, 2, Duration::from_secs(2)).await,
        2
    );
    holder.batch_execute("COMMIT").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_wait_timeout_ends_the_wait_with_an_error() {
    let pg = Postgres::shared();
    let db = pg.create_database("lim_wait");
    let s = Sluice::start(
        "pool_mode = transaction\nquery_wait_timeout = 1",
        &format!("{db} = host=127.0.0.1 port={} pool_size=1", pg.port),
    )
    .await;
    let holder = s.connect(&db).await;
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let waiter = s.connect(&db).await;
    let started = Instant::now();
    let err = waiter.simple_query("SELECT 1").await.unwrap_err();
    let waited = started.elapsed();
    assert!(
        error_text(&err).contains("query_wait_timeout"),
        "unexpected error: {err:?}"
    );
    assert_eq!(sqlstate(&err), Some("08P01"));
    assert!(
        (Duration::from_millis(900)..Duration::from_secs(4)).contains(&waited),
        "query_wait_timeout=1 fired after {waited:?}"
    );
    // The holder is untouched and, once it commits, a new client gets the server.
    holder.batch_execute("SELECT 2; COMMIT").await.unwrap();
    let next = s.connect(&db).await;
    assert_eq!(
        first_value(&next.simple_query("SELECT 3").await.unwrap()).as_deref(),
        Some("3")
    );
}

/// The wait the stats line reports (`avg wait`) counts the time clients spent queued for a server,
/// and only that: a checkout served at once adds nothing to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reported_wait_is_the_time_spent_queued() {
    let pg = Postgres::shared();
    let db = pg.create_database("lim_wait_stat");
    let s = Sluice::start(
        "pool_mode = transaction",
        &format!("{db} = host=127.0.0.1 port={} pool_size=1", pg.port),
    )
    .await;
    let c = s.connect(&db).await;
    for _ in 0..20 {
        c.simple_query("SELECT 1").await.unwrap();
    }
    let pool = s.app.pools.all()[0].clone();
    let wait_us =
        |p: &pgsluice::pool::Pool| p.stats.wait_us.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        wait_us(&pool),
        0,
        "one client alone never queues, so no wait may be counted"
    );
    let holder = s.connect(&db).await;
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let before = wait_us(&pool);
    let queued = tokio::spawn(async move { c.simple_query("SELECT 2").await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    holder.batch_execute("COMMIT").await.unwrap();
    queued.await.unwrap().unwrap();
    let counted = wait_us(&pool) - before;
    assert!(
        (250_000..5_000_000).contains(&counted),
        "a client queued for about 300 ms, but {counted} µs of wait were counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_pool_size_keeps_servers_open() {
    let pg = Postgres::shared();
    let db = pg.create_database("lim_min");
    let s = Sluice::start(
        "pool_mode = transaction",
        &format!(
            "{db} = host=127.0.0.1 port={} pool_size=5 min_pool_size=3",
            pg.port
        ),
    )
    .await;
    // The pool exists once a client has used it; the janitor then fills it up to min_pool_size.
    let c = s.connect(&db).await;
    c.simple_query("SELECT 1").await.unwrap();
    drop(c);
    assert_eq!(
        await_backends(&db, None, 3, Duration::from_secs(5)).await,
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_client_conn_refuses_the_extra_client_with_53300() {
    let pg = Postgres::shared();
    let db = pg.create_database("lim_clients");
    let s = Sluice::start(
        "pool_mode = transaction\nmax_client_conn = 3",
        &format!("{db} = host=127.0.0.1 port={}", pg.port),
    )
    .await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(s.connect(&db).await);
    }
    let err = s
        .connect_as(SCRAM_USER, SCRAM_PASSWORD, &db)
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), Some("53300"), "unexpected error: {err:?}");
    for c in &clients {
        assert_eq!(
            first_value(&c.simple_query("SELECT 1").await.unwrap()).as_deref(),
            Some("1")
        );
    }
    // A freed place is given to the next client.
    drop(clients.pop());
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match s.connect_as(SCRAM_USER, SCRAM_PASSWORD, &db).await {
            Ok(c) => {
                c.simple_query("SELECT 1").await.unwrap();
                break;
            }
            Err(e) if Instant::now() < deadline => {
                assert_eq!(sqlstate(&e), Some("53300"));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("no place freed after a client left: {e:?}"),
        }
    }
}
