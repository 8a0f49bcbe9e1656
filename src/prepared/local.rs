//! A batch of Parse + Sync answered without a server (sans-IO).
//!
//! libpq's `PQprepare` sends Parse + Sync and blocks until it is answered. A client that does so
//! while every server is held by open transactions waits for a server; when those transactions
//! belong to clients of the same blocked thread (pgbench `-M prepared`, several clients per
//! thread), nothing ever moves again. A Parse + Sync answers nothing but "parsed": so when every
//! Parse of such a batch is of a definition (query text and parameter types) a server has already
//! accepted, the pooler answers the batch itself, and the statements are prepared on a server at
//! their first Bind, as after any move between servers.
//!
//! A Describe is not answered here, although a server may have described the statement before: a
//! client that prepares after `ALTER TABLE` must be shown the new columns, as PostgreSQL shows them,
//! and only a server can tell whether they changed since. A statement whose table has gone since a
//! server accepted it fails at its first use rather than at its Parse.

use super::{ClientLimits, ClientStatements, Registry, Statement};
use crate::proto::{encode, frontend, scan, ProtoError};
use bytes::BytesMut;
use dashmap::DashSet;
use std::sync::Arc;

/// The most Parse messages one batch answered here may have: a longer one goes to a server.
const MAX_PARSES: usize = 32;

/// The statements a server of one pool has accepted a Parse of. Per pool, as a database (and a
/// user's search_path) decides what a query text means.
#[derive(Debug, Default)]
pub struct Accepted(DashSet<u64>);

impl Accepted {
    /// A server accepted a Parse of statement `id`.
    pub fn learn(&self, id: u64) {
        if !self.0.contains(&id) {
            self.0.insert(id);
        }
    }

    /// The statement for `definition`, if a server has accepted it.
    fn statement(&self, registry: &Registry, definition: &[u8]) -> Option<Arc<Statement>> {
        registry
            .lookup(definition)
            .filter(|s| self.0.contains(&s.id))
    }

    /// Forgets the statements that are gone from the registry (`live`: the ids there are).
    pub fn retain(&self, live: &std::collections::HashSet<u64>) {
        self.0.retain(|id| live.contains(id));
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Answers the batch at the start of `buf` into `out` when it can be answered without a server,
/// recording its statements as the client's; returns how many bytes of `buf` it was. `None`: it
/// cannot (it needs a server, or is not all here yet), and nothing was changed.
pub fn answer(
    buf: &[u8],
    known: (&Registry, &Accepted),
    (client, limits): (&mut ClientStatements, ClientLimits),
    out: &mut BytesMut,
) -> Result<Option<usize>, ProtoError> {
    let Some((parses, used)) = plan(buf, known, (client, limits))? else {
        return Ok(None);
    };
    for (name, stmt) in parses {
        client.insert(name, stmt);
        encode::parse_complete(out);
    }
    encode::ready_for_query(out, b'I');
    Ok(Some(used))
}

/// A batch's named Parses (the client's name, the statement) and its length in bytes.
type Planned<'a> = (Vec<(&'a [u8], Arc<Statement>)>, usize);

