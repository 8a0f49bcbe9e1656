//! Pooling behaviour through pgsluice against a real PostgreSQL, with tokio-postgres clients.
#![allow(clippy::unwrap_used)]

mod common;
use common::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_mode_many_clients_small_pool_exact_total() {
    let s = Sluice::start("pool_mode = transaction\ndefault_pool_size = 2", "").await;
    let table = unique("counter");
    let setup = s.connect("appdb").await;
    setup
        .batch_execute(&format!(
            "CREATE TABLE {table} (n int); INSERT INTO {table} VALUES (0)"
        ))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let c = s.connect("appdb").await;
        let table = table.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..100 {
                c.batch_execute(&format!("BEGIN; UPDATE {table} SET n = n + 1; COMMIT"))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let n: i32 = setup
        .query_one(&format!("SELECT n FROM {table}"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 5000);
    // 51 clients, never more than 2 server connections for this pool.
    let (_, total) = s
        .app
        .pools
        .all()
        .iter()
        .map(|p| p.counts())
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    assert!(total <= 2, "pool opened {total} servers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_keeps_session_state() {
    let s = Sluice::start("pool_mode = session\ndefault_pool_size = 1", "").await;
    let c = s.connect("appdb").await;
    c.batch_execute(
        "SET search_path = pg_catalog; CREATE TEMP TABLE mine (x int); INSERT INTO mine VALUES (7)",
    )
    .await
    .unwrap();
    c.batch_execute("BEGIN; COMMIT").await.unwrap();
    let sp: String = c.query_one("SHOW search_path", &[]).await.unwrap().get(0);
    assert_eq!(sp, "pg_catalog");
    let x: i32 = c.query_one("SELECT x FROM mine", &[]).await.unwrap().get(0);
    assert_eq!(x, 7);
    drop(c);
    // The next client gets a reset server: no temp table, default search_path.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let c2 = s.connect("appdb").await;
    let sp: String = c2.query_one("SHOW search_path", &[]).await.unwrap().get(0);
    assert_ne!(sp, "pg_catalog");
    assert!(c2.query_one("SELECT x FROM mine", &[]).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_mode_refuses_transactions() {
    let s = Sluice::start("pool_mode = statement", "").await;
    let c = s.connect("appdb").await;
    let one: i32 = c.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    let err = c.batch_execute("BEGIN").await.err();
    let err = match err {
        Some(e) => e,
        // BEGIN itself completes; the refusal arrives as the connection is closed.
        None => c.batch_execute("SELECT 1").await.unwrap_err(),
    };
    let text = format!("{err:?}");
    assert!(
        text.contains("transaction blocks not allowed in statement pooling mode") || c.is_closed(),
        "{text}"
    );
    // Spoken by hand: the refusal is an ErrorResponse with 08P01 and PgBouncer's words.
    use tokio::io::AsyncWriteExt;
    let mut raw = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    wire::login_md5(&mut raw).await;
    raw.write_all(&wire::query("BEGIN")).await.unwrap();
    loop {
        let (tag, body) = wire::read_message(&mut raw).await;
        if tag == b'E' {
            let text = String::from_utf8_lossy(&body);
            assert!(text.contains("C08P01"), "{text}");
            assert!(
                text.contains("transaction blocks not allowed in statement pooling mode"),
                "{text}"
            );
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_the_right_server() {
    let s = Sluice::start("pool_mode = transaction\ndefault_pool_size = 2", "").await;
    let c = s.connect("appdb").await;
    let d = s.connect("appdb").await;
    let idle = s.connect("appdb").await;
    let token = c.cancel_token();
    let long = tokio::spawn(async move { c.simple_query("SELECT pg_sleep(10)").await });
    let other = tokio::spawn(async move { d.simple_query("SELECT pg_sleep(1.5)").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A client that holds no server: its cancel reaches nobody.
    idle.cancel_token()
        .cancel_query(tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !long.is_finished() && !other.is_finished(),
        "an idle client's cancel hit a query"
    );
    let sent = tokio::time::Instant::now();
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let err = long.await.unwrap().unwrap_err();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::QUERY_CANCELED)
    );
    assert!(
        sent.elapsed() < Duration::from_secs(1),
        "cancel took {:?}",
        sent.elapsed()
    );
    other
        .await
        .unwrap()
        .expect("the other client's query, on the other server, was not cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_round_trip_is_byte_identical() {
    use futures_util::{SinkExt, StreamExt};
    // One server: it must come back to the pool after each COPY for the other client to run.
    let s = Sluice::start("pool_mode = transaction\ndefault_pool_size = 1", "").await;
    let c = s.connect("appdb").await;
    let other = s.connect("appdb").await;
    let table = unique("copy");
    c.batch_execute(&format!("CREATE TABLE {table} (id int, txt text)"))
        .await
        .unwrap();
    let mut data = Vec::new();
    for i in 0..100_000 {
        data.extend_from_slice(format!("{i}\trow number {i} with some text\n").as_bytes());
    }
    let sink = c
        .copy_in(&format!("COPY {table} FROM STDIN"))
        .await
        .unwrap();
    futures_util::pin_mut!(sink);
    for chunk in data.chunks(64 * 1024) {
        sink.send(bytes::Bytes::copy_from_slice(chunk))
            .await
            .unwrap();
    }
    let rows = sink.finish().await.unwrap();
    assert_eq!(rows, 100_000);
    // The driver sent a Sync before the copy data, which the server ignores: the pooler must not
    // wait for its ReadyForQuery, or the server would stay with this client.
    let n = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        other.query_one(&format!("SELECT count(*) FROM {table}"), &[]),
    )
    .await
    .expect("the server came back to the pool after COPY FROM STDIN")
    .unwrap();
    assert_eq!(n.get::<_, i64>(0), 100_000);
    let stream = c
        .copy_out(&format!(
            "COPY (SELECT * FROM {table} ORDER BY id) TO STDOUT"
        ))
        .await
        .unwrap();
    futures_util::pin_mut!(stream);
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    assert!(
        out == data,
        "COPY OUT differs from what went in ({} vs {} bytes)",
        out.len(),
        data.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_killed_mid_transaction_closes_that_client_with_08006_and_others_go_on() {
    let pg = Postgres::shared();
    let s = Sluice::start("pool_mode = transaction\ndefault_pool_size = 1", "").await;
    let c = s.connect("appdb").await;
    c.batch_execute("BEGIN").await.unwrap();
    let pid: i32 = c
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    pg.psql_super(&format!("SELECT pg_terminate_backend({pid})"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The transaction died with its server; kept open, the client would run its next statements
    // outside it. It hears 08006 (FATAL) and is closed, as with PgBouncer.
    let err = c.simple_query("SELECT 1").await.unwrap_err();
    assert!(
        err.is_closed() || err.code() == Some(&tokio_postgres::error::SqlState::CONNECTION_FAILURE),
        "{err:?}"
    );
    assert!(c.is_closed());
    // The application reconnects, to a fresh server; other clients never noticed.
    let again = s.connect("appdb").await;
    let rows = again.simple_query("SELECT pg_backend_pid()").await.unwrap();
    assert_ne!(first_value(&rows).unwrap(), pid.to_string());
    let other = s.connect("appdb").await;
    other.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_killed_mid_transaction_leaves_pool_clean() {
    let s = Sluice::start("pool_mode = transaction\ndefault_pool_size = 1", "").await;
    let table = unique("dirty");
    let a = s.connect("appdb").await;
    a.batch_execute(&format!("CREATE TABLE {table} (x int)"))
        .await
        .unwrap();
    a.batch_execute(&format!("BEGIN; INSERT INTO {table} VALUES (1)"))
        .await
        .unwrap();
    drop(a);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The single pooled server must not carry the dead client's open transaction.
    let b = s.connect("appdb").await;
    let rows = b
        .simple_query("SELECT now() = statement_timestamp()")
        .await
        .unwrap();
    assert_eq!(
        first_value(&rows).as_deref(),
        Some("t"),
        "server was handed over inside a transaction"
    );
    let n: i64 = b
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameters_follow_the_client_across_servers() {
    let s = Sluice::start("pool_mode = transaction\ndefault_pool_size = 2", "").await;
    let a = s.connect("appdb").await;
    let b = s.connect("appdb").await;
    a.batch_execute(
        "SET application_name = 'client-a'; SET TimeZone = 'Asia/Tokyo'; \
         SET DateStyle = 'SQL, DMY'; SET standard_conforming_strings = off",
    )
    .await
    .unwrap();
    b.batch_execute("SET application_name = 'client-b'")
        .await
        .unwrap();
    for _ in 0..10 {
        let ra = a.simple_query("SHOW application_name").await.unwrap();
        assert_eq!(first_value(&ra).as_deref(), Some("client-a"));
        let tz: String = a.query_one("SHOW TimeZone", &[]).await.unwrap().get(0);
        assert_eq!(tz, "Asia/Tokyo");
        let ds = a.simple_query("SHOW DateStyle").await.unwrap();
        assert_eq!(first_value(&ds).as_deref(), Some("SQL, DMY"));
        let scs = a
            .simple_query("SHOW standard_conforming_strings")
            .await
            .unwrap();
        assert_eq!(first_value(&scs).as_deref(), Some("off"));
        let rb = b.simple_query("SHOW application_name").await.unwrap();
        assert_eq!(first_value(&rb).as_deref(), Some("client-b"));
        // The other client keeps the server defaults, whichever server had client a before.
        let ds = b.simple_query("SHOW DateStyle").await.unwrap();
        assert_eq!(first_value(&ds).as_deref(), Some("ISO, MDY"));
        let scs = b
            .simple_query("SHOW standard_conforming_strings")
            .await
            .unwrap();
        assert_eq!(first_value(&scs).as_deref(), Some("on"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_and_pipelining_in_transaction_mode() {
    let s = Sluice::start("pool_mode = transaction\ndefault_pool_size = 1", "").await;
    let c = s.connect("appdb").await;
    // tokio-postgres prepares each query under a name of its own (s0, s1, ...), then binds it; many in
    // flight pipeline over one server, through the statement tracker.
    let futs: Vec<_> = (0..20)
        .map(|i| {
            let c = &c;
            async move {
                c.query_one("SELECT $1::int + 1", &[&i])
                    .await
                    .unwrap()
                    .get::<_, i32>(0)
            }
        })
        .collect();
    let got = futures_util::future::join_all(futs).await;
    assert_eq!(got, (1..21).collect::<Vec<i32>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_notify_and_notices_reach_the_client_in_session_mode() {
    use futures_util::StreamExt;
    use tokio_postgres::AsyncMessage;
    let s = Sluice::start("pool_mode = session", "").await;
    let (client, mut conn) = tokio_postgres::connect(
        &s.conn_str(SCRAM_USER, SCRAM_PASSWORD, "appdb"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        futures_util::pin_mut!(messages);
        while let Some(Ok(m)) = messages.next().await {
            let _ = tx.send(m);
        }
    });
    async fn next(rx: &mut tokio::sync::mpsc::UnboundedReceiver<AsyncMessage>) -> AsyncMessage {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("an asynchronous message within 5 s")
            .expect("connection open")
    }
    let channel = unique("chan");
    client
        .batch_execute(&format!("LISTEN {channel}"))
        .await
        .unwrap();
    // Another client, another server: the notification crosses PostgreSQL, then the pooler.
    let other = s.connect("appdb").await;
    other
        .batch_execute(&format!("NOTIFY {channel}, 'hello'"))
        .await
        .unwrap();
    match next(&mut rx).await {
        AsyncMessage::Notification(n) => {
            assert_eq!((n.channel(), n.payload()), (channel.as_str(), "hello"))
        }
        m => panic!("expected a notification, got {m:?}"),
    }
    client
        .batch_execute("DO $$ BEGIN RAISE NOTICE 'careful'; END $$")
        .await
        .unwrap();
    match next(&mut rx).await {
        AsyncMessage::Notice(n) => assert_eq!(n.message(), "careful"),
        m => panic!("expected a notice, got {m:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_through_pgsluice() {
    let pg = Postgres::shared();
    let s = Sluice::start("pool_mode = transaction", "").await;
    let port = s.addr.port().to_string();
    let psql = pg.bindir.join("psql");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(psql)
            .args([
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-p",
                &port,
            ])
            .args(["-U", SCRAM_USER, "-d", "appdb"])
            .args(["-c", "SELECT 40 + 2", "-c", "SELECT current_user"])
            .env("PGPASSWORD", SCRAM_PASSWORD)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.lines().collect::<Vec<_>>(), ["42", SCRAM_USER]);
}

/// What a login is shown (ParameterStatus) is the server's parameters with the client's own values
/// over them. Logins that are alike share one greeting, so the order alike, unlike, alike must
/// still show each client its own values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_login_is_shown_its_own_parameters() {
    let s = Sluice::start("pool_mode = transaction\ndefault_pool_size = 1", "").await;
    let logins: [&[(&str, &str)]; 4] = [
        &[("application_name", "alike"), ("DateStyle", "ISO, DMY")],
        &[("application_name", "alike"), ("DateStyle", "ISO, DMY")],
        &[("application_name", "unlike"), ("TimeZone", "Asia/Tokyo")],
        &[],
    ];
    let mut shown_alike = None;
    for (i, extra) in logins.iter().enumerate() {
        let mut raw = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        let shown = common::wire::login_md5_with(&mut raw, "appdb", extra).await;
        let get = |name: &str| {
            shown
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        assert!(get("server_version").is_some(), "login {i}: {shown:?}");
        for (k, v) in *extra {
            assert_eq!(get(k), Some(*v), "login {i}: {shown:?}");
        }
        match i {
            1 => assert_eq!(
                Some(&shown),
                shown_alike.as_ref(),
                "alike logins, alike greetings"
            ),
            2 => assert_ne!(get("DateStyle"), Some("ISO, DMY"), "login 2: {shown:?}"),
            3 => {
                assert_eq!(get("application_name"), Some(""), "login 3: {shown:?}");
                assert_ne!(get("TimeZone"), Some("Asia/Tokyo"), "login 3: {shown:?}");
            }
            _ => {}
        }
        shown_alike.get_or_insert(shown);
    }
}

/// Clients that log in alike share one copy of their parameters; one that logs in differently, or
/// changes a value later, must still see only its own values, on whichever server it gets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_parameters_stay_each_clients_own() {
    let s = Sluice::start("pool_mode = transaction\ndefault_pool_size = 1", "").await;
    let mut clients = Vec::new();
    for name in ["alike", "alike", "unlike", "alike"] {
        let c = s
            .connect_with("appdb", &format!("application_name={name}"))
            .await;
        clients.push((name, c));
    }
    clients[1]
        .1
        .batch_execute("SET application_name = 'changed'")
        .await
        .unwrap();
    for _ in 0..3 {
        for (i, (name, c)) in clients.iter().enumerate() {
            let want = if i == 1 { "changed" } else { name };
            let got = c.simple_query("SHOW application_name").await.unwrap();
            assert_eq!(first_value(&got).as_deref(), Some(want), "client {i}");
        }
    }
}
