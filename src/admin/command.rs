//! The admin console's command parser (sans-IO, fuzzed): PgBouncer's grammar, one command word, at
//! most one argument word (a name, or a `"quoted"` one), an optional `;`; `SET key = value`; `SELECT x`
//! as `SHOW x`. Case does not matter; a name keeps its case.

/// One console command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `SHOW x` / `SELECT x`; the target lower-cased.
    Show(String),
    Pause(Option<String>),
    Resume(Option<String>),
    Suspend,
    Reload,
    Kill(Option<String>),
    KillClient(String),
    Reconnect(Option<String>),
    Disable(String),
    Enable(String),
    WaitClose(Option<String>),
    Shutdown(ShutdownMode),
    Set {
        key: String,
        value: String,
    },
}

/// How `SHUTDOWN` ends the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownMode {
    Immediate,
    WaitForServers,
    WaitForClients,
}

impl Command {
    /// Whether a `stats_users` member may run it (read-only SHOW, but not FDS).
    pub fn read_only(&self) -> bool {
        matches!(self, Command::Show(t) if t != "fds")
    }
}

/// The error PgBouncer gives for anything it cannot parse.
pub fn invalid(query: &str) -> String {
    format!("invalid command '{query}', use SHOW HELP;")
}

/// Longest argument PgBouncer accepts (its buffer is 64 bytes).
const MAX_WORD: usize = 63;

/// Parses one simple Query's text.
pub fn parse(query: &str) -> Result<Command, String> {
    let text = query.trim();
    let text = text.strip_suffix(';').map_or(text, str::trim_end);
    if let Some(set) = parse_set(text) {
        return set.ok_or_else(|| invalid(query));
    }
    let mut words = Words { rest: text };
    let (Some(cmd), arg, None) = (words.next(), words.next(), words.next()) else {
        return Err(invalid(query));
    };
    let (Ok(cmd), arg) = (cmd, arg.transpose().map_err(|()| invalid(query))?) else {
        return Err(invalid(query));
    };
    if arg.as_ref().is_some_and(|a| a.len() > MAX_WORD) {
        return Err("bad arguments".into());
    }
    let need = |a: Option<String>| a.ok_or_else(|| invalid(query));
    let none = |a: Option<String>, c: Command| {
        if a.is_some() {
            Err(invalid(query))
        } else {
            Ok(c)
        }
    };
    match cmd.to_ascii_lowercase().as_str() {
        "show" | "select" => Ok(Command::Show(need(arg)?.to_ascii_lowercase())),
        "pause" => Ok(Command::Pause(arg)),
        "resume" => Ok(Command::Resume(arg)),
        "suspend" => none(arg, Command::Suspend),
        "reload" => none(arg, Command::Reload),
        "kill" => Ok(Command::Kill(arg)),
        "kill_client" => Ok(Command::KillClient(need(arg)?)),
        "reconnect" => Ok(Command::Reconnect(arg)),
        "disable" => Ok(Command::Disable(arg.ok_or("a database is required")?)),
        "enable" => Ok(Command::Enable(arg.ok_or("a database is required")?)),
        "wait_close" => Ok(Command::WaitClose(arg)),
        "shutdown" => Ok(Command::Shutdown(
            match arg.map(|a| a.to_ascii_lowercase()).as_deref() {
                None => ShutdownMode::Immediate,
                Some("wait_for_servers") => ShutdownMode::WaitForServers,
                Some("wait_for_clients") => ShutdownMode::WaitForClients,
                Some(_) => return Err(invalid(query)),
            },
        )),
        _ => Err(invalid(query)),
    }
}

/// `SET key = value` or `SET key TO value`; `None` if the text is not a SET at all, `Some(None)`
/// if it is a malformed one.
fn parse_set(text: &str) -> Option<Option<Command>> {
    let head = text.get(..4)?;
    if !head.eq_ignore_ascii_case("set ") {
        return None;
    }
    let rest = text[4..].trim_start();
    let key_end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(rest.len());
    let (key, rest) = rest.split_at(key_end);
    let rest = rest.trim_start();
    let rest = if let Some(r) = rest.strip_prefix('=') {
        r
    } else if rest.get(..2).is_some_and(|w| w.eq_ignore_ascii_case("to")) {
        &rest[2..]
    } else {
        return Some(None);
    };
    let value = rest.trim();
    let value = match value.strip_prefix('\'') {
        Some(v) => v.strip_suffix('\'')?.replace("''", "'"),
        None if !value.is_empty() && !value.contains(char::is_whitespace) => value.to_owned(),
        None => return Some(None),
    };
    if key.is_empty() {
        return Some(None);
    }
    Some(Some(Command::Set {
        key: key.to_ascii_lowercase(),
        value,
    }))
}

