//! Encoders for the messages the pooler writes itself. Everything else is forwarded as received.

use bytes::{BufMut, BytesMut};

/// Writes `tag`, a length placeholder, the body from `body`, then patches the length.
fn framed(buf: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    buf.put_u8(tag);
    let at = buf.len();
    buf.put_u32(0);
    body(buf);
    // Bodies written here are the pooler's own or a rewritten client frame, which is bounded by
    // MAX_CLIENT_MESSAGE, so the length fits in u32.
    let len = u32::try_from(buf.len() - at).unwrap_or(u32::MAX);
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

fn cstr(buf: &mut BytesMut, s: &[u8]) {
    // A NUL inside would end the string early on the peer's side; cut it there instead.
    let end = s.iter().position(|&b| b == 0).unwrap_or(s.len());
    buf.put_slice(&s[..end]);
    buf.put_u8(0);
}

/// Severity of an ErrorResponse the pooler sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
}

impl Severity {
    fn as_bytes(self) -> &'static [u8] {
        match self {
            Severity::Error => b"ERROR",
            Severity::Fatal => b"FATAL",
        }
    }
}

/// ErrorResponse with severity, SQLSTATE and message (and an optional detail).
pub fn error_response(
    buf: &mut BytesMut,
    severity: Severity,
    code: &str,
    message: &str,
    detail: Option<&str>,
) {
    framed(buf, b'E', |b| {
        b.put_u8(b'S');
        cstr(b, severity.as_bytes());
        b.put_u8(b'V');
        cstr(b, severity.as_bytes());
        b.put_u8(b'C');
        cstr(b, code.as_bytes());
        b.put_u8(b'M');
        cstr(b, message.as_bytes());
        if let Some(d) = detail {
            b.put_u8(b'D');
            cstr(b, d.as_bytes());
        }
        b.put_u8(0);
    });
}

/// ErrorResponse with the given fields (type byte, value), in order.
pub fn error_with_fields(buf: &mut BytesMut, fields: &[(u8, &str)]) {
    fields_message(buf, b'E', fields);
}

/// NoticeResponse with the given fields (type byte, value), in order.
pub fn notice_with_fields(buf: &mut BytesMut, fields: &[(u8, &str)]) {
    fields_message(buf, b'N', fields);
}

fn fields_message(buf: &mut BytesMut, tag: u8, fields: &[(u8, &str)]) {
    framed(buf, tag, |b| {
        for (kind, value) in fields {
            b.put_u8(*kind);
            cstr(b, value.as_bytes());
        }
        b.put_u8(0);
    });
}

pub fn sync(buf: &mut BytesMut) {
    framed(buf, b'S', |_| {});
}

pub fn ready_for_query(buf: &mut BytesMut, status: u8) {
    framed(buf, b'Z', |b| b.put_u8(status));
}

pub fn auth_ok(buf: &mut BytesMut) {
    framed(buf, b'R', |b| b.put_u32(0));
}

pub fn auth_cleartext(buf: &mut BytesMut) {
    framed(buf, b'R', |b| b.put_u32(3));
}

pub fn auth_md5(buf: &mut BytesMut, salt: [u8; 4]) {
    framed(buf, b'R', |b| {
        b.put_u32(5);
        b.put_slice(&salt);
    });
}

/// AuthenticationSASL listing the mechanisms offered.
pub fn auth_sasl(buf: &mut BytesMut, mechanisms: &[&str]) {
    framed(buf, b'R', |b| {
        b.put_u32(10);
        for m in mechanisms {
            cstr(b, m.as_bytes());
        }
        b.put_u8(0);
    });
}

pub fn auth_sasl_continue(buf: &mut BytesMut, data: &[u8]) {
    framed(buf, b'R', |b| {
        b.put_u32(11);
        b.put_slice(data);
    });
}

pub fn auth_sasl_final(buf: &mut BytesMut, data: &[u8]) {
    framed(buf, b'R', |b| {
        b.put_u32(12);
        b.put_slice(data);
    });
}

pub fn parameter_status(buf: &mut BytesMut, name: &str, value: &str) {
    framed(buf, b'S', |b| {
        cstr(b, name.as_bytes());
        cstr(b, value.as_bytes());
    });
}

pub fn backend_key_data(buf: &mut BytesMut, pid: u32, secret: u32) {
    framed(buf, b'K', |b| {
        b.put_u32(pid);
        b.put_u32(secret);
    });
}

