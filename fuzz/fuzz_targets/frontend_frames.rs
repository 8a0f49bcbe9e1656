#![no_main]
//! The relay's frame scanner over arbitrary bytes arriving in arbitrary pieces: never panics, never
//! forwards more than it was given, and reports whole frames only when they are complete.
use libfuzzer_sys::fuzz_target;
use pgsluice::proto::scan::{Event, Scanner};

fuzz_target!(|data: &[u8]| {
    let Some((&mask, rest)) = data.split_first() else {
        return;
    };
    let mut scanner = Scanner::default();
    let mut buf = bytes::BytesMut::new();
    for chunk in rest.chunks(1 + (mask as usize % 64)) {
        buf.extend_from_slice(chunk);
        let inspect = |tag: u8, _total: usize| tag & mask & 1 == 0;
        let len = buf.len();
        match scanner.scan(&buf, inspect, |e| {
            if let Event::Whole { body, .. } = e {
                assert!(body.len() + 5 <= len);
            }
            true
        }) {
            Ok(s) => {
                assert!(s.forward <= buf.len());
                let _ = buf.split_to(s.forward);
            }
            Err(_) => return,
        }
    }
    let mut buf = bytes::BytesMut::from(rest);
    while let Ok(Some(_)) = pgsluice::proto::take_frame(&mut buf, 1 << 16) {}
});
