//! PgBouncer's `auth_hba_file`: the subset of PostgreSQL's pg_hba.conf that PgBouncer understands,
//! parsed into rules and evaluated first-match-wins for each login.
//!
//! Where PgBouncer and PostgreSQL differ we follow PgBouncer. A line we cannot honour is an error
//! naming that line: PgBouncer only logs it and skips the line, which silently changes who gets in.
use std::net::IpAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HbaMethod {
    Trust,
    Reject,
    Md5,
    Password,
    ScramSha256,
    Peer,
    Cert,
}

/// How the client reached the pooler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Unix,
    Tcp { addr: IpAddr, tls: bool },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HbaMatch {
    pub method: HbaMethod,
    pub line: usize,
    pub options: Vec<(String, String)>,
}

#[derive(Debug, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct HbaError {
    pub line: usize,
    pub message: String,
}

#[derive(Debug, Clone, Default)]
pub struct HbaRules {
    rules: Vec<Rule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Name {
    All,
    SameUser,
    Replication,
    Literal(String),
}

/// Both families as u128 (IPv4 in the low 32 bits), so one masking rule serves both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Addr {
    Any,
    Net { v6: bool, net: u128, mask: u128 },
}

#[derive(Debug, Clone)]
struct Rule {
    line: usize,
    /// `local`, else one of the `host*` lines.
    local: bool,
    /// `hostssl` is Some(true), `hostnossl` Some(false), `host` and `local` None.
    tls: Option<bool>,
    databases: Vec<Name>,
    users: Vec<Name>,
    addr: Addr,
    method: HbaMethod,
    options: Vec<(String, String)>,
}

impl HbaRules {
    pub fn parse(text: &str) -> Result<HbaRules, HbaError> {
        let mut rules = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let tokens = tokenize(raw).map_err(|message| HbaError { line, message })?;
            if !tokens.is_empty() {
                rules.push(parse_rule(line, tokens).map_err(|message| HbaError { line, message })?);
            }
        }
        Ok(HbaRules { rules })
    }

    /// The first line that matches, or None.
    pub fn lookup(&self, transport: Transport, database: &str, user: &str) -> Option<HbaMatch> {
        let r = self
            .rules
            .iter()
            .find(|r| r.matches(transport, database, user))?;
        Some(HbaMatch {
            method: r.method,
            line: r.line,
            options: r.options.clone(),
        })
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

impl Rule {
    fn matches(&self, transport: Transport, database: &str, user: &str) -> bool {
        let reached = match transport {
            Transport::Unix => self.local,
            Transport::Tcp { addr, tls } => {
                !self.local && self.tls.is_none_or(|t| t == tls) && self.addr.contains(addr)
            }
        };
        reached
            && self.databases.iter().any(|n| n.matches(database, user))
            && self.users.iter().any(|n| n.matches(user, database))
    }
}

impl Name {
    fn matches(&self, name: &str, other: &str) -> bool {
        match self {
            Name::All => true,
            Name::SameUser => name == other,
            // Only replication connections match it, and the pooler never has one.
            Name::Replication => false,
            Name::Literal(s) => s == name,
        }
    }
}

impl Addr {
    fn contains(self, client: IpAddr) -> bool {
        match self {
            Addr::Any => true,
            // ::ffff:a.b.c.d is an IPv4 client that came in over a dual-stack socket.
            Addr::Net { v6, net, mask } => {
                let (client_v6, bits) = ip_bits(client.to_canonical());
                client_v6 == v6 && bits & mask == net
            }
        }
    }
}

fn ip_bits(ip: IpAddr) -> (bool, u128) {
    match ip {
        IpAddr::V4(v4) => (false, u128::from(u32::from(v4))),
        IpAddr::V6(v6) => (true, u128::from(v6)),
    }
}

/// The low `k` bits set; shifting by the full width (k = 0) is avoided via checked_shr.
fn low_ones(k: u32) -> u128 {
    u128::MAX.checked_shr(128u32.saturating_sub(k)).unwrap_or(0)
}

#[derive(Debug, PartialEq, Eq)]
enum Tok {
    Word { text: String, quoted: bool },
    Comma,
}

/// Splits one line into words and commas; `#` outside quotes ends the line, `""` inside quotes
/// is a literal quote. Quoted and unquoted runs glue into one word (PostgreSQL: `map="a b"`).
fn tokenize(line: &str) -> Result<Vec<Tok>, String> {
    let mut toks = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if(char::is_ascii_whitespace).is_some() {}
        match chars.peek() {
            None | Some('#') => return Ok(toks),
            Some(',') => {
                chars.next();
                toks.push(Tok::Comma);
            }
            Some(_) => {
                let (mut text, mut quoted) = (String::new(), false);
                while let Some(c) =
                    chars.next_if(|c| !c.is_ascii_whitespace() && !matches!(c, ',' | '#'))
                {
                    if c != '"' {
                        text.push(c);
                        continue;
                    }
                    quoted = true;
                    loop {
                        match chars.next() {
                            None => return Err("unterminated quoted field".into()),
                            Some('"') if chars.next_if_eq(&'"').is_some() => text.push('"'),
                            Some('"') => break,
                            Some(c) => text.push(c),
                        }
                    }
                }
                toks.push(Tok::Word { text, quoted });
            }
        }
    }
}

