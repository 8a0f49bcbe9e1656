use super::*;
use crate::prepared::ClientLimits;

/// A client frame body helper: Parse of `name` with `sql` and no parameter types.
fn parse_body(name: &str, sql: &str) -> Vec<u8> {
    format!("{name}\0{sql}\0\0\0").into_bytes()
}

fn bind_body(stmt: &str) -> Vec<u8> {
    format!("\0{stmt}\0\0\0\0\0\0\0").into_bytes()
}

/// Tags of the frames in `buf`.
fn tags(buf: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = buf;
    while rest.len() >= 5 {
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        out.push(rest[0]);
        rest = &rest[1 + len..];
    }
    out
}

struct World {
    registry: Registry,
    client: ClientStatements,
    server: ServerStatements,
    stats: PreparedStats,
    accepted: crate::prepared::local::Accepted,
    capacity: usize,
    max_held: usize,
    limits: ClientLimits,
}

impl World {
    fn new(capacity: usize) -> Self {
        Self {
            registry: Registry::default(),
            client: ClientStatements::default(),
            server: ServerStatements::default(),
            stats: PreparedStats::default(),
            accepted: Default::default(),
            capacity,
            max_held: 1 << 20,
            limits: ClientLimits::NONE,
        }
    }
    fn ctx(&mut self) -> Ctx<'_> {
        Ctx {
            registry: &self.registry,
            client: &mut self.client,
            server: &mut self.server,
            stats: &self.stats,
            accepted: &self.accepted,
            capacity: self.capacity,
            max_held: self.max_held,
            limits: self.limits,
        }
    }
    /// Feeds one client frame; returns (action, replacement tags, local reply tags).
    fn client(
        &mut self,
        t: &mut Tracker,
        tag: u8,
        body: &[u8],
    ) -> (ClientAction, Vec<u8>, Vec<u8>) {
        let (mut rep, mut local) = (BytesMut::new(), BytesMut::new());
        let a = t
            .on_client(tag, Some(body), &mut self.ctx(), &mut rep, &mut local)
            .unwrap();
        (a, tags(&rep), tags(&local))
    }
    /// Feeds one server frame; returns (swallowed, local reply tags).
    fn server(&mut self, t: &mut Tracker, tag: u8, body: &[u8]) -> (bool, Vec<u8>) {
        let mut local = BytesMut::new();
        let mut replay = BytesMut::new();
        let s = t.on_server(tag, Some(body), &mut self.ctx(), &mut local, &mut replay);
        assert!(replay.is_empty(), "no replay expected here");
        (s, tags(&local))
    }
}

#[test]
fn first_parse_goes_to_the_server_under_the_pooler_name() {
    let mut w = World::new(10);
    let mut t = Tracker::default();
    let mut rep = BytesMut::new();
    let mut local = BytesMut::new();
    let a = t
        .on_client(
            b'P',
            Some(&parse_body("s1", "SELECT 1")),
            &mut w.ctx(),
            &mut rep,
            &mut local,
        )
        .unwrap();
    assert_eq!(a, ClientAction::Replace);
    let p = frontend::parse(&rep[5..]).unwrap();
    assert!(p.name.starts_with(b"PGSLUICE_"));
    assert_eq!(p.definition, b"SELECT 1\0\0\0");
    assert!(local.is_empty());
    assert_eq!(
        w.client(&mut t, b'S', b""),
        (ClientAction::Forward, vec![], vec![])
    );
    assert_eq!(
        w.server(&mut t, b'1', b""),
        (false, vec![]),
        "the client's own ParseComplete"
    );
    assert_eq!(w.server(&mut t, b'Z', b"I"), (false, vec![]));
    assert!(t.is_idle());
}

