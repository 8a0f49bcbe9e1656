//! Result shapes (verify.rs): holds, checks, and the columns a client was shown.

use super::*;

/// A client that prepared and described `a` (SELECT * FROM t) on one server, now on a fresh server.
pub(super) fn described_then_moved(w: &mut World, row_description: &[u8]) -> Tracker {
    let mut t = Tracker::default();
    w.client(&mut t, b'P', &parse_body("a", "SELECT * FROM t"));
    w.client(&mut t, b'D', b"Sa\0");
    w.client(&mut t, b'S', b"");
    for (tag, body) in [(b'1', &b""[..]), (b't', b"\0\0"), (b'T', row_description)] {
        w.server(&mut t, tag, body);
    }
    w.server(&mut t, b'Z', b"I");
    w.server = ServerStatements::default();
    t.begin_attachment();
    t
}

fn bind_execute_sync(w: &mut World, t: &mut Tracker) -> Vec<u8> {
    let (_, sent, _) = w.client(t, b'B', &bind_body("a"));
    for (tag, body) in [(b'E', &b"\0\0\0\0\0"[..]), (b'S', b"")] {
        let (action, rep, _) = w.client(t, tag, body);
        assert_eq!((action, rep), (ClientAction::Held, vec![]), "held");
    }
    sent
}

#[test]
fn a_bind_on_a_new_copy_waits_for_its_shape_and_goes_when_it_matches() {
    let mut w = World::new(10);
    let mut t = described_then_moved(&mut w, b"\0\x01a\0");
    assert_eq!(
        bind_execute_sync(&mut w, &mut t),
        b"PDH",
        "prepare and describe first"
    );
    assert!(t.holds_client());
    let (mut local, mut out) = (BytesMut::new(), BytesMut::new());
    for (tag, body) in [(b'1', &b""[..]), (b't', b"\0\0"), (b'T', b"\0\x01a\0")] {
        assert!(t.on_server(tag, Some(body), &mut w.ctx(), &mut local, &mut out));
    }
    assert_eq!(tags(&out), b"BES", "the held messages go");
    assert!(!t.holds_client() && local.is_empty());
}

#[test]
fn a_bind_on_a_copy_with_other_columns_gets_0a000_as_from_postgresql() {
    let mut w = World::new(10);
    let mut t = described_then_moved(&mut w, b"\0\x01a\0");
    bind_execute_sync(&mut w, &mut t);
    let (mut local, mut out) = (BytesMut::new(), BytesMut::new());
    for (tag, body) in [(b'1', &b""[..]), (b't', b"\0\0"), (b'T', b"\0\x02ab\0")] {
        assert!(t.on_server(tag, Some(body), &mut w.ctx(), &mut local, &mut out));
    }
    // The server must fail where PostgreSQL would: a Parse that cannot parse goes first, then the
    // held messages, which the server skips to the Sync.
    assert_eq!(tags(&out), b"PBES");
    assert!(local.is_empty());
    assert!(t.on_server(
        b'E',
        Some(b"C42601\0\0"),
        &mut w.ctx(),
        &mut local,
        &mut out
    ));
    let (tag, body) = crate::proto::take_frame(&mut local, 1 << 16)
        .unwrap()
        .unwrap();
    let f = crate::proto::backend::error_fields(&body).unwrap();
    assert_eq!((tag, f.code), (b'E', "0A000"), "the client hears 0A000");
    assert_eq!(w.server(&mut t, b'Z', b"I"), (false, vec![]));
    assert!(t.is_idle() && !t.holds_client());
}

