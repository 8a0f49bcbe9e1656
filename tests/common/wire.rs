//! The PostgreSQL wire protocol by hand, for tests that need to see or send exact bytes.
#![allow(dead_code, clippy::unwrap_used)]

use super::{MD5_PASSWORD, MD5_USER};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A simple-protocol Query message.
pub fn query(sql: &str) -> Vec<u8> {
    let mut m = vec![b'Q'];
    m.extend_from_slice(&(4 + sql.len() as u32 + 1).to_be_bytes());
    m.extend_from_slice(sql.as_bytes());
    m.push(0);
    m
}

/// A startup packet with the given protocol version code and parameters.
pub fn startup(version: u32, params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = version.to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut pkt = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    pkt.extend_from_slice(&body);
    pkt
}

/// Reads until the peer closes (or 10 s pass) and returns everything it sent.
pub async fn read_all(raw: &mut tokio::net::TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        raw.read_to_end(&mut buf),
    )
    .await;
    buf
}

/// The fields (code byte, value) of the first ErrorResponse in a stream of backend messages.
pub fn first_error(mut bytes: &[u8]) -> Option<Vec<(u8, String)>> {
    while bytes.len() >= 5 {
        let len = u32::from_be_bytes(bytes[1..5].try_into().ok()?) as usize;
        let body = bytes.get(5..1 + len)?;
        if bytes[0] == b'E' {
            let fields = body
                .split(|&b| b == 0)
                .filter(|f| !f.is_empty())
                .map(|f| (f[0], String::from_utf8_lossy(&f[1..]).into_owned()))
                .collect();
            return Some(fields);
        }
        bytes = &bytes[1 + len..];
    }
    None
}

/// A message as it stands on the wire, from the tag and body [`read_message`] gives.
pub fn framed(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// The SQLSTATE of the first ErrorResponse in a stream of backend messages.
pub fn error_code(bytes: &[u8]) -> Option<String> {
    first_error(bytes)?
        .into_iter()
        .find(|(c, _)| *c == b'C')
        .map(|(_, v)| v)
}

/// The message of the first ErrorResponse in a stream of backend messages.
pub fn error_message(bytes: &[u8]) -> Option<String> {
    first_error(bytes)?
        .into_iter()
        .find(|(c, _)| *c == b'M')
        .map(|(_, v)| v)
}

/// Logs in as the md5 user by hand (MD5 over the wire), reading up to ReadyForQuery.
pub async fn login_md5(raw: &mut tokio::net::TcpStream) {
    login_md5_to(raw, "appdb").await;
}

/// Logs in as the md5 user to `database`, up to ReadyForQuery.
pub async fn login_md5_to(raw: &mut tokio::net::TcpStream, database: &str) {
    login_md5_with(raw, database, &[]).await;
}

/// Logs in as the md5 user to `database` with the startup parameters `extra`, up to ReadyForQuery;
/// returns the ParameterStatus pairs the client was shown, in order.
pub async fn login_md5_with(
    raw: &mut tokio::net::TcpStream,
    database: &str,
    extra: &[(&str, &str)],
) -> Vec<(String, String)> {
    use md5::{Digest, Md5};
    let mut params = vec![("user", MD5_USER), ("database", database)];
    params.extend_from_slice(extra);
    let pkt = startup(196608, &params);
    raw.write_all(&pkt).await.unwrap();
    let (tag, msg) = read_message(raw).await;
    assert_eq!(tag, b'R');
    assert_eq!(
        &msg[..4],
        &5u32.to_be_bytes(),
        "expected an MD5 password request"
    );
    let salt = &msg[4..8];
    let inner = format!("{:x}", Md5::digest(format!("{MD5_PASSWORD}{MD5_USER}")));
    let mut h = Md5::new();
    h.update(inner.as_bytes());
    h.update(salt);
    let answer = format!("md5{:x}", h.finalize());
    let mut p = vec![b'p'];
    p.extend_from_slice(&((4 + answer.len() + 1) as u32).to_be_bytes());
    p.extend_from_slice(answer.as_bytes());
    p.push(0);
    raw.write_all(&p).await.unwrap();
    let mut shown = Vec::new();
    loop {
        let (tag, body) = read_message(raw).await;
        assert_ne!(tag, b'E', "login failed");
        match tag {
            b'Z' => return shown,
            b'S' => {
                let mut parts = body.split(|&b| b == 0).map(|p| String::from_utf8_lossy(p));
                let name = parts.next().unwrap().into_owned();
                shown.push((name, parts.next().unwrap().into_owned()));
            }
            _ => {}
        }
    }
}

pub async fn read_message(raw: &mut tokio::net::TcpStream) -> (u8, Vec<u8>) {
    let tag = raw.read_u8().await.unwrap();
    let len = raw.read_u32().await.unwrap() as usize;
    let mut body = vec![0; len - 4];
    raw.read_exact(&mut body).await.unwrap();
    (tag, body)
}

/// A Parse message of statement `name` with no parameter types.
pub fn parse(name: &str, sql: &str) -> Vec<u8> {
    let body_len = name.len() + 1 + sql.len() + 1 + 2;
    let mut m = vec![b'P'];
    m.extend_from_slice(&(4 + body_len as u32).to_be_bytes());
    m.extend_from_slice(name.as_bytes());
    m.push(0);
    m.extend_from_slice(sql.as_bytes());
    m.push(0);
    m.extend_from_slice(&0u16.to_be_bytes());
    m
}

/// A Bind of statement `name` to the unnamed portal, no parameters, then an Execute of it.
pub fn bind_execute(name: &str) -> Vec<u8> {
    let mut m = vec![b'B'];
    m.extend_from_slice(&((4 + 1 + name.len() + 1 + 6) as u32).to_be_bytes());
    m.push(0);
    m.extend_from_slice(name.as_bytes());
    m.push(0);
    m.extend_from_slice(&[0; 6]);
    m.extend_from_slice(&[b'E', 0, 0, 0, 9, 0, 0, 0, 0, 0]);
    m
}

/// A Close of statement `name`.
pub fn close_statement(name: &str) -> Vec<u8> {
    let mut body = vec![b'S'];
    body.extend_from_slice(name.as_bytes());
    body.push(0);
    framed(b'C', &body)
}

pub fn sync() -> Vec<u8> {
    vec![b'S', 0, 0, 0, 4]
}

/// Reads messages up to and including ReadyForQuery; returns their tags and the error code if any.
pub async fn read_until_ready(raw: &mut tokio::net::TcpStream) -> (Vec<u8>, Option<String>) {
    let mut tags = Vec::new();
    let mut code = None;
    loop {
        let (tag, body) = read_message(raw).await;
        tags.push(tag);
        if tag == b'E' {
            code = error_code(&framed(tag, &body));
        }
        if tag == b'Z' {
            return (tags, code);
        }
    }
}

/// The (name, type OID) of each column of a RowDescription body.
pub fn row_description(body: &[u8]) -> Vec<(String, u32)> {
    let n = u16::from_be_bytes([body[0], body[1]]) as usize;
    let mut rest = &body[2..];
    let mut cols = Vec::with_capacity(n);
    for _ in 0..n {
        let end = rest.iter().position(|&b| b == 0).unwrap();
        let name = String::from_utf8(rest[..end].to_vec()).unwrap();
        rest = &rest[end + 1..];
        let oid = u32::from_be_bytes([rest[6], rest[7], rest[8], rest[9]]);
        rest = &rest[18..];
        cols.push((name, oid));
    }
    cols
}
