//! PgBouncer's ini syntax: `[section]`, `key = value`, `;`/`#` comments, `%include FILE`.
//! No inline comments after values (PgBouncer has none either): a value is everything after `=`.

use std::path::{Path, PathBuf};
use thiserror::Error;

/// Files larger than this are refused: a config file is small, and this bounds memory.
const MAX_FILE: u64 = 16 << 20;
/// Include nesting limit, which also stops include loops.
const MAX_DEPTH: usize = 10;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IniEntry {
    pub key: String,
    pub value: String,
    pub file: PathBuf,
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IniSection {
    /// Lowercased.
    pub name: String,
    pub entries: Vec<IniEntry>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IniDocument {
    pub sections: Vec<IniSection>,
}

#[derive(Debug, Error)]
pub enum IniError {
    #[error("{}: {source}", file.display())]
    Io { file: PathBuf, source: std::io::Error },
    #[error("{}:{line}: {message}", file.display())]
    Syntax { file: PathBuf, line: usize, message: String },
}

impl IniDocument {
    fn section(&mut self, name: &str) -> usize {
        if let Some(i) = self.sections.iter().position(|s| s.name == name) {
            return i;
        }
        self.sections.push(IniSection { name: name.to_owned(), entries: Vec::new() });
        self.sections.len() - 1
    }
}

/// Reads `path` and the files it includes. Relative include paths are tried against the current
/// directory first (PgBouncer's behaviour), then against the including file's directory.
pub fn load(path: &Path) -> Result<IniDocument, IniError> {
    let mut doc = IniDocument::default();
    let mut current = None;
    load_into(path, &mut doc, &mut current, 0)?;
    Ok(doc)
}

/// Parses text without following includes (an `%include` line is a syntax error here).
pub fn parse_str(text: &str, file: &Path) -> Result<IniDocument, IniError> {
    let mut doc = IniDocument::default();
    let mut current = None;
    parse_into(text, file, &mut doc, &mut current, None)?;
    Ok(doc)
}

fn load_into(path: &Path, doc: &mut IniDocument, current: &mut Option<usize>, depth: usize) -> Result<(), IniError> {
    let io = |source| IniError::Io { file: path.to_owned(), source };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > MAX_FILE {
        return Err(IniError::Syntax { file: path.to_owned(), line: 0, message: format!("file is larger than {MAX_FILE} bytes") });
    }
    let text = std::fs::read_to_string(path).map_err(io)?;
    parse_into(&text, path, doc, current, Some(depth))
}

fn parse_into(
    text: &str,
    file: &Path,
    doc: &mut IniDocument,
    current: &mut Option<usize>,
    depth: Option<usize>,
) -> Result<(), IniError> {
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let err = |message: String| IniError::Syntax { file: file.to_owned(), line, message };
        let l = raw.trim();
        if l.is_empty() || l.starts_with(';') || l.starts_with('#') {
            continue;
        }
        if let Some(rest) = l.strip_prefix("%include") {
            let target = rest.trim();
            let Some(depth) = depth else { return Err(err("%include is not allowed here".into())) };
            if target.is_empty() {
                return Err(err("%include needs a file name".into()));
            }
            if depth + 1 > MAX_DEPTH {
                return Err(err(format!("%include nested more than {MAX_DEPTH} deep (an include loop?)")));
            }
            let mut p = PathBuf::from(target);
            if p.is_relative() && !p.exists() {
                if let Some(dir) = file.parent() {
                    p = dir.join(target);
                }
            }
            load_into(&p, doc, current, depth + 1)?;
            continue;
        }
        if let Some(rest) = l.strip_prefix('[') {
            let Some(name) = rest.strip_suffix(']') else { return Err(err("unterminated section header".into())) };
            *current = Some(doc.section(&name.trim().to_ascii_lowercase()));
            continue;
        }
        let Some((key, value)) = l.split_once('=') else {
            return Err(err("expected \"key = value\" or \"[section]\"".into()));
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(err("empty key".into()));
        }
        let Some(section) = *current else { return Err(err(format!("key \"{key}\" is outside any section"))) };
        doc.sections[section].entries.push(IniEntry {
            key: key.to_owned(),
            value: value.trim().to_owned(),
            file: file.to_owned(),
            line,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_keys_and_comments() {
        let doc = parse_str(
            "; top comment\n[databases]\nmydb = host=127.0.0.1 dbname=x\n\n[PgBouncer]\n  # c\nlisten_port = 6432\nauth_file=\n",
            Path::new("p.ini"),
        )
        .unwrap();
        assert_eq!(doc.sections[0].name, "databases");
        assert_eq!(doc.sections[0].entries[0].value, "host=127.0.0.1 dbname=x");
        assert_eq!(doc.sections[1].name, "pgbouncer");
        assert_eq!(doc.sections[1].entries[0].line, 7);
        assert_eq!(doc.sections[1].entries[1].value, "");
    }

    #[test]
    fn errors_name_the_line() {
        let e = parse_str("[a]\nk = v\nnonsense\n", Path::new("p.ini")).unwrap_err();
        assert_eq!(e.to_string(), "p.ini:3: expected \"key = value\" or \"[section]\"");
        assert!(parse_str("k = v\n", Path::new("p.ini")).is_err());
        assert!(parse_str("[a\n", Path::new("p.ini")).is_err());
    }

    #[test]
    fn includes_merge_and_loops_stop() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("main.ini");
        let inc = dir.path().join("inc.ini");
        std::fs::write(&main, format!("[pgbouncer]\na = 1\n%include {}\n[pgbouncer]\nc = 3\n", inc.display())).unwrap();
        std::fs::write(&inc, "[pgbouncer]\nb = 2\n").unwrap();
        let doc = load(&main).unwrap();
        let keys: Vec<_> = doc.sections[0].entries.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["a", "b", "c"]);
        std::fs::write(&inc, format!("%include {}\n", main.display())).unwrap();
        assert!(load(&main).unwrap_err().to_string().contains("nested"));
    }
}
