//! PostgreSQL going away and coming back, simulated with a TCP forwarder that can be cut: clients
//! that wait for a server are never failed by a connect that fails, only by `query_wait_timeout`;
//! what they hear never names the server's address or an OS error.
#![allow(clippy::unwrap_used)]

mod common;
use common::*;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

/// Forwards to PostgreSQL while `up`; when cut, drops every connection and refuses new ones.
struct Forwarder {
    port: u16,
    up: Arc<AtomicBool>,
    /// Connections refused while cut.
    refused: Arc<AtomicUsize>,
    /// Connections forwarded.
    accepted: Arc<AtomicUsize>,
    conns: Arc<parking_lot::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Forwarder {
    async fn start(target: u16) -> Forwarder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let conns: Arc<parking_lot::Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let refused = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (u, c, r, a) = (up.clone(), conns.clone(), refused.clone(), accepted.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !u.load(Ordering::SeqCst) {
                    r.fetch_add(1, Ordering::SeqCst);
                    continue; // dropped: the connection is closed at once
                }
                a.fetch_add(1, Ordering::SeqCst);
                c.lock().push(tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", target)).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                }));
            }
        });
        Forwarder {
            port,
            up,
            refused,
            accepted,
            conns,
        }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for h in self.conns.lock().drain(..) {
            h.abort();
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// The text of a client-facing error must not carry where the server is or what the OS said.
fn assert_client_safe(text: &str, port: u16) {
    for leak in [
        "127.0.0.1".to_owned(),
        port.to_string(),
        "os error".to_owned(),
        "Connection refused".to_owned(),
        "connection reset".to_owned(),
    ] {
        assert!(
            !text.contains(&leak),
            "the client was told {leak:?}: {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_waiting_while_postgres_is_down_are_served_when_it_returns() {
    let pg = Postgres::shared();
    let fwd = Forwarder::start(pg.port).await;
    let s = Sluice::start(
        "pool_mode = transaction\nserver_connect_timeout = 1\nquery_wait_timeout = 20",
        &format!(
            "flaky = host=127.0.0.1 port={} dbname=appdb pool_size=3",
            fwd.port
        ),
    )
    .await;
    let mut clients = Vec::new();
    for _ in 0..10 {
        let c = s.connect("flaky").await;
        c.simple_query("SELECT 1").await.unwrap();
        clients.push(c);
    }
    fwd.cut();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Every client asks for a server while none can be opened.
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|c| {
            tokio::spawn(async move {
                let r = c.simple_query("SELECT 1").await;
                (r.map(|_| ()).map_err(|e| error_text(&e)), c)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let tried = fwd.refused.load(Ordering::SeqCst);
    assert!(tried >= 1, "the pool kept trying");
    assert!(
        tried <= 12,
        "{tried} connects in 1.5 s: the pool stormed the server instead of backing off"
    );
    fwd.restore();
    for t in tasks {
        let (r, c) = t.await.unwrap();
        assert_eq!(r, Ok(()), "a client that was waiting got an error");
        c.simple_query("SELECT 1").await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_past_query_wait_timeout_gives_a_clear_safe_error_and_the_pool_recovers() {
    let pg = Postgres::shared();
    let fwd = Forwarder::start(pg.port).await;
    let s = Sluice::start(
        "pool_mode = transaction\nserver_connect_timeout = 1\nquery_wait_timeout = 2",
        &format!("flaky = host=127.0.0.1 port={} dbname=appdb", fwd.port),
    )
    .await;
    let c = s.connect("flaky").await;
    c.simple_query("SELECT 1").await.unwrap();

    fwd.cut();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = tokio::time::Instant::now();
    let err = c.simple_query("SELECT 1").await.unwrap_err();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1800) && took < Duration::from_secs(5),
        "the error came after {took:?}, not at query_wait_timeout"
    );
    assert_eq!(sqlstate(&err), Some("08006"), "{err:?}");
    let text = error_text(&err);
    assert!(
        text.contains("could not be reached"),
        "unclear error: {text}"
    );
    assert_client_safe(&text, fwd.port);

    fwd.restore();
    // Both a new client and the old one are served again, without restarting anything.
    let again = s.connect("flaky").await;
    again.simple_query("SELECT 1").await.unwrap();
    if !c.is_closed() {
        c.simple_query("SELECT 1").await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_login_reaches_clients_at_once_and_is_not_retried_within_server_login_retry() {
    let pg = Postgres::shared();
    let fwd = Forwarder::start(pg.port).await;
    let s = Sluice::start(
        "pool_mode = transaction\nserver_login_retry = 30",
        &format!(
            "wrongpw = host=127.0.0.1 port={} dbname=appdb user={SCRAM_USER} password=not-the-password",
            fwd.port
        ),
    )
    .await;
    let fresh = || s.connect_as(SCRAM_USER, SCRAM_PASSWORD, "wrongpw");
    let first = match fresh().await {
        Err(e) => e,
        Ok(f) => f.simple_query("SELECT 1").await.unwrap_err(),
    };
    assert_eq!(
        sqlstate(&first),
        Some("28P01"),
        "PostgreSQL's own code: {first:?}"
    );
    let tried = fwd.accepted.load(Ordering::SeqCst);
    assert!(tried >= 1, "a login was tried: {first:?}");
    // Within server_login_retry, the next clients hear of the failure at once, with no new attempt.
    for _ in 0..3 {
        let started = tokio::time::Instant::now();
        let err = match fresh().await {
            Err(e) => e,
            Ok(f) => f.simple_query("SELECT 1").await.unwrap_err(),
        };
        assert!(started.elapsed() < Duration::from_millis(500));
        let text = error_text(&err);
        assert!(text.contains("server_login_retry"), "{text}");
        assert_client_safe(&text, fwd.port);
    }
    assert_eq!(
        fwd.accepted.load(Ordering::SeqCst),
        tried,
        "no new connect attempts"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_killed_while_idle_cost_no_client_an_error() {
    let pg = Postgres::shared();
    let db = pg.create_database("killidle");
    let s = Sluice::start(
        "pool_mode = transaction",
        &format!("{db} = host=127.0.0.1 port={} pool_size=4", pg.port),
    )
    .await;
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(s.connect(&db).await);
    }
    // Four servers, all idle in the pool.
    let warm: Vec<_> = clients
        .iter()
        .map(|c| c.simple_query("SELECT pg_sleep(0.05)"))
        .collect();
    for w in warm {
        w.await.unwrap();
    }
    let admin = pg.super_client().await;
    for round in 0..3 {
        let killed: i64 = admin
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE datname = $1 AND backend_type = 'client backend' AND state = 'idle'",
                &[&db],
            )
            .await
            .unwrap()
            .get(0);
        assert!(killed >= 1, "round {round}: idle servers to kill");
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Existing clients and a new one: every query runs.
        for c in &clients {
            c.simple_query("SELECT 1").await.unwrap_or_else(|e| {
                panic!("round {round}: a client heard of a server killed while idle: {e:?}")
            });
        }
        let fresh = s.connect(&db).await;
        fresh.simple_query("SELECT 1").await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_transaction_fails_that_client_alone_and_is_not_retried() {
    let pg = Postgres::shared();
    let db = pg.create_database("killbusy");
    let s = Sluice::start(
        "pool_mode = transaction",
        &format!("{db} = host=127.0.0.1 port={} pool_size=4", pg.port),
    )
    .await;
    let victim = s.connect(&db).await;
    let bystander = s.connect(&db).await;
    victim
        .batch_execute("CREATE TABLE t (n int)")
        .await
        .unwrap();
    victim
        .batch_execute("BEGIN; INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let pid: i32 = victim
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let admin = pg.super_client().await;
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The transaction is gone with its server: the client is told, and closed (as PgBouncer
    // does), so nothing it sends next can run outside the transaction it believes it is in.
    let err = victim
        .batch_execute("INSERT INTO t VALUES (2); COMMIT")
        .await
        .unwrap_err();
    assert!(
        err.is_closed() || sqlstate(&err) == Some("08006"),
        "the connection is closed, or the client hears 08006: {err:?}"
    );
    assert!(victim.is_closed());
    // Nothing of the broken transaction was replayed elsewhere.
    let n: i64 = bystander
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "the transaction was retried on another server");
    // The application reconnects and goes on.
    let again = s.connect(&db).await;
    again
        .batch_execute("INSERT INTO t VALUES (3)")
        .await
        .unwrap();
}

/// Servers terminated under clients that pipeline prepared statements (tokio-postgres closes a
/// statement and prepares the next in one write): every request owed a reply gets an error of its
/// own and its ReadyForQuery, so the client stays in step and carries on. With a single error for
/// several requests, tokio-postgres read a bare ReadyForQuery as its Parse's answer and dropped the
/// connection ("unexpected message from server").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_killed_under_pipelined_prepared_statements_leave_clients_in_step() {
    let s = Sluice::start("pool_mode = transaction\ndefault_pool_size = 4", "").await;
    let admin = Postgres::shared().super_client().await;
    // The servers carry the clients' application_name: the killer spares other tests' servers.
    let name = unique("pipelined");
    let mut clients = Vec::new();
    for _ in 0..8 {
        let c = s
            .connect_with("appdb", &format!("application_name={name}"))
            .await;
        clients.push(tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
            let (mut ok, mut lost, mut other) = (0u32, 0u32, Vec::new());
            let mut n = 0i32;
            while tokio::time::Instant::now() < deadline && !c.is_closed() {
                match c.execute("SELECT $1::int + 1", &[&n]).await {
                    Ok(_) => ok += 1,
                    Err(e) if sqlstate(&e) == Some("08006") => lost += 1,
                    Err(e) => other.push(error_text(&e)),
                }
                n += 1;
            }
            (ok, lost, other, c.is_closed())
        }));
    }
    let killer = tokio::spawn(async move {
        for _ in 0..25 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            let _ = admin
                .simple_query(&format!(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE application_name = '{name}'"
                ))
                .await;
        }
    });
    let (mut lost_total, mut ok_total) = (0, 0);
    for c in clients {
        let (ok, lost, other, closed) = c.await.unwrap();
        assert!(other.is_empty(), "errors other than 08006: {other:?}");
        assert!(!closed, "a client lost its connection to the pooler");
        lost_total += lost;
        ok_total += ok;
    }
    killer.abort();
    assert!(
        lost_total > 0,
        "no server was lost under a request: the test did not test"
    );
    assert!(ok_total > 100);
}