/// The batch at the start of `buf`, if it is Parses and a Sync that can all be answered here.
fn plan<'a>(
    buf: &'a [u8],
    (registry, accepted): (&Registry, &Accepted),
    (client, limits): (&ClientStatements, ClientLimits),
) -> Result<Option<Planned<'a>>, ProtoError> {
    let mut parses: Vec<(&'a [u8], Arc<Statement>)> = Vec::new();
    let mut at = 0;
    let mut bytes = client.bytes();
    while parses.len() <= MAX_PARSES {
        let Some(h) = scan::header(&buf[at..])? else {
            return Ok(None);
        };
        let Some(body) = buf.get(at + 5..at + h.total) else {
            return Ok(None);
        };
        at += h.total;
        match h.tag {
            b'P' => {
                let p = frontend::parse(body)?;
                // Unnamed: it must live on the server its Bind goes to. A name the client has, or
                // parses twice here, gets 42P05 from PostgreSQL, and one past the client's limits
                // 54000: the server path answers those.
                bytes = bytes.saturating_add(p.name.len() + p.definition.len());
                let fresh = !p.name.is_empty()
                    && client.get(p.name).is_none()
                    && !parses.iter().any(|(n, _)| *n == p.name)
                    && client.len() + parses.len() < limits.statements
                    && bytes <= limits.bytes;
                match accepted.statement(registry, p.definition).filter(|_| fresh) {
                    Some(stmt) => parses.push((p.name, stmt)),
                    None => return Ok(None),
                }
            }
            // A Sync with a body is malformed: the server is to refuse it, as PostgreSQL does.
            b'S' if body.is_empty() && !parses.is_empty() => return Ok(Some((parses, at))),
            _ => return Ok(None),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut b = BytesMut::new();
        b.put_u8(tag);
        b.put_u32(body.len() as u32 + 4);
        b.put_slice(body);
        b.to_vec()
    }
    fn parse(name: &str, sql: &str) -> Vec<u8> {
        frame(b'P', format!("{name}\0{sql}\0\0\0").as_bytes())
    }
    fn sync() -> Vec<u8> {
        frame(b'S', b"")
    }
    fn tags(mut b: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        while b.len() >= 5 {
            out.push(b[0]);
            b = &b[1 + u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize..];
        }
        out
    }

    #[test]
    fn a_parse_no_server_has_accepted_needs_a_server() {
        let (r, a) = (Registry::default(), Accepted::default());
        let mut c = ClientStatements::default();
        let batch = [parse("a", "SELECT 1"), sync()].concat();
        let _ = r.intern(b"SELECT 1\0\0\0");
        let mut out = BytesMut::new();
        assert_eq!(
            answer(&batch, (&r, &a), (&mut c, ClientLimits::NONE), &mut out).unwrap(),
            None
        );
        assert!(c.get(b"a").is_none() && out.is_empty());
    }

    #[test]
    fn parses_and_sync_of_accepted_statements_are_answered_here() {
        let (r, a) = (Registry::default(), Accepted::default());
        let one = r.intern(b"SELECT 1\0\0\0");
        let two = r.intern(b"SELECT 2\0\0\0");
        a.learn(one.id);
        a.learn(two.id);
        let mut c = ClientStatements::default();
        let batch = [parse("a", "SELECT 1"), parse("b", "SELECT 2"), sync()].concat();
        let next = parse("c", "x");
        let mut out = BytesMut::new();
        let used = answer(
            &[&batch[..], &next].concat(),
            (&r, &a),
            (&mut c, ClientLimits::NONE),
            &mut out,
        )
        .unwrap();
        assert_eq!(used, Some(batch.len()), "the next batch stays");
        assert_eq!(tags(&out), b"11Z");
        assert_eq!(&out[out.len() - 1..], b"I");
        assert_eq!(c.get(b"a").map(|s| s.id), Some(one.id));
        assert_eq!(c.get(b"b").map(|s| s.id), Some(two.id));
    }

    #[test]
    fn what_postgresql_would_refuse_or_a_server_must_see_goes_to_a_server() {
        let (r, a) = (Registry::default(), Accepted::default());
        let stmt = r.intern(b"SELECT 1\0\0\0");
        a.learn(stmt.id);
        let mut c = ClientStatements::default();
        let cases = [
            // A second Parse of a name (42P05 on PostgreSQL).
            [parse("a", "SELECT 1"), parse("a", "SELECT 1"), sync()].concat(),
            // Unnamed: it must live on the server the Bind goes to.
            [parse("", "SELECT 1"), sync()].concat(),
            // A Describe: the columns may have changed since a server showed them.
            [parse("a", "SELECT 1"), frame(b'D', b"Sa\0"), sync()].concat(),
            // A Flush asks for answers before the Sync.
            [parse("a", "SELECT 1"), frame(b'H', b""), sync()].concat(),
            // Not all here yet.
            parse("a", "SELECT 1"),
            // A Sync alone, and a Sync with a body (malformed, for the server to refuse).
            sync(),
            [parse("a", "SELECT 1"), frame(b'S', b"x")].concat(),
        ];
        for batch in cases {
            let mut out = BytesMut::new();
            assert_eq!(
                answer(&batch, (&r, &a), (&mut c, ClientLimits::NONE), &mut out).unwrap(),
                None
            );
            assert!(out.is_empty() && c.is_empty());
        }
        c.insert(b"a", stmt);
        let batch = [parse("a", "SELECT 1"), sync()].concat();
        let mut out = BytesMut::new();
        assert_eq!(
            answer(&batch, (&r, &a), (&mut c, ClientLimits::NONE), &mut out).unwrap(),
            None,
            "a name the client has"
        );
    }
}
