//! Prepared statements in transaction and statement mode.
//!
//! A client's named statement lives on whatever server it was prepared on, and the next transaction
//! may run elsewhere. So the pooler keeps the statements itself: every distinct definition (query text
//! and parameter types) becomes one [`Statement`] with a pooler-owned name; each client maps its own
//! names to statements; each server remembers, in a bounded LRU, which statements it has prepared.
//! The [`tracker`] rewrites the client's extended-protocol messages to the pooler's names, prepares on
//! demand, and keeps the replies in order. Unnamed statements pass through untouched.

pub mod local;
pub mod tracker;

use bytes::{Bytes, BytesMut};
use dashmap::DashMap;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// One distinct statement definition, shared by every client that prepared it.
#[derive(Debug)]
pub struct Statement {
    pub id: u64,
    /// The name it has on servers.
    pub server_name: Box<[u8]>,
    /// Query text and parameter types, exactly as the first client sent them in Parse.
    pub definition: Bytes,
}

/// All statement definitions in use, deduplicated so that clients preparing the same query share
/// its server-side copies.
#[derive(Debug, Default)]
pub struct Registry {
    by_definition: DashMap<Bytes, Arc<Statement>>,
    next_id: AtomicU64,
}

impl Registry {
    /// The statement for `definition`, created on first use.
    pub fn intern(&self, definition: &[u8]) -> Arc<Statement> {
        if let Some(s) = self.by_definition.get(definition) {
            return s.clone();
        }
        let key = Bytes::copy_from_slice(definition);
        self.by_definition
            .entry(key.clone())
            .or_insert_with(|| {
                let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
                Arc::new(Statement {
                    id,
                    server_name: format!("PGSLUICE_{id}").into_bytes().into_boxed_slice(),
                    definition: key,
                })
            })
            .clone()
    }

    /// The statement for `definition`, if there is one.
    pub fn lookup(&self, definition: &[u8]) -> Option<Arc<Statement>> {
        self.by_definition.get(definition).map(|s| s.clone())
    }

    /// Forgets definitions no client refers to any more (servers that still hold them evict them in
    /// their own time). Called by the janitor.
    pub fn prune(&self) {
        self.by_definition.retain(|_, s| Arc::strong_count(s) > 1);
    }

    /// The ids of the statements there are.
    pub fn ids(&self) -> std::collections::HashSet<u64> {
        self.by_definition.iter().map(|s| s.id).collect()
    }

    pub fn len(&self) -> usize {
        self.by_definition.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_definition.is_empty()
    }
}

/// One client's prepared-statement state, kept for its whole session so that tracking allocates
/// nothing per transaction: its statements, the tracker, and the buffers the relay rewrites into.
#[derive(Debug, Default)]
pub struct ClientState {
    pub statements: ClientStatements,
    pub tracker: tracker::Tracker,
    /// Rewritten client frames, waiting to take the place of the originals.
    pub replacement: BytesMut,
    /// The pooler's own replies, waiting for their place in the server's stream.
    pub local: BytesMut,
}

impl ClientState {
    /// A new server attachment: nothing is owed on it yet.
    pub fn begin_attachment(&mut self) {
        self.tracker.begin_attachment();
        self.replacement.clear();
        self.local.clear();
    }
}

/// How much one client may keep named (`max_client_statements`, `max_client_statement_bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLimits {
    pub statements: usize,
    /// Bytes of names and query texts (a definition shared with other clients counts in full).
    pub bytes: usize,
}

impl ClientLimits {
    pub const NONE: ClientLimits = ClientLimits {
        statements: usize::MAX,
        bytes: usize::MAX,
    };
}

/// What a client's name meant: the statement and the columns the client was shown for it.
#[derive(Debug, Clone)]
pub struct ClientEntry {
    /// `None`: the name meant nothing.
    named: Option<Named>,
    shapes: Option<Vec<(u64, u64)>>,
}

/// A client's name for a statement, and when in the client's stream its Parse came.
#[derive(Debug, Clone)]
struct Named {
    statement: Arc<Statement>,
    /// The client's [`ClientStatements::mark`] when it was named: a reset sent before that does not
    /// touch it, even when the reset takes effect later (pipelined).
    born: u64,
}