#[test]
fn a_stale_copy_found_by_the_check_is_prepared_afresh_before_the_batch() {
    let mut w = World::new(10);
    let mut t = described_then_moved(&mut w, b"\0\x02ab\0");
    bind_execute_sync(&mut w, &mut t);
    let (mut local, mut out) = (BytesMut::new(), BytesMut::new());
    assert!(t.on_server(b'1', Some(b""), &mut w.ctx(), &mut local, &mut out));
    assert!(t.on_server(
        b'E',
        Some(b"C0A000\0\0"),
        &mut w.ctx(),
        &mut local,
        &mut out
    ));
    assert_eq!(
        tags(&out),
        b"SCPDH",
        "own Sync, then close, prepare, describe"
    );
    out.clear();
    for (tag, body) in [
        (b'Z', &b"I"[..]),
        (b'3', b""),
        (b'1', b""),
        (b't', b"\0\0"),
        (b'T', b"\0\x02ab\0"),
    ] {
        assert!(
            t.on_server(tag, Some(body), &mut w.ctx(), &mut local, &mut out),
            "{}",
            tag as char
        );
    }
    assert_eq!(
        tags(&out),
        b"BES",
        "the fresh copy has the client's columns"
    );
    assert!(local.is_empty());
}

#[test]
fn a_describe_on_a_new_copy_is_checked_like_a_bind() {
    let mut w = World::new(10);
    let mut t = described_then_moved(&mut w, b"\0\x01a\0");
    let (action, sent, _) = w.client(&mut t, b'D', b"Sa\0");
    assert_eq!((action, sent), (ClientAction::Replace, b"PDH".to_vec()));
    let (mut local, mut out) = (BytesMut::new(), BytesMut::new());
    for (tag, body) in [(b'1', &b""[..]), (b't', b"\0\0"), (b'T', b"\0\x02ab\0")] {
        assert!(t.on_server(tag, Some(body), &mut w.ctx(), &mut local, &mut out));
    }
    assert_eq!(tags(&out), b"PD", "a failing Parse, then the held Describe");
}

#[test]
fn a_skipped_reparse_keeps_the_columns_the_client_was_shown() {
    let mut w = World::new(1);
    let mut t = Tracker::default();
    w.client(&mut t, b'P', &parse_body("a", "SELECT * FROM t"));
    w.client(&mut t, b'D', b"Sa\0");
    w.client(&mut t, b'S', b"");
    for (tag, body) in [(b'1', &b""[..]), (b't', b"\0\0"), (b'T', b"\0\x01a\0")] {
        w.server(&mut t, tag, body);
    }
    w.server(&mut t, b'Z', b"I");
    let shown = w.client.shape(b"a");
    assert!(shown.is_some());
    // An error, then a re-Parse of the name that the server skips.
    w.client(&mut t, b'E', b"\0\0\0\0\0");
    w.client(&mut t, b'P', &parse_body("a", "SELECT 2"));
    w.client(&mut t, b'D', b"Sa\0");
    w.client(&mut t, b'S', b"");
    w.server(&mut t, b'E', b"C34000\0\0");
    w.server(&mut t, b'Z', b"I");
    assert!(t.is_idle());
    assert_eq!(
        w.client.shape(b"a"),
        shown,
        "the old statement and its columns are back"
    );
}

#[test]
fn while_holding_a_frame_the_pooler_answers_is_not_held() {
    let mut w = World::new(10);
    let mut t = described_then_moved(&mut w, b"\0\x01a\0");
    bind_execute_sync(&mut w, &mut t);
    let (action, _, _) = w.client(&mut t, b'Q', b"DEALLOCATE nothing\0");
    assert_eq!(
        action,
        ClientAction::Replace,
        "answered by the pooler, never sent"
    );
}