struct Fields(std::iter::Peekable<std::vec::IntoIter<Tok>>);

impl Fields {
    fn word(&mut self, what: &str) -> Result<(String, bool), String> {
        match self.0.next() {
            Some(Tok::Word { text, quoted }) => Ok((text, quoted)),
            Some(Tok::Comma) => Err(format!("unexpected comma where the {what} was expected")),
            None => Err(format!("missing {what} field")),
        }
    }

    /// A comma-separated list; spaces around the commas do not matter (as in PgBouncer).
    fn names(&mut self, what: &str, is_db: bool) -> Result<Vec<Name>, String> {
        let (text, quoted) = self.word(what)?;
        let mut names = vec![name(text, quoted, is_db)?];
        while self.0.next_if_eq(&Tok::Comma).is_some() {
            let (text, quoted) = self.word(what)?;
            names.push(name(text, quoted, is_db)?);
        }
        Ok(names)
    }
}

/// Quoting turns a keyword or prefix back into a plain name.
fn name(text: String, quoted: bool, is_db: bool) -> Result<Name, String> {
    if quoted {
        return Ok(Name::Literal(text));
    }
    let unsupported = |what: &str| Err(format!("\"{text}\": {what} is not supported"));
    match text.as_str() {
        "all" => Ok(Name::All),
        "sameuser" if is_db => Ok(Name::SameUser),
        "replication" if is_db => Ok(Name::Replication),
        "samerole" | "samegroup" if is_db => unsupported("group membership"),
        t if t.starts_with('@') => unsupported("an @file include"),
        t if t.starts_with('+') => unsupported("+group membership"),
        // PostgreSQL 16 reads these as regular expressions; a literal name would silently differ.
        t if t.starts_with('/') => unsupported("a regular expression"),
        _ => Ok(Name::Literal(text)),
    }
}

fn parse_rule(line: usize, tokens: Vec<Tok>) -> Result<Rule, String> {
    let mut f = Fields(tokens.into_iter().peekable());
    let (kind, quoted) = f.word("connection type")?;
    let (local, tls) = match (quoted, kind.as_str()) {
        (false, "local") => (true, None),
        (false, "host") => (false, None),
        (false, "hostssl") => (false, Some(true)),
        (false, "hostnossl") => (false, Some(false)),
        _ => return Err(format!("unsupported connection type \"{kind}\"")),
    };
    let databases = f.names("database", true)?;
    let users = f.names("user", false)?;
    let addr = if local { Addr::Any } else { address(&mut f)? };
    let (m, _) = f.word("authentication method")?;
    let method = match m.as_str() {
        "trust" => HbaMethod::Trust,
        "reject" => HbaMethod::Reject,
        "md5" => HbaMethod::Md5,
        "password" => HbaMethod::Password,
        "scram-sha-256" => HbaMethod::ScramSha256,
        "peer" => HbaMethod::Peer,
        "cert" => HbaMethod::Cert,
        _ => return Err(format!("unsupported authentication method \"{m}\"")),
    };
    let mut options = Vec::new();
    for tok in f.0 {
        let Tok::Word { text, .. } = tok else {
            return Err("unexpected comma after the authentication method".into());
        };
        match text.split_once('=') {
            Some((k, v)) if !k.is_empty() => options.push((k.to_owned(), v.to_owned())),
            _ => return Err(format!("bad option \"{text}\": not key=value")),
        }
    }
    Ok(Rule {
        line,
        local,
        tls,
        databases,
        users,
        addr,
        method,
        options,
    })
}

