//! Run-time parameters (ParameterStatus) of a server or a client, and the SET that aligns them.

use std::sync::atomic::{AtomicU64, Ordering};

/// Stamps are drawn from one counter, so a stamp names one state of one set: two sets with the
/// same stamp hold the same values (a clone keeps its original's stamp until either changes).
static STAMPS: AtomicU64 = AtomicU64::new(1);

/// A small ordered set of name → value; names compare case-insensitively as PostgreSQL's GUCs do.
#[derive(Debug, Clone, Default)]
pub struct ParamSet {
    items: Vec<(String, String)>,
    /// Changes with every change of the values (0: empty, never changed).
    stamp: u64,
}

impl PartialEq for ParamSet {
    fn eq(&self, other: &Self) -> bool {
        self.items == other.items
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
        self.items
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Sets a value; returns whether it changed. Allocates only when it does.
    pub fn set(&mut self, name: &str, value: &str) -> bool {
        match self
            .items
            .iter_mut()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
        {
            Some((_, v)) if v == value => false,
            Some((_, v)) => {
                value.clone_into(v);
                self.stamp = STAMPS.fetch_add(1, Ordering::Relaxed);
                true
            }
            None => {
                self.items.push((name.to_owned(), value.to_owned()));
                self.stamp = STAMPS.fetch_add(1, Ordering::Relaxed);
                true
            }
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.items.iter().map(|(k, v)| (k.as_str(), v.as_str()))
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
    fn backslashes_use_escape_string() {
        let mut s = String::new();
        push_literal(&mut s, "a\\b'c");
        assert_eq!(s, "E'a\\\\b''c'");
    }
}
