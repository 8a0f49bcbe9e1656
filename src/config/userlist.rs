//! PgBouncer's `auth_file` (userlist.txt): one `"user" "secret"` per line.
//!
//! Inside quotes `""` is a literal `"`. Fields after the second are ignored
//! (PgBouncer skips the rest of the line). Stricter than PgBouncer: only
//! whitespace may separate the two fields, and a field cannot span lines
//! (PgBouncer would silently scan ahead to the next quote).
//!
//! Secrets never appear in errors or `Debug` output.

use std::fmt;

#[derive(Clone, PartialEq, Eq)]
pub struct UserlistEntry {
    pub user: String,
    pub secret: String,
    /// 1-based line number.
    pub line: usize,
}

impl fmt::Debug for UserlistEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserlistEntry")
            .field("user", &self.user)
            .field("secret", &"<redacted>")
            .field("line", &self.line)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UserlistError {
    #[error("auth file line {line}: expected a double-quoted user name")]
    ExpectedUser { line: usize },
    #[error("auth file line {line}: unterminated quoted user name")]
    UnterminatedUser { line: usize },
    #[error("auth file line {line}: expected a double-quoted secret after the user name")]
    MissingSecret { line: usize },
    #[error("auth file line {line}: unterminated quoted secret")]
    UnterminatedSecret { line: usize },
}

impl UserlistError {
    /// 1-based line number of the error.
    pub fn line(&self) -> usize {
        match *self {
            UserlistError::ExpectedUser { line }
            | UserlistError::UnterminatedUser { line }
            | UserlistError::MissingSecret { line }
            | UserlistError::UnterminatedSecret { line } => line,
        }
    }
}

/// C `isspace` in the "C" locale.
fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c')
}

pub fn parse(text: &str) -> Result<Vec<UserlistEntry>, UserlistError> {
    let mut out = Vec::new();
    for (idx, raw) in text.split('\n').enumerate() {
        let line = idx + 1;
        let rest = raw.trim_start_matches(is_space);
        if rest.is_empty() || rest.starts_with(';') || rest.starts_with('#') {
            continue;
        }
        let rest = rest
            .strip_prefix('"')
            .ok_or(UserlistError::ExpectedUser { line })?;
        let (user, rest) = unquote(rest).ok_or(UserlistError::UnterminatedUser { line })?;
        let rest = rest
            .trim_start_matches(is_space)
            .strip_prefix('"')
            .ok_or(UserlistError::MissingSecret { line })?;
        let (secret, _ignored) = unquote(rest).ok_or(UserlistError::UnterminatedSecret { line })?;
        out.push(UserlistEntry { user, secret, line });
    }
    Ok(out)
}

