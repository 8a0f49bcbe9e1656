//! Large client messages in transaction mode with prepared statements tracked (the default): a
//! parameter of 1 KiB, 1 MiB and 64 MiB goes through whole and unchanged,
//! a named Parse over `max_held_message` gets 54000 and the session goes on, an unnamed one streams
//! through.
#![allow(clippy::unwrap_used)]

mod common;

use common::wire::{login_md5, parse, read_until_ready, sync};
use common::*;
use tokio::io::AsyncWriteExt;

async fn transaction_pooler(prefix: &str) -> (Sluice, String) {
    let pg = Postgres::shared();
    let db = pg.create_database(prefix);
    let s = Sluice::start(
        "pool_mode = transaction",
        &format!("{db} = host=127.0.0.1 port={} pool_size=2", pg.port),
    )
    .await;
    (s, db)
}

/// A text of `len` bytes that is not one byte repeated, so a shifted or cut copy shows.
fn text_of(len: usize) -> String {
    (0..len)
        .map(|i| char::from(b'a' + (i % 26) as u8 + u8::from(i % 1000 == 0)))
        .collect()
}

/// Bounds one request: a pooler that loses track of a streamed message leaves the client waiting
/// forever, and the test must fail then, not hang the suite.
async fn within<T>(what: &str, len: usize, f: impl std::future::Future<Output = T>) -> T {
    // At wire speed a second at most; a pooler quadratic in the message size takes hours.
    tokio::time::timeout(std::time::Duration::from_secs(60), f)
        .await
        .unwrap_or_else(|_| panic!("the {len}-byte {what} did not finish within 60 s"))
}

/// Inserts each size through one named statement and reads it back by md5 on the server.
async fn parameters_arrive_whole(prefix: &str, sizes: &[usize]) {
    let (s, db) = transaction_pooler(prefix).await;
    let c = s.connect(&db).await;
    c.batch_execute("CREATE TABLE docs (id int, body text)")
        .await
        .unwrap();
    let insert = c.prepare("INSERT INTO docs VALUES ($1, $2)").await.unwrap();
    for (id, &len) in (1..).zip(sizes) {
        let body = text_of(len);
        within("insert", len, c.execute(&insert, &[&id, &body]))
            .await
            .unwrap();
        // The whole text, byte for byte.
        let row = within(
            "read-back",
            len,
            c.query_one(
                "SELECT length(body), md5(body) = md5($2::text) FROM docs WHERE id = $1",
                &[&id, &body],
            ),
        )
        .await
        .unwrap();
        let (stored, same): (i32, bool) = (row.get(0), row.get(1));
        assert_eq!(stored as usize, len, "length of the {len}-byte parameter");
        assert!(same, "the {len}-byte parameter arrived changed");
    }
    // The statement still works at the ordinary size, on whichever server.
    c.execute(&insert, &[&0, &"small"]).await.unwrap();
    let n: i64 = c
        .query_one("SELECT count(*) FROM docs", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n as usize, sizes.len() + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameters_of_1_kib_and_1_mib_arrive_whole_through_named_statements() {
    parameters_arrive_whole("large_bind", &[1 << 10, 1 << 20]).await;
}

/// Through a TLS server connection (the test PostgreSQL has TLS on, and the pooler prefers it), the
/// last bytes of a message this large often find the socket full: TLS keeps them in its own buffer
/// until flushed, and once stalled here about one run in five, the server waiting for the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_64_mib_parameter_arrives_whole_through_named_statements() {
    parameters_arrive_whole("large_bind64", &[1 << 10, 64 << 20]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_parse_over_the_limit_gets_54000_and_the_session_goes_on() {
    let (s, db) = transaction_pooler("large_parse").await;
    let c = s.connect(&db).await;
    let sql = format!("SELECT length('{}')", text_of(2 << 20));
    let e = c.prepare(&sql).await.unwrap_err();
    assert_eq!(sqlstate(&e), Some("54000"), "{}", error_text(&e));
    assert!(error_text(&e).contains("limit"), "{}", error_text(&e));
    // Nothing else is lost: the connection works, with named statements too.
    let one: i32 = c.query_one("SELECT $1::int", &[&1]).await.unwrap().get(0);
    assert_eq!(one, 1);
    // An ordinary query just under the limit is tracked as usual.
    let sql = format!("SELECT length('{}')", text_of(512 << 10));
    let n: i32 = c.query_one(&sql, &[]).await.unwrap().get(0);
    assert_eq!(n, 512 << 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unnamed_parse_over_the_limit_streams_through() {
    let (s, _db) = transaction_pooler("large_unnamed").await;
    let mut raw = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    login_md5(&mut raw).await;
    let text = text_of(4 << 20);
    let mut batch = parse("", &format!("SELECT length('{text}')"));
    // Bind the unnamed statement, Execute, Sync.
    batch.extend_from_slice(&[b'B', 0, 0, 0, 12, 0, 0, 0, 0, 0, 0, 0, 0]);
    batch.extend_from_slice(&[b'E', 0, 0, 0, 9, 0, 0, 0, 0, 0]);
    batch.extend(sync());
    raw.write_all(&batch).await.unwrap();
    let (tags, code) = read_until_ready(&mut raw).await;
    assert_eq!(code, None);
    assert_eq!(tags, b"12DCZ", "ParseComplete, BindComplete, the row, done");
}
