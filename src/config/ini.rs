//! Reader for PgBouncer's `pgbouncer.ini`, following libusual's `cfparser.c`.
//!
//! Differences from PgBouncer, all on the strict or harmless side:
//! - Text after a section's `]` must be blank or a `;`/`#` comment (PgBouncer
//!   would silently parse it as a `key = value`).
//! - Section names are trimmed and ASCII-lowercased; keys are kept as written
//!   because `[databases]`/`[users]` names are case-sensitive.
//! - Keys may be bare (`[A-Za-z0-9_.*-]+`), single-quoted (`'my db'`, no
//!   escapes, as libusual) or double-quoted (`"my ""db"""`, SQL identifier
//!   style, as PgBouncer's docs describe). Quotes are removed.
//! - Input must be UTF-8 (a leading BOM is skipped).
//! - Repeated keys are all kept in order; the caller decides (PgBouncer: last
//!   one wins).
//!
//! Values are kept verbatim (no inline comments: `a = b ; c` has value
//! `b ; c`). Error messages never quote values, which may hold passwords.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Largest single file `load` accepts.
pub const MAX_FILE_SIZE: u64 = 16 * 1024 * 1024;
/// Largest total of all files read by one `load`, so a file that includes
/// itself several times cannot fan out exponentially within the depth cap.
pub const MAX_TOTAL_SIZE: u64 = 4 * MAX_FILE_SIZE;
/// Nesting limit for `%include` (same as libusual's MAX_INCLUDE).
pub const MAX_INCLUDE_DEPTH: usize = 10;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IniEntry {
    pub key: String,
    pub value: String,
    /// File the entry came from (the included file for `%include`d entries).
    pub file: PathBuf,
    /// 1-based line number within `file`.
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IniSection {
    /// Lowercased section name.
    pub name: String,
    pub entries: Vec<IniEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IniDocument {
    /// Sections in order of first appearance; repeats are merged.
    pub sections: Vec<IniSection>,
}

impl IniDocument {
    /// Section by name, case-insensitively.
    pub fn section(&self, name: &str) -> Option<&IniSection> {
        self.sections
            .iter()
            .find(|s| s.name.eq_ignore_ascii_case(name))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IniError {
    #[error("{}: {source}", file.display())]
    Io {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}: {message}", file.display())]
    Syntax {
        file: PathBuf,
        line: usize,
        message: String,
    },
    #[error(
        "{}:{line}: %include nested more than {MAX_INCLUDE_DEPTH} deep (is the include recursive?)",
        file.display()
    )]
    IncludeDepth { file: PathBuf, line: usize },
    #[error("{}: file is larger than the {limit}-byte limit", file.display())]
    TooLarge { file: PathBuf, limit: u64 },
}

/// Parses one file's text. `%include` lines are rejected with a
/// `Syntax` error because resolving them needs the filesystem; use [`load`].
pub fn parse_str(text: &str, file: &Path) -> Result<IniDocument, IniError> {
    let mut p = Parser::new(false);
    p.parse_text(text, file, 0)?;
    Ok(p.doc)
}

/// Reads `path` and resolves `%include <path>` directives.
///
/// A relative include path is tried against the current working directory
/// first (PgBouncer's behaviour), then against the including file's
/// directory (so a config tree works regardless of where we were started).
/// The current section carries across include boundaries in both
/// directions, as in PgBouncer.
pub fn load(path: &Path) -> Result<IniDocument, IniError> {
    let mut p = Parser::new(true);
    p.load_file(path, 0)?;
    Ok(p.doc)
}

struct Parser {
    doc: IniDocument,
    /// Section name -> index in `doc.sections`; avoids quadratic merging.
    index: HashMap<String, usize>,
    current: Option<usize>,
    allow_include: bool,
    budget: u64,
}

fn syntax(file: &Path, line: usize, message: impl Into<String>) -> IniError {
    IniError::Syntax {
        file: file.to_path_buf(),
        line,
        message: message.into(),
    }
}

/// C `isspace` in the "C" locale.
fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c')
}

fn is_bare_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '*')
}

const EXPECTED: &str = "expected \"key = value\" or \"[section]\"";

impl Parser {
    fn new(allow_include: bool) -> Self {
        Parser {
            doc: IniDocument::default(),
            index: HashMap::new(),
            current: None,
            allow_include,
            budget: MAX_TOTAL_SIZE,
        }
    }

