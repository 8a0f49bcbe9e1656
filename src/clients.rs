//! Cancel requests: each client gets its own BackendKeyData from the pooler; a CancelRequest carrying
//! it is forwarded, over a new connection, to the server that client holds at that moment.
//!
//! The map is thereby the registry of logged-in clients, so it also carries each client's
//! [`Nudge`]: shutdown wakes them all from here.

use crate::backend::{BackendKey, ServerAddr};
use crate::shutdown::Nudge;
use dashmap::DashMap;
use parking_lot::Mutex;
use std::sync::Arc;

/// The server a client holds right now, if any.
#[derive(Debug, Default)]
pub struct CancelTarget {
    secret: u32,
    server: Mutex<Option<(Arc<ServerAddr>, BackendKey)>>,
    /// The client task's waker, for shutdown.
    pub nudge: Nudge,
}

impl CancelTarget {
    pub fn attach(&self, addr: &Arc<ServerAddr>, key: BackendKey) {
        *self.server.lock() = Some((addr.clone(), key));
    }

    pub fn detach(&self) {
        *self.server.lock() = None;
    }
}

#[derive(Debug, Default)]
pub struct CancelMap {
    clients: DashMap<u32, Arc<CancelTarget>>,
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
    pub fn register(self: &Arc<Self>) -> CancelRegistration {
        loop {
            let pid: u32 = rand::random();
            let target = Arc::new(CancelTarget {
                secret: rand::random(),
                server: Mutex::new(None),
                nudge: Nudge::default(),
            });
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
            let server = entry.server.lock().clone();
            server
        };
        let Some((addr, key)) = target else { return };
        crate::backend::cancel::send(&addr, key).await;
    }
}
