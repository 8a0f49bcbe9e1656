//! Secrets learnt at run time, shared by client logins and server logins:
//! - the ClientKey recovered from a client's SCRAM proof against a stored verifier, with which the
//!   pool logs in to PostgreSQL for that user (SCRAM pass-through: no plain text anywhere);
//! - secrets found by `auth_query`, kept for a short while so that a burst of logins runs the
//!   query once. A failed login forgets the user's entry, so a changed password is fetched anew.

use crate::auth::secret::{ScramVerifier, Secret};
use dashmap::DashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use zeroize::Zeroizing;

/// How long an `auth_query` answer is reused.
pub const FETCHED_TTL: Duration = Duration::from_secs(30);

/// Which server an `auth_query` answer came from, and for whom.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FetchKey {
    pub host: String,
    pub port: u16,
    pub user: String,
}

struct RecoveredKey {
    /// The verifier the key belongs to: SHA256(ClientKey) = StoredKey.
    stored_key: [u8; 32],
    client_key: Zeroizing<[u8; 32]>,
}

struct Fetched {
    /// `None`: the query found no such user (or a NULL secret).
    secret: Option<Secret>,
    at: Instant,
    /// A login failed against it: ask the server again next time.
    stale: bool,
}

#[derive(Default)]
pub struct SecretStore {
    client_keys: DashMap<String, Arc<RecoveredKey>>,
    fetched: DashMap<FetchKey, Fetched>,
}

impl std::fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretStore")
            .field("client_keys", &self.client_keys.len())
            .field("fetched", &self.fetched.len())
            .finish()
    }
}

impl SecretStore {
    /// Keeps the ClientKey a client just proved it has, for `user`'s server logins.
    pub fn remember_client_key(&self, user: &str, verifier: &ScramVerifier, client_key: [u8; 32]) {
        self.client_keys.insert(
            user.to_owned(),
            Arc::new(RecoveredKey {
                stored_key: verifier.stored_key,
                client_key: Zeroizing::new(client_key),
            }),
        );
    }

    /// The ClientKey for `verifier`, if a client of `user` proved it against that very verifier.
    pub fn client_key(&self, user: &str, verifier: &ScramVerifier) -> Option<Zeroizing<[u8; 32]>> {
        let hit = self.client_keys.get(user)?;
        (hit.stored_key == verifier.stored_key).then(|| hit.client_key.clone())
    }

    /// A fresh `auth_query` answer: `Some(None)` means the query found no secret.
    pub fn fetched(&self, key: &FetchKey) -> Option<Option<Secret>> {
        let hit = self.fetched.get(key)?;
        (!hit.stale && hit.at.elapsed() < FETCHED_TTL).then(|| hit.secret.clone())
    }

    /// The last `auth_query` answer however old, for server logins of clients already let in.
    pub fn last_fetched(&self, key: &FetchKey) -> Option<Secret> {
        self.fetched.get(key).and_then(|h| h.secret.clone())
    }

    pub fn store_fetched(&self, key: FetchKey, secret: Option<Secret>) {
        self.fetched.insert(
            key,
            Fetched {
                secret,
                at: Instant::now(),
                stale: false,
            },
        );
    }

    /// Marks a cached answer stale after a failed login, so the next login asks the server again.
    /// The secret itself stays for [`SecretStore::last_fetched`]: server logins of clients let in
    /// a moment earlier still need it, and a fresh answer replaces it.
    pub fn forget_fetched(&self, key: &FetchKey) {
        if let Some(mut hit) = self.fetched.get_mut(key) {
            hit.stale = true;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn key() -> FetchKey {
        FetchKey {
            host: "db".into(),
            port: 5432,
            user: "u".into(),
        }
    }

    #[tokio::test]
    async fn a_failed_login_makes_the_answer_stale_but_keeps_it_for_server_logins() {
        let store = SecretStore::default();
        store.store_fetched(key(), Some(Secret::parse("pw")));
        assert!(store.fetched(&key()).unwrap().is_some());
        store.forget_fetched(&key());
        // The next client login asks the server again...
        assert!(store.fetched(&key()).is_none());
        // ...while a server login for a client already let in still has the secret.
        assert!(store.last_fetched(&key()).is_some());
        store.store_fetched(key(), None);
        assert_eq!(store.fetched(&key()).map(|s| s.is_none()), Some(true));
        assert!(store.last_fetched(&key()).is_none());
    }
}
