//! Micro benchmarks of the two per-transaction costs that are not parsing: a pool checkout and
//! check-in under contention from many tasks, and the relay loop itself.
//!
//! Both run over unix socket pairs inside one process, so that what is measured is pgsluice's own
//! work (and the kernel's socket copies), not a PostgreSQL server's. The far end of each server
//! connection is the canned server (common/canned.rs), which answers a login with
//! AuthenticationOk and queries with pgbench's select-only reply; the load benchmark
//! (benches/load) measures against the real PostgreSQL.
#![allow(clippy::unwrap_used)]

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pgsluice::backend::params::ParamSet;
use pgsluice::config::PoolMode;
use pgsluice::net::stream::Stream;
use pgsluice::pool::{PoolKey, PoolSettings};
use pgsluice::proto::scan::Scanner;
use pgsluice::relay::{self, ClientSide, Outcome, Timeouts};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::runtime::Runtime;

mod common;
use common::canned::{answer_queries, login_server, server_over};
use common::{frame, select_reply};

fn select_query() -> BytesMut {
    let mut b = BytesMut::new();
    frame(
        &mut b,
        b'Q',
        b"SELECT abalance FROM pgbench_accounts WHERE aid = 48213;\0",
    );
    b
}

fn pool_contention(c: &mut Criterion) {
    const POOL: usize = 4;
    const TASKS: usize = 64;
    const ROUNDS: usize = 50;
    let dir = tempfile::tempdir().unwrap();
    let ini = dir.path().join("pgbouncer.ini");
    std::fs::write(
        &ini,
        format!(
            "[databases]\nbench = host={} port=5999\n[pgbouncer]\nauth_type = trust\n\
             pool_mode = transaction\ndefault_pool_size = {POOL}\nlisten_port = 0\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let config = pgsluice::config::load(&ini).unwrap();
    let app = rt.block_on(async {
        let listener = UnixListener::bind(dir.path().join(".s.PGSQL.5999")).unwrap();
        tokio::spawn(login_server(listener, Default::default()));
        pgsluice::app::App::new(config)
    });
    let settings = PoolSettings::resolve(&app.config(), "bench", "bench", &app.sources()).unwrap();
    let key = PoolKey {
        database: "bench".into(),
        user: "bench".into(),
    };
    let pool = app.pools.get_or_create(key, settings);

    let mut g = c.benchmark_group("pool");
    g.throughput(Throughput::Elements((TASKS * ROUNDS) as u64));
    g.bench_function("checkout_checkin_64_tasks_pool_4", |b| {
        b.iter(|| {
            rt.block_on(async {
                let tasks: Vec<_> = (0..TASKS)
                    .map(|_| {
                        let pool = pool.clone();
                        tokio::spawn(async move {
                            for _ in 0..ROUNDS {
                                let conn = pool.checkout().await.unwrap();
                                tokio::task::yield_now().await;
                                pool.checkin(conn);
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap();
                }
            })
        })
    });
    g.finish();
    let (_, total) = pool.counts();
    assert!(total <= POOL, "the pool never holds more than its size");
}

fn relay_loop(c: &mut Criterion) {
    const BATCH: usize = 64;
    let rt: Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let query = select_query();
    let reply = select_reply(1);
    let batch: BytesMut = query.repeat(BATCH).as_slice().into();
    let (mut app_end, mut client_stream, mut server) = rt.block_on(async {
        let (app_end, pooler_client) = UnixStream::pair().unwrap();
        let (pooler_server, server_end) = UnixStream::pair().unwrap();
        tokio::spawn(answer_queries(server_end));
        (
            app_end,
            Stream::from(pooler_client),
            server_over(pooler_server),
        )
    });
    let mut cbuf = BytesMut::with_capacity(16 * 1024);
    let mut scanner = Scanner::for_client();
    let mut params = ParamSet::default();
    let tracked: Vec<String> = Vec::new();
    let stats = pgsluice::pool::PoolStats::default();
    let expected = reply.len() * BATCH;
    let mut answers = vec![0u8; expected];

    let mut g = c.benchmark_group("relay");
    g.throughput(Throughput::Bytes((batch.len() + expected) as u64));
    g.bench_function("64_pipelined_select_queries_one_core", |b| {
        b.iter(|| {
            rt.block_on(async {
                app_end.write_all(&batch).await.unwrap();
                // What the session loop does before attaching a server: wait for a request.
                while cbuf.len() < batch.len() {
                    client_stream.read_buf(&mut cbuf).await.unwrap();
                }
                let relaying = relay::run(
                    ClientSide {
                        stream: &mut client_stream,
                        buf: &mut cbuf,
                        scanner: &mut scanner,
                        params: &mut params,
                        tracked: &tracked,
                        prepared: None,
                    },
                    &mut server,
                    &stats,
                    PoolMode::Transaction,
                    Timeouts {
                        query: None,
                        idle_transaction: None,
                    },
                    // No shutdown during the bench.
                    std::future::pending(),
                );
                let (outcome, read) = tokio::join!(relaying, app_end.read_exact(&mut answers));
                assert!(matches!(outcome.unwrap(), Outcome::Released));
                read.unwrap();
            })
        })
    });
    g.finish();
    assert_eq!(
        &answers[..reply.len()],
        &reply[..],
        "replies arrive unchanged"
    );
}

criterion_group!(benches, pool_contention, relay_loop);
criterion_main!(benches);
