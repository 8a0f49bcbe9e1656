//! The libpq-style connection string of a `[databases]` entry, parsed as
//! PgBouncer's `parse_database` does.
//!
//! - `key=value` pairs separated by whitespace; whitespace around `=` is
//!   allowed. Keys are ASCII-lowercased; pairs are returned in order,
//!   duplicates included (the caller decides; PgBouncer: last wins).
//! - Unquoted values run to the next whitespace and have no escapes. As in
//!   libpq and PgBouncer, `host= port=1` gives `host` the value `port=1`;
//!   write `host=''` for an empty value.
//! - Single-quoted values accept `\'`/`\\` (libpq) and `''` (PgBouncer) as
//!   escapes. Any other backslash is kept, so `'C:\dir'` stays intact.
//! - A closing quote must be followed by whitespace or the end (PgBouncer).
//!
//! Errors give a 0-based byte offset and never echo text, since values
//! (e.g. `password=`) may be secret.

use std::iter::Peekable;
use std::str::CharIndices;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnStrError {
    #[error("connection string: expected \"=\" at offset {pos}")]
    MissingEquals { pos: usize },
    #[error("connection string: unterminated quoted value starting at offset {pos}")]
    UnterminatedQuote { pos: usize },
    #[error("connection string: empty key at offset {pos}")]
    EmptyKey { pos: usize },
    #[error("connection string: expected whitespace after closing quote at offset {pos}")]
    JunkAfterQuote { pos: usize },
}

impl ConnStrError {
    /// 0-based byte offset into the parsed string.
    pub fn pos(&self) -> usize {
        match self {
            ConnStrError::MissingEquals { pos }
            | ConnStrError::UnterminatedQuote { pos }
            | ConnStrError::EmptyKey { pos }
            | ConnStrError::JunkAfterQuote { pos } => *pos,
        }
    }
}

/// C `isspace` in the "C" locale.
fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c')
}

type Chars<'a> = Peekable<CharIndices<'a>>;

fn skip_space(it: &mut Chars<'_>) {
    while it.next_if(|&(_, c)| is_space(c)).is_some() {}
}

/// Offset of the next char, or the string length at the end.
fn offset(it: &mut Chars<'_>, len: usize) -> usize {
    it.peek().map_or(len, |&(i, _)| i)
}

pub fn parse(s: &str) -> Result<Vec<(String, String)>, ConnStrError> {
    let len = s.len();
    let mut it = s.char_indices().peekable();
    let mut out = Vec::new();
    loop {
        skip_space(&mut it);
        let Some(&(start, _)) = it.peek() else { break };
        let mut key = String::new();
        while let Some((_, c)) = it.next_if(|&(_, c)| c != '=' && !is_space(c)) {
            key.push(c.to_ascii_lowercase());
        }
        if key.is_empty() {
            return Err(ConnStrError::EmptyKey { pos: start });
        }
        skip_space(&mut it);
        if it.next_if(|&(_, c)| c == '=').is_none() {
            return Err(ConnStrError::MissingEquals {
                pos: offset(&mut it, len),
            });
        }
        skip_space(&mut it);
        let value = match it.next_if(|&(_, c)| c == '\'') {
            Some((quote, _)) => quoted(&mut it, quote, len)?,
            None => {
                let mut v = String::new();
                while let Some((_, c)) = it.next_if(|&(_, c)| !is_space(c)) {
                    v.push(c);
                }
                v
            }
        };
        out.push((key, value));
    }
    Ok(out)
}