    fn load_file(&mut self, path: &Path, depth: usize) -> Result<(), IniError> {
        let io_err = |source| IniError::Io {
            file: path.to_path_buf(),
            source,
        };
        let f = File::open(path).map_err(io_err)?;
        let too_large = || IniError::TooLarge {
            file: path.to_path_buf(),
            limit: MAX_FILE_SIZE,
        };
        // Metadata is only a hint (pipes, growing files); `take` is the guard.
        if f.metadata().map_err(io_err)?.len() > MAX_FILE_SIZE {
            return Err(too_large());
        }
        let mut buf = Vec::new();
        f.take(MAX_FILE_SIZE + 1)
            .read_to_end(&mut buf)
            .map_err(io_err)?;
        let len = u64::try_from(buf.len()).unwrap_or(u64::MAX);
        if len > MAX_FILE_SIZE {
            return Err(too_large());
        }
        if len > self.budget {
            return Err(IniError::TooLarge {
                file: path.to_path_buf(),
                limit: MAX_TOTAL_SIZE,
            });
        }
        self.budget -= len;
        let text = match String::from_utf8(buf) {
            Ok(t) => t,
            Err(e) => {
                let good = e.as_bytes().get(..e.utf8_error().valid_up_to());
                let line = good.map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count()) + 1;
                return Err(syntax(path, line, "invalid UTF-8"));
            }
        };
        self.parse_text(&text, path, depth)
    }

    fn parse_text(&mut self, text: &str, file: &Path, depth: usize) -> Result<(), IniError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        for (idx, raw) in text.split('\n').enumerate() {
            let lineno = idx + 1;
            let line = raw.trim_start_matches(is_space);
            if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
                continue;
            }
            if let Some(rest) = line.strip_prefix("%include") {
                if rest.is_empty() || rest.starts_with([' ', '\t']) {
                    self.include(rest.trim_matches(is_space), file, lineno, depth)?;
                    continue;
                }
            }
            if let Some(rest) = line.strip_prefix('[') {
                self.section_header(rest, file, lineno)?;
                continue;
            }
            self.key_value(line, file, lineno)?;
        }
        Ok(())
    }

    fn include(
        &mut self,
        target: &str,
        file: &Path,
        line: usize,
        depth: usize,
    ) -> Result<(), IniError> {
        if !self.allow_include {
            return Err(syntax(
                file,
                line,
                "%include is not resolved by parse_str; use load",
            ));
        }
        if target.is_empty() {
            return Err(syntax(file, line, "%include needs a file name"));
        }
        if depth >= MAX_INCLUDE_DEPTH {
            return Err(IniError::IncludeDepth {
                file: file.to_path_buf(),
                line,
            });
        }
        let path = resolve_include(target, file);
        self.load_file(&path, depth + 1)
    }

    fn section_header(&mut self, rest: &str, file: &Path, line: usize) -> Result<(), IniError> {
        let Some((name, after)) = rest.split_once(']') else {
            return Err(syntax(file, line, "section header is missing ']'"));
        };
        let after = after.trim_start_matches(is_space);
        if !(after.is_empty() || after.starts_with(';') || after.starts_with('#')) {
            return Err(syntax(file, line, "unexpected text after section header"));
        }
        let name = name.trim_matches(is_space).to_ascii_lowercase();
        if name.is_empty() {
            return Err(syntax(file, line, "empty section name"));
        }
        let next = self.doc.sections.len();
        let idx = *self.index.entry(name.clone()).or_insert(next);
        if idx == next {
            self.doc.sections.push(IniSection {
                name,
                entries: Vec::new(),
            });
        }
        self.current = Some(idx);
        Ok(())
    }

    fn key_value(&mut self, line: &str, file: &Path, lineno: usize) -> Result<(), IniError> {
        let (key, rest) = split_key(line).ok_or_else(|| syntax(file, lineno, EXPECTED))?;
        let Some(value) = rest.trim_start_matches([' ', '\t']).strip_prefix('=') else {
            return Err(syntax(file, lineno, EXPECTED));
        };
        let section = self
            .current
            .and_then(|i| self.doc.sections.get_mut(i))
            .ok_or_else(|| syntax(file, lineno, "key outside of any [section]"))?;
        section.entries.push(IniEntry {
            key,
            value: value.trim_matches(is_space).to_string(),
            file: file.to_path_buf(),
            line: lineno,
        });
        Ok(())
    }
}

/// Splits a key off the start of `line`, returning it unquoted plus the rest.
fn split_key(line: &str) -> Option<(String, &str)> {
    if let Some(body) = line.strip_prefix('\'') {
        let (key, rest) = body.split_once('\'')?;
        return (!key.is_empty()).then(|| (key.to_string(), rest));
    }
    if let Some(body) = line.strip_prefix('"') {
        let mut key = String::new();
        let mut chars = body.char_indices();
        while let Some((i, c)) = chars.next() {
            if c != '"' {
                key.push(c);
            } else if body.get(i + 1..)?.starts_with('"') {
                key.push('"');
                chars.next();
            } else {
                let rest = body.get(i + 1..)?;
                return (!key.is_empty()).then_some((key, rest));
            }
        }
        return None;
    }
    let end = line.find(|c| !is_bare_key_char(c)).unwrap_or(line.len());
    let (key, rest) = line.split_at_checked(end)?;
    (!key.is_empty()).then(|| (key.to_string(), rest))
}

