//! PgBouncer's shutdown meanings, as one phase everybody watches.
//!
//! - SIGINT: stop accepting; each client is closed once its server is released; exit when none is left.
//! - SIGTERM: stop accepting; wait for clients to leave by themselves.
//! - a second SIGINT/SIGTERM, or SIGQUIT: close everything now.
//!
//! Clients are counted by drop guards, so "no client left" cannot drift from the truth.
//!
//! The phase is mirrored in an atomic for the hot path: a client task checks it and leaves its
//! waker in its own [`Nudge`], and one broadcaster wakes every client's nudge when the phase moves.
//! A watch channel would do the same, but each wait would register with it under a shared lock.

use atomic_waker::AtomicWaker;
use std::future::poll_fn;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::{watch, Notify};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Phase {
    Running,
    /// SIGTERM: no new clients; the connected ones carry on until they leave.
    WaitForClients,
    /// SIGINT: no new clients; each is closed when its server is released.
    WaitForServers,
    /// Close everything now.
    Immediate,
}

impl Phase {
    fn from_u8(n: u8) -> Self {
        match n {
            0 => Self::Running,
            1 => Self::WaitForClients,
            2 => Self::WaitForServers,
            _ => Self::Immediate,
        }
    }
}

#[derive(Debug)]
pub struct Shutdown {
    phase: watch::Sender<Phase>,
    /// The phase again, readable without a lock.
    current: AtomicU8,
    clients: AtomicUsize,
    all_gone: Notify,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self {
            phase: watch::Sender::new(Phase::Running),
            current: AtomicU8::new(Phase::Running as u8),
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
        Phase::from_u8(self.current.load(Ordering::SeqCst))
    }

    pub fn watch(&self) -> watch::Receiver<Phase> {
        self.phase.subscribe()
    }

    /// Moves to a later phase (never back); a repeated request escalates to `Immediate`.
    /// Watchers of [`Self::watch`] are told at once; client nudges by whoever broadcasts changes.
    pub fn request(&self, wanted: Phase) {
        self.phase.send_modify(|p| {
            *p = if *p != Phase::Running && wanted != Phase::Running {
                Phase::Immediate
            } else {
                (*p).max(wanted)
            };
            // Stored before any watcher is told, so a woken client reads the new phase.
            self.current.store(*p as u8, Ordering::SeqCst);
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

/// One client task's waker, left for the shutdown broadcaster and for the console's KILL_CLIENT.
#[derive(Debug, Default)]
pub struct Nudge {
    waker: AtomicWaker,
    /// KILL_CLIENT: this client ends now, as in an immediate shutdown of its own.
    killed: std::sync::atomic::AtomicBool,
}

impl Nudge {
    /// Ready once the phase is at least `phase`, or the client was killed; otherwise the task is
    /// woken when either changes. Cheap when polled again: an unchanged waker is not stored twice.
    pub fn poll_reached(
        &self,
        cx: &mut Context<'_>,
        shutdown: &Shutdown,
        phase: Phase,
    ) -> Poll<()> {
        // Registered before the state is read: a change stored after the read wakes this waker.
        self.waker.register(cx.waker());
        if shutdown.phase() >= phase || self.killed() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Ends this client (KILL_CLIENT): it is woken and closes, whatever it was doing.
    pub fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
        self.wake();
    }

    pub fn killed(&self) -> bool {
        self.killed.load(Ordering::SeqCst)
    }

    pub async fn reached(&self, shutdown: &Shutdown, phase: Phase) {
        poll_fn(|cx| self.poll_reached(cx, shutdown, phase)).await
    }

    pub fn wake(&self) {
        self.waker.wake();
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

    #[tokio::test]
    async fn a_nudged_task_sees_the_new_phase() {
        let s = Arc::new(Shutdown::default());
        let nudge = Arc::new(Nudge::default());
        let waiter = tokio::spawn({
            let (s, nudge) = (s.clone(), nudge.clone());
            async move { nudge.reached(&s, Phase::WaitForServers).await }
        });
        tokio::task::yield_now().await;
        s.request(Phase::WaitForClients);
        nudge.wake();
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "woke before its phase");
        s.request(Phase::WaitForServers);
        nudge.wake();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("the nudge did not wake the task")
            .unwrap();
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