/// Words of a command: `[0-9A-Za-z_]+` or a `"quoted"` name (`""` inside is one `"`).
struct Words<'a> {
    rest: &'a str,
}

impl Iterator for Words<'_> {
    /// `Err(())` for a character no word may hold, or an unterminated quote.
    type Item = Result<String, ()>;

    fn next(&mut self) -> Option<Self::Item> {
        let s = self.rest.trim_start();
        if s.is_empty() {
            self.rest = s;
            return None;
        }
        if let Some(q) = s.strip_prefix('"') {
            let mut word = String::new();
            let mut chars = q.char_indices();
            while let Some((i, c)) = chars.next() {
                if c != '"' {
                    word.push(c);
                } else if q[i + 1..].starts_with('"') {
                    word.push('"');
                    chars.next();
                } else {
                    self.rest = &q[i + 1..];
                    return Some(if word.is_empty() { Err(()) } else { Ok(word) });
                }
            }
            self.rest = "";
            return Some(Err(()));
        }
        let end = s
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(s.len());
        if end == 0 {
            self.rest = "";
            return Some(Err(()));
        }
        let (word, rest) = s.split_at(end);
        if !rest.is_empty() && !rest.starts_with(char::is_whitespace) {
            self.rest = "";
            return Some(Err(()));
        }
        self.rest = rest;
        Some(Ok(word.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_as_pgbouncer_reads_them() {
        assert_eq!(parse("SHOW POOLS;"), Ok(Command::Show("pools".into())));
        assert_eq!(parse("  show   stats  "), Ok(Command::Show("stats".into())));
        assert_eq!(parse("select lists ;"), Ok(Command::Show("lists".into())));
        assert_eq!(parse("PAUSE"), Ok(Command::Pause(None)));
        assert_eq!(
            parse("pause AppDb"),
            Ok(Command::Pause(Some("AppDb".into())))
        );
        assert_eq!(
            parse("RESUME \"my db\""),
            Ok(Command::Resume(Some("my db".into())))
        );
        assert_eq!(
            parse("pause \"a\"\"b\""),
            Ok(Command::Pause(Some("a\"b".into())))
        );
        assert_eq!(
            parse("shutdown wait_for_clients"),
            Ok(Command::Shutdown(ShutdownMode::WaitForClients))
        );
        assert_eq!(parse("RELOAD;"), Ok(Command::Reload));
        assert_eq!(
            parse("set default_pool_size = 30"),
            Ok(Command::Set {
                key: "default_pool_size".into(),
                value: "30".into()
            })
        );
        assert_eq!(
            parse("SET server_reset_query TO 'DISCARD ALL'"),
            Ok(Command::Set {
                key: "server_reset_query".into(),
                value: "DISCARD ALL".into()
            })
        );
    }

    #[test]
    fn anything_else_is_pgbouncers_invalid_command() {
        for q in [
            "",
            ";",
            "SHOW",
            "SHOW POOLS; SHOW STATS",
            "SHOW a b",
            "RELOAD now",
            "SUSPEND x",
            "SHOW p-o",
            "pause \"unterminated",
            "pause \"\"",
            "frobnicate",
            "SET x 日本",
            "SET 日本 = 1",
            "SET x ",
            "SET x",
            "SET = 1",
            "shutdown later",
        ] {
            let e = parse(q).unwrap_err();
            assert!(e.starts_with("invalid command"), "{q:?}: {e}");
        }
        assert_eq!(parse("DISABLE"), Err("a database is required".into()));
        assert_eq!(
            parse(&format!("pause {}", "x".repeat(64))),
            Err("bad arguments".into())
        );
    }

    #[test]
    fn stats_users_may_only_show() {
        assert!(parse("SHOW POOLS").unwrap().read_only());
        assert!(!parse("SHOW FDS").unwrap().read_only());
        assert!(!parse("PAUSE").unwrap().read_only());
    }
}