#[test]
fn a_stale_copy_found_mid_batch_fails_the_batch_instead_of_a_sync_of_the_poolers() {
    let mut w = World::new(10);
    let mut t = described_then_moved(&mut w, b"\0\x02ab\0");
    // Something of the client's is in flight before the Bind: a Sync of the pooler's own would end
    // its implicit transaction.
    let (action, _, _) = w.client(&mut t, b'P', &parse_body("", "INSERT INTO t VALUES (1)"));
    assert_eq!(action, ClientAction::Forward);
    w.client(&mut t, b'B', &bind_body(""));
    w.client(&mut t, b'E', b"\0\0\0\0\0");
    w.client(&mut t, b'B', &bind_body("a"));
    let (mut local, mut out) = (BytesMut::new(), BytesMut::new());
    for (tag, body) in [
        (b'1', &b""[..]),
        (b'2', b""),
        (b'C', b"INSERT 0 1\0"),
        (b'1', b""),
    ] {
        t.on_server(tag, Some(body), &mut w.ctx(), &mut local, &mut out);
    }
    out.clear();
    let swallowed = t.on_server(
        b'E',
        Some(b"C0A000\0\0"),
        &mut w.ctx(),
        &mut local,
        &mut out,
    );
    assert!(
        !swallowed,
        "the client hears the stale plan, as from PostgreSQL"
    );
    assert_eq!(
        tags(&out),
        b"B",
        "the held Bind goes, for the server to skip; no Sync of ours"
    );
    assert!(!t.holds_client());
}

/// Fuzz crash (fuzz/corpus/prepared_tracker/stale_copy_mid_batch): the client prepared `a` after a
/// schema change, elsewhere; this server's copy of the same query was planned before it (for another
/// client, or another of this client's names). Describing that copy mid-batch would fail with 0A000,
/// which the pooler cannot heal there, though PostgreSQL would run the client's statement.
#[test]
fn a_copy_with_other_columns_mid_batch_is_prepared_afresh_before_its_check() {
    let mut w = World::new(1);
    let mut t = described_then_moved(&mut w, b"\0\x02ab\0");
    let id = w.client.get(b"a").unwrap().id;
    assert_eq!(w.server.insert(id, w.capacity), None);
    w.server
        .set_shape(id, crate::prepared::shape_of(b'T', b"\0\x01a\0"));
    // Something of the client's goes before the Bind: no Sync of the pooler's may go here.
    let (action, _, _) = w.client(&mut t, b'P', &parse_body("", "SELECT 2"));
    assert_eq!(action, ClientAction::Forward);
    assert_eq!(
        bind_execute_sync(&mut w, &mut t),
        b"CPDH",
        "the old copy is closed and prepared afresh, then described"
    );
    assert_eq!(w.server(&mut t, b'1', b""), (false, vec![]), "the client's");
    let (mut local, mut out) = (BytesMut::new(), BytesMut::new());
    for (tag, body) in [
        (b'3', &b""[..]),
        (b'1', b""),
        (b't', b"\0\0"),
        (b'T', b"\0\x02ab\0"),
    ] {
        assert!(
            t.on_server(tag, Some(body), &mut w.ctx(), &mut local, &mut out),
            "{}",
            tag as char
        );
    }
    assert_eq!(
        tags(&out),
        b"BES",
        "the fresh copy has the client's columns"
    );
    assert!(local.is_empty() && !t.holds_client());
    for (tag, body) in [
        (b'2', &b""[..]),
        (b'D', b"\0\x02"),
        (b'C', b"SELECT 1\0"),
        (b'Z', b"I"),
    ] {
        assert_eq!(w.server(&mut t, tag, body), (false, vec![]));
    }
    assert!(t.is_idle());
}