/// NegotiateProtocolVersion: the newest minor version supported and the options not recognised.
pub fn negotiate_protocol_version(buf: &mut BytesMut, minor: u32, unrecognized: &[&str]) {
    framed(buf, b'v', |b| {
        b.put_u32(minor);
        b.put_u32(u32::try_from(unrecognized.len()).unwrap_or(0));
        for o in unrecognized {
            cstr(b, o.as_bytes());
        }
    });
}

/// Simple-protocol Query.
pub fn query(buf: &mut BytesMut, sql: &str) {
    framed(buf, b'Q', |b| cstr(b, sql.as_bytes()));
}

pub fn terminate(buf: &mut BytesMut) {
    framed(buf, b'X', |_| {});
}

/// CancelRequest packet (no tag), sent on a fresh connection to the server.
pub fn cancel_request(buf: &mut BytesMut, pid: u32, secret: u32) {
    buf.put_u32(16);
    buf.put_u32(80_877_102);
    buf.put_u32(pid);
    buf.put_u32(secret);
}

/// A forwarded cancel for a peer replica (see [`super::startup::PEER_CANCEL`]).
pub fn peer_cancel(buf: &mut BytesMut, pid: u32, secret: u32, sent_ms: u64, tag: &[u8; 32]) {
    buf.put_u32(8 + super::startup::PEER_CANCEL_BODY as u32);
    buf.put_u32(super::startup::PEER_CANCEL);
    buf.put_u32(pid);
    buf.put_u32(secret);
    buf.put_u64(sent_ms);
    buf.put_slice(tag);
}

pub fn parse_complete(buf: &mut BytesMut) {
    framed(buf, b'1', |_| {});
}

pub fn close_complete(buf: &mut BytesMut) {
    framed(buf, b'3', |_| {});
}

pub fn command_complete(buf: &mut BytesMut, tag: &str) {
    framed(buf, b'C', |b| cstr(b, tag.as_bytes()));
}

/// Parse under `name` of a statement `definition` (query text and parameter types, as a client sent them).
pub fn parse_message(buf: &mut BytesMut, name: &[u8], definition: &[u8]) {
    framed(buf, b'P', |b| {
        cstr(b, name);
        b.put_slice(definition);
    });
}

/// Bind of `portal` to statement `name`, with the client's parameters and formats (`rest`) untouched.
pub fn bind_message(buf: &mut BytesMut, portal: &[u8], name: &[u8], rest: &[u8]) {
    framed(buf, b'B', |b| {
        cstr(b, portal);
        cstr(b, name);
        b.put_slice(rest);
    });
}

/// The start of a Bind whose parameters are not held: its length word counts `streamed` more bytes
/// that follow `head_rest` on the wire, unchanged from the client's Bind.
pub fn bind_head(
    buf: &mut BytesMut,
    portal: &[u8],
    name: &[u8],
    head_rest: &[u8],
    streamed: usize,
) {
    let start = buf.len();
    bind_message(buf, portal, name, head_rest);
    let written = buf.len() - start - 1;
    // The client's frame was within MAX_CLIENT_MESSAGE; the pooler's name adds a few bytes.
    let len = u32::try_from(written + streamed).unwrap_or(u32::MAX);
    buf[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
}

/// Describe (`kind` b'D') or Close (`kind` b'C') of statement `name`.
pub fn statement_target(buf: &mut BytesMut, tag: u8, name: &[u8]) {
    framed(buf, tag, |b| {
        b.put_u8(b'S');
        cstr(b, name);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_response_bytes() {
        let mut b = BytesMut::new();
        error_response(&mut b, Severity::Fatal, "08P01", "bad", None);
        let expected: &[u8] = b"E\0\0\0\x1fSFATAL\0VFATAL\0C08P01\0Mbad\0\0";
        assert_eq!(&b[..], expected);
    }

    #[test]
    fn ready_for_query_bytes() {
        let mut b = BytesMut::new();
        ready_for_query(&mut b, b'I');
        assert_eq!(&b[..], b"Z\0\0\0\x05I");
    }

    #[test]
    fn nul_in_text_is_cut() {
        let mut b = BytesMut::new();
        parameter_status(&mut b, "a\0b", "c");
        assert_eq!(&b[..], b"S\0\0\0\x08a\0c\0");
    }
}
