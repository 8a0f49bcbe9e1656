//! Pooler replicas behind one Service: three real `pgsluice` processes on 127.0.0.11-13 (one port,
//! as pods behind a Service), finding each other through the pooler Service's EndpointSlices on a
//! fake API server (the client side is the real `kube` crate). A CancelRequest that lands on any
//! replica cancels the query wherever it runs; a forwarded cancel without the peer secret is
//! dropped; `max_db_connections` declared for the Service holds across the three and is
//! re-divided when one stops. And PgBouncer's static `[peers]`, where cancels travel unsigned.
#![allow(clippy::unwrap_used)]

mod common;
use common::kube_api::FakeApi;
use common::*;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_postgres::error::SqlState;

const SECRET: &str = "shared-by-the-replicas";

struct Replica {
    child: Child,
    host: String,
    port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Replica {
    /// Starts the binary on `host:port` with `[databases]` lines `databases` and the extra
    /// `[pgbouncer]` / `[pgsluice]` / `[peers]` sections in `tail`.
    fn start(host: &str, port: u16, databases: &str, tail: &str) -> Replica {
        let pg = Postgres::shared();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("users.txt"),
            format!("\"{SCRAM_USER}\" \"{SCRAM_PASSWORD}\"\n"),
        )
        .unwrap();
        let ini = dir.path().join("pgbouncer.ini");
        std::fs::write(
            &ini,
            format!(
                "[databases]\nappdb = host=127.0.0.1 port={pgport}\n{databases}\n\
                 [pgbouncer]\nlisten_addr = {host}\nlisten_port = {port}\nunix_socket_dir = {dir}\n\
                 auth_type = md5\nauth_file = users.txt\npool_mode = transaction\n\
                 admin_users = {SCRAM_USER}\n{tail}\n",
                pgport = pg.port,
                dir = dir.path().display(),
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_pgsluice"))
            .arg(&ini)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let r = Replica {
            child,
            host: host.to_owned(),
            port,
            dir,
        };
        for _ in 0..100 {
            if std::net::TcpStream::connect((host, port)).is_ok() {
                return r;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("replica {host} did not start listening:\n{}", r.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    async fn connect(&self, db: &str) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(
            &format!(
                "host={} port={} user={SCRAM_USER} password={SCRAM_PASSWORD} dbname={db}",
                self.host, self.port
            ),
            tokio_postgres::NoTls,
        )
        .await
        .unwrap_or_else(|e| panic!("login through {}: {e}\n{}", self.host, self.log()));
        tokio::spawn(async move {
            let _ = conn.await;
        });
        client
    }

    /// SHOW PEERS: (peer_id, host) of each row.
    async fn peers(&self) -> Vec<(String, String)> {
        let c = self.connect("pgbouncer").await;
        c.simple_query("SHOW PEERS")
            .await
            .unwrap()
            .into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some((
                    r.get("peer_id").unwrap().to_owned(),
                    r.get("host").unwrap().to_owned(),
                )),
                _ => None,
            })
            .collect()
    }

    /// Waits until SHOW PEERS lists exactly `hosts`.
    async fn await_peers(&self, hosts: &[&str]) {
        let mut want: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        want.sort();
        let mut seen = Vec::new();
        for _ in 0..100 {
            seen = self.peers().await.into_iter().map(|p| p.1).collect();
            seen.sort();
            if seen == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{} sees peers {seen:?}, not {want:?}", self.host);
    }
}

/// Three replicas behind the fake pooler Service, sharing the Service's budgets.
async fn three(
    api: &FakeApi,
    kube_dir: &tempfile::TempDir,
    databases: &str,
    general: &str,
) -> Vec<Replica> {
    let port = free_port();
    api.set(&[
        ("127.0.0.11", true),
        ("127.0.0.12", true),
        ("127.0.0.13", true),
    ]);
    let kubeconfig = api.kubeconfig(kube_dir.path());
    let replicas: Vec<Replica> = (11..=13)
        .map(|i| {
            let host = format!("127.0.0.{i}");
            let tail = format!(
                "{general}\n[pgsluice]\nkubeconfig = {}\npeer_discovery = kubernetes\n\
                 peer_service = testns/pg-rw\npeer_address = {host}\npeer_secret = {SECRET}\n\
                 budget_scope = service\nbudget_settle = 1\n",
                kubeconfig.display()
            );
            Replica::start(&host, port, databases, &tail)
        })
        .collect();
    let hosts: Vec<String> = replicas.iter().map(|r| r.host.clone()).collect();
    for r in &replicas {
        let others: Vec<&str> = hosts
            .iter()
            .filter(|h| **h != r.host)
            .map(String::as_str)
            .collect();
        r.await_peers(&others).await;
    }
    replicas
}

/// The cancel key tokio-postgres holds for `client`, as it would put it on the wire.
async fn key_of(client: &tokio_postgres::Client) -> (u32, u32) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let to = listener.local_addr().unwrap();
    let token = client.cancel_token();
    let send = tokio::spawn(async move {
        let s = TcpStream::connect(to).await.unwrap();
        let _ = token.cancel_query_raw(s, tokio_postgres::NoTls).await;
    });
    let (mut s, _) = listener.accept().await.unwrap();
    let mut packet = [0u8; 16];
    s.read_exact(&mut packet).await.unwrap();
    drop(s);
    let _ = send.await;
    let word = |i: usize| u32::from_be_bytes(packet[i..i + 4].try_into().unwrap());
    assert_eq!(word(4), 80_877_102, "a CancelRequest");
    (word(8), word(12))
}

/// Starts `pg_sleep(30)` through `via`; returns the cancel key of its connection and the query.
async fn sleeping(
    via: &Replica,
) -> (
    (u32, u32),
    tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
) {
    let worker = via.connect("appdb").await;
    let key = key_of(&worker).await;
    // Tagged, so that sleeps of tests running alongside are not mistaken for this one.
    let sql = format!("SELECT pg_sleep(30), '{}'", unique("sleep"));
    let running = sql.clone();
    let query = tokio::spawn(async move { worker.simple_query(&sql).await.map(|_| ()) });
    // The query must be running on its server before a cancel can find it.
    let watcher = Postgres::shared().super_client().await;
    for _ in 0..250 {
        let row = watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE query = $1 AND state = 'active'",
                &[&running],
            )
            .await
            .unwrap();
        if row.get::<_, i64>(0) > 0 {
            return (key, query);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the sleep never started through {}", via.host);
}

/// Sends a cancel key, as a client would, to `to`.
async fn cancel_via(key: (u32, u32), to: &Replica) {
    let mut packet = Vec::with_capacity(16);
    for w in [16u32, 80_877_102, key.0, key.1] {
        packet.extend_from_slice(&w.to_be_bytes());
    }
    send_packet(to, &packet).await;
}

/// Sends one startup-phase packet to `to` on a connection of its own, and waits until the pooler
/// closes it (it does once it has acted on a cancel).
async fn send_packet(to: &Replica, packet: &[u8]) {
    let mut s = TcpStream::connect((to.host.as_str(), to.port))
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut s, packet)
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
}

/// Asserts the query ends with 57014 within 5 s.
async fn cancelled(query: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>, what: &str) {
    let out = tokio::time::timeout(Duration::from_secs(5), query)
        .await
        .unwrap_or_else(|_| panic!("{what}: the query was not cancelled"))
        .unwrap();
    let e = out.expect_err(what);
    assert_eq!(e.code(), Some(&SqlState::QUERY_CANCELED), "{what}: {e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_sent_to_any_replica_cancels_the_query_where_it_runs() {
    let api = FakeApi::start(&[], 0).await;
    let kube_dir = tempfile::tempdir().unwrap();
    let r = three(&api, &kube_dir, "", "").await;
    for (runs, receives) in [(0, 1), (1, 2), (2, 0), (0, 0)] {
        let (key, query) = sleeping(&r[runs]).await;
        cancel_via(key, &r[receives]).await;
        let what = format!(
            "query on {} cancelled via {}",
            r[runs].host, r[receives].host
        );
        cancelled(query, &what).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forwarded_cancel_without_the_peer_secret_is_dropped() {
    let api = FakeApi::start(&[], 0).await;
    let kube_dir = tempfile::tempdir().unwrap();
    let r = three(&api, &kube_dir, "", "").await;
    let (key, query) = sleeping(&r[0]).await;
    // A peer's cancel (pgsluice's PeerCancel code) carrying the right key, signed with the
    // wrong secret, and one with a stale timestamp and no signature at all.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    for (sent, tag) in [(now_ms, [0x5a_u8; 32]), (now_ms - 3_600_000, [0u8; 32])] {
        let mut packet = Vec::with_capacity(56);
        packet.extend_from_slice(&56u32.to_be_bytes());
        packet.extend_from_slice(&((1234u32 << 16) | 7101).to_be_bytes());
        packet.extend_from_slice(&key.0.to_be_bytes());
        packet.extend_from_slice(&key.1.to_be_bytes());
        packet.extend_from_slice(&sent.to_be_bytes());
        packet.extend_from_slice(&tag);
        send_packet(&r[0], &packet).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !query.is_finished(),
        "a forged peer cancel cancelled the query"
    );
    // The replica is unharmed, and the client's own cancel still works.
    cancel_via(key, &r[1]).await;
    cancelled(query, "the genuine cancel after forged ones").await;
    assert!(
        r[0].log()
            .contains("not signed with this pooler's peer_secret"),
        "the drop is logged:\n{}",
        r[0].log()
    );
}

/// Runs 6 clients per replica, each looping on a short sleep for 2 s; returns the peak of server
/// connections to `db`.
async fn peak_under_load(replicas: &[&Replica], db: &str) -> i64 {
    let mut clients = Vec::new();
    for r in replicas {
        for _ in 0..6 {
            clients.push(r.connect(db).await);
        }
    }
    let work = async move {
        let until = tokio::time::Instant::now() + Duration::from_secs(2);
        let loops = clients.into_iter().map(|c| async move {
            while tokio::time::Instant::now() < until {
                c.simple_query("SELECT pg_sleep(0.05)").await.unwrap();
            }
        });
        futures_util::future::join_all(loops).await;
    };
    peak_backends_while(db, None, work).await.1
}

#[tokio::test(flavor = "multi_thread")]
async fn max_db_connections_for_the_service_holds_across_replicas_and_is_redivided() {
    let pg = Postgres::shared();
    let db = pg.create_database("budget");
    let api = FakeApi::start(&[], 0).await;
    let kube_dir = tempfile::tempdir().unwrap();
    let databases = format!("{db} = host=127.0.0.1 port={} dbname={db}", pg.port);
    let mut r = three(
        &api,
        &kube_dir,
        &databases,
        "max_db_connections = 6\ndefault_pool_size = 6",
    )
    .await;
    // Past the settle time, each replica has its third.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let peak = peak_under_load(&r.iter().collect::<Vec<_>>(), &db).await;
    assert!(
        (5..=6).contains(&peak),
        "three replicas under load: {peak} server connections, want 6 (2 each)"
    );
    // One replica goes: its pod leaves the Service's ready endpoints first (draining), and keeps
    // serving its clients with the share it had; then it stops.
    let leaving = r.pop().unwrap();
    let client = leaving.connect(&db).await;
    api.set(&[("127.0.0.11", true), ("127.0.0.12", true)]);
    r[0].await_peers(&["127.0.0.12"]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    tokio::time::timeout(Duration::from_secs(2), client.simple_query("SELECT 1"))
        .await
        .expect("a draining replica still serves its clients")
        .unwrap();
    drop(client);
    drop(leaving);
    let watcher = pg.super_client().await;
    for _ in 0..250 {
        if backends_in(&watcher, &db, None).await <= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    r[0].await_peers(&["127.0.0.12"]).await;
    r[1].await_peers(&["127.0.0.11"]).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let peak = peak_under_load(&r.iter().collect::<Vec<_>>(), &db).await;
    assert!(
        (5..=6).contains(&peak),
        "two replicas under load: {peak} server connections, want 6 (3 each)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn static_peers_forward_cancels_as_pgbouncer_does() {
    let port = free_port();
    // The same [peers] section on both, own entry included, as PgBouncer allows.
    let peers =
        format!("[peers]\n1 = host=127.0.0.21 port={port}\n2 = host=127.0.0.22 port={port}\n");
    let a = Replica::start("127.0.0.21", port, "", &format!("peer_id = 1\n{peers}"));
    let b = Replica::start("127.0.0.22", port, "", &format!("peer_id = 2\n{peers}"));
    a.await_peers(&["127.0.0.22"]).await;
    let (key, query) = sleeping(&a).await;
    // PgBouncer's layout: the owner's id in bytes 1 and 2 of the key, little-endian.
    let pid = key.0.to_be_bytes();
    let owner = u16::from_le_bytes([pid[1], pid[2]]);
    assert_eq!(owner, 1, "the key names its owner: {key:?}");
    cancel_via(key, &b).await;
    cancelled(query, "a query on peer 1 cancelled via peer 2").await;
}
