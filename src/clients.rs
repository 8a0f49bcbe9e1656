//! The registry of logged-in clients. Each gets its own BackendKeyData from the pooler; a
//! CancelRequest carrying it is forwarded, over a new connection, to the server that client holds at
//! that moment. Each entry also carries the client's [`Nudge`] (shutdown wakes them all from here)
//! and who the client is, for SHOW CLIENTS.

use crate::backend::{Server, ServerInfo};
use crate::pool::Pool;
use crate::shutdown::Nudge;
use dashmap::DashMap;
use parking_lot::Mutex;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

/// What a client is doing with servers right now.
#[derive(Debug, Default, Clone)]
pub enum Link {
    #[default]
    Idle,
    /// Asking its pool for a server, since then.
    Waiting(tokio::time::Instant),
    /// Holding this server.
    Active(ServerInfo),
}

/// Who a client is: fixed at login.
#[derive(Debug)]
pub struct Who {
    pub pool: Arc<Pool>,
    /// `None` on the unix socket.
    pub peer: Option<SocketAddr>,
    pub local: Option<SocketAddr>,
    pub tls: bool,
    pub connected: SystemTime,
    /// As given at login (PgBouncer shows the tracked value; a later SET is not seen here).
    pub application_name: Option<Box<str>>,
}

/// One logged-in client: the server it holds, its task's waker.
#[derive(Debug)]
pub struct CancelTarget {
    link: Mutex<Link>,
    /// The client task's waker, for shutdown.
    pub nudge: Nudge,
    /// SHOW CLIENTS' `id`, in login order.
    pub id: u64,
    pub who: Who,
}

impl CancelTarget {
    pub fn attach(&self, server: &Server) {
        *self.link.lock() = Link::Active(server.info());
    }

    pub fn detach(&self) {
        *self.link.lock() = Link::Idle;
    }

    /// The client asks its pool for a server.
    pub fn wait(&self) {
        *self.link.lock() = Link::Waiting(tokio::time::Instant::now());
    }

    pub fn link(&self) -> Link {
        self.link.lock().clone()
    }
}

/// Clients by the key they were given, filed as [`crate::peers::Peers::lookup`] says (the whole
/// key, so that a guess must match all of it).
#[derive(Debug, Default)]
pub struct CancelMap {
    clients: DashMap<u64, Arc<CancelTarget>>,
    next_id: AtomicU64,
}

/// Removes the client's key from the map when the client goes.
#[derive(Debug)]
pub struct CancelRegistration {
    map: Arc<CancelMap>,
    lookup: u64,
    /// The key sent to the client in BackendKeyData.
    pub pid: u32,
    pub secret: u32,
    pub target: Arc<CancelTarget>,
}

impl Drop for CancelRegistration {
    fn drop(&mut self) {
        self.map.clients.remove(&self.lookup);
    }
}

impl CancelMap {
    /// Files a client under a fresh key from `mint`, drawn again until unused; `lookup` gives the
    /// key it is filed under.
    pub fn register(
        self: &Arc<Self>,
        who: Who,
        mint: impl Fn() -> (u32, u32),
        lookup: impl Fn(u32, u32) -> u64,
    ) -> CancelRegistration {
        let target = Arc::new(CancelTarget {
            link: Mutex::new(Link::Idle),
            nudge: Nudge::default(),
            id: self.next_id.fetch_add(1, Ordering::Relaxed) + 1,
            who,
        });
        loop {
            let (pid, secret) = mint();
            let key = lookup(pid, secret);
            if let dashmap::Entry::Vacant(v) = self.clients.entry(key) {
                v.insert(target.clone());
                return CancelRegistration {
                    map: self.clone(),
                    lookup: key,
                    pid,
                    secret,
                    target,
                };
            }
        }
    }

    /// Every logged-in client, in login order.
    pub fn all(&self) -> Vec<Arc<CancelTarget>> {
        let mut all: Vec<_> = self.clients.iter().map(|e| e.value().clone()).collect();
        all.sort_by_key(|c| c.id);
        all
    }

    /// Wakes every logged-in client's task, after a shutdown phase change.
    pub fn wake_all(&self) {
        for entry in self.clients.iter() {
            entry.nudge.wake();
        }
    }

    /// Forwards a cancel if the key (as filed) matches a client that holds a server; silently does
    /// nothing otherwise, as PostgreSQL does (a cancel never gets an answer).
    pub async fn forward(&self, lookup: u64) {
        let target = {
            let Some(entry) = self.clients.get(&lookup) else {
                return;
            };
            entry.link()
        };
        let Link::Active(server) = target else {
            return;
        };
        crate::backend::cancel::send(&server.addr, server.key).await;
    }
}