fn resolve_include(target: &str, including: &Path) -> PathBuf {
    let p = Path::new(target);
    if p.is_absolute() || p.exists() {
        return p.to_path_buf();
    }
    match including.parent() {
        Some(dir) if !dir.as_os_str().is_empty() && dir.join(p).exists() => dir.join(p),
        // Report the path as written if neither exists.
        _ => p.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn parse(text: &str) -> Result<IniDocument, IniError> {
        parse_str(text, Path::new("pgbouncer.ini"))
    }

    fn kv(s: &IniSection) -> Vec<(&str, &str)> {
        s.entries
            .iter()
            .map(|e| (e.key.as_str(), e.value.as_str()))
            .collect()
    }

    fn err_line(e: &IniError) -> usize {
        match e {
            IniError::Syntax { line, .. } | IniError::IncludeDepth { line, .. } => *line,
            other => panic!("unexpected error {other:?}"),
        }
    }

    #[test]
    fn basic_sections_comments_and_values() {
        let doc = parse(
            "; top comment\n\
             # another\n\
             \n\
             [databases]\n\
             mydb = host=127.0.0.1 dbname=x\n\
             MixedCase=port=5432\n\
             \t  empty =\n\
             [PgBouncer]\n\
               listen_port = 6432   \n\
             auth_query = SELECT a = b ; not a comment\n",
        )
        .unwrap();
        assert_eq!(doc.sections.len(), 2);
        let db = doc.section("databases").unwrap();
        assert_eq!(
            kv(db),
            [
                ("mydb", "host=127.0.0.1 dbname=x"),
                ("MixedCase", "port=5432"),
                ("empty", ""),
            ]
        );
        assert_eq!(db.entries[0].line, 5);
        assert_eq!(db.entries[0].file, Path::new("pgbouncer.ini"));
        let pgb = doc.section("PGBOUNCER").unwrap();
        assert_eq!(pgb.name, "pgbouncer");
        assert_eq!(
            kv(pgb),
            [
                ("listen_port", "6432"),
                ("auth_query", "SELECT a = b ; not a comment"),
            ]
        );
    }

    #[test]
    fn crlf_bom_and_header_comment() {
        let doc = parse("\u{feff}[a] ; c\r\nk = v\r\n[ B ]#x\r\n").unwrap();
        assert_eq!(kv(&doc.sections[0]), [("k", "v")]);
        assert_eq!(doc.sections[1].name, "b");
    }

    #[test]
    fn sections_merge_in_order() {
        let doc = parse("[a]\nx=1\n[b]\ny=2\n[A]\nz=3\nx=4\n").unwrap();
        let names: Vec<_> = doc.sections.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(kv(&doc.sections[0]), [("x", "1"), ("z", "3"), ("x", "4")]);
    }

    #[test]
    fn quoted_keys() {
        let doc = parse("[databases]\n'my db' = a\n\"x \"\"y\"\"\"\t= b\n").unwrap();
        assert_eq!(kv(&doc.sections[0]), [("my db", "a"), ("x \"y\"", "b")]);
        for bad in ["''= a", "'open = a", "\"\" = a", "\"open = a"] {
            let e = parse(&format!("[d]\n{bad}\n")).unwrap_err();
            assert_eq!(err_line(&e), 2, "{bad}");
        }
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let cases = [
            ("[a]\nx=1\n\nfoo bar = 1\n", 4),
            ("[a]\njustaword\n", 2),
            ("x = 1\n", 1),
            ("\n\n[a\n", 3),
            ("[]\n", 1),
            ("[a] junk\n", 1),
            ("[a]\n= value\n", 2),
            ("[a]\n%bogus x\n", 2),
            ("[a]\n%include\n", 2),
        ];
        for (text, line) in cases {
            let e = parse(text).unwrap_err();
            assert_eq!(err_line(&e), line, "{text:?}");
        }
        let e = parse("[a]\nk v\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "pgbouncer.ini:2: expected \"key = value\" or \"[section]\""
        );
    }

    #[test]
    fn errors_do_not_echo_values() {
        let e = parse("password=secret\n").unwrap_err();
        assert!(!e.to_string().contains("secret"));
    }

    #[test]
    fn parse_str_rejects_include() {
        let e = parse("[a]\n%include other.ini\n").unwrap_err();
        assert_eq!(err_line(&e), 2);
        assert!(e.to_string().contains("use load"));
    }

    #[test]
    fn load_resolves_includes_relative_to_including_file() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("conf.d");
        fs::create_dir(&sub).unwrap();
        fs::write(
            dir.path().join("main.ini"),
            "[pgbouncer]\nlisten_port = 6432\n%include conf.d/dbs.ini\nadmin_users = a\n",
        )
        .unwrap();
        // Absolute include from within an include; keys before a header land
        // in the includer's current section, and the section set inside an
        // include stays current afterwards (PgBouncer semantics).
        let abs = sub.join("more.ini");
        fs::write(
            sub.join("dbs.ini"),
            format!(
                "inherited = 1\n[databases]\nd1 = dbname=d1\n%include {}\n",
                abs.display()
            ),
        )
        .unwrap();
        fs::write(&abs, "[PGBOUNCER]\npool_mode = session\n").unwrap();

        let doc = load(&dir.path().join("main.ini")).unwrap();
        let names: Vec<_> = doc.sections.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["pgbouncer", "databases"]);
        assert_eq!(
            kv(&doc.sections[0]),
            [
                ("listen_port", "6432"),
                ("inherited", "1"),
                ("pool_mode", "session"),
                ("admin_users", "a"),
            ]
        );
        let e = &doc.sections[1].entries[0];
        assert_eq!((e.file.clone(), e.line), (sub.join("dbs.ini"), 3));
        assert_eq!(doc.sections[0].entries[2].file, abs);
    }

    #[test]
    fn include_loop_hits_depth_cap() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("loop.ini");
        fs::write(&p, format!("[a]\nk=v\n%include {}\n", p.display())).unwrap();
        let e = load(&p).unwrap_err();
        assert!(matches!(e, IniError::IncludeDepth { line: 3, .. }), "{e}");
        assert!(e.to_string().contains("recursive"));
    }

    #[test]
    fn include_depth_ten_is_allowed() {
        let dir = tempfile::tempdir().unwrap();
        // f0 includes f1 ... includes f10: ten levels of nesting.
        for i in 0..=MAX_INCLUDE_DEPTH {
            let body = if i == MAX_INCLUDE_DEPTH {
                "[a]\nleaf=1\n".to_string()
            } else {
                format!(
                    "%include {}\n",
                    dir.path().join(format!("f{}", i + 1)).display()
                )
            };
            fs::write(dir.path().join(format!("f{i}")), body).unwrap();
        }
        let doc = load(&dir.path().join("f0")).unwrap();
        assert_eq!(kv(&doc.sections[0]), [("leaf", "1")]);
        // One more level fails.
        fs::write(
            dir.path().join("deeper"),
            format!("%include {}\n", dir.path().join("f0").display()),
        )
        .unwrap();
        assert!(matches!(
            load(&dir.path().join("deeper")),
            Err(IniError::IncludeDepth { .. })
        ));
    }

    #[test]
    fn load_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.ini");
        assert!(matches!(load(&missing), Err(IniError::Io { .. })));

        let main = dir.path().join("main.ini");
        fs::write(&main, "[a]\n%include does-not-exist.ini\n").unwrap();
        let e = load(&main).unwrap_err();
        assert!(matches!(&e, IniError::Io { file, .. } if file.ends_with("does-not-exist.ini")));

        fs::write(&main, b"[a]\nk=v\nx=\xff\n").unwrap();
        assert_eq!(err_line(&load(&main).unwrap_err()), 3);

        let big = dir.path().join("big.ini");
        let f = File::create(&big).unwrap();
        f.set_len(MAX_FILE_SIZE + 1).unwrap();
        assert!(matches!(load(&big), Err(IniError::TooLarge { .. })));
    }

    #[test]
    fn nasty_inputs_never_panic() {
        let long = "x".repeat(1 << 20);
        let nasty = [
            "",
            "[",
            "]",
            "=",
            "==",
            "'",
            "\"",
            "''",
            "\"\"",
            "'=",
            "\"=",
            "[a]\n'",
            "[a]\n\"",
            "[a]\n\"a\"\"",
            "[a]\n=",
            "%include",
            "%include ",
            "%",
            "[\u{1F600}]\n\u{1F600}=\u{1F600}",
            "[a]\nk=\u{0}\u{7f}",
            "\r",
            "\r\n\r\n",
            "[a]\n\u{feff}k=v",
            "[a]\nk\u{a0}=v",
            "\u{feff}",
            "[a]\n'é'=ü",
            "[a]\n\"é\"\"",
        ];
        for s in nasty {
            let _ = parse(s);
        }
        let _ = parse(&format!("[a]\nk={long}"));
        let _ = parse(&format!("[{long}"));
        let _ = parse(&format!("[a]\n'{long}"));
        let _ = parse(&format!("[a]\n\"{long}"));
    }
}
