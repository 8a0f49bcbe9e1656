//! Messages too large to hold (large.rs): only their head is read.

use super::*;

/// A head of a Bind of `stmt` whose parameters (`streamed` bytes) are not shown to the tracker.
fn head(
    w: &mut World,
    t: &mut Tracker,
    tag: u8,
    head: &[u8],
    total: usize,
) -> (HeadAction, BytesMut, BytesMut) {
    let (mut rep, mut local) = (BytesMut::new(), BytesMut::new());
    let a = t
        .on_client_head(tag, head, total, &mut w.ctx(), &mut rep, &mut local)
        .unwrap();
    (a, rep, local)
}

fn prepared(w: &mut World) -> Tracker {
    let mut t = Tracker::default();
    w.client(&mut t, b'P', &parse_body("s1", "SELECT $1"));
    w.client(&mut t, b'S', b"");
    w.server(&mut t, b'1', b"");
    w.server(&mut t, b'Z', b"I");
    t
}

#[test]
fn a_streamed_bind_is_renamed_and_its_length_counts_the_bytes_still_to_come() {
    let mut w = World::new(10);
    let mut t = prepared(&mut w);
    // 10 MiB of parameters follow the 4 bytes of the head after the names.
    let streamed = 10 << 20;
    let body_head = b"\0s1\0\0\0\0\x01";
    let total = 5 + body_head.len() + streamed;
    let (a, rep, local) = head(&mut w, &mut t, b'B', body_head, total);
    assert_eq!(a, HeadAction::Replace);
    assert!(local.is_empty());
    assert_eq!(rep[0], b'B');
    let len = u32::from_be_bytes([rep[1], rep[2], rep[3], rep[4]]) as usize;
    assert_eq!(
        len + 1,
        rep.len() + streamed,
        "the length word covers the streamed rest"
    );
    let b = frontend::bind(&rep[5..]).unwrap();
    assert!(b.statement.starts_with(b"PGSLUICE_"));
    assert_eq!(b.rest, b"\0\0\0\x01");
    w.client(&mut t, b'E', b"\0\0\0\0\0");
    w.client(&mut t, b'S', b"");
    for (tag, body) in [(b'2', &b""[..]), (b'C', b"SELECT 1\0"), (b'Z', b"I")] {
        assert_eq!(w.server(&mut t, tag, body), (false, vec![]));
    }
    assert!(t.is_idle());
}

#[test]
fn a_streamed_bind_of_an_unknown_statement_goes_as_it_is() {
    let mut w = World::new(10);
    let mut t = Tracker::default();
    let (a, rep, _) = head(&mut w, &mut t, b'B', b"\0\0\0\0", 5 << 20);
    assert_eq!(a, HeadAction::Forward);
    assert!(rep.is_empty());
    let (a, _, _) = head(&mut w, &mut t, b'P', b"\0SELECT", 5 << 20);
    assert_eq!(a, HeadAction::Forward, "an unnamed Parse streams through");
    w.client(&mut t, b'S', b"");
    for tag in [b'2', b'1'] {
        assert_eq!(w.server(&mut t, tag, b""), (false, vec![]));
    }
    assert_eq!(w.server(&mut t, b'Z', b"I"), (false, vec![]));
    assert!(t.is_idle());
}

#[test]
fn a_named_parse_too_large_to_hold_gets_54000_where_it_stood_and_the_session_goes_on() {
    let mut w = World::new(10);
    let mut t = Tracker::default();
    let (a, rep, _) = head(&mut w, &mut t, b'P', b"big\0SELECT", 5 << 20);
    assert_eq!(a, HeadAction::Discard, "the rest of the Parse goes nowhere");
    let p = frontend::parse(&rep[5..]).unwrap();
    assert_eq!(
        p.name, b"PGSLUICE_STALE",
        "a Parse that cannot parse stands in for it"
    );
    // What follows is skipped by the server after that error, as after the client's own.
    w.client(&mut t, b'B', &bind_body("big"));
    w.client(&mut t, b'E', b"\0\0\0\0\0");
    w.client(&mut t, b'S', b"");
    let mut local = BytesMut::new();
    let mut out = BytesMut::new();
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
    assert_eq!((tag, f.code), (b'E', "54000"));
    assert!(f.message.contains("max_held_message") || f.message.contains("limit"));
    assert!(w.client.get(b"big").is_none(), "the name was never defined");
    assert_eq!(w.server(&mut t, b'Z', b"I"), (false, vec![]));
    assert!(t.is_idle());
    // The next batch runs as usual.
    let (a, _, _) = w.client(&mut t, b'P', &parse_body("small", "SELECT 1"));
    assert_eq!(a, ClientAction::Replace);
}

#[test]
fn a_head_arriving_while_messages_are_held_sends_them_first() {
    let mut w = World::new(10);
    let mut t = super::shapes::described_then_moved(&mut w, b"\0\x01a\0");
    let (_, sent, _) = w.client(&mut t, b'B', &bind_body("a"));
    assert_eq!(sent, b"PDH", "a check starts: the Bind is held");
    assert!(t.holds_client());
    let (a, rep, _) = head(&mut w, &mut t, b'B', b"\0\0\0\0", 5 << 20);
    assert_eq!(a, HeadAction::Replace);
    // The held Bind, whole, then this one's head, whose length counts the rest still to come.
    let first = 1 + u32::from_be_bytes([rep[1], rep[2], rep[3], rep[4]]) as usize;
    assert_eq!((rep[0], rep[first]), (b'B', b'B'));
    assert_eq!(&rep[first + 5..], b"\0\0\0\0");
    assert!(!t.holds_client());
    assert_eq!(
        w.stats
            .unchecked_shapes
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[test]
fn held_messages_past_the_limit_go_unchecked() {
    let mut w = World::new(10);
    w.max_held = 64;
    let mut t = super::shapes::described_then_moved(&mut w, b"\0\x01a\0");
    w.client(&mut t, b'B', &bind_body("a"));
    assert!(t.holds_client());
    let mut sent = Vec::new();
    for _ in 0..20 {
        let (_, rep, _) = w.client(&mut t, b'E', b"\0\0\0\0\0");
        sent.extend(rep);
        if !t.holds_client() {
            break;
        }
    }
    assert!(!t.holds_client(), "the hold ends once it passes the limit");
    assert!(sent.starts_with(b"B"), "what was held goes, in order");
}