#[test]
fn a_client_parse_of_a_statement_the_server_has_plans_it_afresh() {
    let mut w = World::new(10);
    let mut t = Tracker::default();
    w.client(&mut t, b'P', &parse_body("a", "SELECT 1"));
    w.client(&mut t, b'S', b"");
    w.server(&mut t, b'1', b"");
    w.server(&mut t, b'Z', b"I");
    // Another client, same query, same server: the old copy is closed and parsed again, so a schema
    // change in between cannot leave this client with a stale plan.
    let mut t = Tracker::default();
    w.client.clear();
    let (a, rep, local) = w.client(&mut t, b'P', &parse_body("b", "SELECT 1"));
    assert_eq!(
        (a, rep, local),
        (ClientAction::Replace, vec![b'C', b'P'], vec![])
    );
    w.client(&mut t, b'S', b"");
    assert_eq!(
        w.server(&mut t, b'3', b""),
        (true, vec![]),
        "the pooler's Close is swallowed"
    );
    assert_eq!(
        w.server(&mut t, b'1', b""),
        (false, vec![]),
        "the client's ParseComplete passes"
    );
    assert_eq!(w.server(&mut t, b'Z', b"I"), (false, vec![]));
    assert!(t.is_idle());
}

#[test]
fn after_an_error_the_pooler_skips_to_sync_like_the_server() {
    let mut w = World::new(10);
    let mut t = Tracker::default();
    w.client(&mut t, b'B', &bind_body("nope"));
    w.client(&mut t, b'P', &parse_body("b", "SELECT 1"));
    w.client(&mut t, b'C', b"Sb\0");
    w.client(&mut t, b'S', b"");
    let (swallowed, local) = w.server(&mut t, b'E', b"C26000\0\0");
    assert!(!swallowed);
    assert!(
        local.is_empty(),
        "the server skips the Parse and the Close; so must the pooler"
    );
    assert!(
        w.client.get(b"b").is_none(),
        "the skipped Parse did not happen"
    );
    assert!(!w.server.touch(w.registry.intern(b"SELECT 1\0\0\0").id));
    assert_eq!(w.server(&mut t, b'Z', b"I"), (false, vec![]));
    assert!(t.is_idle());
}

