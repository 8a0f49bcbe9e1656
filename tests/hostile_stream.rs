//! A client that announces a 1 GiB message and streams it, then leaves mid-message, costs the pooler
//! bounded memory while it streams and no CPU once it is gone; other clients are not affected.
//! One test in its own binary: it measures this process's memory and CPU time.
#![allow(clippy::unwrap_used)]

mod common;

use common::wire::login_md5;
use common::*;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// Resident memory of this process (the pooler runs inside it), in bytes.
fn rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

/// CPU time (user + system) this process has used so far.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // Linux reports in USER_HZ, 100 per second on every architecture it runs on here.
    Duration::from_millis(ticks * 10)
}

/// Sends the start of a `tag` message claiming 1 GiB with `head` as its first bytes, then
/// `streamed` bytes of zeros, and leaves without finishing it. Returns the largest growth of
/// resident memory seen while streaming.
async fn stream_and_leave(s: &Sluice, tag: u8, head: &[u8], streamed: usize) -> usize {
    let mut raw = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    login_md5(&mut raw).await;
    let before = rss();
    let mut start = vec![tag];
    start.extend_from_slice(&0x3fff_fff0u32.to_be_bytes());
    start.extend_from_slice(head);
    raw.write_all(&start).await.unwrap();
    let chunk = vec![0u8; 1 << 20];
    let mut peak = 0;
    for i in 0..streamed / chunk.len() {
        if raw.write_all(&chunk).await.is_err() {
            break;
        }
        if i % 16 == 0 {
            peak = peak.max(rss().saturating_sub(before));
        }
    }
    peak = peak.max(rss().saturating_sub(before));
    drop(raw);
    peak
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_mid_message_costs_bounded_memory_and_no_cpu_after() {
    let pg = Postgres::shared();
    let db = pg.create_database("hostile");
    let s = Sluice::start(
        "pool_mode = transaction",
        &format!("{db} = host=127.0.0.1 port={} pool_size=2\nappdb = host=127.0.0.1 port={} pool_size=2 dbname={db}", pg.port, pg.port),
    )
    .await;
    let bystander = s.connect(&db).await;
    let streamed = 128 << 20;
    let cases: [(&str, u8, &[u8]); 3] = [
        // Refused (54000 owed): its rest is dropped as it arrives.
        ("named Parse", b'P', b"evil\0SELECT '"),
        // Streams to the server, which is closed when the client goes.
        ("unnamed Parse", b'P', b"\0SELECT '"),
        // A Bind of a statement the client never prepared streams as it is.
        ("Bind", b'B', b"\0nope\0\0\0\0\x01"),
    ];
    for (what, tag, head) in cases {
        // At wire speed this takes a fraction of a second; a quadratic pooler takes hours.
        let peak = tokio::time::timeout(
            Duration::from_secs(60),
            stream_and_leave(&s, tag, head, streamed),
        )
        .await
        .unwrap_or_else(|_| panic!("{what}: 128 MiB did not stream through in 60 s"));
        assert!(
            peak < 48 << 20,
            "{what}: memory grew by {} MiB while 128 MiB streamed through",
            peak >> 20
        );
        // Whatever the client left in the socket is read at wire speed; then nothing runs.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let cpu = cpu_time();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let spent = cpu_time() - cpu;
        assert!(
            spent < Duration::from_millis(300),
            "{what}: the pooler used {spent:?} of CPU in the second after the client left"
        );
        // Other clients never noticed.
        let n: i32 = bystander
            .query_one("SELECT $1::int", &[&7])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 7, "{what}");
    }
    // No server was left holding half a message: the pool is back to what the bystander needs.
    let backends = await_backends(&db, None, 1, Duration::from_secs(5)).await;
    assert!(backends <= 2, "{backends} servers left for {db}");
}
