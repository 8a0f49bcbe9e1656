//! The metrics and health endpoint: scraped over HTTP by Python's urllib and parsed with the
//! `prometheus_client` package's own text parser, while pgbench and tokio-postgres clients use the
//! pooler.
#![allow(clippy::unwrap_used)]

mod common;

use common::{free_port, Postgres, Sluice, MD5_PASSWORD, MD5_USER, SCRAM_PASSWORD, SCRAM_USER};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Every sample of one scrape, by sample name (`x_total`, `x_bucket`, ...).
struct Scrape {
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
    families: BTreeMap<String, String>,
}

impl Scrape {
    /// The value of the sample `name` whose labels include `labels`; summed if several match.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|(_, v)| v).sum()
    }

    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&str, &str)],
    ) -> impl Iterator<Item = (&'a BTreeMap<String, String>, f64)> + 'a {
        self.samples
            .iter()
            .filter(move |(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, l, v)| (l, *v))
    }
}

async fn scrape(addr: SocketAddr) -> Scrape {
    let url = format!("http://{addr}/metrics");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/drivers/scrape.py");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(common::python())
            .arg(script)
            .arg(url)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused the exposition: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: BTreeMap<String, Value> = serde_json::from_slice(&out.stdout).unwrap();
    let mut samples = Vec::new();
    let mut families = BTreeMap::new();
    for (family, v) in json {
        families.insert(family, v["type"].as_str().unwrap().to_owned());
        for s in v["samples"].as_array().unwrap() {
            let labels = s[1]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                .collect();
            let value = match &s[2] {
                Value::String(inf) if inf == "+Inf" => f64::INFINITY,
                v => v.as_f64().unwrap(),
            };
            samples.push((s[0].as_str().unwrap().to_owned(), labels, value));
        }
    }
    Scrape { samples, families }
}

/// Scrapes until `counted` holds (at most 2 s): a client hears its refusal a moment before the
/// pooler counts it.
async fn scrape_once(addr: SocketAddr, counted: impl Fn(&Scrape) -> bool) -> Scrape {
    for _ in 0..40 {
        let m = scrape(addr).await;
        if counted(&m) {
            return m;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    scrape(addr).await
}

/// GET `path` with a plain HTTP/1.1 request; the status code and the body.
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: pooler\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut text))
        .await
        .expect("the endpoint answers within 5 s")
        .unwrap();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status line in {text:?}"));
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