#[test]
fn bind_on_a_server_without_the_statement_prepares_it_first() {
    let mut w = World::new(10);
    let mut t = Tracker::default();
    w.client(&mut t, b'P', &parse_body("s1", "SELECT 1"));
    w.client(&mut t, b'S', b"");
    w.server(&mut t, b'1', b"");
    w.server(&mut t, b'Z', b"I");
    // The next transaction lands on a fresh server.
    w.server = ServerStatements::default();
    let mut t = Tracker::default();
    let (a, rep, _) = w.client(&mut t, b'B', &bind_body("s1"));
    assert_eq!((a, rep), (ClientAction::Replace, vec![b'P', b'B']));
    w.client(&mut t, b'E', b"\0\0\0\0\0");
    w.client(&mut t, b'S', b"");
    assert_eq!(
        w.server(&mut t, b'1', b""),
        (true, vec![]),
        "the added Parse's reply is swallowed"
    );
    assert_eq!(w.server(&mut t, b'2', b""), (false, vec![]));
    assert_eq!(w.server(&mut t, b'D', b""), (false, vec![]));
    assert_eq!(w.server(&mut t, b'C', b"SELECT 1\0"), (false, vec![]));
    assert_eq!(w.server(&mut t, b'Z', b"I"), (false, vec![]));
    assert!(t.is_idle());
    assert_eq!(
        w.stats
            .server_parses
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    // Now it is there: a Bind is only renamed.
    let mut t = Tracker::default();
    assert_eq!(w.client(&mut t, b'B', &bind_body("s1")).1, vec![b'B']);
}

#[test]
fn close_is_answered_by_the_pooler_after_earlier_replies() {
    let mut w = World::new(10);
    let mut t = Tracker::default();
    w.client(&mut t, b'P', &parse_body("s1", "SELECT 1"));
    let (a, rep, local) = w.client(&mut t, b'C', b"Ss1\0");
    assert_eq!((a, rep, local), (ClientAction::Replace, vec![], vec![]));
    w.client(&mut t, b'S', b"");
    assert_eq!(
        w.server(&mut t, b'1', b""),
        (false, vec![b'3']),
        "CloseComplete right after ParseComplete"
    );
    assert_eq!(w.server(&mut t, b'Z', b"I"), (false, vec![]));
    assert!(w.client.get(b"s1").is_none());
    assert!(
        w.server.touch(w.registry.intern(b"SELECT 1\0\0\0").id),
        "the server copy stays for others"
    );
}

#[test]
fn deallocate_is_answered_locally_with_the_transaction_status() {
    let mut w = World::new(10);
    let mut t = Tracker::default();
    w.client(&mut t, b'Q', b"BEGIN\0");
    w.server(&mut t, b'C', b"BEGIN\0");
    w.server(&mut t, b'Z', b"T");
    w.client.insert(b"s1", w.registry.intern(b"SELECT 1\0\0\0"));
    let mut local = BytesMut::new();
    let a = t
        .on_client(
            b'Q',
            Some(b"DEALLOCATE s1\0"),
            &mut w.ctx(),
            &mut BytesMut::new(),
            &mut local,
        )
        .unwrap();
    assert_eq!(a, ClientAction::Replace);
    assert_eq!(tags(&local), vec![b'C', b'Z']);
    assert_eq!(local.last(), Some(&b'T'), "still in the transaction");
    let (_, _, local) = w.client(&mut t, b'Q', b"DEALLOCATE s1\0");
    assert_eq!(local, vec![b'E', b'Z'], "a second time it does not exist");
    assert!(t.is_idle());
}

#[test]
fn eviction_closes_the_least_recently_used_statement() {
    let mut w = World::new(1);
    let mut t = Tracker::default();
    w.client(&mut t, b'P', &parse_body("a", "SELECT 1"));
    let (_, rep, _) = w.client(&mut t, b'P', &parse_body("b", "SELECT 2"));
    assert_eq!(rep, vec![b'P', b'C'], "Parse of b, then Close of a");
    w.client(&mut t, b'S', b"");
    assert_eq!(w.server(&mut t, b'1', b""), (false, vec![]));
    assert_eq!(w.server(&mut t, b'1', b""), (false, vec![]));
    assert_eq!(
        w.server(&mut t, b'3', b""),
        (true, vec![]),
        "the eviction's CloseComplete is swallowed"
    );
    w.server(&mut t, b'Z', b"I");
    assert!(t.is_idle());
    // a is still the client's: using it prepares it again.
    let (_, rep, _) = w.client(&mut t, b'B', &bind_body("a"));
    assert_eq!(rep, vec![b'P', b'C', b'B']);
}

#[test]
fn stale_plan_is_closed_and_prepared_again() {
    // Inside a transaction block, where no replay is possible.
    let mut w = World::new(10);
    let mut t = Tracker::default();
    w.client(&mut t, b'P', &parse_body("s1", "SELECT * FROM t"));
    w.client(&mut t, b'S', b"");
    w.server(&mut t, b'1', b"");
    w.server(&mut t, b'Z', b"T");
    w.client(&mut t, b'B', &bind_body("s1"));
    w.client(&mut t, b'E', b"\0\0\0\0\0");
    w.client(&mut t, b'S', b"");
    let (swallowed, _) = w.server(
        &mut t,
        b'E',
        b"SERROR\0C0A000\0Mcached plan must not change result type\0\0",
    );
    assert!(!swallowed, "the error reaches the client");
    w.server(&mut t, b'Z', b"E");
    assert!(t.is_idle());
    let (_, rep, _) = w.client(&mut t, b'B', &bind_body("s1"));
    assert_eq!(
        rep,
        vec![b'C', b'P', b'B'],
        "close the stale copy, prepare, bind"
    );
}

#[test]
fn a_sync_sent_into_a_copy_in_is_owed_no_ready_for_query() {
    // tokio-postgres's copy_in: a named Bind, Execute, Sync, then the data, CopyDone and Sync.
    let mut w = World::new(10);
    let mut t = Tracker::default();
    w.client(&mut t, b'P', &parse_body("c", "COPY t FROM STDIN"));
    w.client(&mut t, b'S', b"");
    w.server(&mut t, b'1', b"");
    w.server(&mut t, b'Z', b"I");
    for (tag, body) in [(b'B', bind_body("c")), (b'E', b"\0\0\0\0\0".to_vec())] {
        w.client(&mut t, tag, &body);
    }
    w.client(&mut t, b'S', b"");
    w.server(&mut t, b'2', b"");
    w.server(&mut t, b'G', b"\0\0\0");
    for tag in [b'd', b'c', b'S'] {
        w.client(&mut t, tag, b"");
    }
    w.server(&mut t, b'C', b"COPY 1\0");
    assert!(!t.is_idle(), "the Sync after CopyDone is still owed");
    w.server(&mut t, b'Z', b"I");
    assert!(t.is_idle(), "only one ReadyForQuery was owed");
}

#[test]
fn after_an_error_the_pooler_drops_what_the_client_sends_until_sync() {
    // The error comes back before the client's Close: the server skips that Close, so no
    // CloseComplete may reach the client, and the statement stays.
    let mut w = World::new(10);
    let mut t = Tracker::default();
    w.client(&mut t, b'P', &parse_body("a", "SELECT 1"));
    w.client(&mut t, b'S', b"");
    w.server(&mut t, b'1', b"");
    w.server(&mut t, b'Z', b"I");
    w.client(&mut t, b'E', b"\0\0\0\0\0");
    w.server(&mut t, b'E', b"C34000\0\0");
    assert_eq!(
        w.client(&mut t, b'C', b"Sa\0"),
        (ClientAction::Replace, vec![], vec![]),
        "skipped by the server, so by the pooler"
    );
    assert_eq!(
        w.client(&mut t, b'S', b""),
        (ClientAction::Forward, vec![], vec![])
    );
    w.server(&mut t, b'Z', b"I");
    assert!(t.is_idle());
    assert!(
        w.client.get(b"a").is_some(),
        "the skipped Close did not run"
    );
}

#[test]
fn a_skipped_parse_of_a_name_gives_it_back_its_old_meaning() {
    let mut w = World::new(10);
    let mut t = Tracker::default();
    w.client(&mut t, b'P', &parse_body("a", "SELECT 1"));
    w.client(&mut t, b'E', b"\0\0\0\0\0");
    w.client(&mut t, b'C', b"Sa\0");
    w.client(&mut t, b'P', &parse_body("a", "SELECT 2"));
    w.client(&mut t, b'S', b"");
    w.server(&mut t, b'1', b"");
    w.server(&mut t, b'E', b"C34000\0\0");
    w.server(&mut t, b'Z', b"I");
    assert!(t.is_idle());
    let a = w.client.get(b"a").expect("the first Parse happened");
    assert_eq!(
        &a.definition[..],
        b"SELECT 1\0\0\0",
        "skipped Close and Parse undone"
    );
}

#[test]
fn a_stale_plan_on_a_pooler_copy_is_healed_by_one_replay() {
    let mut w = World::new(10);
    let mut t = Tracker::default();
    w.client(&mut t, b'P', &parse_body("a", "SELECT * FROM t"));
    w.client(&mut t, b'S', b"");
    w.server(&mut t, b'1', b"");
    w.server(&mut t, b'Z', b"I");
    // A batch that opens with a Bind the server has: it is recorded...
    w.client(&mut t, b'B', &bind_body("a"));
    w.client(&mut t, b'E', b"\0\0\0\0\0");
    w.client(&mut t, b'S', b"");
    // ...and when the server says the plan changed shape, neither the error nor the ReadyForQuery
    // after it reaches the client; the batch goes again behind a fresh Parse.
    let mut replay = BytesMut::new();
    let mut local = BytesMut::new();
    let stale = b"SERROR\0C0A000\0Mcached plan must not change result type\0\0";
    assert!(t.on_server(b'E', Some(stale), &mut w.ctx(), &mut local, &mut replay));
    assert!(
        t.holds_client(),
        "the client's next messages wait behind the replay"
    );
    assert!(t.on_server(b'Z', Some(b"I"), &mut w.ctx(), &mut local, &mut replay));
    assert_eq!(tags(&replay), b"CPBES");
    assert!(!t.holds_client());
    let mut replay = BytesMut::new();
    for (tag, body, swallowed) in [
        (b'3', &b""[..], true),
        (b'1', b"", true),
        (b'2', b"", false),
        (b'C', b"SELECT 1\0", false),
        (b'Z', b"I", false),
    ] {
        let s = t.on_server(tag, Some(body), &mut w.ctx(), &mut local, &mut replay);
        assert_eq!(s, swallowed, "{}", tag as char);
    }
    assert!(t.is_idle() && local.is_empty() && replay.is_empty());
    assert_eq!(w.stats.healed.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[test]
fn a_replay_that_fails_again_reaches_the_client() {
    let mut w = World::new(10);
    let mut t = Tracker::default();
    w.client(&mut t, b'P', &parse_body("a", "SELECT * FROM t"));
    w.client(&mut t, b'S', b"");
    w.server(&mut t, b'1', b"");
    w.server(&mut t, b'Z', b"I");
    w.client(&mut t, b'B', &bind_body("a"));
    w.client(&mut t, b'E', b"\0\0\0\0\0");
    w.client(&mut t, b'S', b"");
    let (mut local, mut replay) = (BytesMut::new(), BytesMut::new());
    let stale = b"C0A000\0\0";
    assert!(t.on_server(b'E', Some(stale), &mut w.ctx(), &mut local, &mut replay));
    assert!(t.on_server(b'Z', Some(b"I"), &mut w.ctx(), &mut local, &mut replay));
    assert_eq!(w.server(&mut t, b'3', b""), (true, vec![]));
    assert_eq!(w.server(&mut t, b'1', b""), (true, vec![]));
    assert_eq!(
        w.server(&mut t, b'E', stale),
        (false, vec![]),
        "once only: the second failure is the client's"
    );
    assert_eq!(w.server(&mut t, b'Z', b"I"), (false, vec![]));
    assert!(t.is_idle());
}

#[test]
fn no_replay_inside_a_transaction_block() {
    let mut w = World::new(10);
    let mut t = Tracker::default();
    w.client(&mut t, b'P', &parse_body("a", "SELECT * FROM t"));
    w.client(&mut t, b'S', b"");
    w.server(&mut t, b'1', b"");
    w.server(&mut t, b'Z', b"T");
    w.client(&mut t, b'B', &bind_body("a"));
    w.client(&mut t, b'E', b"\0\0\0\0\0");
    w.client(&mut t, b'S', b"");
    let (swallowed, _) = w.server(&mut t, b'E', b"C0A000\0\0");
    assert!(
        !swallowed,
        "the transaction is aborted: the client must see why"
    );
    w.server(&mut t, b'Z', b"E");
    assert!(t.is_idle());
}

mod large;
mod shapes;

/// Statement "a" prepared and answered, the server then reporting `status`.
fn prepare_a(w: &mut World, t: &mut Tracker, status: &[u8]) {
    w.client(t, b'P', &parse_body("a", "SELECT 1"));
    w.client(t, b'S', b"");
    w.server(t, b'1', b"");
    w.server(t, b'Z', status);
}

#[test]
fn a_second_parse_of_a_name_fails_with_42p05_and_the_batch_is_skipped_to_sync() {
    let mut w = World::new(10);
    let mut t = Tracker::default();
    prepare_a(&mut w, &mut t, b"I");
    let first = w.client.get(b"a").unwrap().id;
    // As on PostgreSQL: the Parse fails, the Bind after it is skipped, the Sync ends the batch.
    let (a, rep, local) = w.client(&mut t, b'P', &parse_body("a", "SELECT 2"));
    assert_eq!(
        (a, rep, local),
        (ClientAction::Replace, vec![b'P'], vec![]),
        "a Parse that fails on the server stands in for it"
    );
    let (a, _, _) = w.client(&mut t, b'B', &bind_body("a"));
    assert_ne!(
        a,
        ClientAction::Forward,
        "the Bind is not sent as the client wrote it"
    );
    w.client(&mut t, b'S', b"");
    let (swallowed, local) = w.server(&mut t, b'E', b"C42601\0\0");
    assert!(swallowed, "the stand-in's own error is not the client's");
    assert_eq!(local, vec![b'E'], "the client hears 42P05 instead");
    assert_eq!(w.server(&mut t, b'Z', b"I"), (false, vec![]));
    assert!(t.is_idle());
    assert_eq!(
        w.client.get(b"a").unwrap().id,
        first,
        "the name keeps its statement"
    );
    // After DEALLOCATE the name is free again.
    w.client(&mut t, b'Q', b"DEALLOCATE a\0");
    let (_, rep, _) = w.client(&mut t, b'P', &parse_body("a", "SELECT 2"));
    assert!(rep.contains(&b'P'));
}

#[test]
fn the_42p05_text_is_postgresqls() {
    let mut out = BytesMut::new();
    statements::already_exists(&mut out, b"s1");
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("C42P05"), "{text}");
    assert!(
        text.contains("prepared statement \"s1\" already exists"),
        "{text}"
    );
}

/// The statement name of the Parse in `replacement`.
fn parse_name_in(w: &mut World, t: &mut Tracker, name: &str, sql: &str) -> Vec<u8> {
    let mut rep = BytesMut::new();
    let mut local = BytesMut::new();
    t.on_client(
        b'P',
        Some(&parse_body(name, sql)),
        &mut w.ctx(),
        &mut rep,
        &mut local,
    )
    .unwrap();
    let at = rep.iter().position(|&b| b == b'P').unwrap();
    frontend::parse(&rep[at + 5..]).unwrap().name.to_vec()
}

#[test]
fn a_second_parse_is_refused_only_when_postgresql_would_refuse_it_for_the_name() {
    let forced = verify::FORCED_ERROR_NAME.to_vec();
    let mut w = World::new(10);
    let mut t = Tracker::default();
    prepare_a(&mut w, &mut t, b"I");
    // The first Parse of "b" may still fail: the second goes to the server as it is.
    w.client(&mut t, b'P', &parse_body("b", "SELECT 1"));
    assert_ne!(parse_name_in(&mut w, &mut t, "b", "SELECT 2"), forced);
    w.client(&mut t, b'S', b"");
    w.server(&mut t, b'1', b"");
    w.server(&mut t, b'1', b"");
    w.server(&mut t, b'Z', b"I");
    // In an aborted transaction block PostgreSQL answers 25P02 before it looks at the name.
    w.client(&mut t, b'Q', b"SELECT oops\0");
    w.server(&mut t, b'E', b"C42703\0\0");
    w.server(&mut t, b'Z', b"E");
    assert_ne!(parse_name_in(&mut w, &mut t, "a", "SELECT 2"), forced);
}

#[test]
fn when_the_block_turns_out_aborted_the_client_hears_25p02_not_42p05() {
    let forced = verify::FORCED_ERROR_NAME.to_vec();
    let mut w = World::new(10);
    let mut t = Tracker::default();
    prepare_a(&mut w, &mut t, b"T");
    // A failing statement and the duplicate Parse, pipelined: the block's state is not known yet,
    // and with the Query still owed the Parse goes to the server as it is (not forced: see
    // client_parse), which refuses it in the aborted block as PostgreSQL would.
    w.client(&mut t, b'Q', b"SELECT oops\0");
    assert_ne!(parse_name_in(&mut w, &mut t, "a", "SELECT 2"), forced);
    w.client(&mut t, b'S', b"");
    w.server(&mut t, b'E', b"C42703\0\0");
    w.server(&mut t, b'Z', b"E");
    let (swallowed, _) = w.server(&mut t, b'E', b"C25P02\0\0");
    assert!(!swallowed, "the server's 25P02 is the client's answer");
    assert_eq!(w.server(&mut t, b'Z', b"E"), (false, vec![]));
    assert!(t.is_idle());
}
