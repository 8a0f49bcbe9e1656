//! Run-time parameters (ParameterStatus) of a server or a client, and the SET that aligns them.

use std::sync::atomic::{AtomicU64, Ordering};

/// Stamps are drawn from one counter, so a stamp names one state of one set: two sets with the
/// same stamp hold the same values (a clone keeps its original's stamp until either changes).
static STAMPS: AtomicU64 = AtomicU64::new(1);

/// A small ordered set of name → value; names compare case-insensitively as PostgreSQL's GUCs do.
///
/// Every client keeps one for its whole life, so the set is one allocation: `name\0value\0…`,
/// shared by clones (clients of one pool mostly log in with the same values; see
/// the pool's `greeting`) and replaced, never edited, when a value changes.
/// Neither names nor values can hold a NUL (the protocol ends them with one).
#[derive(Debug, Clone, Default)]
pub struct ParamSet {
    packed: std::sync::Arc<str>,
    /// Changes with every change of the values (0: empty, never changed).
    stamp: u64,
}

impl PartialEq for ParamSet {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.packed, &other.packed) || self.packed == other.packed
    }
}

impl Eq for ParamSet {}

impl ParamSet {
    /// Names this set's current values: equal stamps mean equal values, so a comparison made once
    /// holds until either set changes (see [`ParamSet::sync_query`]'s caller).
    pub fn stamp(&self) -> u64 {
        self.stamp
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// Sets a value; returns whether it changed. Allocates only when it does.
    pub fn set(&mut self, name: &str, value: &str) -> bool {
        if name.contains('\0') || value.contains('\0') {
            return false;
        }
        match self.get(name) {
            Some(v) if v == value => false,
            Some(_) => {
                let mut packed = String::with_capacity(self.packed.len() + value.len());
                for (k, v) in self.iter() {
                    let v = if k.eq_ignore_ascii_case(name) {
                        value
                    } else {
                        v
                    };
                    push_pair(&mut packed, k, v);
                }
                self.packed = packed.into();
                self.stamp = STAMPS.fetch_add(1, Ordering::Relaxed);
                true
            }
            None => {
                let mut packed =
                    String::with_capacity(self.packed.len() + name.len() + value.len() + 2);
                packed.push_str(&self.packed);
                push_pair(&mut packed, name, value);
                self.packed = packed.into();
                self.stamp = STAMPS.fetch_add(1, Ordering::Relaxed);
                true
            }
        }
    }

    /// The values of `names` that this set holds, in the order and spelling of `names`: two sets
    /// agree on those names exactly when their projections are equal, which makes "does this
    /// server already have the client's parameters" one string comparison.
    ///
    /// One pass over the set (a login makes one projection; a `get` per name rescanned the set).
    pub fn project(&self, names: &[String]) -> ParamSet {
        let mut found: Vec<Option<&str>> = vec![None; names.len()];
        for (k, v) in self.iter() {
            if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(k)) {
                found[i] = Some(v);
            }
        }
        let mut packed = String::new();
        for (n, v) in names.iter().zip(found) {
            if let Some(v) = v {
                push_pair(&mut packed, n, v);
            }
        }
        ParamSet {
            packed: packed.into(),
            stamp: STAMPS.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// This set with `top`'s values over it (names of `top` it lacks come last), made in one pass
    /// and one allocation: what a logging-in client is shown (the server's values, its own over
    /// them). The same as `set` for each of `top`'s pairs, which rebuilt the set every time.
    pub fn overlaid(&self, top: &ParamSet) -> ParamSet {
        if top.packed.is_empty() {
            return self.clone();
        }
        let mut packed = String::with_capacity(self.packed.len() + top.packed.len());
        for (k, v) in self.iter() {
            push_pair(&mut packed, k, top.get(k).unwrap_or(v));
        }
        for (k, v) in top.iter() {
            if self.get(k).is_none() {
                push_pair(&mut packed, k, v);
            }
        }
        ParamSet {
            packed: packed.into(),
            stamp: STAMPS.fetch_add(1, Ordering::Relaxed),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        let mut rest: &str = &self.packed;
        // NUL is ASCII, so splitting at it always falls on a character boundary.
        let mut next = move || {
            let end = rest.as_bytes().iter().position(|&b| b == 0)?;
            let part = &rest[..end];
            rest = &rest[end + 1..];
            Some(part)
        };
        std::iter::from_fn(move || Some((next()?, next()?)))
    }

    /// The SET statements that give `server` the client's values for the `tracked` names, or `None`
    /// when they already agree (the common case: no allocation).
    pub fn sync_query(client: &ParamSet, server: &ParamSet, tracked: &[String]) -> Option<String> {
        let mut sql: Option<String> = None;
        for name in tracked {
            let Some(want) = client.get(name) else {
                continue;
            };
            if server.get(name) == Some(want) {
                continue;
            }
            let sql = sql.get_or_insert_with(String::new);
            sql.push_str("SET ");
            push_ident(sql, name);
            sql.push_str(" = ");
            push_literal(sql, want);
            sql.push(';');
        }
        sql
    }
}

fn push_pair(packed: &mut String, name: &str, value: &str) {
    packed.push_str(name);
    packed.push('\0');
    packed.push_str(value);
    packed.push('\0');
}

fn push_ident(out: &mut String, name: &str) {
    out.push('"');
    for c in name.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
}

fn push_literal(out: &mut String, value: &str) {
    // A plain literal's backslashes mean different things under standard_conforming_strings on and
    // off; an E'' literal with doubled backslashes means the same under both.
    if value.contains('\\') {
        out.push_str("E'");
        for c in value.chars() {
            match c {
                '\'' => out.push_str("''"),
                '\\' => out.push_str("\\\\"),
                c => out.push(c),
            }
        }
    } else {
        out.push('\'');
        for c in value.chars() {
            if c == '\'' {
                out.push('\'');
            }
            out.push(c);
        }
    }
    out.push('\'');
}

#[cfg(test)]
mod tests {
    #[test]
    fn stamps_change_with_values_and_follow_clones() {
        let mut a = super::ParamSet::default();
        let empty = a.stamp();
        assert!(a.set("TimeZone", "UTC"));
        assert_ne!(a.stamp(), empty);
        let b = a.clone();
        assert_eq!(a.stamp(), b.stamp());
        let before = a.stamp();
        assert!(!a.set("timezone", "UTC"), "same value: no change");
        assert_eq!(a.stamp(), before);
        assert!(a.set("timezone", "Europe/Paris"));
        assert_ne!(a.stamp(), b.stamp());
        assert_ne!(a, b);
    }

    use super::*;

    #[test]
    fn sync_query_only_for_differences() {
        let tracked = vec!["TimeZone".to_owned(), "application_name".to_owned()];
        let mut client = ParamSet::default();
        client.set("TimeZone", "UTC");
        client.set("application_name", "it's");
        let mut server = ParamSet::default();
        server.set("timezone", "UTC");
        server.set("application_name", "other");
        assert_eq!(
            ParamSet::sync_query(&client, &server, &tracked).as_deref(),
            Some("SET \"application_name\" = 'it''s';")
        );
        server.set("application_name", "it's");
        assert_eq!(ParamSet::sync_query(&client, &server, &tracked), None);
    }

    #[test]
    fn set_replaces_in_place_and_keeps_empty_values() {
        let mut set = ParamSet::default();
        set.set("a", "1");
        set.set("b", "");
        set.set("c", "3");
        assert!(set.set("B", "two"));
        assert!(set.set("a", ""));
        let all: Vec<_> = set.iter().collect();
        assert_eq!(all, [("a", ""), ("b", "two"), ("c", "3")]);
        assert!(
            !set.set("x", "nul\0inside"),
            "a NUL would break the packing"
        );
        assert_eq!(set.get("x"), None);
    }

    #[test]
    fn project_keeps_named_values_and_restamps() {
        let mut set = ParamSet::default();
        set.set("TimeZone", "UTC");
        set.set("server_version", "15.18");
        set.set("application_name", "app");
        let before = set.stamp();
        let set = set.project(&["application_name".to_owned(), "timezone".to_owned()]);
        assert_eq!(
            set.iter().collect::<Vec<_>>(),
            [("application_name", "app"), ("timezone", "UTC")],
            "in the order and spelling of the names"
        );
        assert_eq!(set.get("TimeZone"), Some("UTC"));
        assert_eq!(set.get("application_name"), Some("app"));
        assert_eq!(set.get("server_version"), None);
        assert_ne!(
            set.stamp(),
            before,
            "a changed set must not match an old comparison"
        );
    }

    /// A set made by `set` of each pair, in order.
    fn set_of(pairs: &[(&str, &str)]) -> ParamSet {
        let mut set = ParamSet::default();
        for (k, v) in pairs {
            set.set(k, v);
        }
        set
    }

    #[test]
    fn projections_are_equal_exactly_when_the_names_agree() {
        let tracked = vec!["TimeZone".to_owned(), "application_name".to_owned()];
        let mut server = set_of(&[
            ("application_name", "app"),
            ("server_version", "15.18"),
            ("timezone", "UTC"),
        ]);
        let client = set_of(&[("TIMEZONE", "UTC"), ("application_name", "app")]).project(&tracked);
        assert_eq!(client.project(&tracked), server.project(&tracked));
        assert_eq!(
            client,
            server.project(&tracked),
            "a projection is its own projection"
        );
        server.set("TimeZone", "Europe/Paris");
        assert_ne!(client, server.project(&tracked));
        assert!(ParamSet::sync_query(&client, &server, &tracked).is_some());
    }

    #[test]
    fn overlaid_equals_setting_each_value() {
        let server = set_of(&[
            ("TimeZone", "UTC"),
            ("server_version", "15.18"),
            ("application_name", ""),
        ]);
        let client = set_of(&[
            ("application_name", "app"),
            ("timezone", "Europe/Paris"),
            ("search_path", "s"),
        ]);
        let mut by_set = server.clone();
        for (k, v) in client.iter() {
            by_set.set(k, v);
        }
        let over = server.overlaid(&client);
        assert_eq!(over, by_set);
        assert_eq!(
            over.iter().collect::<Vec<_>>(),
            [
                ("TimeZone", "Europe/Paris"),
                ("server_version", "15.18"),
                ("application_name", "app"),
                ("search_path", "s")
            ]
        );
        assert_eq!(server.overlaid(&ParamSet::default()), server);
    }

    #[test]
    fn backslashes_use_escape_string() {
        let mut s = String::new();
        push_literal(&mut s, "a\\b'c");
        assert_eq!(s, "E'a\\\\b''c'");
    }
}
