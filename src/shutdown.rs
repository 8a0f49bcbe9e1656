//! PgBouncer's shutdown meanings, as one phase everybody watches.
//!
//! - SIGINT: stop accepting; each client is closed once its server is released; exit when none is left.
//! - SIGTERM: stop accepting; wait for clients to leave by themselves.
//! - a second SIGINT/SIGTERM, or SIGQUIT: close everything now.
//!
//! Clients are counted by drop guards, so "no client left" cannot drift from the truth.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::{watch, Notify};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Running,
    /// SIGTERM: no new clients; the connected ones carry on until they leave.
    WaitForClients,
    /// SIGINT: no new clients; each is closed when its server is released.
    WaitForServers,
    /// Close everything now.
    Immediate,
}

#[derive(Debug)]
pub struct Shutdown {
    phase: watch::Sender<Phase>,
    clients: AtomicUsize,
    all_gone: Notify,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self {
            phase: watch::Sender::new(Phase::Running),
            clients: AtomicUsize::new(0),
            all_gone: Notify::new(),
        }
    }
}

/// Held by each client task; dropping it uncounts the client.
#[derive(Debug)]
pub struct ClientGuard(Arc<Shutdown>);

impl Drop for ClientGuard {
    fn drop(&mut self) {
        if self.0.clients.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.all_gone.notify_waiters();
        }
    }
}

impl Shutdown {
    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    pub fn watch(&self) -> watch::Receiver<Phase> {
        self.phase.subscribe()
    }

    /// Moves to a later phase (never back); a repeated request escalates to `Immediate`.
    pub fn request(&self, wanted: Phase) {
        self.phase.send_modify(|p| {
            *p = if *p != Phase::Running && wanted != Phase::Running {
                Phase::Immediate
            } else {
                (*p).max(wanted)
            };
        });
    }

    pub fn clients(&self) -> usize {
        self.clients.load(Ordering::Acquire)
    }

    /// Counts a new client if fewer than `max` are connected.
    pub fn admit(self: &Arc<Self>, max: usize) -> Option<ClientGuard> {
        self.clients
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| ClientGuard(self.clone()))
    }

    /// Resolves when no client is connected.
    pub async fn clients_gone(&self) {
        loop {
            let notified = self.all_gone.notified();
            if self.clients() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Resolves once the phase is at least `phase` (or the sender is gone). Unlike `wait_for`, holds no
/// borrow of the channel afterwards, so it can sit in a `select!` inside a `Send` future.
pub async fn reached(rx: &mut watch::Receiver<Phase>, phase: Phase) {
    let _ = rx.wait_for(|p| *p >= phase).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_signal_escalates() {
        let s = Shutdown::default();
        s.request(Phase::WaitForClients);
        assert_eq!(s.phase(), Phase::WaitForClients);
        s.request(Phase::WaitForServers);
        assert_eq!(s.phase(), Phase::Immediate);
    }

    #[test]
    fn admit_respects_max_and_guards_count() {
        let s = Arc::new(Shutdown::default());
        let a = s.admit(1).unwrap();
        assert!(s.admit(1).is_none());
        drop(a);
        assert!(s.admit(1).is_some());
    }
}
