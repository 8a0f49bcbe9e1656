//! The libpq-style `key=value ...` string of a `[databases]` entry, as PgBouncer reads it: values may
//! be single-quoted with `\'` and `\\` escapes; spaces around `=` are allowed.

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConnStrError {
    #[error("missing \"=\" after \"{0}\"")]
    MissingEquals(String),
    #[error("unterminated quoted value for \"{0}\"")]
    UnterminatedQuote(String),
    #[error("empty key at position {0}")]
    EmptyKey(usize),
}

/// Parses into (lowercased key, value) pairs in order.
pub fn parse(s: &str) -> Result<Vec<(String, String)>, ConnStrError> {
    let mut out = Vec::new();
    let mut chars = s.char_indices().peekable();
    loop {
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let Some(&(start, _)) = chars.peek() else { return Ok(out) };
        let mut key = String::new();
        while let Some((_, c)) = chars.next_if(|(_, c)| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        if chars.next_if(|(_, c)| *c == '=').is_none() {
            return Err(if key.is_empty() { ConnStrError::EmptyKey(start) } else { ConnStrError::MissingEquals(key) });
        }
        if key.is_empty() {
            return Err(ConnStrError::EmptyKey(start));
        }
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if(|(_, c)| *c == '\'').is_some() {
            loop {
                match chars.next() {
                    None => return Err(ConnStrError::UnterminatedQuote(key)),
                    Some((_, '\'')) => break,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, c)) => value.push(c),
                        None => return Err(ConnStrError::UnterminatedQuote(key)),
                    },
                    Some((_, c)) => value.push(c),
                }
            }
        } else {
            while let Some((_, c)) = chars.next_if(|(_, c)| !c.is_whitespace()) {
                value.push(c);
            }
        }
        out.push((key.to_ascii_lowercase(), value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_quoted() {
        let p = parse("host=127.0.0.1  port = 5432 password='it\\'s a \\\\ secret' DBNAME=x").unwrap();
        assert_eq!(
            p,
            vec![
                ("host".into(), "127.0.0.1".into()),
                ("port".into(), "5432".into()),
                ("password".into(), "it's a \\ secret".into()),
                ("dbname".into(), "x".into()),
            ]
        );
        assert_eq!(parse("").unwrap(), vec![]);
    }

    #[test]
    fn errors() {
        assert_eq!(parse("host"), Err(ConnStrError::MissingEquals("host".into())));
        assert_eq!(parse("=x"), Err(ConnStrError::EmptyKey(0)));
        assert_eq!(parse("password='abc"), Err(ConnStrError::UnterminatedQuote("password".into())));
    }
}
