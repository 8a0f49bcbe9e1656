//! Named prepared statements in transaction mode: clients move between servers and their statements
//! follow them. Real clients (tokio-postgres, pgbench -M prepared) over a small pool.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use tokio::io::AsyncWriteExt;

const CLIENTS: i32 = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_statements_survive_server_changes() {
    let pg = Postgres::shared();
    let db = pg.create_database("prep_tp");
    let s = Sluice::start(
        "pool_mode = transaction",
        &format!("{db} = host=127.0.0.1 port={} pool_size=2", pg.port),
    )
    .await;
    let mut tasks = Vec::new();
    for client_no in 0..CLIENTS {
        let conn = s.conn_str(SCRAM_USER, SCRAM_PASSWORD, &db);
        tasks.push(tokio::spawn(async move {
            let (mut c, conn) = tokio_postgres::connect(&conn, tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            let add = c.prepare("SELECT $1::int + 1").await?;
            let count = c
                .prepare("SELECT count(*) FROM generate_series(1, $1::int)")
                .await?;
            for i in 0..30i32 {
                let n = client_no * 1000 + i;
                let got: i32 = c.query_one(&add, &[&n]).await?.get(0);
                assert_eq!(got, n + 1);
                if i % 5 == 0 {
                    // The same statements inside a transaction, then a fresh one prepared mid-way.
                    let tx = c.transaction().await?;
                    let got: i64 = tx.query_one(&count, &[&(i + 1)]).await?.get(0);
                    assert_eq!(got, i64::from(i + 1));
                    let mul = tx.prepare("SELECT $1::int * 2").await?;
                    let got: i32 = tx.query_one(&mul, &[&n]).await?.get(0);
                    assert_eq!(got, n * 2);
                    tx.commit().await?;
                }
                if i % 7 == 0 {
                    // Dropping a Statement sends Close; preparing it again must work.
                    let again = c.prepare("SELECT $1::int + 1").await?;
                    let got: i32 = c.query_one(&again, &[&n]).await?.get(0);
                    assert_eq!(got, n + 1);
                }
            }
            Ok::<_, tokio_postgres::Error>(())
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let (mut binds, mut hits) = (0, 0);
    for p in s.app.pools.all() {
        binds += p
            .stats
            .prepared
            .binds
            .load(std::sync::atomic::Ordering::Relaxed);
        hits += p
            .stats
            .prepared
            .hits
            .load(std::sync::atomic::Ordering::Relaxed);
    }
    assert!(binds >= CLIENTS as u64 * 30, "binds counted: {binds}");
    assert!(hits > 0, "statements were never found already prepared");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_prepared_has_no_failures() {
    let pg = Postgres::shared();
    let db = pg.create_database("prep_bench");
    let port = pg.port.to_string();
    let init = std::process::Command::new(pg.bindir.join("pgbench"))
        .args([
            "-i",
            "-q",
            "-s",
            "1",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            SCRAM_USER,
            &db,
        ])
        .env("PGPASSWORD", SCRAM_PASSWORD)
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let s = Sluice::start(
        "pool_mode = transaction",
        &format!("{db} = host=127.0.0.1 port={} pool_size=3", pg.port),
    )
    .await;
    // Select-only: many clients per pgbench thread over a pool smaller than the client count.
    pgbench_prepared(&s, &db, &["-S", "-c", "20", "-j", "2", "-t", "200"], 4000).await;
    // TPC-B holds a server across a transaction while pgbench prepares the next command with a
    // blocking PQprepare: a client without a server preparing BEGIN is answered without one, so
    // one thread drives more clients than there are servers (prepared_without_server.rs).
    pgbench_prepared(&s, &db, &["-c", "6", "-j", "2", "-t", "100"], 600).await;
    let parses: u64 = s
        .app
        .pools
        .all()
        .iter()
        .map(|p| {
            p.stats
                .prepared
                .server_parses
                .load(std::sync::atomic::Ordering::Relaxed)
        })
        .sum();
    assert!(parses > 0, "pgbench's statements were prepared on servers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_prepared_after_a_migration_sees_the_new_columns() {
    let pg = Postgres::shared();
    let db = pg.create_database("prep_mig");
    // One server, so every client shares the server-side copy of the statement.
    let s = Sluice::start(
        "pool_mode = transaction",
        &format!("{db} = host=127.0.0.1 port={} pool_size=1", pg.port),
    )
    .await;
    let a = s.connect(&db).await;
    a.batch_execute("CREATE TABLE t (a int); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let before = a.prepare("SELECT * FROM t").await.unwrap();
    assert_eq!(a.query(&before, &[]).await.unwrap()[0].len(), 1);
    let b = s.connect(&db).await;
    b.batch_execute("ALTER TABLE t ADD COLUMN b int DEFAULT 7")
        .await
        .unwrap();
    let c = s.connect(&db).await;
    let after = c.prepare("SELECT * FROM t").await.unwrap();
    let rows = c.query(&after, &[]).await.unwrap();
    assert_eq!(rows[0].len(), 2, "the new column is there");
    assert_eq!(rows[0].get::<_, i32>(1), 7);
    // The first client's old statement fails once, as it would on a direct connection; the pooler's
    // copy heals, so preparing again works for it too.
    let _ = a.query(&before, &[]).await;
    let again = a.prepare("SELECT * FROM t").await.unwrap();
    assert_eq!(a.query(&again, &[]).await.unwrap()[0].len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deallocate_and_discard_act_on_the_clients_own_statements() {
    let pg = Postgres::shared();
    let db = pg.create_database("prep_dealloc");
    let s = Sluice::start(
        "pool_mode = transaction",
        &format!("{db} = host=127.0.0.1 port={} pool_size=1", pg.port),
    )
    .await;
    let c = s.connect(&db).await;
    let other = s.connect(&db).await;
    let stmt = c.prepare("SELECT 1").await.unwrap();
    let shared = other.prepare("SELECT 1").await.unwrap();
    c.query(&stmt, &[]).await.unwrap();
    c.simple_query("DEALLOCATE ALL").await.unwrap();
    let err = c.query(&stmt, &[]).await.unwrap_err();
    assert_eq!(sqlstate(&err), Some("26000"), "{err:?}");
    // The other client's statement, the same query on the same server, is untouched.
    assert_eq!(
        other
            .query_one(&shared, &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        1
    );

    let stmt = c.prepare("SELECT 2").await.unwrap();
    c.simple_query("DISCARD ALL").await.unwrap();
    let err = c.query(&stmt, &[]).await.unwrap_err();
    assert_eq!(sqlstate(&err), Some("26000"), "{err:?}");
    // DISCARD ALL really ran on the server: everything there is prepared again on demand.
    assert_eq!(
        other
            .query_one(&shared, &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        1
    );

    // DEALLOCATE of one name, then again (PostgreSQL's error), spoken by hand to pick the name.
    let mut raw = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    wire::login_md5(&mut raw).await;
    let mut msgs = wire::parse("MyStmt", "SELECT 3");
    msgs.extend(wire::sync());
    raw.write_all(&msgs).await.unwrap();
    assert_eq!(
        wire::read_until_ready(&mut raw).await,
        (vec![b'1', b'Z'], None)
    );
    raw.write_all(&wire::query("DEALLOCATE \"MyStmt\""))
        .await
        .unwrap();
    assert_eq!(
        wire::read_until_ready(&mut raw).await,
        (vec![b'C', b'Z'], None)
    );
    raw.write_all(&wire::query("deallocate \"MyStmt\";"))
        .await
        .unwrap();
    let (tags, code) = wire::read_until_ready(&mut raw).await;
    assert_eq!((tags, code.as_deref()), (vec![b'E', b'Z'], Some("26000")));
    // The connection is still in step.
    raw.write_all(&wire::query("SELECT 4")).await.unwrap();
    assert_eq!(wire::read_until_ready(&mut raw).await.1, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_pooler_copy_is_healed_without_an_error() {
    let pg = Postgres::shared();
    let db = pg.create_database("prep_heal");
    let s = Sluice::start(
        "pool_mode = transaction",
        &format!("{db} = host=127.0.0.1 port={} pool_size=2", pg.port),
    )
    .await;
    // Server 1 gets the pooler's copy of SELECT * FROM t, planned for one column.
    let old = s.connect(&db).await;
    old.batch_execute("CREATE TABLE t (a int); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let before = old.prepare("SELECT * FROM t").await.unwrap();
    assert_eq!(old.query(&before, &[]).await.unwrap()[0].len(), 1);
    // Server 1 is held in a transaction, so the migration and the new client's Parse use server 2.
    let mut pin = s.connect(&db).await;
    let tx = pin.transaction().await.unwrap();
    tx.batch_execute("SELECT 1").await.unwrap();
    let ddl = s.connect(&db).await;
    ddl.batch_execute("ALTER TABLE t ADD COLUMN b int DEFAULT 7")
        .await
        .unwrap();
    let new = s.connect(&db).await;
    let after = new.prepare("SELECT * FROM t").await.unwrap();
    assert_eq!(after.columns().len(), 2);
    // The pooler checks a server in just after its client sees the reply. Server 2 must be back
    // before server 1 is, so that server 1 is the most recently returned, the one the next
    // checkout takes: wait for each in turn.
    let pool = s.app.pools.all()[0].clone();
    pool_settles(&pool, (1, 2)).await;
    tx.commit().await.unwrap();
    pool_settles(&pool, (2, 2)).await;
    // The next Bind lands on server 1, whose copy is stale: on a direct connection this client would
    // never see "cached plan must not change result type", and through pgsluice it does not either.
    let rows = new.query(&after, &[]).await.unwrap();
    assert_eq!((rows[0].len(), rows[0].get::<_, i32>(1)), (2, 7));
    let healed: u64 = s
        .app
        .pools
        .all()
        .iter()
        .map(|p| {
            p.stats
                .prepared
                .healed
                .load(std::sync::atomic::Ordering::Relaxed)
        })
        .sum();
    assert_eq!(
        healed, 1,
        "the Bind did not land on the stale copy: the test missed its case"
    );
    // And again, with nothing left to heal.
    let rows = new.query(&after, &[]).await.unwrap();
    assert_eq!(rows[0].len(), 2);
}

/// The tracker fuzz crash fuzz/corpus/prepared_tracker/stale_copy_mid_batch, on PostgreSQL: a
/// statement prepared after a migration, used inside a transaction block on a server whose copy was
/// planned before it. The copy's check cannot heal there (a Sync of the pooler's own would end the
/// transaction), so the copy is prepared afresh before it is checked; the client must not see
/// "cached plan must not change result type", which PostgreSQL would not give it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_pooler_copy_inside_a_transaction_is_prepared_afresh_without_an_error() {
    let pg = Postgres::shared();
    let db = pg.create_database("prep_heal_tx");
    let s = Sluice::start(
        "pool_mode = transaction",
        &format!("{db} = host=127.0.0.1 port={} pool_size=2", pg.port),
    )
    .await;
    // Server 1 gets the pooler's copy of SELECT * FROM t, described with one column.
    let old = s.connect(&db).await;
    old.batch_execute("CREATE TABLE t (a int); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let before = old.prepare("SELECT * FROM t").await.unwrap();
    assert_eq!(old.query(&before, &[]).await.unwrap()[0].len(), 1);
    // Server 1 is held in a transaction, so the migration and the new client's Parse use server 2.
    let mut pin = s.connect(&db).await;
    let tx = pin.transaction().await.unwrap();
    tx.batch_execute("SELECT 1").await.unwrap();
    let ddl = s.connect(&db).await;
    ddl.batch_execute("ALTER TABLE t ADD COLUMN b int DEFAULT 7")
        .await
        .unwrap();
    let mut new = s.connect(&db).await;
    let after = new.prepare("SELECT * FROM t").await.unwrap();
    assert_eq!(after.columns().len(), 2);
    // Server 2 back first, then server 1, so that server 1 is the one the next checkout takes
    // (see above).
    let pool = s.app.pools.all()[0].clone();
    pool_settles(&pool, (1, 2)).await;
    tx.commit().await.unwrap();
    pool_settles(&pool, (2, 2)).await;
    let parses_before = pool
        .stats
        .prepared
        .server_parses
        .load(std::sync::atomic::Ordering::Relaxed);
    // BEGIN takes server 1; the Bind then comes inside the block, on the stale copy.
    let tx = new.transaction().await.unwrap();
    let rows = tx.query(&after, &[]).await.unwrap();
    assert_eq!((rows[0].len(), rows[0].get::<_, i32>(1)), (2, 7));
    tx.commit().await.unwrap();
    let parses = pool
        .stats
        .prepared
        .server_parses
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        parses - parses_before,
        1,
        "the Bind did not land on the stale copy: the test missed its case"
    );
    // The old client's statement still fails, as it would on a direct connection.
    let err = old.query(&before, &[]).await.unwrap_err();
    assert_eq!(sqlstate(&err), Some("0A000"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_discard_all_keeps_the_clients_statements() {
    let pg = Postgres::shared();
    let db = pg.create_database("prep_discard_tx");
    let s = Sluice::start(
        "pool_mode = transaction",
        &format!("{db} = host=127.0.0.1 port={} pool_size=1", pg.port),
    )
    .await;
    let mut c = s.connect(&db).await;
    let stmt = c.prepare("SELECT 5").await.unwrap();
    let tx = c.transaction().await.unwrap();
    let err = tx.batch_execute("DISCARD ALL").await.unwrap_err();
    assert_eq!(sqlstate(&err), Some("25001"), "{err:?}");
    // In the failed transaction DEALLOCATE is refused too, as PostgreSQL refuses everything.
    let err = tx.batch_execute("DEALLOCATE ALL").await.unwrap_err();
    assert_eq!(sqlstate(&err), Some("25P02"), "{err:?}");
    tx.rollback().await.unwrap();
    let v: i32 = c.query_one(&stmt, &[]).await.unwrap().get(0);
    assert_eq!(
        v, 5,
        "the statement survived the refused DISCARD ALL and DEALLOCATE ALL"
    );
}

/// Names of the statements prepared on the server this client lands on (pool of 1: the only one).
async fn server_statement_names(c: &tokio_postgres::Client) -> Vec<String> {
    c.simple_query("SELECT name FROM pg_prepared_statements ORDER BY name")
        .await
        .unwrap()
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_max_prepared_statements_evicts_and_statements_still_work() {
    let pg = Postgres::shared();
    let db = pg.create_database("prep_evict");
    let s = Sluice::start(
        "pool_mode = statement\nmax_prepared_statements = 2",
        &format!("{db} = host=127.0.0.1 port={} pool_size=1", pg.port),
    )
    .await;
    let c = s.connect(&db).await;
    let mut statements = Vec::new();
    for k in 0..4 {
        statements.push(c.prepare(&format!("SELECT {k}::int + $1")).await.unwrap());
    }
    for round in 0..3 {
        for (k, st) in statements.iter().enumerate() {
            let v: i32 = c.query_one(st, &[&round]).await.unwrap().get(0);
            assert_eq!(v, k as i32 + round);
        }
    }
    let names = server_statement_names(&c).await;
    assert!(names.len() <= 2, "the server keeps at most 2: {names:?}");
    assert!(
        names.iter().all(|n| n.starts_with("PGSLUICE_")),
        "{names:?}"
    );
    let pool = &s.app.pools.all()[0];
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    assert!(load(&pool.stats.prepared.evictions) >= 2);
    assert_eq!(load(&pool.stats.prepared.client_parses), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_prepared_statements_0_leaves_statements_to_the_client() {
    let pg = Postgres::shared();
    let db = pg.create_database("prep_off");
    let s = Sluice::start(
        "pool_mode = transaction\nmax_prepared_statements = 0",
        &format!("{db} = host=127.0.0.1 port={} pool_size=1", pg.port),
    )
    .await;
    let c = s.connect(&db).await;
    let st = c.prepare("SELECT 7").await.unwrap();
    assert_eq!(c.query_one(&st, &[]).await.unwrap().get::<_, i32>(0), 7);
    let names = server_statement_names(&c).await;
    assert!(
        !names.is_empty() && names.iter().all(|n| !n.starts_with("PGSLUICE_")),
        "the client's own names reach the server untouched: {names:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_error_a_large_message_before_sync_does_not_stall_the_client() {
    let s = Sluice::start("pool_mode = transaction", "").await;
    let mut raw = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    wire::login_md5(&mut raw).await;
    // Bind of a statement that does not exist, then Flush: the error comes back before any Sync.
    let mut bind = vec![b'B'];
    let body = b"\0nope\0\0\0\0\0\0\0";
    bind.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    bind.extend_from_slice(body);
    bind.extend_from_slice(&[b'H', 0, 0, 0, 4]);
    raw.write_all(&bind).await.unwrap();
    let (tag, body) = wire::read_message(&mut raw).await;
    assert_eq!(tag, b'E', "{}", String::from_utf8_lossy(&body));
    // A query too large to be held whole, then the Sync, in one write: the server skips the query;
    // the Sync must still be answered.
    let mut msgs = wire::query(&format!("SELECT '{}'", "x".repeat(400)));
    msgs.extend(wire::sync());
    raw.write_all(&msgs).await.unwrap();
    let answered = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        wire::read_until_ready(&mut raw),
    )
    .await
    .expect("the Sync is answered");
    assert_eq!(answered, (vec![b'Z'], None));
    raw.write_all(&wire::query("SELECT 1")).await.unwrap();
    assert_eq!(wire::read_until_ready(&mut raw).await.1, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_parse_of_a_name_gets_42p05_as_on_postgresql_and_the_session_goes_on() {
    let pg = Postgres::shared();
    let db = pg.create_database("prep_dup");
    let s = Sluice::start(
        "pool_mode = transaction",
        &format!("{db} = host=127.0.0.1 port={} pool_size=1", pg.port),
    )
    .await;
    let mut raw = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    wire::login_md5_to(&mut raw, &db).await;
    let mut batch = wire::parse("s", "SELECT 1");
    batch.extend(wire::sync());
    raw.write_all(&batch).await.unwrap();
    assert_eq!(
        wire::read_until_ready(&mut raw).await,
        (vec![b'1', b'Z'], None)
    );

    // Redefining it fails, and what follows in the batch is skipped to the Sync.
    let mut batch = wire::parse("s", "SELECT 2");
    batch.extend(wire::bind_execute("s"));
    batch.extend(wire::sync());
    raw.write_all(&batch).await.unwrap();
    assert_eq!(
        wire::read_until_ready(&mut raw).await,
        (vec![b'E', b'Z'], Some("42P05".to_owned()))
    );

    // The name still means the first statement.
    let mut batch = wire::bind_execute("s");
    batch.extend(wire::sync());
    raw.write_all(&batch).await.unwrap();
    let mut value = None;
    loop {
        let (tag, body) = wire::read_message(&mut raw).await;
        assert_ne!(tag, b'E', "the first statement still runs");
        if tag == b'D' {
            value = Some(String::from_utf8_lossy(&body[6..]).into_owned());
        }
        if tag == b'Z' {
            break;
        }
    }
    assert_eq!(value.as_deref(), Some("1"));
}