/// Fuzz crash (fuzz/corpus/prepared_tracker/stale_copy_in_doubt_behind_its_check): while the copy
/// of a query is checked for the columns one name of the client's was shown, another name for the
/// same query, shown other columns, matched what was recorded for the copy before the check and went
/// as checked. But the check may find the copy stale and prepare it afresh: then it has the columns
/// of now, and PostgreSQL would have failed that name's Describe with 0A000. Behind the check, the
/// copy's columns are the ones the check expects: a name shown those goes; one shown others goes
/// unchecked (one check at a time), and is counted so.
#[test]
fn a_use_behind_a_check_of_its_own_copy_is_not_checked_by_the_columns_recorded_before() {
    let one = b"\0\x01a\0";
    let two = b"\0\x02ab\0";
    let mut w = World::new(10);
    // `a` was shown one column; `b` and `c`, the same query prepared after a migration, two.
    let mut t = described_then_moved(&mut w, one);
    let stmt = w.client.get(b"a").unwrap().clone();
    for name in [&b"b"[..], b"c"] {
        w.client.insert(name, stmt.clone());
        w.client
            .set_shape(name, stmt.id, crate::prepared::shape_of(b'T', two));
    }
    // This server's copy was described with one column, before the migration.
    assert_eq!(w.server.insert(stmt.id, w.capacity), None);
    w.server
        .set_shape(stmt.id, crate::prepared::shape_of(b'T', one));
    let (_, sent, _) = w.client(&mut t, b'B', &bind_body("b"));
    assert_eq!(sent, b"DH", "the copy is checked for b's columns");
    let unchecked = |w: &World| {
        w.stats
            .unchecked_shapes
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let (action, _, _) = w.client(&mut t, b'D', b"Sc\0");
    assert_eq!(action, ClientAction::Held);
    assert_eq!(unchecked(&w), 0, "c runs only if the copy has its columns");
    let (action, _, _) = w.client(&mut t, b'D', b"Sa\0");
    assert_eq!(action, ClientAction::Held);
    assert_eq!(
        unchecked(&w),
        1,
        "a's columns match the copy's only as recorded before the check"
    );
}

/// Fuzz crash (fuzz/corpus/prepared_tracker/held_eviction_of_a_reprepared_copy): a message held
/// behind a check evicted the checked copy (a Close among the held bytes); the check then found the
/// copy stale and prepared it afresh ahead of them. The held Close still runs after that, so the
/// copy is gone: the tracker must not count it back in, or a later use names a statement the server
/// lacks.
#[test]
fn a_copy_prepared_afresh_by_its_check_stays_evicted_by_a_held_close() {
    let one = b"\0\x01a\0";
    let two = b"\0\x02ab\0";
    let mut w = World::new(1);
    let mut t = described_then_moved(&mut w, one);
    let stmt = w.client.get(b"a").unwrap().clone();
    w.client.insert(b"b", stmt.clone());
    w.client
        .set_shape(b"b", stmt.id, crate::prepared::shape_of(b'T', two));
    assert_eq!(w.server.insert(stmt.id, w.capacity), None);
    w.server
        .set_shape(stmt.id, crate::prepared::shape_of(b'T', one));
    let (_, sent, _) = w.client(&mut t, b'B', &bind_body("b"));
    assert_eq!(sent, b"DH");
    w.client(&mut t, b'E', b"\0\0\0\0\0");
    // Another statement, with room for one: the checked copy is evicted behind the check.
    let (action, _, _) = w.client(&mut t, b'P', &parse_body("c", "SELECT 2"));
    assert_eq!(action, ClientAction::Held);
    w.client(&mut t, b'S', b"");
    let (mut local, mut out) = (BytesMut::new(), BytesMut::new());
    assert!(t.on_server(
        b'E',
        Some(b"C0A000\0\0"),
        &mut w.ctx(),
        &mut local,
        &mut out
    ));
    assert_eq!(tags(&out), b"SCPDH", "the stale copy is prepared afresh");
    out.clear();
    for (tag, body) in [
        (b'Z', &b"I"[..]),
        (b'3', b""),
        (b'1', b""),
        (b't', b"\0\0"),
        (b'T', two),
    ] {
        assert!(t.on_server(tag, Some(body), &mut w.ctx(), &mut local, &mut out));
    }
    assert_eq!(
        tags(&out),
        b"BEPCS",
        "the held messages, the eviction among them"
    );
    assert!(
        !w.server.touch(stmt.id),
        "the held Close evicts the fresh copy"
    );
}
