//! PgBouncer's auth_file (userlist.txt): `"user" "secret"` per line, `""` for a literal quote,
//! `;`/`#` comments. Further fields are ignored, as PgBouncer does.

use thiserror::Error;

#[derive(Clone, PartialEq, Eq)]
pub struct UserlistEntry {
    pub user: String,
    pub secret: String,
    pub line: usize,
}

impl std::fmt::Debug for UserlistEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserlistEntry").field("user", &self.user).field("secret", &"<redacted>").field("line", &self.line).finish()
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
#[error("{message}")]
pub struct UserlistError {
    pub line: usize,
    pub message: &'static str,
}

impl UserlistError {
    pub fn line(&self) -> usize {
        self.line
    }
}

/// Reads one quoted field; returns it and the rest of the line.
fn quoted(s: &str) -> Option<(String, &str)> {
    let mut rest = s.trim_start().strip_prefix('"')?;
    let mut out = String::new();
    loop {
        let end = rest.find('"')?;
        out.push_str(&rest[..end]);
        rest = &rest[end + 1..];
        match rest.strip_prefix('"') {
            Some(r) => {
                out.push('"');
                rest = r;
            }
            None => return Some((out, rest)),
        }
    }
}

pub fn parse(text: &str) -> Result<Vec<UserlistEntry>, UserlistError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let l = raw.trim_start();
        if l.is_empty() || l.starts_with(';') || l.starts_with('#') {
            continue;
        }
        let (user, rest) = quoted(l).ok_or(UserlistError { line, message: "expected a quoted user name" })?;
        let (secret, _) = quoted(rest).ok_or(UserlistError { line, message: "expected a quoted password after the user name" })?;
        out.push(UserlistEntry { user, secret, line });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_entries_and_escapes() {
        let e = parse("; comment\n\"alice\" \"s\"\"ecret\" extra\n  \"bob\" \"md5abc\"\n").unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].secret, "s\"ecret");
        assert_eq!(e[1].user, "bob");
        assert_eq!(e[1].line, 3);
        assert!(!format!("{:?}", e[0]).contains("s\"ecret"));
    }

    #[test]
    fn errors_name_the_line_not_the_secret() {
        let err = parse("\"alice\" \"hunter2\n").unwrap_err();
        assert_eq!(err.line, 2 - 1);
        assert!(!err.to_string().contains("hunter2"));
        assert!(parse("alice bob\n").is_err());
    }
}
