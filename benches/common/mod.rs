//! What the micro benchmarks (and the canned-server tests) share: protocol frames, pgbench's
//! select-only reply, and the canned server that answers with it.
#![allow(dead_code)]

pub mod canned;

use bytes::{BufMut, BytesMut};

pub fn frame(buf: &mut BytesMut, tag: u8, body: &[u8]) {
    buf.put_u8(tag);
    buf.put_u32(body.len() as u32 + 4);
    buf.put_slice(body);
}

/// What PostgreSQL answers to pgbench's select-only query, `times` over.
pub fn select_reply(times: usize) -> BytesMut {
    let mut b = BytesMut::new();
    for _ in 0..times {
        frame(
            &mut b,
            b'T',
            b"\0\x01abalance\0\0\0\0\0\0\0\0\0\x17\0\x04\xff\xff\xff\xff\0\0",
        );
        frame(&mut b, b'D', b"\0\x01\0\0\0\x041234");
        frame(&mut b, b'C', b"SELECT 1\0");
        frame(&mut b, b'Z', b"I");
    }
    b
}
