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
    /// Asking its pool for a server.
    Waiting,
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
}

/// One logged-in client: its cancel key, the server it holds, its task's waker.
#[derive(Debug)]
pub struct CancelTarget {
    secret: u32,
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
        *self.link.lock() = Link::Waiting;
    }

    pub fn link(&self) -> Link {
        self.link.lock().clone()
    }
}

#[derive(Debug, Default)]
pub struct CancelMap {
    clients: DashMap<u32, Arc<CancelTarget>>,
    next_id: AtomicU64,
}

/// Removes the client's key from the map when the client goes.
#[derive(Debug)]
pub struct CancelRegistration {
    map: Arc<CancelMap>,
    pub pid: u32,
    pub target: Arc<CancelTarget>,
}

impl CancelRegistration {
    /// The secret half of the key, sent to the client in BackendKeyData.
    pub fn target_secret(&self) -> u32 {
        self.target.secret
    }
}

impl Drop for CancelRegistration {
    fn drop(&mut self) {
        self.map.clients.remove(&self.pid);
    }
}

impl CancelMap {
    /// Hands out a fresh, unused key for a client.
    pub fn register(self: &Arc<Self>, who: Who) -> CancelRegistration {
        let target = Arc::new(CancelTarget {
            secret: rand::random(),
            link: Mutex::new(Link::Idle),
            nudge: Nudge::default(),
            id: self.next_id.fetch_add(1, Ordering::Relaxed) + 1,
            who,
        });
        loop {
            let pid: u32 = rand::random();
            if let dashmap::Entry::Vacant(v) = self.clients.entry(pid) {
                v.insert(target.clone());
                return CancelRegistration {
                    map: self.clone(),
                    pid,
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

    /// Forwards a cancel if the key matches a client that holds a server; silently does nothing
    /// otherwise, as PostgreSQL does (a cancel never gets an answer).
    pub async fn forward(&self, pid: u32, secret: u32) {
        let target = {
            let Some(entry) = self.clients.get(&pid) else {
                return;
            };
            if !bool::from(subtle::ConstantTimeEq::ct_eq(&entry.secret, &secret)) {
                return;
            }
            entry.link()
        };
        let Link::Active(server) = target else {
            return;
        };
        crate::backend::cancel::send(&server.addr, server.key).await;
    }
}
