#![no_main]
//! The relay's frame scanner over arbitrary bytes arriving in arbitrary pieces: never panics, never
//! forwards more than it was given, reports whole frames only when they are complete and heads no
//! longer than asked, and skips only bytes of a frame it was told to drop. The same bytes as a batch
//! answered without a server: never more than was given, and only a whole batch, up to its Sync.
use libfuzzer_sys::fuzz_target;
use pgsluice::proto::scan::{Event, Inspect, Scanner};

fuzz_target!(|data: &[u8]| {
    let Some((&mask, rest)) = data.split_first() else {
        return;
    };
    let mut scanner = Scanner::default();
    let mut buf = bytes::BytesMut::new();
    // Tags with bit 0 and bit 1 of the mask: whole, head, or passing; some heads drop their rest.
    let inspect = |tag: u8, _total: usize| match (tag ^ mask) & 3 {
        0 => Inspect::Whole,
        1 => Inspect::Head((mask >> 2) as usize),
        _ => Inspect::Pass,
    };
    for chunk in rest.chunks(1 + (mask as usize % 64)) {
        buf.extend_from_slice(chunk);
        let len = buf.len();
        let mut discard = false;
        match scanner.scan(&buf, inspect, |e| {
            match e {
                Event::Whole { body, .. } => assert!(body.len() + 5 <= len),
                Event::Head { head, total, .. } => {
                    assert!(head.len() <= (mask >> 2) as usize);
                    assert!(head.len() + 5 <= total.min(len));
                    discard = mask & 0x80 != 0;
                    return !discard;
                }
                Event::Passing { .. } => {}
            }
            true
        }) {
            Ok(s) => {
                assert!(s.skip <= s.forward && s.forward <= buf.len());
                let _ = buf.split_to(s.forward);
                if discard {
                    scanner.discard_rest();
                }
            }
            Err(_) => return,
        }
    }
    let mut buf = bytes::BytesMut::from(rest);
    while let Ok(Some(_)) = pgsluice::proto::take_frame(&mut buf, 1 << 16) {}
    let registry = pgsluice::prepared::Registry::default();
    let known = registry.intern(b"SELECT 1\0\0\0");
    let accepted = pgsluice::prepared::local::Accepted::default();
    accepted.learn(known.id);
    let mut client = pgsluice::prepared::ClientStatements::default();
    let mut out = bytes::BytesMut::new();
    if let Ok(Some(used)) = pgsluice::prepared::local::answer(rest, (&registry, &accepted), (&mut client, pgsluice::prepared::ClientLimits::NONE), &mut out) {
        assert!(used <= rest.len() && rest[used - 5..used] == [b'S', 0, 0, 0, 4]);
        assert!(out.ends_with(&[b'Z', 0, 0, 0, 5, b'I']));
    }
});
