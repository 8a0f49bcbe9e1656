//! PostgreSQL going away and coming back, simulated with a TCP forwarder that can be cut.
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
    conns: Arc<parking_lot::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Forwarder {
    async fn start(target: u16) -> Forwarder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let conns: Arc<parking_lot::Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let refused = Arc::new(AtomicUsize::new(0));
        let (u, c, r) = (up.clone(), conns.clone(), refused.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !u.load(Ordering::SeqCst) {
                    r.fetch_add(1, Ordering::SeqCst);
                    continue; // dropped: the connection is closed at once
                }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_gives_a_clear_error_and_the_pool_recovers() {
    let pg = Postgres::shared();
    let fwd = Forwarder::start(pg.port).await;
    let s = Sluice::start(
        "pool_mode = transaction\nserver_connect_timeout = 1\nserver_login_retry = 0",
        &format!("flaky = host=127.0.0.1 port={} dbname=appdb", fwd.port),
    )
    .await;
    let c = s.connect("flaky").await;
    c.simple_query("SELECT 1").await.unwrap();

    fwd.cut();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = tokio::time::Instant::now();
    let err = c.simple_query("SELECT 1").await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "error took {:?}",
        started.elapsed()
    );
    assert!(
        err.code().is_some(),
        "expected a PostgreSQL-style error, got {err:?}"
    );
    // A new client either fails to log in or fails its first query, quickly and clearly (the
    // pool may still know the server's parameters and let it log in, as PgBouncer does).
    let err = match s.connect_as(SCRAM_USER, SCRAM_PASSWORD, "flaky").await {
        Err(e) => e,
        Ok(fresh) => fresh.simple_query("SELECT 1").await.unwrap_err(),
    };
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "error took {:?}",
        started.elapsed()
    );
    assert!(
        format!("{err:?}").contains("server"),
        "unclear error: {err:?}"
    );

    fwd.restore();
    // Both a new client and the old one are served again, without restarting anything.
    let again = s.connect("flaky").await;
    again.simple_query("SELECT 1").await.unwrap();
    if !c.is_closed() {
        c.simple_query("SELECT 1").await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn within_server_login_retry_clients_get_the_failure_at_once_without_a_new_attempt() {
    let pg = Postgres::shared();
    let fwd = Forwarder::start(pg.port).await;
    let s = Sluice::start(
        "pool_mode = transaction\nserver_connect_timeout = 2\nserver_login_retry = 30",
        &format!("flaky = host=127.0.0.1 port={} dbname=appdb", fwd.port),
    )
    .await;
    let c = s.connect("flaky").await;
    c.simple_query("SELECT 1").await.unwrap();
    fwd.cut();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The held server is gone, then a login is tried and fails.
    for _ in 0..2 {
        if c.is_closed() {
            break;
        }
        let _ = c.simple_query("SELECT 1").await;
    }
    let fresh = || s.connect_as(SCRAM_USER, SCRAM_PASSWORD, "flaky");
    let first = match fresh().await {
        Err(e) => e,
        Ok(f) => f.simple_query("SELECT 1").await.unwrap_err(),
    };
    let tried = fwd.refused.load(Ordering::SeqCst);
    assert!(tried >= 1, "a login was tried: {first:?}");
    // Within server_login_retry, the next clients hear of the failure at once, with no new attempt.
    for _ in 0..3 {
        let started = tokio::time::Instant::now();
        let err = match fresh().await {
            Err(e) => e,
            Ok(f) => f.simple_query("SELECT 1").await.unwrap_err(),
        };
        assert!(started.elapsed() < Duration::from_millis(500));
        assert!(error_text(&err).contains("server_login_retry"), "{err:?}");
    }
    assert_eq!(
        fwd.refused.load(Ordering::SeqCst),
        tried,
        "no new connect attempts"
    );
}
