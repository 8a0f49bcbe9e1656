//! Where PBKDF2 runs: on tokio's blocking threads, at most one derivation per core at a time.
//!
//! A derivation costs milliseconds of CPU by design. Running it on an async worker would stall every
//! client that worker serves; running an unbounded number at once would let a login storm starve the
//! relay of CPU. Logins beyond the bound wait here, asynchronously, in arrival order. The App owns
//! one bound for all the logins it serves, clients' and servers' alike.

use tokio::sync::Semaphore;

/// The bound on key derivations running at once.
#[derive(Debug)]
pub struct Kdf {
    permits: Semaphore,
}

impl Default for Kdf {
    /// One derivation per core.
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            permits: Semaphore::new(cores),
        }
    }
}

impl Kdf {
    /// Runs `work` (a key derivation) off the async workers under the concurrency bound. `None`
    /// only when the runtime is shutting down.
    pub async fn derive<T, F>(&self, work: F) -> Option<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let _permit = self.permits.acquire().await.ok()?;
        tokio::task::spawn_blocking(work).await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn never_more_derivations_at_once_than_cores() {
        let kdf = Arc::new(Kdf::default());
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..32)
            .map(|_| {
                let (running, peak, kdf) = (running.clone(), peak.clone(), kdf.clone());
                tokio::spawn(async move {
                    kdf.derive(move || {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(std::time::Duration::from_millis(5));
                        running.fetch_sub(1, Ordering::SeqCst);
                    })
                    .await
                })
            })
            .collect();
        for t in tasks {
            assert!(t.await.unwrap().is_some());
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let peak = peak.load(Ordering::SeqCst);
        assert!(peak >= 1 && peak <= cores, "peak {peak} with {cores} cores");
    }
}
