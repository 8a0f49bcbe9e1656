use super::*;

fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

#[test]
fn whole_frames_are_reported_and_forwarded() {
    let mut buf = frame(b'Z', b"I");
    buf.extend(frame(b'S', b"a\0b\0"));
    let mut seen = Vec::new();
    let out = Scanner::default()
        .scan(
            &buf,
            |_, _| true,
            |e| {
                if let Event::Whole { tag, body } = e {
                    seen.push((tag, body.to_vec()));
                }
                true
            },
        )
        .unwrap();
    assert_eq!(out.forward, buf.len());
    assert_eq!(
        seen,
        vec![(b'Z', b"I".to_vec()), (b'S', b"a\0b\0".to_vec())]
    );
}

#[test]
fn inspected_frame_waits_until_complete() {
    let buf = frame(b'Z', b"I");
    let mut s = Scanner::default();
    let out = s.scan(&buf[..5], |_, _| true, |_| true).unwrap();
    assert_eq!(out.forward, 0);
    assert!(s.at_boundary());
}

#[test]
fn passing_frame_streams_across_reads() {
    let big = frame(b'D', &[7u8; 100]);
    let mut s = Scanner::default();
    let out = s.scan(&big[..30], |t, _| t == b'Z', |_| true).unwrap();
    assert_eq!(out.forward, 30);
    assert!(!s.at_boundary());
    // The rest of the DataRow and a ReadyForQuery arrive together.
    let mut rest = big[30..].to_vec();
    rest.extend(frame(b'Z', b"T"));
    let mut z = None;
    let out = s
        .scan(
            &rest,
            |t, _| t == b'Z',
            |e| {
                if let Event::Whole { tag: b'Z', body } = e {
                    z = Some(body[0]);
                }
                true
            },
        )
        .unwrap();
    assert_eq!(out.forward, rest.len());
    assert_eq!(z, Some(b'T'));
    assert!(s.at_boundary());
}

#[test]
fn stop_early_leaves_the_rest() {
    let mut buf = frame(b'Z', b"I");
    buf.extend(frame(b'N', b"x"));
    let out = Scanner::default()
        .scan(&buf, |_, _| true, |_| false)
        .unwrap();
    assert_eq!(out.forward, 6);
}

#[test]
fn short_length_word_is_rejected() {
    let buf = [b'Q', 0, 0, 0, 3];
    assert_eq!(
        Scanner::default().scan(&buf, |_, _| false, |_| true),
        Err(ProtoError::BadLength(3))
    );
}

#[test]
fn oversized_inspected_frame_is_rejected_before_buffering() {
    let buf = [b'S', 0x7f, 0xff, 0xff, 0xff];
    assert!(matches!(
        Scanner::default().scan(&buf, |_, _| true, |_| true),
        Err(ProtoError::TooLarge { .. })
    ));
}

/// RUSTSEC-2024-0363: a length near 4 GiB must not wrap and make the rest of the payload look like a
/// second, smuggled message. The whole declared length streams as one frame.
#[test]
fn length_near_u32_max_does_not_wrap() {
    let mut buf = vec![b'Q', 0xff, 0xff, 0xff, 0xff];
    buf.extend(frame(b'Q', b"DROP TABLE x\0"));
    let mut tags = Vec::new();
    let mut s = Scanner::default();
    let out = s
        .scan(
            &buf,
            |_, _| false,
            |e| {
                if let Event::Passing { tag } = e {
                    tags.push(tag);
                }
                true
            },
        )
        .unwrap();
    assert_eq!(tags, vec![b'Q']);
    assert_eq!(out.forward, buf.len());
    assert!(!s.at_boundary());
}

#[test]
fn client_scanner_refuses_frames_over_postgres_limit() {
    let mut huge = vec![b'Q'];
    huge.extend_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(
        Scanner::for_client().scan(&huge, |_, _| false, |_| true),
        Err(ProtoError::TooLarge { .. })
    ));
    // The server side has no such limit: a large DataRow streams through.
    assert!(Scanner::default()
        .scan(&huge, |_, _| false, |_| true)
        .is_ok());
    // At the limit a client frame is fine.
    let mut big = vec![b'Q'];
    big.extend_from_slice(&0x3fff_ffffu32.wrapping_add(4).to_be_bytes());
    assert!(Scanner::for_client()
        .scan(&big, |_, _| false, |_| true)
        .is_ok());
}

#[test]
fn a_head_is_reported_once_and_the_rest_streams() {
    let body = vec![7u8; 100];
    let buf = frame(b'B', &body);
    let mut s = Scanner::default();
    let mut heads = Vec::new();
    let inspect = |tag: u8, _| {
        if tag == b'B' {
            Inspect::Head(10)
        } else {
            Inspect::Pass
        }
    };
    // Not even the head yet: nothing forwarded, nothing reported.
    let out = s.scan(&buf[..12], inspect, |_| true).unwrap();
    assert_eq!(out.forward, 0);
    let out = s
        .scan(&buf[..40], inspect, |e| {
            if let Event::Head { tag, head, total } = e {
                heads.push((tag, head.len(), total));
            }
            true
        })
        .unwrap();
    assert_eq!(heads, vec![(b'B', 10, 105)]);
    assert_eq!(out.forward, 40);
    assert!(!s.at_boundary());
    // The remaining 65 bytes stream through without another report.
    let out = s.scan(&buf[40..], inspect, |_| panic!("no event")).unwrap();
    assert_eq!((out.skip, out.forward), (0, 65));
    assert!(s.at_boundary());
}

#[test]
fn a_head_longer_than_the_body_is_the_whole_body() {
    let buf = frame(b'B', b"abc");
    let mut seen = None;
    let out = Scanner::default()
        .scan(
            &buf,
            |_, _| Inspect::Head(1000),
            |e| {
                if let Event::Head { head, total, .. } = e {
                    seen = Some((head.to_vec(), total));
                }
                true
            },
        )
        .unwrap();
    assert_eq!(out.forward, buf.len());
    assert_eq!(seen, Some((b"abc".to_vec(), 8)));
}

#[test]
fn the_rest_of_a_discarded_frame_is_skipped_across_reads() {
    let mut buf = frame(b'P', &[1u8; 50]);
    buf.extend(frame(b'S', b""));
    let mut s = Scanner::default();
    let inspect = |tag: u8, _| {
        if tag == b'P' {
            Inspect::Head(4)
        } else {
            Inspect::Whole
        }
    };
    let out = s
        .scan(&buf[..20], inspect, |e| !matches!(e, Event::Head { .. }))
        .unwrap();
    assert_eq!((out.skip, out.forward), (0, 9));
    s.discard_rest();
    // 11 of the 46 bytes left arrive, then the other 35 and the Sync.
    let out = s.scan(&buf[9..20], inspect, |_| true).unwrap();
    assert_eq!((out.skip, out.forward), (11, 11));
    let mut tags = Vec::new();
    let out = s
        .scan(&buf[20..], inspect, |e| {
            if let Event::Whole { tag, .. } = e {
                tags.push(tag);
            }
            true
        })
        .unwrap();
    assert_eq!((out.skip, out.forward), (35, 40));
    assert_eq!(tags, vec![b'S']);
    assert!(s.at_boundary());
}

#[test]
fn a_frame_held_whole_above_the_client_cap_is_refused() {
    let buf = frame(b'D', &[0u8; 200]);
    let err = Scanner::for_client_holding_at_most(100)
        .scan(&buf, |_, _| true, |_| true)
        .unwrap_err();
    assert_eq!(err, ProtoError::TooLarge { len: 205, max: 100 });
}
