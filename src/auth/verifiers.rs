//! The PBKDF2 verifier cache: SCRAM verifiers for users whose secret is plain text.

use super::kdf::Kdf;
use super::secret::{ScramVerifier, Secret};
use dashmap::DashMap;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// SCRAM verifiers derived from plain-text secrets, per user, so that PBKDF2 runs once per user and
/// secret rather than once per login. The secret is kept beside the verifier so that a changed
/// secret is never served a stale verifier.
pub struct VerifierCache {
    entries: DashMap<String, Arc<(Secret, ScramVerifier)>>,
    /// A random key of this process, so that an unknown user's mock salt (stable per user, as a
    /// real one is) cannot be computed from the user name alone (as PostgreSQL's mock_auth_nonce).
    mock_key: zeroize::Zeroizing<[u8; 32]>,
    /// The bound the derivations run under.
    kdf: Arc<Kdf>,
}

impl std::fmt::Debug for VerifierCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifierCache")
            .field("users", &self.entries.len())
            .finish()
    }
}

impl VerifierCache {
    pub fn new(kdf: Arc<Kdf>) -> Self {
        Self {
            entries: DashMap::new(),
            mock_key: zeroize::Zeroizing::new(rand::random()),
            kdf,
        }
    }

    /// The bound key derivations run under, for a login that derives a key itself.
    pub fn kdf(&self) -> &Kdf {
        &self.kdf
    }

    /// The seed of `user`'s mock verifier: the process's key, then the name.
    pub fn mock_seed(&self, user: &str) -> zeroize::Zeroizing<Vec<u8>> {
        let mut seed = zeroize::Zeroizing::new(self.mock_key.to_vec());
        seed.push(0);
        seed.extend_from_slice(user.as_bytes());
        seed
    }

    pub async fn verifier(&self, user: &str, secret: &Secret) -> Option<ScramVerifier> {
        let password = match secret {
            Secret::Scram(v) => return Some(v.clone()),
            Secret::Md5(_) => return None,
            Secret::Plain(p) => p.clone(),
        };
        if let Some(hit) = self.entries.get(user) {
            if let (Secret::Plain(cached), v) = (&hit.0, &hit.1) {
                if bool::from(cached.as_bytes().ct_eq(password.as_bytes())) {
                    return Some(v.clone());
                }
            }
        }
        let salt: [u8; 16] = rand::random();
        let derived = self
            .kdf
            .derive(move || {
                ScramVerifier::from_password(
                    password.as_bytes(),
                    &salt,
                    crate::auth::secret::DEFAULT_ITERATIONS,
                )
            })
            .await?;
        self.entries
            .insert(user.to_owned(), Arc::new((secret.clone(), derived.clone())));
        Some(derived)
    }
}
