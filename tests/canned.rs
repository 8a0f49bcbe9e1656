//! The tier between unit tests and the real PostgreSQL: the relay and the pool driven by the canned
//! server of the benchmarks (benches/common/canned.rs), which can be made to fail exactly as a test
//! needs (half a reply, a FATAL, a connection gone while idle). No PostgreSQL is started here.
#![allow(clippy::unwrap_used)]

#[path = "../benches/common/mod.rs"]
mod bench_common;

use bench_common::canned::{answer_queries, login_server, server_over, Accepted};
use bench_common::{frame, select_reply};
use bytes::BytesMut;
use pgsluice::backend::params::ParamSet;
use pgsluice::config::PoolMode;
use pgsluice::net::stream::Stream;
use pgsluice::pool::{PoolKey, PoolSettings, PoolStats};
use pgsluice::proto::scan::Scanner;
use pgsluice::relay::{self, ClientSide, Outcome, RelayError, Timeouts};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

fn query(sql: &str) -> BytesMut {
    let mut b = BytesMut::new();
    frame(&mut b, b'Q', format!("{sql}\0").as_bytes());
    b
}

/// Relays what `app` sent through a fresh server whose far end runs `far`; the outcome, and what
/// reached the client's end within a moment.
async fn relay_once<F>(
    request: &[u8],
    far: impl FnOnce(UnixStream) -> F,
) -> (Result<Outcome, RelayError>, Vec<u8>)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let (mut app_end, pooler_client) = UnixStream::pair().unwrap();
    let (pooler_server, server_end) = UnixStream::pair().unwrap();
    tokio::spawn(far(server_end));
    let mut server = server_over(pooler_server);
    let mut client = Stream::from(pooler_client);
    app_end.write_all(request).await.unwrap();
    let mut cbuf = BytesMut::with_capacity(4096);
    while cbuf.len() < request.len() {
        client.read_buf(&mut cbuf).await.unwrap();
    }
    let (mut scanner, mut params, stats) = (
        Scanner::for_client(),
        ParamSet::default(),
        PoolStats::default(),
    );
    let outcome = relay::run(
        ClientSide {
            stream: &mut client,
            buf: &mut cbuf,
            scanner: &mut scanner,
            params: &mut params,
            tracked: &[],
            prepared: None,
        },
        &mut server,
        &stats,
        PoolMode::Transaction,
        Timeouts {
            query: None,
            idle_transaction: None,
        },
        std::future::pending(),
    )
    .await;
    drop(client);
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), app_end.read_to_end(&mut got)).await;
    (outcome, got)
}

#[tokio::test]
async fn a_pipelined_batch_passes_through_unchanged_and_the_server_is_released() {
    let batch = [query("SELECT 1"), query("SELECT 2"), query("SELECT 3")].concat();
    let (outcome, got) = relay_once(&batch, answer_queries).await;
    assert!(matches!(outcome, Ok(Outcome::Released)), "{outcome:?}");
    assert_eq!(
        got,
        select_reply(3).to_vec(),
        "three replies, byte for byte"
    );
}

#[tokio::test]
async fn a_server_gone_mid_reply_ends_the_attachment_as_unrecoverable() {
    let (outcome, got) = relay_once(&query("SELECT 1"), |mut far| async move {
        let mut buf = [0u8; 64];
        let _ = far.read(&mut buf).await;
        let reply = select_reply(1);
        // Half of the RowDescription, then the connection is gone.
        far.write_all(&reply[..10]).await.unwrap();
    })
    .await;
    assert!(
        matches!(outcome, Err(RelayError::ServerLostMidMessage)),
        "{outcome:?}"
    );
    assert_eq!(
        got.len(),
        10,
        "what was forwarded stays forwarded; nothing is made up"
    );
}

