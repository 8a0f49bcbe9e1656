//! Result shapes (verify.rs): holds, checks, and the columns a client was shown.

use super::*;

/// A client that prepared and described `a` (SELECT * FROM t) on one server, now on a fresh server.
fn described_then_moved(w: &mut World, row_description: &[u8]) -> Tracker {
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