/// Reads a quoted value after its opening quote at `quote`.
fn quoted(it: &mut Chars<'_>, quote: usize, len: usize) -> Result<String, ConnStrError> {
    let unterminated = ConnStrError::UnterminatedQuote { pos: quote };
    let mut v = String::new();
    loop {
        match it.next() {
            None => return Err(unterminated),
            Some((_, '\\')) => match it.next_if(|&(_, c)| c == '\'' || c == '\\') {
                Some((_, c)) => v.push(c),
                None => v.push('\\'),
            },
            Some((_, '\'')) => {
                if it.next_if(|&(_, c)| c == '\'').is_some() {
                    v.push('\'');
                    continue;
                }
                return match it.peek() {
                    Some(&(_, c)) if !is_space(c) => Err(ConnStrError::JunkAfterQuote {
                        pos: offset(it, len),
                    }),
                    _ => Ok(v),
                };
            }
            Some((_, c)) => v.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(s: &str) -> Vec<(String, String)> {
        parse(s).unwrap()
    }

    fn p(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn simple_pairs_in_order() {
        assert_eq!(
            pairs("host=127.0.0.1 dbname=x  Port=5432\tuser=bob"),
            p(&[
                ("host", "127.0.0.1"),
                ("dbname", "x"),
                ("port", "5432"),
                ("user", "bob")
            ])
        );
        assert_eq!(pairs(""), p(&[]));
        assert_eq!(pairs("   \t "), p(&[]));
    }

    #[test]
    fn spaces_around_equals() {
        assert_eq!(
            pairs(" host = foo   port= 1 dbname =d "),
            p(&[("host", "foo"), ("port", "1"), ("dbname", "d")])
        );
        // libpq/PgBouncer quirk: the value after `=` skips whitespace.
        assert_eq!(pairs("host= port=1"), p(&[("host", "port=1")]));
        assert_eq!(pairs("host="), p(&[("host", "")]));
        assert_eq!(pairs("host=''"), p(&[("host", "")]));
    }

    #[test]
    fn value_may_contain_equals_and_duplicates_kept() {
        assert_eq!(
            pairs("options=-c=x host=a host=b"),
            p(&[("options", "-c=x"), ("host", "a"), ("host", "b")])
        );
    }

    #[test]
    fn quoted_values_with_escapes() {
        assert_eq!(
            pairs(r"password='it\'s a \\ secret' user='o''neil' path='C:\dir'"),
            p(&[
                ("password", r"it's a \ secret"),
                ("user", "o'neil"),
                ("path", r"C:\dir"),
            ])
        );
        assert_eq!(pairs("a='x y'\tb='é'"), p(&[("a", "x y"), ("b", "é")]));
    }

    #[test]
    fn errors_name_the_offset() {
        assert_eq!(
            parse("host=a port"),
            Err(ConnStrError::MissingEquals { pos: 11 })
        );
        assert_eq!(
            parse("host  x=1"),
            Err(ConnStrError::MissingEquals { pos: 6 })
        );
        assert_eq!(parse("a=1 =2"), Err(ConnStrError::EmptyKey { pos: 4 }));
        assert_eq!(
            parse("a=1 password='abc"),
            Err(ConnStrError::UnterminatedQuote { pos: 13 })
        );
        assert_eq!(
            parse(r"a='x\'"),
            Err(ConnStrError::UnterminatedQuote { pos: 2 })
        );
        assert_eq!(
            parse("a='x'y=1"),
            Err(ConnStrError::JunkAfterQuote { pos: 5 })
        );
        let e = parse("password='hunter2").unwrap_err();
        assert_eq!(e.pos(), 9);
        assert!(!e.to_string().contains("hunter2"));
        assert!(e.to_string().contains("offset 9"));
    }

    #[test]
    fn nasty_inputs_never_panic() {
        let long = "k".repeat(1 << 20);
        for s in [
            "=",
            "==",
            "'",
            "''",
            "a='",
            "a='\\",
            "a=\\",
            "a",
            "\u{1F600}=\u{1F600}",
            "é='ü''",
            "a=''''",
            "\0=\0",
            "[",
            "a = ' ",
            "a=\u{85}b",
        ] {
            let _ = parse(s);
        }
        let _ = parse(&long);
        let _ = parse(&format!("a='{long}"));
        let _ = parse(&format!("{long}={long}"));
    }
}
