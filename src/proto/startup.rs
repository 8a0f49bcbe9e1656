//! The first packet a client sends: SSLRequest, GSSENCRequest, CancelRequest or StartupMessage.
//! Untagged: a 4-byte length (counting itself), a 4-byte code, then the body.

use super::{ProtoError, MAX_STARTUP_PACKET};
use bytes::{Buf, BytesMut};

const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;
/// pgsluice's own: a cancel one pooler replica forwards to the replica that owns the key, signed
/// with the peers' shared secret. Never sent by a client; a version no PostgreSQL uses.
pub const PEER_CANCEL: u32 = (1234 << 16) | 7101;
/// The body of a [`PEER_CANCEL`]: the 8-byte key, the sender's clock (ms since the epoch) and an
/// HMAC-SHA-256 tag over both.
pub const PEER_CANCEL_BODY: usize = 8 + 8 + 32;

/// A parsed startup packet.
#[derive(Debug, PartialEq, Eq)]
pub enum StartupPacket {
    SslRequest,
    GssEncRequest,
    Cancel {
        pid: u32,
        secret: u32,
    },
    /// A forwarded cancel from a peer; its tag is checked by whoever knows the secret.
    PeerCancel(PeerCancel),
    Startup(StartupMessage),
}

/// A [`PEER_CANCEL`] packet's body, not yet verified.
#[derive(Debug, PartialEq, Eq, Clone)]
pub struct PeerCancel {
    pub pid: u32,
    pub secret: u32,
    pub sent_ms: u64,
    pub tag: [u8; 32],
}

/// A protocol 3.x StartupMessage. `minor` above 0 is answered with NegotiateProtocolVersion.
#[derive(Debug, PartialEq, Eq)]
pub struct StartupMessage {
    pub minor: u16,
    /// Parameters in the order sent; names are case-sensitive as in PostgreSQL.
    pub params: Vec<(String, String)>,
}

impl StartupMessage {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses one startup packet from the front of `buf`, or `Ok(None)` if more bytes are needed.
/// Never buffers more than [`MAX_STARTUP_PACKET`] bytes for it.
pub fn parse(buf: &mut BytesMut) -> Result<Option<StartupPacket>, ProtoError> {
    let Some(&[a, b, c, d]) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([a, b, c, d]);
    let total = len as usize;
    if total < 8 {
        return Err(ProtoError::BadLength(len));
    }
    if total > MAX_STARTUP_PACKET {
        return Err(ProtoError::TooLarge {
            len: total,
            max: MAX_STARTUP_PACKET,
        });
    }
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    let mut packet = buf.split_to(total);
    packet.advance(4);
    let code = packet.get_u32();
    match code {
        SSL_REQUEST if packet.is_empty() => Ok(Some(StartupPacket::SslRequest)),
        GSSENC_REQUEST if packet.is_empty() => Ok(Some(StartupPacket::GssEncRequest)),
        CANCEL_REQUEST if packet.len() == 8 => {
            let pid = packet.get_u32();
            let secret = packet.get_u32();
            Ok(Some(StartupPacket::Cancel { pid, secret }))
        }
        PEER_CANCEL if packet.len() == PEER_CANCEL_BODY => {
            let (pid, secret, sent_ms) = (packet.get_u32(), packet.get_u32(), packet.get_u64());
            let mut tag = [0u8; 32];
            packet.copy_to_slice(&mut tag);
            Ok(Some(StartupPacket::PeerCancel(PeerCancel {
                pid,
                secret,
                sent_ms,
                tag,
            })))
        }
        SSL_REQUEST | GSSENC_REQUEST | CANCEL_REQUEST | PEER_CANCEL => {
            Err(ProtoError::Malformed("startup packet"))
        }
        _ => {
            let major = (code >> 16) as u16;
            let minor = (code & 0xffff) as u16;
            if major != 3 {
                return Err(ProtoError::UnsupportedProtocol { major, minor });
            }
            Ok(Some(StartupPacket::Startup(StartupMessage {
                minor,
                params: parse_params(&packet)?,
            })))
        }
    }
}

/// `name\0value\0 ... \0`: pairs of NUL-terminated strings ending with an empty name.
fn parse_params(mut body: &[u8]) -> Result<Vec<(String, String)>, ProtoError> {
    let mut params = Vec::new();
    loop {
        let (name, rest) =
            super::backend::cstr(body).map_err(|_| ProtoError::Malformed("startup packet"))?;
        if name.is_empty() {
            return if rest.is_empty() {
                Ok(params)
            } else {
                Err(ProtoError::Malformed("startup packet"))
            };
        }
        let (value, rest) =
            super::backend::cstr(rest).map_err(|_| ProtoError::Malformed("startup packet"))?;
        if params.iter().any(|(k, _)| k == name) {
            return Err(ProtoError::Malformed(
                "startup packet (duplicate parameter)",
            ));
        }
        params.push((name.to_owned(), value.to_owned()));
        body = rest;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    fn startup(code: u32, body: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_u32(8 + body.len() as u32);
        b.put_u32(code);
        b.put_slice(body);
        b
    }

    #[test]
    fn parses_startup_message() {
        let mut b = startup(196_608, b"user\0alice\0database\0db\0\0");
        let Some(StartupPacket::Startup(m)) = parse(&mut b).unwrap() else {
            panic!()
        };
        assert_eq!(m.minor, 0);
        assert_eq!(m.get("user"), Some("alice"));
        assert_eq!(m.get("database"), Some("db"));
        assert!(b.is_empty());
    }

    #[test]
    fn parses_ssl_and_cancel() {
        assert_eq!(
            parse(&mut startup(SSL_REQUEST, b"")).unwrap(),
            Some(StartupPacket::SslRequest)
        );
        let mut b = startup(CANCEL_REQUEST, &[0, 0, 0, 7, 0, 0, 0, 9]);
        assert_eq!(
            parse(&mut b).unwrap(),
            Some(StartupPacket::Cancel { pid: 7, secret: 9 })
        );
        let mut body = vec![0, 0, 0, 7, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 1, 0];
        body.extend([5u8; 32]);
        let Some(StartupPacket::PeerCancel(p)) = parse(&mut startup(PEER_CANCEL, &body)).unwrap()
        else {
            panic!()
        };
        assert_eq!((p.pid, p.secret, p.sent_ms, p.tag), (7, 9, 256, [5; 32]));
        assert!(parse(&mut startup(PEER_CANCEL, &body[..40])).is_err());
    }

    #[test]
    fn waits_for_more_bytes() {
        let full = startup(196_608, b"user\0a\0\0");
        let mut part = BytesMut::from(&full[..6]);
        assert_eq!(parse(&mut part).unwrap(), None);
    }

    #[test]
    fn rejects_bad_packets() {
        let mut b = BytesMut::from(&[0u8, 0, 0x27, 0x11][..]);
        assert!(matches!(parse(&mut b), Err(ProtoError::TooLarge { .. })));
        assert_eq!(
            parse(&mut startup(0x0002_0000, b"\0")),
            Err(ProtoError::UnsupportedProtocol { major: 2, minor: 0 })
        );
        assert!(parse(&mut startup(196_608, b"user\0alice")).is_err());
        assert!(parse(&mut startup(196_608, b"user\0a\0user\0b\0\0")).is_err());
        assert!(parse(&mut BytesMut::from(&[0u8, 0, 0, 3][..])).is_err());
    }
}
