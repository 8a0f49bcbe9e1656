//! Statement resets pipelined with the Parse that follows them, and the limits on what one client may
//! keep named. Each script of raw messages runs on a direct connection to PostgreSQL and through
//! pgsluice (transaction mode, prepared statements tracked): the client must see the same replies.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// A reply as compared: its tag, and the SQLSTATE of an error.
type Reply = (u8, Option<String>);

/// One write of pipelined messages, and how many ReadyForQuery answer it.
struct Step(Vec<u8>, usize);

fn query(sql: &str) -> Vec<u8> {
    wire::query(sql)
}

/// Parse (named or unnamed), Bind of it to the unnamed portal, Execute.
fn run(name: &str, sql: &str) -> Vec<u8> {
    [wire::parse(name, sql), wire::bind_execute(name)].concat()
}

async fn replies(addr: std::net::SocketAddr, db: &str, script: &[Step]) -> Vec<Reply> {
    let mut raw = TcpStream::connect(addr).await.unwrap();
    wire::login_md5_to(&mut raw, db).await;
    let mut seen = Vec::new();
    for Step(bytes, readies) in script {
        raw.write_all(bytes).await.unwrap();
        let mut left = *readies;
        while left > 0 {
            let (tag, body) = wire::read_message(&mut raw).await;
            let code = (tag == b'E')
                .then(|| wire::error_code(&wire::framed(tag, &body)).unwrap_or_default());
            if tag == b'Z' {
                left -= 1;
            }
            seen.push((tag, code));
        }
    }
    seen
}