/// `all`, `addr/prefix`, or `addr` followed by a netmask field. Host names are not resolved.
fn address(f: &mut Fields) -> Result<Addr, String> {
    let (text, quoted) = f.word("address")?;
    if !quoted {
        match text.as_str() {
            "all" => return Ok(Addr::Any),
            "samehost" | "samenet" => return Err(format!("address \"{text}\" is not supported")),
            _ => {}
        }
    }
    let (ip_text, prefix) = match text.split_once('/') {
        Some((ip, p)) => (ip, Some(p)),
        None => (text.as_str(), None),
    };
    let ip: IpAddr = ip_text
        .parse()
        .map_err(|_| format!("invalid IP address \"{ip_text}\" (host names are not supported)"))?;
    let (v6, net) = ip_bits(ip);
    let width = if v6 { 128 } else { 32 };
    let mask = match prefix {
        Some(p) => {
            // Digits only: Rust's parse takes "+8"; PgBouncer's strtoul takes "" as /0.
            let digits = p.bytes().all(|b| b.is_ascii_digit());
            let n = (p.parse::<u32>().ok())
                .filter(|&n| digits && n <= width)
                .ok_or_else(|| format!("invalid prefix length \"/{p}\" for {ip_text}"))?;
            low_ones(width) ^ low_ones(width - n)
        }
        None => {
            let (m, _) = f.word("netmask")?;
            match m.parse::<IpAddr>().map(ip_bits) {
                Ok((mask_v6, mask)) if mask_v6 == v6 => mask,
                _ => return Err(format!("invalid netmask \"{m}\" for {ip_text}")),
            }
        }
    };
    // PgBouncer keeps such a rule but it can never match; PostgreSQL ignores the extra bits.
    if net & !mask != 0 {
        return Err(format!("{text}: address has bits outside its netmask"));
    }
    Ok(Addr::Net { v6, net, mask })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use HbaMethod::*;

    const UNIX: Transport = Transport::Unix;

    fn tcp(addr: &str, tls: bool) -> Transport {
        let addr = addr.parse().unwrap();
        Transport::Tcp { addr, tls }
    }

    /// Asserts which (line, method) a connection gets.
    fn check(r: &HbaRules, t: Transport, db: &str, user: &str, want: Option<(usize, HbaMethod)>) {
        let got = r.lookup(t, db, user).map(|m| (m.line, m.method));
        assert_eq!(got, want, "{t:?} {db} {user}");
    }

    #[test]
    fn cnpg_pooler_file() {
        let text =
            "local pgbouncer pgbouncer peer\n\nhost all all 0.0.0.0/0 md5\nhost all all ::/0 md5\n";
        let r = HbaRules::parse(text).unwrap();
        assert_eq!(r.len(), 3);
        for (t, db, user, want) in [
            (UNIX, "pgbouncer", "pgbouncer", Some((1, Peer))),
            (UNIX, "app", "pgbouncer", None),
            (tcp("10.1.2.3", false), "app", "app", Some((3, Md5))),
            (tcp("::ffff:10.1.2.3", true), "app", "app", Some((3, Md5))),
            (tcp("::1", false), "pgbouncer", "pgbouncer", Some((4, Md5))),
        ] {
            check(&r, t, db, user, want);
        }
        assert!(HbaRules::parse("# nothing\n\n").unwrap().is_empty());
    }

    #[test]
    fn ssl_reject_and_first_match() {
        let text = "hostssl all all 10.1.2.3/32 reject\nhostssl all all all scram-sha-256\n\
                    hostnossl all all 10.0.0.0/8 trust\nhost all all fe80::/10 password";
        let r = HbaRules::parse(text).unwrap();
        for (t, want) in [
            (tcp("10.1.2.3", true), Some((1, Reject))),
            (tcp("10.1.2.4", true), Some((2, ScramSha256))),
            (tcp("10.1.2.3", false), Some((3, Trust))),
            (tcp("11.0.0.1", false), None),
            (tcp("fe80::1", false), Some((4, Password))),
            (tcp("fec0::1", false), None),
            (UNIX, None),
        ] {
            check(&r, t, "d", "u", want);
        }
    }

    #[test]
    fn names_lists_and_options() {
        let text = "host \"all\" all all trust\n\
                    host sameuser all 127.0.0.1/32 password # comment\n\
                    host db1, db2,db3 alice,\"b,ob\" 10.0.0.0/8 md5\n\
                    local replication all trust\n\
                    host all all 192.168.0.0 255.255.0.0 cert map=x clientcert=\"verify full\"";
        let r = HbaRules::parse(text).unwrap();
        for (t, db, user, want) in [
            (tcp("8.8.8.8", false), "all", "x", Some((1, Trust))),
            (tcp("8.8.8.8", false), "other", "x", None),
            (tcp("127.0.0.1", false), "bob", "bob", Some((2, Password))),
            (tcp("127.0.0.1", false), "bob", "eve", None),
            (tcp("10.9.9.9", false), "db2", "b,ob", Some((3, Md5))),
            (tcp("10.9.9.9", false), "db3", "alice", Some((3, Md5))),
            (tcp("10.9.9.9", false), "db4", "alice", None),
            (UNIX, "replication", "u", None),
            (tcp("192.168.7.1", true), "d", "u", Some((5, Cert))),
            (tcp("192.169.0.1", true), "d", "u", None),
        ] {
            check(&r, t, db, user, want);
        }
        let m = r.lookup(tcp("192.168.7.1", true), "d", "u").unwrap();
        let want = [("map", "x"), ("clientcert", "verify full")];
        assert_eq!(m.options, want.map(|(k, v)| (k.to_owned(), v.to_owned())));
    }

    #[test]
    fn errors_name_the_line() {
        for (text, line, needle) in [
            (
                "local all all trust\nhostgssenc all all all md5",
                2,
                "hostgssenc",
            ),
            ("host all all 1.2.3.4/33 md5", 1, "prefix"),
            ("host all all ::/129 md5", 1, "prefix"),
            ("host all all 10.0.0.0/ md5", 1, "prefix"),
            ("host all all 10.0.0.0/+8 md5", 1, "prefix"),
            ("host all all 10.0.0.300/32 md5", 1, "invalid IP"),
            ("host all all db.example.com md5", 1, "host names"),
            ("host all all 10.0.0.1 md5", 1, "netmask"),
            ("host all all 10.0.0.1 ffff::", 1, "netmask"),
            ("host all all 10.1.0.0/8 md5", 1, "outside"),
            ("host all all samenet md5", 1, "samenet"),
            ("\n\nlocal all", 3, "missing user"),
            ("host all all", 1, "missing address"),
            ("local all all", 1, "missing authentication"),
            ("local all all ident", 1, "ident"),
            ("local all all ldap ldapserver=x", 1, "ldap"),
            ("local @dbs all trust", 1, "@file"),
            ("local all +admins trust", 1, "+group"),
            ("local samerole all trust", 1, "samerole"),
            ("local /^db all trust", 1, "regular expression"),
            ("local \"unterminated all trust", 1, "unterminated"),
            ("local all all trust extra", 1, "key=value"),
            ("local all,, all trust", 1, "comma"),
            ("local all all trust ,", 1, "comma"),
        ] {
            let e = HbaRules::parse(text).unwrap_err();
            assert_eq!(e.line, line, "{text}");
            assert!(e.to_string().contains(needle), "{text}: {e}");
        }
    }
}