#[tokio::test]
async fn a_fatal_from_the_server_is_held_back_and_reported_with_the_requests_owed() {
    let (outcome, got) = relay_once(&query("SELECT 1"), |mut far| async move {
        let mut buf = [0u8; 64];
        let _ = far.read(&mut buf).await;
        let mut out = BytesMut::new();
        frame(
            &mut out,
            b'E',
            b"SFATAL\0VFATAL\0C57P01\0Mterminating connection due to administrator command\0\0",
        );
        far.write_all(&out).await.unwrap();
    })
    .await;
    match outcome {
        Ok(Outcome::ServerLost {
            in_flight,
            message,
            in_transaction,
        }) => {
            assert_eq!(in_flight, 1, "the query is still owed its reply");
            assert_eq!(
                message.as_deref(),
                Some("terminating connection due to administrator command")
            );
            assert!(!in_transaction);
        }
        other => panic!("expected ServerLost, got {other:?}"),
    }
    assert!(
        got.is_empty(),
        "the session tells the client, not the relay"
    );
}

/// A pool of size `size` over a canned server on a unix socket in a fresh directory.
async fn canned_pool(size: usize) -> (Arc<pgsluice::pool::Pool>, Arc<Accepted>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let ini = dir.path().join("pgbouncer.ini");
    std::fs::write(
        &ini,
        format!(
            "[databases]\ncanned = host={} port=5999\n[pgbouncer]\nauth_type = trust\n\
             pool_mode = transaction\ndefault_pool_size = {size}\nlisten_port = 0\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let accepted = Arc::new(Accepted::default());
    let listener = UnixListener::bind(dir.path().join(".s.PGSQL.5999")).unwrap();
    tokio::spawn(login_server(listener, accepted.clone()));
    let app = pgsluice::app::App::new(pgsluice::config::load(&ini).unwrap());
    let settings = PoolSettings::resolve(&app.config(), "canned", "u", &app.sources()).unwrap();
    let key = PoolKey {
        database: "canned".into(),
        user: "u".into(),
    };
    (app.pools.get_or_create(key, settings), accepted, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_tasks_share_four_servers_and_every_checkout_is_served() {
    let (pool, accepted, _dir) = canned_pool(4).await;
    let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let (pool, served) = (pool.clone(), served.clone());
            tokio::spawn(async move {
                for _ in 0..20 {
                    let conn = pool.checkout().await.unwrap();
                    tokio::task::yield_now().await;
                    pool.checkin(conn);
                    served.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(served.load(Ordering::Relaxed), 64 * 20);
    let opened = accepted.count.load(Ordering::SeqCst);
    assert!(
        (1..=4).contains(&opened),
        "{opened} servers opened for a pool of 4"
    );
}

#[tokio::test]
async fn an_idle_server_that_died_is_replaced_without_the_client_noticing() {
    let (pool, accepted, _dir) = canned_pool(2).await;
    let conn = pool.checkout().await.unwrap();
    pool.checkin(conn);
    assert_eq!(accepted.count.load(Ordering::SeqCst), 1);
    // The server dies while idle in the pool (its far end closes, as after a crash or a kill).
    for h in accepted.connections.lock().drain(..) {
        h.abort();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The next checkout discards it and opens another, before any byte of a request is written.
    let mut conn = pool.checkout().await.expect("no error reaches the client");
    assert_eq!(
        accepted.count.load(Ordering::SeqCst),
        2,
        "a fresh server was opened"
    );
    let (mut app_end, pooler_client) = UnixStream::pair().unwrap();
    let request = query("SELECT 1");
    app_end.write_all(&request).await.unwrap();
    let mut client = Stream::from(pooler_client);
    let mut cbuf = BytesMut::with_capacity(4096);
    while cbuf.len() < request.len() {
        client.read_buf(&mut cbuf).await.unwrap();
    }
    let (mut scanner, mut params) = (Scanner::for_client(), ParamSet::default());
    let outcome = relay::run(
        ClientSide {
            stream: &mut client,
            buf: &mut cbuf,
            scanner: &mut scanner,
            params: &mut params,
            tracked: &[],
            prepared: None,
        },
        &mut conn.server,
        &pool.stats,
        PoolMode::Transaction,
        Timeouts {
            query: None,
            idle_transaction: None,
        },
        std::future::pending(),
    )
    .await;
    assert!(matches!(outcome, Ok(Outcome::Released)), "{outcome:?}");
    let mut reply = vec![0u8; select_reply(1).len()];
    app_end.read_exact(&mut reply).await.unwrap();
    assert_eq!(reply, select_reply(1).to_vec());
    pool.checkin(conn);
}
