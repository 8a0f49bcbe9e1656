//! The switchover drill: 50 clients write continuously through pgsluice while the primary moves,
//! in CloudNativePG's order of events. Run it by itself with
//! `cargo test --release --test switchover -- --nocapture` to read its summary line.
//!
//! 1. the `-rw` Service's endpoint goes (the old primary is labelled unhealthy);
//! 2. the old primary is fenced: a fast shutdown once the transactions it was running are done;
//! 3. the standby is promoted;
//! 4. the new primary's endpoint is published.
//!
//! A real primary and streaming replica (tests/common/cluster.rs), the real kube client on a fake
//! API server (tests/common/kube_api.rs).
#![allow(clippy::unwrap_used)]

mod common;

use common::cluster::Cluster;
use common::kube_api::FakeApi;
use common::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

const CLIENTS: usize = 50;

#[derive(Default)]
struct Tally {
    committed: AtomicU64,
    errors: AtomicU64,
    /// The longest a single transaction took, in microseconds.
    max_wait_us: AtomicU64,
    /// Microseconds from the drill's start to the first commit after the new endpoint appeared.
    first_after_publish_us: AtomicU64,
}

/// How the pooler learns where the primary is, and what else happens during the drill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    /// The Service's EndpointSlices, watched.
    Kubernetes,
    /// As Kubernetes, after the API server was gone for 10 s (the pooler serves on meanwhile).
    ApiOutage,
    /// `host=<standby>,<primary> target_session_attrs=read-write`: no notice before the fence.
    Static,
}

/// Runs the drill; the summary line, and what it counted.
async fn drill(variant: Variant) -> (u64, u64, u64, u64, u64) {
    let cluster = tokio::task::spawn_blocking(Cluster::start).await.unwrap();
    let (old, new) = (&cluster.primary, &cluster.replica);
    old.psql(
        "CREATE TABLE drill (client int, n int, server inet DEFAULT inet_server_addr(), \
         at timestamptz DEFAULT clock_timestamp()); GRANT ALL ON drill TO app",
    );
    let api = FakeApi::start(&[old.ip], old.port).await;
    let dir = tempfile::tempdir().unwrap();
    let general = format!(
        "pool_mode = transaction\ndefault_pool_size = 10\nmax_client_conn = 200\n\
         server_login_retry = 0.2\n[pgsluice]\nkubeconfig = {}\ndiscovery_hold_timeout = 20\n",
        api.kubeconfig(dir.path()).display()
    );
    let database = match variant {
        Variant::Static => format!(
            "appdb = host={},{} port={} dbname=appdb target_session_attrs=read-write",
            new.ip, old.ip, old.port
        ),
        _ => "appdb = host=pg-rw dbname=appdb discovery=kubernetes discovery_service=testns/pg-rw"
            .to_owned(),
    };
    let s = Sluice::start_exact(&general, &database).await;

    let start = Instant::now();
    let tally = Arc::new(Tally::default());
    let published = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for id in 0..CLIENTS {
        let c = s.connect("appdb").await;
        let (tally, published, stop) = (tally.clone(), published.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let after_publish = published.load(Ordering::SeqCst);
                let t = Instant::now();
                let r = c
                    .execute(
                        "INSERT INTO drill (client, n) VALUES ($1, $2)",
                        &[&(id as i32), &n],
                    )
                    .await;
                let us = t.elapsed().as_micros() as u64;
                tally.max_wait_us.fetch_max(us, Ordering::Relaxed);
                match r {
                    Ok(_) => {
                        tally.committed.fetch_add(1, Ordering::Relaxed);
                        if after_publish {
                            let at = start.elapsed().as_micros() as u64;
                            let _ = tally.first_after_publish_us.compare_exchange(
                                0,
                                at,
                                Ordering::SeqCst,
                                Ordering::SeqCst,
                            );
                        }
                        n += 1;
                    }
                    Err(e) => {
                        eprintln!("client {id}: {}", error_text(&e));
                        tally.errors.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    if variant == Variant::ApiOutage {
        api.stop();
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(
            tally.errors.load(Ordering::Relaxed),
            0,
            "errors while the API was gone"
        );
        let watches = api.watches();
        api.resume();
        // The watcher comes back after its backoff; the switchover starts once it watches again.
        for _ in 0..600 {
            if api.watches() > watches {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(api.watches() > watches, "the watch never came back");
    }

    if variant != Variant::Static {
        // 1. The endpoint goes; transactions under way finish on the old primary, new ones wait.
        api.set(&[(old.ip, false)]);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // 2. Fenced: a fast shutdown. From its end nothing can be written there (the same clock
    //    stamps both servers' rows: they run on this machine).
    let old_ip = old.ip;
    tokio::task::block_in_place(|| old.stop());
    let fenced = tokio::task::block_in_place(|| new.psql("SELECT clock_timestamp()"));
    // 3. Promoted, after CloudNativePG's few seconds without a primary.
    tokio::time::sleep(Duration::from_secs(1)).await;
    tokio::task::block_in_place(|| new.promote());
    // 4. Published (a static list has nothing to publish: the promotion is the event).
    let publish_at = start.elapsed().as_micros() as u64;
    published.store(true, Ordering::SeqCst);
    if variant != Variant::Static {
        api.set(&[(new.ip, true)]);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        tokio::time::timeout(Duration::from_secs(30), c)
            .await
            .unwrap()
            .unwrap();
    }

    let committed = tally.committed.load(Ordering::Relaxed);
    let present: u64 = new.psql("SELECT count(*) FROM drill").parse().unwrap();
    let on_demoted: u64 = new
        .psql(&format!(
            "SELECT count(*) FROM drill WHERE server = '{old_ip}' AND at > '{fenced}'"
        ))
        .parse()
        .unwrap();
    let errors = tally.errors.load(Ordering::Relaxed);
    let first = tally.first_after_publish_us.load(Ordering::Relaxed);
    let first_write_ms = first.saturating_sub(publish_at) / 1000;
    let hold_ms = tally.max_wait_us.load(Ordering::Relaxed) / 1000;
    let lost = committed.saturating_sub(present);
    println!(
        "SWITCHOVER-DRILL clients={CLIENTS} committed={committed} lost={lost} client_errors={errors} \
         writes_on_demoted={on_demoted} hold_ms={hold_ms} first_write_ms={first_write_ms}"
    );
    assert!(
        committed > 0 && first > 0,
        "nothing was written after the switchover"
    );
    assert_eq!(
        lost, 0,
        "transactions reported committed are missing on the new primary"
    );
    assert_eq!(present, committed, "rows that no client saw commit");
    assert_eq!(on_demoted, 0, "writes reached the fenced primary");
    assert!(
        first_write_ms < 1_000,
        "first write {first_write_ms} ms after the new primary"
    );
    (committed, errors, on_demoted, hold_ms, first_write_ms)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_drill() {
    let (_, errors, ..) = drill(Variant::Kubernetes).await;
    assert_eq!(errors, 0, "clients between transactions saw errors");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_drill_after_the_api_server_was_gone_for_10_s() {
    let (_, errors, ..) = drill(Variant::ApiOutage).await;
    assert_eq!(errors, 0, "clients between transactions saw errors");
}

/// With no notice before the fence, the transactions running on the old primary when it stops
/// fail (at most one per server, pool_size = 10); every other client waits and carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_drill_with_a_static_host_list() {
    let (_, errors, ..) = drill(Variant::Static).await;
    assert!(
        errors <= 10,
        "{errors} errors: more than the transactions in flight at the fence"
    );
}
