//! Primary discovery: the pool follows a Service's endpoints as the real `kube` crate watches them
//! on a fake API server (list, watch, bookmarks, 410 Gone, dropped watches, 403, an API that goes
//! away), holds transactions while there is none, never hands a client a standby, and follows a
//! static host list with `target_session_attrs=read-write` across a real promotion.
#![allow(clippy::unwrap_used)]

mod common;

use common::cluster::Cluster;
use common::kube_api::FakeApi;
use common::*;
use pgsluice::discovery::Endpoints;
use std::time::Duration;

/// pgsluice with one database, `appdb`, found through the fake API's Service.
async fn discovered(api: &FakeApi, extra: &str) -> (Sluice, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = api.kubeconfig(dir.path());
    let s = Sluice::start_exact(
        &format!(
            "pool_mode = transaction\nserver_login_retry = 0.2\n{extra}\n\
             [pgsluice]\nkubeconfig = {}\n",
            kubeconfig.display()
        ),
        "appdb = host=pg-rw dbname=appdb discovery=kubernetes discovery_service=testns/pg-rw",
    )
    .await;
    (s, dir)
}

/// What the pool's source says now, once it says `want` (at most 5 s).
async fn sees(s: &Sluice, want: &Endpoints) {
    for _ in 0..250 {
        if s.app.discovery.all().iter().any(|(_, e)| e == want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("discovery never saw {want:?}: {:?}", s.app.discovery.all());
}

fn ready(addrs: &[&str], port: u16) -> Endpoints {
    Endpoints::Ready(
        addrs
            .iter()
            .map(|a| format!("{a}:{port}").parse().unwrap())
            .collect(),
    )
}

async fn server_ip(c: &tokio_postgres::Client) -> Result<String, tokio_postgres::Error> {
    let rows = c.simple_query("SELECT host(inet_server_addr())").await?;
    Ok(first_value(&rows).unwrap())
}

/// Waits up to 2 s for `c`'s transactions to run at `ip`: each pool retires its servers in a task
/// of its own once discovery has seen a change, a moment after [`sees`] returns.
async fn served_from(c: &tokio_postgres::Client, ip: &str) {
    let mut last = String::new();
    for _ in 0..100 {
        last = server_ip(c).await.unwrap();
        if last == ip {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("transactions still run at {last}, not {ip}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_follows_the_endpoint_and_holds_transactions_while_there_is_none() {
    let pg = Postgres::shared();
    let api = FakeApi::start(&["127.0.0.1"], pg.port).await;
    let (s, _dir) = discovered(&api, "").await;
    // `pg-rw` resolves nowhere: only the endpoint from the API leads to PostgreSQL.
    let c = s.connect("appdb").await;
    assert_eq!(server_ip(&c).await.unwrap(), "127.0.0.1");

    // Mid-switchover: no ready endpoint (the old one is listed not ready).
    api.set(&[("127.0.0.1", false)]);
    sees(&s, &Endpoints::Ready(vec![])).await;
    let held = tokio::spawn(async move { (server_ip(&c).await, c) });
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        !held.is_finished(),
        "a transaction ran with no primary known"
    );

    // The new primary's endpoint appears: the held transaction runs there, at once.
    let published = tokio::time::Instant::now();
    api.set(&[("127.0.0.2", true)]);
    let (ip, c) = tokio::time::timeout(Duration::from_secs(5), held)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        ip.unwrap(),
        "127.0.0.2",
        "the transaction went to the new endpoint"
    );
    assert!(
        published.elapsed() < Duration::from_secs(1),
        "released {:?} after the endpoint",
        published.elapsed()
    );
    // Servers to the old endpoint were retired: none is reused.
    for _ in 0..5 {
        assert_eq!(server_ip(&c).await.unwrap(), "127.0.0.2");
    }
    // The moves are counted: the first list, the endpoint gone, the new one.
    let text = pgsluice::metrics::Endpoint::metrics_text(&*s.app);
    let labels = "{namespace=\"testns\",service=\"pg-rw\"}";
    assert!(
        text.contains(&format!("pgsluice_discovery_changes_total{labels} 3")),
        "{text}"
    );
    assert!(
        text.contains(&format!("pgsluice_discovery_endpoints{labels} 1")),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_longer_than_discovery_hold_timeout_fails_with_08006_and_the_next_one_waits_afresh()
{
    let pg = Postgres::shared();
    let api = FakeApi::start(&["127.0.0.1"], pg.port).await;
    let (s, _dir) = discovered(&api, "\n[pgsluice]\ndiscovery_hold_timeout = 0.5").await;
    let c = s.connect("appdb").await;
    server_ip(&c).await.unwrap();
    api.set(&[]);
    sees(&s, &Endpoints::Ready(vec![])).await;
    let started = tokio::time::Instant::now();
    let e = server_ip(&c).await.unwrap_err();
    assert_eq!(sqlstate(&e), Some("08006"), "{e}");
    assert!(
        error_text(&e).contains("no primary server is available"),
        "{e}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "failed before the hold ran out"
    );
    // The endpoint is back: the next transaction is served, not refused for server_login_retry.
    api.set(&[("127.0.0.1", true)]);
    sees(&s, &ready(&["127.0.0.1"], pg.port)).await;
    let c = s.connect("appdb").await;
    assert_eq!(server_ip(&c).await.unwrap(), "127.0.0.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_relists_a_dropped_watch_resumes_and_a_vanished_api_keeps_the_last_endpoint() {
    let pg = Postgres::shared();
    let api = FakeApi::start(&["127.0.0.1"], pg.port).await;
    let (s, _dir) = discovered(&api, "").await;
    let c = s.connect("appdb").await;
    assert_eq!(server_ip(&c).await.unwrap(), "127.0.0.1");
    let lists = api.lists();

    // A change the watch never hears, then 410 Gone: only a relist can find it.
    api.bookmark();
    api.set_quietly(&[("127.0.0.2", true)]);
    api.gone();
    sees(&s, &ready(&["127.0.0.2"], pg.port)).await;
    assert!(api.lists() > lists, "410 Gone did not relist");
    served_from(&c, "127.0.0.2").await;

    // The watch is dropped; the client watches again and hears what comes next.
    let watches = api.watches();
    api.drop_watches();
    for _ in 0..250 {
        if api.watches() > watches {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        api.watches() > watches,
        "no new watch after the old one ended"
    );
    api.set(&[("127.0.0.1", true)]);
    sees(&s, &ready(&["127.0.0.1"], pg.port)).await;
    served_from(&c, "127.0.0.1").await;

    // The API server goes away: pgsluice keeps the last endpoint, also for new servers.
    api.stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.app.pools.reconnect(None);
    let c2 = s.connect("appdb").await;
    assert_eq!(server_ip(&c2).await.unwrap(), "127.0.0.1");
    assert_eq!(server_ip(&c).await.unwrap(), "127.0.0.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forbidden_watch_falls_back_to_the_configured_host() {
    let pg = Postgres::shared();
    let api = FakeApi::start(&["127.0.0.2"], pg.port).await;
    api.forbid();
    let dir = tempfile::tempdir().unwrap();
    // Discovery asked for every database at once, as PGSLUICE_DISCOVERY does in Pooler pods.
    let s = Sluice::start_exact(
        &format!(
            "pool_mode = transaction\n[pgsluice]\ndiscovery = kubernetes\nkubeconfig = {}\n",
            api.kubeconfig(dir.path()).display()
        ),
        &format!(
            "appdb = host=127.0.0.1 port={} dbname=appdb discovery_service=testns/pg-rw",
            pg.port
        ),
    )
    .await;
    let c = s.connect("appdb").await;
    assert_eq!(
        server_ip(&c).await.unwrap(),
        "127.0.0.1",
        "the configured host, as DNS gives it"
    );
    sees(&s, &Endpoints::Fallback).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_endpoint_never_gets_a_client_query() {
    let cluster = tokio::task::spawn_blocking(Cluster::start).await.unwrap();
    let (p, r) = (&cluster.primary, &cluster.replica);
    // The Service lists the standby only (as a misconfigured or lagging label would).
    let api = FakeApi::start(&[r.ip], p.port).await;
    let (s, _dir) = discovered(&api, "").await;
    let login = tokio::spawn({
        let cs = s.conn_str(SCRAM_USER, SCRAM_PASSWORD, "appdb");
        async move {
            let (c, conn) = tokio_postgres::connect(&cs, tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            c.batch_execute("CREATE TABLE IF NOT EXISTS marks (n int)")
                .await?;
            c.batch_execute("INSERT INTO marks VALUES (1)").await?;
            Ok::<_, tokio_postgres::Error>(c)
        }
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!login.is_finished(), "a client was served by a standby");
    api.set(&[(p.ip, true)]);
    let c = tokio::time::timeout(Duration::from_secs(10), login)
        .await
        .expect("served once the primary is listed")
        .unwrap()
        .unwrap();
    assert_eq!(server_ip(&c).await.unwrap(), p.ip);
    assert_eq!(p.psql("SELECT count(*) FROM marks"), "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_host_list_skips_the_standby_and_follows_a_promotion() {
    let cluster = tokio::task::spawn_blocking(Cluster::start).await.unwrap();
    let (p, r) = (&cluster.primary, &cluster.replica);
    let s = Sluice::start_exact(
        "pool_mode = transaction\nserver_login_retry = 0.2",
        &format!(
            "appdb = host={},{} port={} dbname=appdb target_session_attrs=read-write",
            r.ip, p.ip, p.port
        ),
    )
    .await;
    let c = s.connect("appdb").await;
    c.batch_execute("CREATE TABLE t (n int); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    assert_eq!(
        server_ip(&c).await.unwrap(),
        p.ip,
        "the standby, first in the list, was skipped"
    );

    // Switchover: the primary stops, the standby is promoted. The client, between transactions,
    // carries on against the new primary.
    p.stop();
    r.promote();
    let first = c.batch_execute("INSERT INTO t VALUES (2)").await;
    assert!(
        first.is_ok(),
        "a client between transactions saw an error: {first:?}"
    );
    assert_eq!(server_ip(&c).await.unwrap(), r.ip);
    assert_eq!(r.psql("SELECT count(*) FROM t"), "2");
}

/// An endpoint that does not speak PostgreSQL (a stale address now used by something else) is
/// skipped for the next one: no client hears of it, and nothing is sent there but a startup packet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_is_not_postgres_is_skipped() {
    let cluster = tokio::task::spawn_blocking(Cluster::start).await.unwrap();
    let p = &cluster.primary;
    // Sorted before the primary's address, so it is tried first.
    let stranger = tokio::net::TcpListener::bind(("127.0.0.2", p.port))
        .await
        .unwrap();
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        while let Ok((mut s, _)) = stranger.accept().await {
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
        }
    });
    let api = FakeApi::start(&["127.0.0.2", p.ip], p.port).await;
    let (s, _dir) = discovered(&api, "").await;
    let c = s.connect("appdb").await;
    assert_eq!(server_ip(&c).await.unwrap(), p.ip);
}
