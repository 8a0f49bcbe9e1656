//! PostgreSQL going away and coming back, simulated with a TCP forwarder that can be cut.
#![allow(clippy::unwrap_used)]

mod common;
use common::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

/// Forwards to PostgreSQL while `up`; when cut, drops every connection and refuses new ones.
struct Forwarder {
    port: u16,
    up: Arc<AtomicBool>,
    conns: Arc<parking_lot::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Forwarder {
    async fn start(target: u16) -> Forwarder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let conns: Arc<parking_lot::Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let (u, c) = (up.clone(), conns.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !u.load(Ordering::SeqCst) {
                    continue; // dropped: the connection is closed at once
                }
                c.lock().push(tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", target)).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                }));
            }
        });
        Forwarder { port, up, conns }
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