fn scripts() -> Vec<(&'static str, Vec<Step>)> {
    let prepare = || Step([wire::parse("s1", "SELECT 1"), wire::sync()].concat(), 1);
    let use_s1 = || Step([wire::bind_execute("s1"), wire::sync()].concat(), 1);
    let slow = query("SELECT pg_sleep(0.05)");
    vec![
        (
            "DEALLOCATE ALL as a query, behind a slow one, then a Parse of the same name",
            vec![
                prepare(),
                Step(
                    [
                        slow.clone(),
                        query("DEALLOCATE ALL"),
                        run("s1", "SELECT 2"),
                        wire::sync(),
                    ]
                    .concat(),
                    3,
                ),
                use_s1(),
            ],
        ),
        (
            "DISCARD ALL as a query, then a Parse of the same name",
            vec![
                prepare(),
                Step(
                    [
                        slow.clone(),
                        query("DISCARD ALL"),
                        run("s1", "SELECT 2"),
                        wire::sync(),
                    ]
                    .concat(),
                    3,
                ),
                use_s1(),
            ],
        ),
        (
            "DEALLOCATE of one name, then a Parse of it",
            vec![
                prepare(),
                Step(
                    [
                        slow.clone(),
                        query("DEALLOCATE s1"),
                        run("s1", "SELECT 2"),
                        wire::sync(),
                    ]
                    .concat(),
                    3,
                ),
                use_s1(),
                Step(query("DEALLOCATE s1"), 1),
                Step(query("DEALLOCATE s1"), 1),
            ],
        ),
        (
            "DEALLOCATE ALL through the extended protocol (psycopg in a pipeline), then a Parse",
            vec![
                prepare(),
                Step([run("", "DEALLOCATE ALL"), wire::sync()].concat(), 1),
                prepare(),
                use_s1(),
                Step(
                    [
                        run("", "DEALLOCATE ALL"),
                        run("s1", "SELECT 2"),
                        wire::sync(),
                    ]
                    .concat(),
                    1,
                ),
                use_s1(),
            ],
        ),
        (
            "DISCARD ALL through the extended protocol, alone and pipelined",
            vec![
                prepare(),
                Step([run("", "DISCARD ALL"), wire::sync()].concat(), 1),
                prepare(),
                Step(
                    [run("", "DISCARD ALL"), run("s1", "SELECT 2"), wire::sync()].concat(),
                    1,
                ),
                use_s1(),
            ],
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_resets_and_the_parse_after_them_behave_as_on_postgresql() {
    let pg = Postgres::shared();
    let db = pg.create_database("prep_pipe");
    let s = Sluice::start(
        "pool_mode = transaction",
        &format!("{db} = host=127.0.0.1 port={} pool_size=2", pg.port),
    )
    .await;
    let direct: std::net::SocketAddr = format!("127.0.0.1:{}", pg.port).parse().unwrap();
    for (what, script) in scripts() {
        let want = replies(direct, &db, &script).await;
        let got = replies(s.addr, &db, &script).await;
        let show = |r: &[Reply]| {
            r.iter()
                .map(|(t, c)| format!("{}{}", *t as char, c.as_deref().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(
            show(&got),
            show(&want),
            "{what}: through pgsluice, then on PostgreSQL"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_past_its_statement_limits_gets_54000_and_goes_on() {
    let pg = Postgres::shared();
    let db = pg.create_database("prep_cap");
    let s = Sluice::start(
        "pool_mode = transaction\nmax_client_statements = 3\nmax_client_statement_bytes = 400",
        &format!("{db} = host=127.0.0.1 port={} pool_size=1", pg.port),
    )
    .await;
    let mut raw = TcpStream::connect(s.addr).await.unwrap();
    wire::login_md5_to(&mut raw, &db).await;
    let parse = |name: &str, sql: &str| [wire::parse(name, sql), wire::sync()].concat();
    for n in 1..=3 {
        raw.write_all(&parse(&format!("s{n}"), &format!("SELECT {n}")))
            .await
            .unwrap();
        assert_eq!(
            wire::read_until_ready(&mut raw).await,
            (vec![b'1', b'Z'], None)
        );
    }
    // A fourth name: refused where it stands, the rest of its batch skipped to the Sync.
    let batch = [
        wire::parse("s4", "SELECT 4"),
        wire::bind_execute("s1"),
        wire::sync(),
    ]
    .concat();
    raw.write_all(&batch).await.unwrap();
    let (tag, body) = wire::read_message(&mut raw).await;
    assert_eq!(tag, b'E');
    let framed = wire::framed(tag, &body);
    assert_eq!(wire::error_code(&framed).as_deref(), Some("54000"));
    let message = wire::error_message(&framed).unwrap();
    assert!(message.contains("at most 3 named statements"), "{message}");
    assert_eq!(wire::read_message(&mut raw).await.0, b'Z');
    // Redefining a name it has is no new name; closing one makes room.
    raw.write_all(&[wire::bind_execute("s1"), wire::sync()].concat())
        .await
        .unwrap();
    assert_eq!(
        wire::read_until_ready(&mut raw).await,
        (vec![b'2', b'D', b'C', b'Z'], None),
        "the session goes on, its statements intact"
    );
    raw.write_all(&[wire::close_statement("s3"), wire::sync()].concat())
        .await
        .unwrap();
    assert_eq!(
        wire::read_until_ready(&mut raw).await,
        (vec![b'3', b'Z'], None)
    );
    raw.write_all(&parse("s4", "SELECT 4")).await.unwrap();
    assert_eq!(
        wire::read_until_ready(&mut raw).await,
        (vec![b'1', b'Z'], None)
    );
    // The bytes limit: a long query text, with the count well within its limit.
    raw.write_all(&[wire::close_statement("s4"), wire::sync()].concat())
        .await
        .unwrap();
    assert_eq!(
        wire::read_until_ready(&mut raw).await,
        (vec![b'3', b'Z'], None)
    );
    let long = format!("SELECT '{}'", "x".repeat(500));
    raw.write_all(&parse("big", &long)).await.unwrap();
    assert_eq!(
        wire::read_until_ready(&mut raw).await,
        (vec![b'E', b'Z'], Some("54000".to_owned()))
    );
    raw.write_all(&wire::query("SELECT 1")).await.unwrap();
    assert_eq!(wire::read_until_ready(&mut raw).await.1, None);
}