/// Reads a field after its opening `"`; returns it and the text after the
/// closing quote, or `None` if the line ends first.
fn unquote(s: &str) -> Option<(String, &str)> {
    let mut out = String::new();
    let mut it = s.char_indices();
    while let Some((i, c)) = it.next() {
        if c != '"' {
            out.push(c);
            continue;
        }
        let after = s.get(i + 1..)?;
        if after.starts_with('"') {
            out.push('"');
            it.next();
        } else {
            return Some((out, after));
        }
    }
    None
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretKind {
    Plain,
    /// `md5` + 32 lowercase hex digits: md5(password || user).
    Md5,
    /// `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`.
    ScramSha256,
}

/// Like PgBouncer, a malformed SCRAM or md5 secret classifies as `Plain`
/// (and would be used as a cleartext password).
pub fn classify(secret: &str) -> SecretKind {
    if is_md5(secret) {
        SecretKind::Md5
    } else if is_scram(secret) {
        SecretKind::ScramSha256
    } else {
        SecretKind::Plain
    }
}

fn is_md5(s: &str) -> bool {
    s.strip_prefix("md5").is_some_and(|hex| {
        hex.len() == 32 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// Length of a SHA-256 digest, the size of StoredKey and ServerKey.
const SCRAM_KEY_LEN: usize = 32;

fn is_scram(s: &str) -> bool {
    let parts = s.strip_prefix("SCRAM-SHA-256$").and_then(|rest| {
        let (iter_salt, keys) = rest.split_once('$')?;
        let (iter, salt) = iter_salt.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        Some((iter, salt, stored, server))
    });
    let Some((iter, salt, stored, server)) = parts else {
        return false;
    };
    // `parse` alone would accept a leading `+`.
    iter.bytes().all(|b| b.is_ascii_digit())
        && iter.parse::<u32>().is_ok_and(|n| n > 0)
        && base64_len(salt).is_some_and(|n| n > 0)
        && base64_len(stored) == Some(SCRAM_KEY_LEN)
        && base64_len(server) == Some(SCRAM_KEY_LEN)
}

/// Decoded length of padded standard base64, or `None` if malformed.
fn base64_len(s: &str) -> Option<usize> {
    if s.is_empty() || !s.len().is_multiple_of(4) {
        return None;
    }
    let body = s.trim_end_matches('=');
    let pad = s.len() - body.len();
    let ok = pad <= 2
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/');
    ok.then(|| s.len() / 4 * 3 - pad)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STORED: &str = "4Adkm+Cd9+aIeV/4pMpRSlLmp0XzWqSUSuIGizo2TtM=";
    const SERVER: &str = "JZzSuz1zvYI4CWFvVq5hXCHP3gB4ZS7pAy+IRJ5S6+E=";

    fn users(text: &str) -> Vec<(String, String, usize)> {
        parse(text)
            .unwrap()
            .into_iter()
            .map(|e| (e.user, e.secret, e.line))
            .collect()
    }

    fn u(user: &str, secret: &str, line: usize) -> (String, String, usize) {
        (user.into(), secret.into(), line)
    }

    #[test]
    fn basic_comments_and_blank_lines() {
        let text = "; comment\n# another\n\n  \"alice\" \"pw1\"\r\n\t\"bob\"\t\"md5abc\" extra \"fields\"\n";
        assert_eq!(users(text), [u("alice", "pw1", 4), u("bob", "md5abc", 5)]);
        assert!(parse("").unwrap().is_empty());
    }

    #[test]
    fn doubled_quotes_are_literal() {
        assert_eq!(users(r#""a""b" "p""w""""#), [u(r#"a"b"#, r#"p"w""#, 1)]);
        assert_eq!(users(r#""" "x""#), [u("", "x", 1)]);
        assert_eq!(users(r#""u" """#), [u("u", "", 1)]);
        assert_eq!(users("\"é ü\" \"s p a c e\""), [u("é ü", "s p a c e", 1)]);
    }

    #[test]
    fn errors_name_the_line() {
        let cases = [
            (
                "\"a\" \"b\"\nbob \"x\"\n",
                UserlistError::ExpectedUser { line: 2 },
            ),
            ("\n\n\"bob\n", UserlistError::UnterminatedUser { line: 3 }),
            ("\"bob\"\n", UserlistError::MissingSecret { line: 1 }),
            (
                "\"bob\" x \"y\"\n",
                UserlistError::MissingSecret { line: 1 },
            ),
            ("\"bob\"\"pw\"\n", UserlistError::MissingSecret { line: 1 }),
            (
                "\"bob\" \"pw\n\"\n",
                UserlistError::UnterminatedSecret { line: 1 },
            ),
        ];
        for (text, want) in cases {
            assert_eq!(parse(text), Err(want), "{text:?}");
            assert_eq!(want.line(), parse(text).unwrap_err().line());
        }
        let e = parse("\"bob\" \"hunter2").unwrap_err();
        assert_eq!(
            e.to_string(),
            "auth file line 1: unterminated quoted secret"
        );
    }

    #[test]
    fn debug_redacts_secret() {
        let e = &parse("\"bob\" \"hunter2\"").unwrap()[0];
        let dbg = format!("{e:?} {e:#?}");
        assert!(!dbg.contains("hunter2"));
        assert!(dbg.contains("secret: \"<redacted>\""));
        assert!(dbg.contains("bob"));
    }

    #[test]
    fn classify_secrets() {
        let md5 = "md5a3556571e93b0d20722ba62be61e8c2d";
        assert_eq!(classify(md5), SecretKind::Md5);
        assert_eq!(classify(&md5.to_uppercase()), SecretKind::Plain);
        assert_eq!(
            classify("md5a3556571e93b0d20722ba62be61e8c2"),
            SecretKind::Plain
        );
        assert_eq!(
            classify("md5a3556571e93b0d20722ba62be61e8c2g"),
            SecretKind::Plain
        );

        let scram = format!("SCRAM-SHA-256$4096:c2FsdHNhbHQ=${STORED}:{SERVER}");
        assert_eq!(classify(&scram), SecretKind::ScramSha256);
        let bad = [
            format!("SCRAM-SHA-256$0:c2FsdA==${STORED}:{SERVER}"),
            format!("SCRAM-SHA-256$+4096:c2FsdA==${STORED}:{SERVER}"),
            format!("SCRAM-SHA-256$4096:${STORED}:{SERVER}"),
            format!("SCRAM-SHA-256$4096:c2Fsd${STORED}:{SERVER}"),
            format!("SCRAM-SHA-256$4096:c2FsdA==${STORED}"),
            format!("SCRAM-SHA-256$4096:c2FsdA==$c2FsdA==:{SERVER}"),
            format!("SCRAM-SHA-256$4096:c2FsdA==${STORED}:{SERVER}x"),
            format!("scram-sha-256$4096:c2FsdA==${STORED}:{SERVER}"),
            format!("SCRAM-SHA-256$4096:c2=sdA==${STORED}:{SERVER}"),
        ];
        for s in bad {
            assert_eq!(classify(&s), SecretKind::Plain, "{s}");
        }
        assert_eq!(classify(""), SecretKind::Plain);
        assert_eq!(classify("hunter2"), SecretKind::Plain);
    }

    #[test]
    fn nasty_inputs_never_panic() {
        let long = "x".repeat(1 << 20);
        for s in [
            "\"",
            "\"\"",
            "\"\"\"",
            "\"\"\"\"",
            "\" \"",
            "=",
            "[",
            "\u{1F600}",
            "\"\u{1F600}\"\"",
            "\"a\" \"",
            "\"a\" \"\"\"",
            "\r",
            "\0",
            "\"é\"\"é\"",
        ] {
            let _ = parse(s);
            let _ = classify(s);
        }
        let _ = parse(&format!("\"{long}"));
        let _ = parse(&format!("\"{long}\" \"{long}\""));
        for s in [
            "SCRAM-SHA-256$",
            "SCRAM-SHA-256$$:",
            "SCRAM-SHA-256$:$:",
            "md5",
            "SCRAM-SHA-256$99999999999:=:$=:=",
        ] {
            assert_eq!(classify(s), SecretKind::Plain);
        }
    }
}
