//! The startup phase: malformed packets, TLS and GSS requests, startup parameters, and login
//! failures. Each bad client gets an error or a close, and the pooler keeps serving the others.
#![allow(clippy::unwrap_used, clippy::err_expect)] // tokio-postgres clients are not Debug

mod common;

use common::wire::{self, error_code, error_message, read_all};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Proves the pooler still serves a well-behaved client.
async fn still_serving(s: &Sluice) {
    let c = s.connect("appdb").await;
    assert_eq!(
        first_value(&c.simple_query("SELECT 42").await.unwrap()).as_deref(),
        Some("42")
    );
}

/// Sends `bytes` on a fresh connection, half-closes it, and returns all the pooler answered.
async fn exchange(s: &Sluice, bytes: &[u8]) -> Vec<u8> {
    let mut raw = TcpStream::connect(s.addr).await.unwrap();
    // The pooler may close as soon as it has seen enough; a failed write is then fine.
    let _ = raw.write_all(bytes).await;
    let _ = raw.shutdown().await;
    read_all(&mut raw).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_startup_packet_is_refused() {
    let s = Sluice::start("", "").await;
    // A length over the 10 000-byte cap, followed by a little of the promised body.
    let mut pkt = 20_000u32.to_be_bytes().to_vec();
    pkt.extend_from_slice(&196608u32.to_be_bytes());
    pkt.extend_from_slice(&[b'x'; 100]);
    let answer = exchange(&s, &pkt).await;
    assert_eq!(error_code(&answer).as_deref(), Some("08P01"), "{answer:?}");
    // A huge declared length is refused the same way, without waiting for (or allocating) it.
    let mut pkt = u32::MAX.to_be_bytes().to_vec();
    pkt.extend_from_slice(&196608u32.to_be_bytes());
    let answer = exchange(&s, &pkt).await;
    assert_eq!(error_code(&answer).as_deref(), Some("08P01"), "{answer:?}");
    still_serving(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_startup_packet_is_dropped() {
    let s = Sluice::start("", "").await;
    let full = wire::startup(196608, &[("user", SCRAM_USER), ("database", "appdb")]);
    let answer = exchange(&s, &full[..full.len() / 2]).await;
    // The client went away mid-packet: nothing to answer, nothing to crash on.
    assert!(
        answer.is_empty() || error_code(&answer).is_some(),
        "{answer:?}"
    );
    // A length below the header's own size is malformed.
    let answer = exchange(&s, &[0, 0, 0, 3, 1, 2, 3, 4]).await;
    assert_eq!(error_code(&answer).as_deref(), Some("08P01"), "{answer:?}");
    still_serving(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_protocol_version_gets_a_clear_error() {
    let s = Sluice::start("", "").await;
    // Protocol 2.0, which PostgreSQL dropped in version 14.
    let answer = exchange(&s, &wire::startup(0x0002_0000, &[("user", SCRAM_USER)])).await;
    let code = error_code(&answer);
    assert!(
        matches!(code.as_deref(), Some("0A000" | "08P01")),
        "{answer:?}"
    );
    let message = error_message(&answer).unwrap();
    assert!(message.contains("protocol"), "unclear message: {message}");
    // Protocol 4.0 does not exist.
    let answer = exchange(&s, &wire::startup(0x0004_0000, &[("user", SCRAM_USER)])).await;
    assert!(error_code(&answer).is_some(), "{answer:?}");
    still_serving(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_is_refused() {
    let s = Sluice::start("", "").await;
    let answer = exchange(&s, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    assert!(
        answer.is_empty() || error_code(&answer).is_some(),
        "{answer:?}"
    );
    // Random bytes of many lengths, with a fixed seed so a failure can be replayed.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for len in [1usize, 4, 7, 8, 9, 64, 300, 5000] {
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let answer = exchange(&s, &bytes).await;
        assert!(
            answer.is_empty() || error_code(&answer).is_some(),
            "len {len}: {answer:?}"
        );
    }
    still_serving(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_and_gss_requests_are_answered_n_then_login_proceeds() {
    let s = Sluice::start("", "").await;
    for code in [80877103u32, 80877104] {
        let mut raw = TcpStream::connect(s.addr).await.unwrap();
        let mut req = 8u32.to_be_bytes().to_vec();
        req.extend_from_slice(&code.to_be_bytes());
        raw.write_all(&req).await.unwrap();
        assert_eq!(raw.read_u8().await.unwrap(), b'N', "request code {code}");
        wire::login_md5(&mut raw).await;
        raw.write_all(&wire::query("SELECT 1")).await.unwrap();
        let (tag, _) = wire::read_message(&mut raw).await;
        assert_eq!(
            tag, b'T',
            "a query after the {code} request should return rows"
        );
    }
    // Data stuffed after an SSLRequest, before its answer, is refused.
    let mut req = 8u32.to_be_bytes().to_vec();
    req.extend_from_slice(&80877103u32.to_be_bytes());
    req.extend_from_slice(&wire::startup(196608, &[("user", MD5_USER)]));
    let answer = exchange(&s, &req).await;
    assert_eq!(error_code(&answer).as_deref(), Some("08P01"), "{answer:?}");
    still_serving(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_startup_parameter_unless_ignored() {
    let s = Sluice::start("", "").await;
    let conn = format!(
        "{} options='-c geqo=off'",
        s.conn_str(SCRAM_USER, SCRAM_PASSWORD, "appdb")
    );
    let err = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
        .await
        .err()
        .expect("options refused");
    assert_eq!(sqlstate(&err), Some("08P01"), "{err:?}");
    assert!(
        error_text(&err).contains("unsupported startup parameter: options"),
        "{err:?}"
    );

    let s = Sluice::start(
        "ignore_startup_parameters = extra_float_digits, options",
        "",
    )
    .await;
    let c = s.connect_with("appdb", "options='-c geqo=off'").await;
    c.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_failures_get_28p01_and_unknown_database_08p01() {
    let s = Sluice::start("", "").await;
    let err = s
        .connect_as(SCRAM_USER, "wrong", "appdb")
        .await
        .err()
        .expect("wrong password refused");
    assert_eq!(sqlstate(&err), Some("28P01"), "{err:?}");
    let err = s
        .connect_as("nobody", "x", "appdb")
        .await
        .err()
        .expect("unknown user refused");
    assert_eq!(sqlstate(&err), Some("28P01"), "{err:?}");
    // No `*` entry here, so a database that is not listed does not exist.
    let pg = Postgres::shared();
    let s = Sluice::start_exact("", &format!("appdb = host=127.0.0.1 port={}", pg.port)).await;
    let err = s
        .connect_as(SCRAM_USER, SCRAM_PASSWORD, "nosuchdb")
        .await
        .err()
        .expect("unknown db refused");
    assert_eq!(sqlstate(&err), Some("08P01"), "{err:?}");
    assert!(
        error_text(&err).contains("no such database: nosuchdb"),
        "{err:?}"
    );
    still_serving(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_and_scram_clients_both_log_in() {
    let s = Sluice::start("", "").await;
    let c = s.connect_as(MD5_USER, MD5_PASSWORD, "appdb").await.unwrap();
    assert_eq!(
        first_value(&c.simple_query("SELECT current_user").await.unwrap()).as_deref(),
        Some(MD5_USER)
    );
    let s = Sluice::start("auth_type = scram-sha-256", "").await;
    let c = s.connect("appdb").await;
    assert_eq!(
        first_value(&c.simple_query("SELECT current_user").await.unwrap()).as_deref(),
        Some(SCRAM_USER)
    );
    let err = s
        .connect_as(SCRAM_USER, "wrong", "appdb")
        .await
        .err()
        .expect("wrong password refused");
    assert_eq!(sqlstate(&err), Some("28P01"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_message_length_after_login_closes_only_that_client() {
    let s = Sluice::start("pool_mode = transaction", "").await;
    let bystander = s.connect("appdb").await;
    let mut raw = TcpStream::connect(s.addr).await.unwrap();
    wire::login_md5(&mut raw).await;
    let mut q = vec![b'Q'];
    q.extend_from_slice(&u32::MAX.to_be_bytes());
    q.extend_from_slice(b"SELECT 1");
    let _ = raw.write_all(&q).await;
    let answer = read_all(&mut raw).await;
    assert_eq!(error_code(&answer).as_deref(), Some("08P01"), "{answer:?}");
    assert_eq!(
        first_value(&bystander.simple_query("SELECT 5").await.unwrap()).as_deref(),
        Some("5")
    );
    still_serving(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_asks_no_password_but_wants_a_user_from_the_auth_file() {
    let s = Sluice::start("auth_type = trust", "").await;
    // Any password, or none, for a listed user (pgsluice logs in to PostgreSQL with the file's).
    let c = s
        .connect_as(SCRAM_USER, "not-the-password", "appdb")
        .await
        .expect("trust lets a listed user in");
    c.batch_execute("SELECT 1").await.unwrap();
    let err = s
        .connect_as("nobody", "x", "appdb")
        .await
        .err()
        .expect("a user missing from the auth file is refused, as by PgBouncer");
    assert_eq!(sqlstate(&err), Some("28P01"), "{err:?}");
    still_serving(&s).await;
}