/// What a client's DEALLOCATE of one name found, at its turn.
#[derive(Debug, PartialEq, Eq)]
pub enum Deallocated {
    Removed,
    /// A Parse sent after the DEALLOCATE named it again: that one stays.
    NamedSince,
    Missing,
}

/// One client's prepared statements, by the names it gave them.
#[derive(Debug, Default)]
pub struct ClientStatements {
    by_name: HashMap<Box<[u8]>, Named>,
    /// The result shapes ([`shape_of`]) each name was described with, by the statement id they were
    /// for: what the client expects its rows to look like. Keyed by id as well, because a Describe's
    /// answer may come after a later Parse of the same name that an error then undoes.
    shapes: HashMap<Box<[u8]>, Vec<(u64, u64)>>,
    /// The bytes of the names and definitions in `by_name`, for `max_client_statement_bytes`.
    bytes: usize,
    /// How many names have been given: the next one's `born`.
    births: u64,
}

/// What naming a statement costs against `max_client_statement_bytes`.
fn cost(name: &[u8], s: &Statement) -> usize {
    name.len() + s.definition.len()
}

/// A fingerprint of a statement's result shape: its RowDescription, or NoData.
pub fn shape_of(tag: u8, body: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    tag.hash(&mut h);
    body.hash(&mut h);
    h.finish()
}

impl ClientStatements {
    /// The shape the client was shown for `name`, if it asked (Describe) since preparing it.
    pub fn shape(&self, name: &[u8]) -> Option<u64> {
        let id = self.by_name.get(name)?.statement.id;
        self.shapes
            .get(name)?
            .iter()
            .find(|(of, _)| *of == id)
            .map(|&(_, s)| s)
    }

    /// Records the shape the client was shown for `name` as statement `id`.
    pub fn set_shape(&mut self, name: &[u8], id: u64, shape: u64) {
        match self.shapes.get_mut(name) {
            Some(v) => match v.iter_mut().find(|(of, _)| *of == id) {
                Some(e) => e.1 = shape,
                None => v.push((id, shape)),
            },
            None => {
                self.shapes.insert(name.into(), vec![(id, shape)]);
            }
        }
    }

    pub fn get(&self, name: &[u8]) -> Option<&Arc<Statement>> {
        self.by_name.get(name).map(|n| &n.statement)
    }

    /// Whether naming a statement of `definition` `name` keeps the client within `limits`.
    pub fn fits(&self, name: &[u8], definition: &[u8], limits: ClientLimits) -> bool {
        let (count, freed) = match self.by_name.get(name) {
            Some(old) => (self.by_name.len(), cost(name, &old.statement)),
            None => (self.by_name.len() + 1, 0),
        };
        let bytes = (self.bytes - freed).saturating_add(name.len() + definition.len());
        count <= limits.statements && bytes <= limits.bytes
    }

    /// Where the client's stream is now: names given from here on are born at or after it.
    pub fn mark(&self) -> u64 {
        self.births
    }

    fn set(&mut self, name: &[u8], named: Named) -> Option<Named> {
        self.bytes += cost(name, &named.statement);
        let old = self.by_name.insert(name.into(), named);
        if let Some(o) = &old {
            self.bytes -= cost(name, &o.statement);
        }
        old
    }

    fn unset(&mut self, name: &[u8]) -> Option<Named> {
        let old = self.by_name.remove(name);
        if let Some(o) = &old {
            self.bytes -= cost(name, &o.statement);
        }
        old
    }

    /// Names `s` `name`, returning what the name meant before (with the columns it was shown).
    pub fn insert(&mut self, name: &[u8], s: Arc<Statement>) -> ClientEntry {
        let shapes = self.shapes.remove(name);
        let born = self.births;
        self.births += 1;
        ClientEntry {
            named: self.set(name, Named { statement: s, born }),
            shapes,
        }
    }

