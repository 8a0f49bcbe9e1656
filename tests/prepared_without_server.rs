//! A Parse (+ Describe) + Sync of a statement some server has already accepted is answered without a
//! server: the pgbench `-M prepared` deadlock it removes, and what happens at the statement's first
//! use on a server that never saw it. Real clients (pgbench, tokio-postgres).
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

fn answered_without_server(s: &Sluice) -> u64 {
    s.app
        .pools
        .all()
        .iter()
        .map(|p| {
            p.stats
                .prepared
                .answered_without_server
                .load(Ordering::Relaxed)
        })
        .sum()
}

/// pgbench prepares each command with a blocking `PQprepare` the first time a client runs it. With
/// 4 clients on one thread and 3 servers, three clients sit in open transactions while the fourth
/// prepares `BEGIN`: a pooler that needs a server for that Parse waits for one the blocked thread
/// will never give back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_prepared_with_more_clients_per_thread_than_servers_does_not_deadlock() {
    let pg = Postgres::shared();
    let db = pg.create_database("prep_nodeadlock");
    let s = Sluice::start(
        "pool_mode = transaction",
        &format!("{db} = host=127.0.0.1 port={} pool_size=3", pg.port),
    )
    .await;
    let script = s.dir.path().join("begin_end.sql");
    std::fs::write(
        &script,
        "\\set n random(1, 1000)\nBEGIN;\nSELECT :n::int + 1;\nSELECT pg_sleep(0.001);\nEND;\n",
    )
    .unwrap();
    let script = script.to_str().unwrap();
    pgbench_prepared(
        &s,
        &db,
        &["-c", "4", "-j", "1", "-t", "50", "-f", script],
        200,
    )
    .await;
    assert!(
        answered_without_server(&s) > 0,
        "some PQprepare was answered without a server"
    );
}

/// A client that holds no server sends Parse + Sync, as `PQprepare` does, while every server is held:
/// it is answered, and its statement runs on a server that never saw it. When the table is dropped
/// meanwhile, the error comes at the first use, from the server, and the session goes on. A Parse
/// with a Describe still goes to a server: the columns may have changed since one showed them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_answered_without_a_server_runs_on_servers_that_never_saw_it() {
    let pg = Postgres::shared();
    let db = pg.create_database("prep_local");
    let s = Sluice::start(
        "pool_mode = transaction",
        &format!("{db} = host=127.0.0.1 port={} pool_size=2", pg.port),
    )
    .await;
    let owner = s.connect(&db).await;
    owner
        .batch_execute(&format!(
            "CREATE TABLE items (id int, label text); INSERT INTO items VALUES (1, 'one'); \
             GRANT SELECT ON items TO {MD5_USER}"
        ))
        .await
        .unwrap();
    // The raw client below logs in as the md5 user: its pool is this one.
    let md5 = || async { s.connect_as(MD5_USER, MD5_PASSWORD, &db).await.unwrap() };
    let a = md5().await;
    let b = md5().await;
    let sql = "SELECT label FROM items WHERE id = 1";
    a.prepare(sql).await.unwrap();
    let before = answered_without_server(&s);

    // Both servers held in transactions while the raw client prepares.
    a.batch_execute("BEGIN; SELECT 1").await.unwrap();
    b.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let mut raw = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    wire::login_md5_to(&mut raw, &db).await;
    let prepare = [wire::parse("q", sql), wire::sync()].concat();
    raw.write_all(&prepare).await.unwrap();
    let answered = tokio::time::timeout(Duration::from_secs(5), wire::read_until_ready(&mut raw))
        .await
        .expect("the Parse + Sync was answered although every server is held");
    assert_eq!(answered, (vec![b'1', b'Z'], None));
    assert_eq!(answered_without_server(&s), before + 1);

    // A Describe cannot be answered without a server: this one waits for one.
    let describe = [
        wire::parse("d", sql),
        vec![b'D', 0, 0, 0, 7, b'S', b'd', 0],
        wire::sync(),
    ]
    .concat();
    raw.write_all(&describe).await.unwrap();
    let waited =
        tokio::time::timeout(Duration::from_millis(300), wire::read_until_ready(&mut raw)).await;
    assert!(
        waited.is_err(),
        "a Describe was answered without a server: {waited:?}"
    );
    a.batch_execute("COMMIT").await.unwrap();
    b.batch_execute("COMMIT").await.unwrap();
    assert_eq!(
        wire::read_until_ready(&mut raw).await,
        (vec![b'1', b't', b'T', b'Z'], None)
    );
    assert_eq!(answered_without_server(&s), before + 1);

    // The statement answered without a server runs on whichever server it gets.
    for _ in 0..4 {
        raw.write_all(&[wire::bind_execute("q"), wire::sync()].concat())
            .await
            .unwrap();
        assert_eq!(
            first_value(&mut raw).await,
            Ok(Some("one".to_owned())),
            "the statement runs"
        );
    }

    // Dropped under it: the next Parse + Sync is still answered, and the error comes at the first
    // use, from the server; the session goes on.
    owner.batch_execute("DROP TABLE items").await.unwrap();
    let mut late = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    wire::login_md5_to(&mut late, &db).await;
    late.write_all(&prepare).await.unwrap();
    assert_eq!(
        wire::read_until_ready(&mut late).await,
        (vec![b'1', b'Z'], None)
    );
    late.write_all(&[wire::bind_execute("q"), wire::sync()].concat())
        .await
        .unwrap();
    assert_eq!(first_value(&mut late).await, Err("42P01".to_owned()));
    late.write_all(&wire::query("SELECT 1")).await.unwrap();
    assert_eq!(wire::read_until_ready(&mut late).await.1, None);
}

/// Reads up to ReadyForQuery: the first column of the first row, or the error code.
async fn first_value(raw: &mut tokio::net::TcpStream) -> Result<Option<String>, String> {
    let mut value = None;
    let mut error = None;
    loop {
        let (tag, body) = wire::read_message(raw).await;
        match tag {
            b'D' if value.is_none() => {
                value = Some(String::from_utf8_lossy(&body[6..]).into_owned());
            }
            b'E' => error = wire::error_code(&wire::framed(tag, &body)),
            b'Z' => return error.map_or(Ok(value), Err),
            _ => {}
        }
    }
}