/// A pooler whose metrics endpoint is on a free port, set in the ini's `[pgsluice]` section.
async fn sluice_with_metrics(general: &str) -> (Sluice, SocketAddr) {
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let s = Sluice::start(
        &format!("{general}\n\n[pgsluice]\nmetrics_addr = {metrics}\n"),
        "",
    )
    .await;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(metrics).await.is_ok() {
            return (s, metrics);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the metrics endpoint did not come up on {metrics}");
}

/// Runs pgbench's `SELECT 1` script: `clients` × `per_client` transactions.
fn pgbench(
    port: u16,
    dir: &std::path::Path,
    clients: usize,
    per_client: usize,
) -> std::process::Output {
    let script = dir.join("select1.sql");
    std::fs::write(&script, "SELECT 1;\n").unwrap();
    Command::new(Postgres::shared().bindir.join("pgbench"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            SCRAM_USER,
            "-n",
        ])
        .args(["-c", &clients.to_string(), "-t", &per_client.to_string()])
        .arg("-f")
        .arg(&script)
        .arg("appdb")
        .env("PGPASSWORD", SCRAM_PASSWORD)
        .output()
        .unwrap()
}

const FAMILIES: [&str; 27] = [
    "pgsluice_pool_clients",
    "pgsluice_pool_servers",
    "pgsluice_pool_max_wait_seconds",
    "pgsluice_pool_paused",
    "pgsluice_pool_disabled",
    "pgsluice_pool_size",
    "pgsluice_pool_min_size",
    "pgsluice_pool_reserve_size",
    "pgsluice_pool_max_db_connections",
    "pgsluice_pool_max_user_connections",
    // prometheus_client names a counter's family without `_total`.
    "pgsluice_transactions",
    "pgsluice_queries",
    "pgsluice_received_bytes",
    "pgsluice_sent_bytes",
    "pgsluice_server_assignments",
    "pgsluice_server_connects",
    "pgsluice_server_connect_failures",
    "pgsluice_prepared_statements",
    "pgsluice_transaction_duration_seconds",
    "pgsluice_query_duration_seconds",
    "pgsluice_client_wait_seconds",
    "pgsluice_server_connect_seconds",
    "pgsluice_client_logins",
    "pgsluice_client_login_seconds",
    "pgsluice_tls_handshakes",
    "pgsluice_client_connections",
    "pgsluice_ready",
];

/// The cumulative buckets of one histogram series, in order of their bounds.
fn buckets(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> Vec<(f64, f64)> {
    let bucket = format!("{name}_bucket");
    let mut b: Vec<(f64, f64)> = s
        .matching(&bucket, labels)
        .map(|(l, v)| {
            let le = &l["le"];
            (
                if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap()
                },
                v,
            )
        })
        .collect();
    b.sort_by(|x, y| x.0.total_cmp(&y.0));
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_during_pgbench_counts_exactly_what_it_did() {
    let (s, metrics) =
        sluice_with_metrics("pool_mode = transaction\ndefault_pool_size = 4\nmax_client_conn = 50")
            .await;
    let pool = [("database", "appdb"), ("user", SCRAM_USER)];
    let (port, dir) = (s.addr.port(), s.dir.path().to_owned());
    let (clients, per_client) = (4, 250);
    let bench = tokio::task::spawn_blocking(move || pgbench(port, &dir, clients, per_client));

    // Scrapes while pgbench runs: every one parses, and counters only go up.
    let mut last = 0.0;
    let mut during = 0;
    while !bench.is_finished() && during < 50 {
        let now = scrape(metrics)
            .await
            .value("pgsluice_transactions_total", &pool);
        assert!(now >= last, "a counter went down: {last} then {now}");
        last = now;
        during += 1;
    }
    let out = bench.await.unwrap();
    assert!(
        out.status.success(),
        "pgbench: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let m = scrape(metrics).await;
    for f in FAMILIES {
        assert!(
            m.families.contains_key(f),
            "family {f} is missing; got {:?}",
            m.families.keys()
        );
    }
    let xacts = m.value("pgsluice_transactions_total", &pool);
    assert_eq!(
        xacts,
        (clients * per_client) as f64,
        "one transaction per pgbench transaction"
    );
    assert!(m.value("pgsluice_queries_total", &pool) >= xacts);
    assert!(
        m.value("pgsluice_received_bytes_total", &pool) >= 15.0 * xacts,
        "a Query of SELECT 1 is 15 bytes"
    );
    assert!(m.value("pgsluice_sent_bytes_total", &pool) > 0.0);
    assert_eq!(
        m.value("pgsluice_client_logins_total", &[("result", "ok"), ("method", "md5")]),
        (clients + 1) as f64,
        "pgbench's logins (its clients', and one it makes first), by the method auth_type gave them"
    );
    let opened = m.value("pgsluice_server_connects_total", &pool);
    assert!(
        (1.0..=4.0).contains(&opened),
        "at most pool_size servers opened, got {opened}"
    );
    assert_eq!(
        m.value("pgsluice_server_connect_seconds_count", &pool),
        opened
    );

    // Histograms: cumulative buckets never fall, +Inf is the count, and the count matches the
    // counter it times.
    for (hist, counter) in [
        (
            "pgsluice_transaction_duration_seconds",
            "pgsluice_transactions_total",
        ),
        ("pgsluice_query_duration_seconds", "pgsluice_queries_total"),
        (
            "pgsluice_client_wait_seconds",
            "pgsluice_server_assignments_total",
        ),
    ] {
        let b = buckets(&m, hist, &pool);
        assert_eq!(
            b.len(),
            19,
            "{hist}: 18 bounds from 50 µs to 30 s, and +Inf"
        );
        assert_eq!(b[0].0, 0.00005);
        assert_eq!(b[17].0, 30.0);
        assert!(
            b.windows(2).all(|w| w[0].1 <= w[1].1),
            "{hist}: buckets fall: {b:?}"
        );
        let count = m.value(&format!("{hist}_count"), &pool);
        assert_eq!(b[18], (f64::INFINITY, count), "{hist}: +Inf is the count");
        assert_eq!(
            count,
            m.value(counter, &pool),
            "{hist}_count equals {counter}"
        );
        assert!(m.value(&format!("{hist}_sum"), &pool) >= 0.0);
    }
    let xact_sum = m.value("pgsluice_transaction_duration_seconds_sum", &pool);
    assert!(
        xact_sum > 0.0 && xact_sum < xacts,
        "each SELECT 1 took well under a second in total: {xact_sum}"
    );

    // After pgbench: its clients are gone, the servers idle.
    assert_eq!(m.value("pgsluice_pool_clients", &pool), 0.0);
    assert_eq!(
        m.value(
            "pgsluice_pool_servers",
            &[pool[0], pool[1], ("state", "idle")]
        ),
        opened
    );
    assert_eq!(m.value("pgsluice_pool_size", &pool), 4.0);
    assert_eq!(m.value("pgsluice_ready", &[]), 1.0);
    assert_eq!(m.families["pgsluice_client_wait_seconds"], "histogram");
    assert_eq!(m.families["pgsluice_transactions"], "counter");
    assert_eq!(m.families["pgsluice_pool_clients"], "gauge");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_stay_per_pool_when_a_thousand_clients_come_and_go() {
    let (s, metrics) = sluice_with_metrics("pool_mode = transaction\nmax_client_conn = 200").await;
    let first = s.connect_as(MD5_USER, MD5_PASSWORD, "appdb").await.unwrap();
    first.simple_query("SELECT 1").await.unwrap();
    drop(first);
    let before = scrape(metrics).await.samples.len();
    for _ in 0..20 {
        let batch: Vec<_> = (0..50)
            .map(|_| {
                let cs = s.conn_str(MD5_USER, MD5_PASSWORD, "appdb");
                tokio::spawn(async move {
                    let (c, conn) = tokio_postgres::connect(&cs, tokio_postgres::NoTls)
                        .await
                        .unwrap();
                    let driver = tokio::spawn(conn);
                    c.simple_query("SELECT 1").await.unwrap();
                    drop(c);
                    let _ = driver.await;
                })
            })
            .collect();
        for t in batch {
            t.await.unwrap();
        }
    }
    let after = scrape_once(metrics, |m| {
        m.value("pgsluice_client_logins_total", &[]) >= 1_001.0
    })
    .await;
    assert_eq!(
        after.samples.len(),
        before,
        "1 000 clients added series: there must be one per pool, none per client"
    );
    let logins = after.value("pgsluice_client_logins_total", &[("result", "ok")]);
    assert_eq!(logins, 1_001.0, "every login counted");
    let pool = [("database", "appdb"), ("user", MD5_USER)];
    assert_eq!(after.value("pgsluice_transactions_total", &pool), 1_001.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_says_no_while_paused_and_during_the_drain_and_healthz_stays_up() {
    let (s, metrics) = sluice_with_metrics("pool_mode = transaction").await;
    assert_eq!(get(metrics, "/healthz").await.0, 200);
    assert_eq!(get(metrics, "/readyz").await.0, 200);
    assert_eq!(get(metrics, "/nothing").await.0, 404);

    s.app.pools.pause(None);
    let (status, body) = get(metrics, "/readyz").await;
    assert_eq!((status, body.trim()), (503, "not ready: paused"));
    assert_eq!(scrape(metrics).await.value("pgsluice_ready", &[]), 0.0);
    s.app.pools.resume(None);
    assert_eq!(get(metrics, "/readyz").await.0, 200);

    // SIGTERM's drain: a connected client keeps the pooler up, not ready, still healthy.
    let client = s.connect("appdb").await;
    client.simple_query("SELECT 1").await.unwrap();
    s.app
        .shutdown
        .request(pgsluice::shutdown::Phase::WaitForClients);
    let (status, body) = get(metrics, "/readyz").await;
    assert_eq!((status, body.trim()), (503, "not ready: shutting down"));
    assert_eq!(get(metrics, "/healthz").await.0, 200);
    client.simple_query("SELECT 1").await.unwrap();
    let refused = s.connect_as(SCRAM_USER, SCRAM_PASSWORD, "appdb").await;
    assert!(refused.is_err(), "no new client during the drain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_failed_logins_and_disconnects_are_counted_by_class_and_reason() {
    let (s, metrics) = sluice_with_metrics("query_timeout = 1").await;
    // A pooler no client has used yet has no pool series, and still a valid exposition.
    let fresh = scrape(metrics).await;
    assert_eq!(fresh.value("pgsluice_ready", &[]), 1.0);
    assert!(!fresh.families.contains_key("pgsluice_pool_clients"));
    let wrong = s.connect_as(SCRAM_USER, "wrong", "appdb").await;
    assert!(wrong.is_err());
    let m = scrape_once(metrics, |m| {
        m.value("pgsluice_client_logins_total", &[]) > 0.0
    })
    .await;
    assert_eq!(
        m.value(
            "pgsluice_client_logins_total",
            &[("result", "failed"), ("method", "md5")]
        ),
        1.0
    );
    assert_eq!(
        m.value("pgsluice_client_errors_total", &[("sqlstate_class", "28")]),
        1.0
    );
    assert_eq!(
        m.value("pgsluice_client_login_seconds_count", &[("method", "md5")]),
        1.0
    );

    // Ended sessions are counted by why they ended; every reason is there from the start.
    let reasons = fresh.matching("pgsluice_client_disconnects_total", &[]);
    assert_eq!(reasons.count(), 13, "one series per reason, at zero");
    let closing = s
        .connect_as(SCRAM_USER, SCRAM_PASSWORD, "appdb")
        .await
        .unwrap();
    closing.simple_query("SELECT 1").await.unwrap();
    drop(closing);
    let timed_out = s
        .connect_as(SCRAM_USER, SCRAM_PASSWORD, "appdb")
        .await
        .unwrap();
    assert!(timed_out.simple_query("SELECT pg_sleep(3)").await.is_err());
    let m = scrape_once(metrics, |m| {
        m.value("pgsluice_client_disconnects_total", &[]) >= 2.0
    })
    .await;
    let by = |reason| m.value("pgsluice_client_disconnects_total", &[("reason", reason)]);
    assert_eq!((by("client_close"), by("query_timeout")), (1.0, 1.0));
    assert_eq!(by("server_lost"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_to_the_endpoint_are_capped_and_probes_still_answer_after_they_go() {
    let (_s, metrics) = sluice_with_metrics("").await;
    // 200 connections that send nothing: at most 64 are kept; the rest are closed at once.
    let mut idle = Vec::new();
    for _ in 0..200 {
        idle.push(tokio::net::TcpStream::connect(metrics).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut closed = 0;
    for s in &mut idle {
        let mut byte = [0u8; 1];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(20), s.read(&mut byte)).await
        {
            closed += 1;
        }
    }
    assert!(
        closed >= 200 - 64,
        "only {closed} of 200 idle connections were refused"
    );
    drop(idle);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        get(metrics, "/healthz").await.0,
        200,
        "the endpoint serves once they are gone"
    );
}