    /// Removes `name`, returning what it meant. The columns recorded for it stay (a shape is only
    /// read for the statement id the name means, and a fresh Parse clears them), so that an undone
    /// Close, or a Describe answer that comes late, loses nothing.
    pub fn take(&mut self, name: &[u8]) -> Option<ClientEntry> {
        self.unset(name).map(|named| ClientEntry {
            named: Some(named),
            shapes: None,
        })
    }

    /// Gives `name` back a meaning it had (an undone Close or Parse).
    pub fn put(&mut self, name: &[u8], e: ClientEntry) {
        match e.named {
            Some(n) => self.set(name, n),
            None => self.unset(name),
        };
        // Shapes recorded since (a late Describe answer) stay; the saved ones come back.
        for (id, shape) in e.shapes.into_iter().flatten() {
            if !self
                .shapes
                .get(name)
                .is_some_and(|v| v.iter().any(|(of, _)| *of == id))
            {
                self.set_shape(name, id, shape);
            }
        }
    }

    /// A Parse of `name` as statement `id` did not happen: if the name still means `id` (a later
    /// Parse may have reused it), it gets back its `previous` meaning, or goes.
    pub fn restore_if(&mut self, name: &[u8], id: u64, previous: ClientEntry) {
        if self.by_name.get(name).is_some_and(|n| n.statement.id == id) {
            self.put(name, previous);
        }
    }

    /// DEALLOCATE `name`, sent at `mark`, at its turn.
    pub fn deallocate(&mut self, name: &[u8], mark: u64) -> Deallocated {
        match self.by_name.get(name) {
            None => Deallocated::Missing,
            Some(n) if n.born >= mark => Deallocated::NamedSince,
            Some(_) => {
                self.unset(name);
                Deallocated::Removed
            }
        }
    }

    /// DEALLOCATE ALL or DISCARD ALL, sent at `mark`, at its turn: the names given before it go.
    pub fn clear_before(&mut self, mark: u64) {
        self.by_name.retain(|_, n| n.born >= mark);
        let by_name = &self.by_name;
        self.shapes.retain(|name, _| by_name.contains_key(name));
        self.bytes = by_name.iter().map(|(k, n)| cost(k, &n.statement)).sum();
    }

    pub fn clear(&mut self) {
        self.clear_before(u64::MAX);
    }

    /// The bytes of the names and query texts named, as counted against the limit.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

/// The statements one server has prepared, least recently used first out.
#[derive(Debug, Default)]
pub struct ServerStatements {
    /// Statement id to the tick it was last used at and the tick it was prepared at.
    prepared: HashMap<u64, (u64, u64)>,
    /// The result shape ([`shape_of`]) of a prepared copy, once a Describe of it was answered.
    shapes: HashMap<u64, u64>,
    /// Statements that exist on the server but must be closed before they are prepared again: evicted
    /// ones whose Close did not run, and ones whose cached plan went stale.
    stale: Vec<u64>,
    tick: u64,
}

impl ServerStatements {
    /// Whether the server has `id`, marking it used.
    pub fn touch(&mut self, id: u64) -> bool {
        self.tick += 1;
        match self.prepared.get_mut(&id) {
            Some((used, _)) => {
                *used = self.tick;
                true
            }
            None => false,
        }
    }

    /// Records `id` as prepared. When that takes the server past `capacity`, returns the least
    /// recently used statement, which the caller must close on the server.
    pub fn insert(&mut self, id: u64, capacity: usize) -> Option<u64> {
        self.tick += 1;
        self.prepared.insert(id, (self.tick, self.tick));
        self.shapes.remove(&id);
        if self.prepared.len() <= capacity {
            return None;
        }
        let (&victim, _) = self
            .prepared
            .iter()
            .filter(|(&k, _)| k != id)
            .min_by_key(|(_, &(used, _))| used)?;
        self.forget(victim);
        Some(victim)
    }

    pub fn forget(&mut self, id: u64) {
        self.prepared.remove(&id);
        self.shapes.remove(&id);
    }

    /// The result shape of the copy of `id`, if known.
    pub fn shape(&self, id: u64) -> Option<u64> {
        self.shapes.get(&id).copied()
    }

