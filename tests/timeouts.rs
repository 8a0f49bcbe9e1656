//! Every timeout fires, with the error a client would see, and leaves the pool clean.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

fn assert_within(what: &str, took: Duration, from: Duration, to: Duration) {
    assert!(
        (from..to).contains(&took),
        "{what} fired after {took:?}, expected between {from:?} and {to:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_timeout_cancels_a_long_query_and_frees_the_server() {
    let pg = Postgres::shared();
    let db = pg.create_database("to_query");
    let s = Sluice::start(
        "pool_mode = transaction\nquery_timeout = 1",
        &format!("{db} = host=127.0.0.1 port={} pool_size=1", pg.port),
    )
    .await;
    let c = s.connect(&db).await;
    let started = Instant::now();
    let err = c.simple_query("SELECT pg_sleep(20)").await.unwrap_err();
    assert_within(
        "query_timeout",
        started.elapsed(),
        Duration::from_millis(900),
        Duration::from_secs(5),
    );
    assert_eq!(sqlstate(&err), Some("57014"), "unexpected error: {err:?}");
    // The stuck server is not given to anyone: the next client gets a working one.
    let next = s.connect(&db).await;
    assert_eq!(
        first_value(&next.simple_query("SELECT 7").await.unwrap()).as_deref(),
        Some("7")
    );
    // And the old backend does not linger running pg_sleep.
    let watcher = pg.super_client().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let sleeping: i64 = watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND query LIKE 'SELECT pg_sleep(20)%' AND state = 'active'",
                &[&db],
            )
            .await
            .unwrap()
            .get(0);
        if sleeping == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the timed-out query still runs on the server"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_transaction_timeout_closes_the_client_and_its_server() {
    let pg = Postgres::shared();
    let db = pg.create_database("to_idle_tx");
    let s = Sluice::start(
        "pool_mode = transaction\nidle_transaction_timeout = 1",
        &format!("{db} = host=127.0.0.1 port={}", pg.port),
    )
    .await;
    let c = s.connect(&db).await;
    let table = unique("idle_tx");
    c.batch_execute(&format!("CREATE TABLE {table} (v int)"))
        .await
        .unwrap();
    c.batch_execute(&format!("BEGIN; INSERT INTO {table} VALUES (1)"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let err = c.simple_query("COMMIT").await.unwrap_err();
    assert!(
        c.is_closed() || err.is_closed() || sqlstate(&err).is_some(),
        "{err:?}"
    );
    // The open transaction was not committed and its server was closed, not pooled dirty.
    let other = s.connect(&db).await;
    let n = first_value(
        &other
            .simple_query(&format!("SELECT count(*) FROM {table}"))
            .await
            .unwrap(),
    );
    assert_eq!(n.as_deref(), Some("0"));
    assert_eq!(
        await_backends(&db, None, 1, Duration::from_secs(3)).await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_idle_timeout_closes_an_idle_client() {
    let pg = Postgres::shared();
    let db = pg.create_database("to_client_idle");
    let s = Sluice::start(
        "pool_mode = transaction\nclient_idle_timeout = 1",
        &format!("{db} = host=127.0.0.1 port={}", pg.port),
    )
    .await;
    let c = s.connect(&db).await;
    c.simple_query("SELECT 1").await.unwrap();
    let busy = s.connect(&db).await;
    // A client that keeps working is not affected.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        busy.simple_query("SELECT 1").await.unwrap();
    }
    assert!(
        c.simple_query("SELECT 1").await.is_err(),
        "the idle client was not closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_login_timeout_closes_a_silent_connection() {
    let s = Sluice::start("client_login_timeout = 1", "").await;
    let mut raw = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    // The pooler answers with an error (or just closes) and then closes: read to end.
    tokio::time::timeout(Duration::from_secs(10), raw.read_to_end(&mut buf))
        .await
        .expect("the connection stayed open past client_login_timeout")
        .ok();
    assert_within(
        "client_login_timeout",
        started.elapsed(),
        Duration::from_millis(900),
        Duration::from_secs(5),
    );
    let text = String::from_utf8_lossy(&buf);
    assert!(
        buf.is_empty() || text.contains("client_login_timeout"),
        "{text}"
    );
    // A prompt client is served meanwhile.
    let c = s.connect("appdb").await;
    c.simple_query("SELECT 1").await.unwrap();
}

/// A TCP server that accepts connections and never says anything, like a hung PostgreSQL host.
async fn black_hole() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = l.accept().await {
            held.push(sock);
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_connect_timeout_against_a_hung_server() {
    let hole = black_hole().await;
    let s = Sluice::start(
        "server_connect_timeout = 1\nquery_wait_timeout = 2",
        &format!("hung = host=127.0.0.1 port={hole} dbname=appdb"),
    )
    .await;
    let started = Instant::now();
    // Each connect gives up after a second; the client waits through the retries and hears of it
    // at query_wait_timeout.
    let err = s
        .connect_as(SCRAM_USER, SCRAM_PASSWORD, "hung")
        .await
        .unwrap_err();
    assert_within(
        "query_wait_timeout",
        started.elapsed(),
        Duration::from_millis(1900),
        Duration::from_secs(5),
    );
    assert_eq!(sqlstate(&err), Some("08006"), "{err:?}");
    // Other databases keep working.
    let c = s.connect("appdb").await;
    c.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_server_gives_a_clear_error_at_query_wait_timeout() {
    let dead = free_port();
    let s = Sluice::start(
        "server_connect_timeout = 10\nquery_wait_timeout = 1",
        &format!("dead = host=127.0.0.1 port={dead} dbname=appdb"),
    )
    .await;
    let started = Instant::now();
    let err = s
        .connect_as(SCRAM_USER, SCRAM_PASSWORD, "dead")
        .await
        .unwrap_err();
    assert_within(
        "query_wait_timeout",
        started.elapsed(),
        Duration::from_millis(900),
        Duration::from_secs(3),
    );
    assert_eq!(sqlstate(&err), Some("08006"), "{err:?}");
    let text = error_text(&err);
    assert!(
        !text.contains(&dead.to_string()) && !text.contains("refused"),
        "the client was told the server's address or the OS error: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_idle_timeout_and_server_lifetime_close_servers() {
    let pg = Postgres::shared();
    let idle_db = pg.create_database("to_srv_idle");
    let life_db = pg.create_database("to_srv_life");
    let s = Sluice::start(
        "pool_mode = transaction\nserver_idle_timeout = 1",
        &format!(
            "{idle_db} = host=127.0.0.1 port={p}\n{life_db} = host=127.0.0.1 port={p}",
            p = pg.port
        ),
    )
    .await;
    let c = s.connect(&idle_db).await;
    c.simple_query("SELECT 1").await.unwrap();
    assert_eq!(
        await_backends(&idle_db, None, 1, Duration::from_secs(1)).await,
        1
    );
    // The client stays connected; its idle server is closed by the janitor.
    assert_eq!(
        await_backends(&idle_db, None, 0, Duration::from_secs(5)).await,
        0
    );
    c.simple_query("SELECT 1").await.unwrap();
    drop(s);

    let s = Sluice::start(
        "pool_mode = transaction\nserver_lifetime = 1",
        &format!("{life_db} = host=127.0.0.1 port={}", pg.port),
    )
    .await;
    let c = s.connect(&life_db).await;
    let pid = |m: Vec<tokio_postgres::SimpleQueryMessage>| first_value(&m).unwrap();
    let first = pid(c.simple_query("SELECT pg_backend_pid()").await.unwrap());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let second = pid(c.simple_query("SELECT pg_backend_pid()").await.unwrap());
    assert_ne!(
        first, second,
        "a server older than server_lifetime was reused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_transaction_timeout_error_is_sent_before_closing() {
    let pg = Postgres::shared();
    let s = Sluice::start("pool_mode = transaction\nidle_transaction_timeout = 1", "").await;
    let _ = pg;
    // Speak the protocol by hand to see the exact error the pooler sends.
    let mut raw = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    wire::login_md5(&mut raw).await;
    raw.write_all(&wire::query("BEGIN")).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), raw.read_to_end(&mut buf))
        .await
        .unwrap()
        .ok();
    let text = String::from_utf8_lossy(&buf);
    assert!(
        text.contains("25P03") || text.contains("idle"),
        "no timeout error in {text:?}"
    );
}
