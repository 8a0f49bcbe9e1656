//! Opening servers for a pool: the login itself, `server_login_retry` after a refused login, the
//! connect gate after a failure that passes (connect_gate.rs), and `min_pool_size` warming.

use super::{Conn, Pool, PoolSettings};
use crate::backend::connect::{self, LoginParams};
use crate::backend::{BackendError, Server};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::time::Instant;

/// A failed login, remembered for `server_login_retry`.
#[derive(Debug)]
pub(super) struct LoginFailure {
    at: Instant,
    code: String,
    message: String,
}

/// Counts a server being opened (SHOW POOLS' sv_login), also when its client goes away mid-login.
struct Opening<'a>(&'a Pool);

impl<'a> Opening<'a> {
    fn new(pool: &'a Pool) -> Self {
        pool.opening.fetch_add(1, Ordering::Relaxed);
        Self(pool)
    }
}

impl Drop for Opening<'_> {
    fn drop(&mut self) {
        self.0.opening.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pool {
    /// False within `server_login_retry` of the last failed login.
    pub fn may_retry_login(&self, now: Instant) -> bool {
        self.recent_login_failure(now).is_none()
    }

    /// The last login failure, if it was less than `server_login_retry` ago.
    fn recent_login_failure(&self, now: Instant) -> Option<BackendError> {
        let inner = self.inner.lock();
        let retry = inner.settings.server_login_retry;
        let f = inner
            .last_login_failure
            .as_ref()
            .filter(|f| now.duration_since(f.at) < retry)?;
        Some(BackendError::LoginRetry {
            code: f.code.clone(),
            last: f.message.clone(),
        })
    }

    /// Opens a server, unless the server refused a login less than `server_login_retry` ago: then
    /// clients get that failure at once, as from PgBouncer, instead of each waiting for a connect of
    /// its own. A failure that may pass (PostgreSQL down or restarting) closes the connect gate
    /// instead (connect_gate.rs), and the caller's client waits for the next attempt.
    pub(super) async fn open(
        self: &Arc<Self>,
        settings: &PoolSettings,
    ) -> Result<Box<Server>, BackendError> {
        if let Some(e) = self.recent_login_failure(Instant::now()) {
            return Err(e);
        }
        // Boxed: a login (TLS, SCRAM) is a large future, and inline it would enlarge every client's
        // task for its whole life, idle or not. Opening a server is rare enough for the allocation.
        let opening = Opening::new(self);
        let started = Instant::now();
        let opened = Box::pin(self.open_now(settings)).await;
        drop(opening);
        let result = opened.as_ref().map(|s| &**s);
        self.stats.note_connect(result, started.elapsed());
        match &opened {
            Ok(_) => {
                let mut inner = self.inner.lock();
                inner.last_login_failure = None;
                if !inner.gate.is_open() {
                    inner.gate.succeeded();
                    tracing::info!(db = %self.key.database, user = %self.key.user, "server reachable again");
                    // Those who queued while connects failed may open servers now.
                    self.grant_free_slots(&mut inner, settings);
                }
            }
            Err(e) if e.is_transient() => {
                let wait = self
                    .inner
                    .lock()
                    .gate
                    .failed(Instant::now(), settings.server_login_retry);
                tracing::warn!(db = %self.key.database, user = %self.key.user, error = %e, retry_in_ms = wait.as_millis() as u64, "could not open a server; clients wait for the retry");
            }
            // Discovery's hold ran out: the next client waits afresh.
            Err(BackendError::NoPrimary) => {}
            Err(e) => {
                // Told to the clients that come next: the client-safe text.
                let told = crate::error::ClientError::from(e);
                self.inner.lock().last_login_failure = Some(LoginFailure {
                    at: Instant::now(),
                    code: told.code.into_owned(),
                    message: told.message.into_owned(),
                })
            }
        }
        opened
    }

    /// Logs in to the first candidate that answers (and is writable, where that is required).
    async fn open_now(&self, settings: &PoolSettings) -> Result<Box<Server>, BackendError> {
        let login = &settings.login;
        let (secret, client_key) = login.credentials();
        let mut last = BackendError::NoPrimary;
        for addr in super::route::candidates(login).await? {
            let params = LoginParams {
                addr: addr.clone(),
                user: &login.user,
                database: &login.dbname,
                secret: secret.as_ref(),
                startup: &login.startup,
                tls: &login.tls,
                client_key: client_key.clone(),
                kdf: &login.kdf,
            };
            let mut server = match connect::connect(&params, settings.server_connect_timeout).await
            {
                Ok(s) => s,
                // A refused login is refused by every host alike; anything else (a host that does
                // not speak PostgreSQL, a TLS mismatch) is that host's, and the next is tried.
                Err(
                    e @ (BackendError::Login { .. }
                    | BackendError::UnsupportedAuth(_)
                    | BackendError::Scram(_)),
                ) if !e.is_transient() => return Err(e),
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            if login.read_write && !super::route::writable(&mut server).await? {
                tracing::info!(db = %self.key.database, server = %format!("{}:{}", addr.host, addr.port),
                    "server is in recovery or read-only: not used");
                last = BackendError::ReadOnly;
                continue;
            }
            self.inner.lock().welcome = Some(server.params.clone());
            return Ok(Box::new(server));
        }
        Err(last)
    }

    /// Opens a server without a client, for `min_pool_size`; it goes straight to idle.
    pub async fn warm_one(self: &Arc<Self>) -> Result<bool, BackendError> {
        let settings = self.settings();
        let slot = {
            let mut inner = self.inner.lock();
            match self.try_take_slot(&mut inner, &settings, false) {
                Ok(s) => s,
                Err(_) => return Ok(false),
            }
        };
        let server = self.open(&settings).await?;
        self.checkin(Conn { server, slot });
        Ok(true)
    }
}