    /// The copy of `id` is prepared afresh: its columns are not known any more.
    pub fn forget_shape(&mut self, id: u64) {
        self.shapes.remove(&id);
    }

    pub fn set_shape(&mut self, id: u64, shape: u64) {
        if self.prepared.contains_key(&id) {
            self.shapes.insert(id, shape);
        }
    }

    /// The server still has `id` but it must be closed before being prepared again.
    pub fn mark_stale(&mut self, id: u64) {
        self.forget(id);
        if !self.stale.contains(&id) {
            self.stale.push(id);
        }
    }

    /// Takes `id` off the stale list; true if it was there (so a Close must go first).
    pub fn take_stale(&mut self, id: u64) -> bool {
        let before = self.stale.len();
        self.stale.retain(|&s| s != id);
        self.stale.len() != before
    }

    /// Where the server's stream is now: statements prepared from here on are newer than it.
    pub fn mark(&self) -> u64 {
        self.tick
    }

    /// The server ran DISCARD ALL or DEALLOCATE ALL, sent at `mark`: the statements prepared before
    /// it are gone, the ones pipelined after it are there. Stale ones stay listed: closing a name
    /// that is not there is no error.
    pub fn clear_before(&mut self, mark: u64) {
        self.prepared.retain(|_, &mut (_, born)| born > mark);
        let prepared = &self.prepared;
        self.shapes.retain(|id, _| prepared.contains_key(id));
    }

    /// The server ran DISCARD ALL or DEALLOCATE ALL: it has nothing prepared any more.
    pub fn clear(&mut self) {
        self.prepared.clear();
        self.shapes.clear();
        self.stale.clear();
    }

    pub fn len(&self) -> usize {
        self.prepared.len()
    }

    pub fn is_empty(&self) -> bool {
        self.prepared.is_empty()
    }
}

/// Counters per pool, for the admin console and metrics.
#[derive(Debug, Default)]
pub struct PreparedStats {
    /// Parse messages of named statements from clients.
    pub client_parses: AtomicU64,
    /// Parse messages sent to servers (a client's, or one the pooler added before a Bind).
    pub server_parses: AtomicU64,
    /// Binds of named statements.
    pub binds: AtomicU64,
    /// Parses and Binds that found the statement already on the server.
    pub hits: AtomicU64,
    /// Statements closed on a server to keep it under `max_prepared_statements`.
    pub evictions: AtomicU64,
    /// Batches replayed after "cached plan must not change result type" on a pooler copy.
    pub healed: AtomicU64,
    /// Binds and Describes answered with 0A000 because the statement's columns changed since the
    /// client prepared it.
    pub stale_shapes: AtomicU64,
    /// Statements held behind another's shape check, which went unchecked (one check at a time).
    pub unchecked_shapes: AtomicU64,
    /// Batches of Parse (+ Describe) + Sync answered without a server (local.rs).
    pub answered_without_server: AtomicU64,
}

impl PreparedStats {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_dedupes_and_prunes() {
        let r = Registry::default();
        let a = r.intern(b"SELECT 1\0\0\0");
        let b = r.intern(b"SELECT 1\0\0\0");
        let c = r.intern(b"SELECT 2\0\0\0");
        assert_eq!(a.id, b.id);
        assert_ne!(a.id, c.id);
        assert_eq!(&*a.server_name, format!("PGSLUICE_{}", a.id).as_bytes());
        drop(c);
        r.prune();
        assert_eq!(r.len(), 1, "only the unused definition goes");
    }

    #[test]
    fn server_lru_evicts_least_recently_used() {
        let mut s = ServerStatements::default();
        assert_eq!(s.insert(1, 2), None);
        assert_eq!(s.insert(2, 2), None);
        assert!(s.touch(1));
        assert_eq!(s.insert(3, 2), Some(2));
        assert!(!s.touch(2));
        assert!(s.touch(1) && s.touch(3));
        s.mark_stale(3);
        assert!(!s.touch(3));
        assert!(s.take_stale(3));
        assert!(!s.take_stale(3));
    }
}
