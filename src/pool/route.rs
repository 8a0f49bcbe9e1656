//! Which server a pool opens: the candidates of its database (one host, a list tried in order, or
//! what discovery currently sees), each checked to be writable when the database asks for it; and
//! what a pool does when discovery's answer changes.
//!
//! While discovery sees no endpoint (a switchover under way) an opening waits, up to
//! `discovery_hold_timeout`, for one to appear: the clients behind it wait with it instead of
//! failing. A candidate that is in recovery or read-only is never handed to a client.

use super::settings::LoginInfo;
use super::Pool;
use crate::backend::query::run_simple;
use crate::backend::{BackendError, Server, ServerAddr};
use crate::discovery::{Endpoints, Watch};
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use tokio::time::Instant;

fn addr_of(a: &SocketAddr) -> Arc<ServerAddr> {
    Arc::new(ServerAddr {
        host: a.ip().to_string(),
        port: a.port(),
    })
}

/// The servers to try, in order. Waits while discovery knows no endpoint, up to the hold timeout.
pub(super) async fn candidates(login: &LoginInfo) -> Result<Vec<Arc<ServerAddr>>, BackendError> {
    let Some(watch) = &login.discovery else {
        return Ok(login.hosts.to_vec());
    };
    let mut watch = watch.clone();
    let deadline = Instant::now() + login.hold;
    loop {
        match watch.current() {
            Endpoints::Fallback => return Ok(login.hosts.to_vec()),
            Endpoints::Ready(v) if !v.is_empty() => return Ok(v.iter().map(addr_of).collect()),
            state => {
                let changed = tokio::time::timeout_at(deadline, watch.changed()).await;
                match (changed, state) {
                    (Ok(true), _) => continue,
                    // The first list never came, or the source ended: the configured host.
                    (_, Endpoints::Unknown) | (Ok(false), _) => return Ok(login.hosts.to_vec()),
                    _ => return Err(BackendError::NoPrimary),
                }
            }
        }
    }
}

/// libpq's `target_session_attrs=read-write` check: the server reports `in_hot_standby` and
/// `default_transaction_read_only` at login (PostgreSQL 14 and later); older ones are asked.
pub(super) async fn writable(server: &mut Server) -> Result<bool, BackendError> {
    let p = &server.params;
    if let (Some(standby), Some(read_only)) = (
        p.get("in_hot_standby"),
        p.get("default_transaction_read_only"),
    ) {
        return Ok(standby == "off" && read_only == "off");
    }
    let check =
        "DO $$BEGIN IF pg_is_in_recovery() OR current_setting('transaction_read_only')::bool \
                 THEN RAISE EXCEPTION 'pgsluice: read-only'; END IF; END$$";
    match run_simple(server, check).await {
        Ok(()) => Ok(true),
        Err(BackendError::Login { message, .. }) if message.contains("pgsluice: read-only") => {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Retires the pool's servers whenever an endpoint they may lead to goes away: idle ones close at
/// once, the others when released (RECONNECT's rule). Ends with the pool or the source.
pub(super) async fn follow(pool: Weak<Pool>, mut watch: Watch) {
    let mut before = watch.current();
    while watch.changed().await {
        let now = watch.current();
        let gone = match (&before, &now) {
            (Endpoints::Ready(old), Endpoints::Ready(new)) => old.iter().any(|a| !new.contains(a)),
            // From the configured host to endpoints (or back): servers may lead anywhere.
            (a, b) => a != b,
        };
        before = now;
        let Some(pool) = pool.upgrade() else { return };
        if gone {
            tracing::info!(db = %pool.key.database, user = %pool.key.user, endpoints = ?before,
                "the primary's endpoint changed: retiring servers opened before");
            pool.reconnect();
        }
    }
}
