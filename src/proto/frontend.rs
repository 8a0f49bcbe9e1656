//! Bodies of the extended-protocol messages a client sends, as far as the pooler must read them to
//! track prepared statements. Every parser borrows from the body and checks every length it reads.

use super::ProtoError;
use std::borrow::Cow;

/// Splits a NUL-terminated string off the front of `b`.
fn cstr<'a>(b: &'a [u8], what: &'static str) -> Result<(&'a [u8], &'a [u8]), ProtoError> {
    let end = b
        .iter()
        .position(|&c| c == 0)
        .ok_or(ProtoError::Malformed(what))?;
    Ok((&b[..end], &b[end + 1..]))
}

/// Parse: a statement name, then everything that defines the statement (query text and parameter
/// types), kept as one slice because it is what makes two statements the same.
#[derive(Debug, PartialEq, Eq)]
pub struct Parse<'a> {
    pub name: &'a [u8],
    pub definition: &'a [u8],
}

pub fn parse(body: &[u8]) -> Result<Parse<'_>, ProtoError> {
    let (name, definition) = cstr(body, "Parse")?;
    let (_query, rest) = cstr(definition, "Parse")?;
    let Some((n, types)) = rest.split_first_chunk::<2>() else {
        return Err(ProtoError::Malformed("Parse"));
    };
    let n = u16::from_be_bytes(*n) as usize;
    if types.len() != n * 4 {
        return Err(ProtoError::Malformed("Parse"));
    }
    Ok(Parse { name, definition })
}

/// The statement name at the start of a Parse whose body is not all here.
pub fn parse_name(head: &[u8]) -> Result<&[u8], ProtoError> {
    cstr(head, "Parse").map(|(name, _)| name)
}

/// Bind: portal and statement names, then the parameters (passed on untouched).
#[derive(Debug, PartialEq, Eq)]
pub struct Bind<'a> {
    pub portal: &'a [u8],
    pub statement: &'a [u8],
    pub rest: &'a [u8],
}

pub fn bind(body: &[u8]) -> Result<Bind<'_>, ProtoError> {
    let (portal, rest) = cstr(body, "Bind")?;
    let (statement, rest) = cstr(rest, "Bind")?;
    Ok(Bind {
        portal,
        statement,
        rest,
    })
}

/// Describe and Close share a shape: `S` (statement) or `P` (portal), then a name.
#[derive(Debug, PartialEq, Eq)]
pub struct Target<'a> {
    pub kind: u8,
    pub name: &'a [u8],
}

pub fn target<'a>(body: &'a [u8], what: &'static str) -> Result<Target<'a>, ProtoError> {
    let Some((&kind, rest)) = body.split_first() else {
        return Err(ProtoError::Malformed(what));
    };
    if kind != b'S' && kind != b'P' {
        return Err(ProtoError::Malformed(what));
    }
    let (name, tail) = cstr(rest, what)?;
    if !tail.is_empty() {
        return Err(ProtoError::Malformed(what));
    }
    Ok(Target { kind, name })
}

/// What a short simple-protocol query means to the statement tracker.
#[derive(Debug, PartialEq, Eq)]
pub enum Reset<'a> {
    /// `DEALLOCATE [PREPARE] ALL`
    DeallocateAll,
    /// `DEALLOCATE [PREPARE] name`: the name as PostgreSQL reads it (quotes removed, or folded to
    /// lower case when unquoted).
    Deallocate(Cow<'a, [u8]>),
    /// `DISCARD ALL`
    DiscardAll,
}

/// Recognises a Query body that is exactly one DEALLOCATE or DISCARD ALL statement.
pub fn reset_statement(body: &[u8]) -> Option<Reset<'_>> {
    // Nearly every query starts with another letter: decide that before scanning the whole text.
    let first = body.iter().find(|b| !b.is_ascii_whitespace())?;
    if !matches!(first, b'd' | b'D') {
        return None;
    }
    let (sql, _) = cstr(body, "Query").ok()?;
    let sql = sql.trim_ascii();
    let sql = sql.strip_suffix(b";").unwrap_or(sql).trim_ascii();
    let mut words = sql
        .split(|c| c.is_ascii_whitespace())
        .filter(|w| !w.is_empty());
    let first = words.next()?;
    if first.eq_ignore_ascii_case(b"DISCARD") {
        let all = words.next()?;
        return (all.eq_ignore_ascii_case(b"ALL") && words.next().is_none())
            .then_some(Reset::DiscardAll);
    }
    if !first.eq_ignore_ascii_case(b"DEALLOCATE") {
        return None;
    }
    let mut name = words.next()?;
    if name.eq_ignore_ascii_case(b"PREPARE") {
        name = words.next()?;
    }
    if words.next().is_some() {
        return None;
    }
    if name.eq_ignore_ascii_case(b"ALL") {
        return Some(Reset::DeallocateAll);
    }
    match name {
        [b'"', inner @ .., b'"'] if !inner.contains(&b'"') => {
            Some(Reset::Deallocate(Cow::Borrowed(inner)))
        }
        _ if name
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c >= 0x80) =>
        {
            Some(Reset::Deallocate(Cow::Owned(name.to_ascii_lowercase())))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_bind_and_targets() {
        let body = b"s1\0SELECT $1\0\0\x01\0\0\0\x17";
        let p = parse(body).unwrap();
        assert_eq!(p.name, b"s1");
        assert_eq!(p.definition, b"SELECT $1\0\0\x01\0\0\0\x17");
        assert!(parse(b"s1\0SELECT 1\0\0\x01").is_err(), "missing type oid");
        assert!(parse(b"s1").is_err());
        let b = bind(b"\0s1\0\0\0\0\0\0\0").unwrap();
        assert_eq!((b.portal, b.statement), (&b""[..], &b"s1"[..]));
        assert_eq!(
            target(b"Ss1\0", "Close").unwrap(),
            Target {
                kind: b'S',
                name: b"s1"
            }
        );
        assert!(target(b"Xs1\0", "Close").is_err());
        assert!(target(b"S", "Close").is_err());
    }

    #[test]
    fn recognises_resets_only_when_alone() {
        assert_eq!(
            reset_statement(b"DEALLOCATE ALL\0"),
            Some(Reset::DeallocateAll)
        );
        assert_eq!(
            reset_statement(b"  deallocate prepare all ;\0"),
            Some(Reset::DeallocateAll)
        );
        assert_eq!(
            reset_statement(b"DEALLOCATE s1\0"),
            Some(Reset::Deallocate(Cow::Borrowed(b"s1")))
        );
        assert_eq!(
            reset_statement(b"DEALLOCATE S_1\0"),
            Some(Reset::Deallocate(Cow::Borrowed(b"s_1")))
        );
        assert_eq!(
            reset_statement(b"DEALLOCATE \"My S\"\0"),
            None,
            "spaces split the quoted name"
        );
        assert_eq!(
            reset_statement(b"DEALLOCATE \"MyS\"\0"),
            Some(Reset::Deallocate(Cow::Borrowed(b"MyS")))
        );
        assert_eq!(reset_statement(b"discard all\0"), Some(Reset::DiscardAll));
        assert_eq!(reset_statement(b"DISCARD PLANS\0"), None);
        assert_eq!(reset_statement(b"DEALLOCATE s1; SELECT 1\0"), None);
        assert_eq!(reset_statement(b"SELECT 1\0"), None);
    }
}
