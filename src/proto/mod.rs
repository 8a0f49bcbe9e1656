//! Sans-IO PostgreSQL v3 protocol code: no sockets, no tokio.
//!
//! Parsers take byte slices or `&mut BytesMut` and return `Ok(None)` when they need more bytes; every
//! length read from the network is bounded before anything is allocated for it. Frontend (client to
//! server) and backend (server to client) tags are kept apart because they collide (`C` is Close one way
//! and CommandComplete the other).

pub mod backend;
pub mod copy_in;
pub mod encode;
pub mod frontend;
pub mod scan;
pub mod sqlstate;
pub mod startup;
pub mod tx;

use thiserror::Error;

/// Largest startup packet accepted, as PostgreSQL's `MAX_STARTUP_PACKET_LENGTH`.
pub const MAX_STARTUP_PACKET: usize = 10_000;
/// Largest message accepted from a client that has not logged in yet (password, SASL messages).
pub const MAX_PRE_AUTH_MESSAGE: usize = 10_000;
/// Largest message the pooler must hold whole in memory to inspect (ParameterStatus, ErrorResponse, ...).
/// Frames the pooler only forwards stream through and have no such limit beyond the protocol's own.
pub const MAX_INSPECTED_MESSAGE: usize = 1 << 20;

/// Largest frame a client may send after login: PostgreSQL's `PQ_LARGE_MESSAGE_LIMIT` (1 GiB - 1 of
/// body) plus tag and length word.
pub const MAX_CLIENT_MESSAGE: usize = 0x3fff_ffff + 5;

/// A protocol violation by the peer; the connection that sent it is closed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ProtoError {
    #[error("invalid message length {0}")]
    BadLength(u32),
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("unsupported frontend protocol {major}.{minor}: server supports 3.0")]
    UnsupportedProtocol { major: u16, minor: u16 },
    #[error("malformed {0} message")]
    Malformed(&'static str),
    #[error("unexpected message type {0:?}")]
    Unexpected(char),
}

/// Reads a whole tagged frame (`tag`, 4-byte length including itself, body) from `buf` if it is
/// complete, returning the tag and the body and consuming the frame. `max` bounds the total size.
pub fn take_frame(
    buf: &mut bytes::BytesMut,
    max: usize,
) -> Result<Option<(u8, bytes::Bytes)>, ProtoError> {
    let Some(header) = scan::header(buf)? else {
        return Ok(None);
    };
    if header.total > max {
        return Err(ProtoError::TooLarge {
            len: header.total,
            max,
        });
    }
    if buf.len() < header.total {
        buf.reserve(header.total - buf.len());
        return Ok(None);
    }
    let mut frame = buf.split_to(header.total).freeze();
    let body = frame.split_off(5);
    Ok(Some((header.tag, body)))
}
