//! `auth_query`: a user the auth file does not know is looked up on the server, as `auth_user`, in
//! `auth_dbname` (by default the client's database), through an ordinary pool of that user. This is
//! how CloudNativePG wires its poolers: `cnpg_pooler_pgbouncer` logs in with a TLS client
//! certificate and calls `public.user_search($1)`. Answers are cached for
//! [`FETCHED_TTL`](crate::auth::store::FETCHED_TTL) and never logged.

use crate::auth::secret::Secret;
use crate::auth::store::FetchKey;
use crate::backend::query::lookup_second_column;
use crate::config::{Config, Database};
use crate::error::{ClientError, Side};
use crate::pool::registry::Registry;
use crate::pool::{PoolError, PoolKey, PoolSettings, Sources};
use crate::proto::sqlstate;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum AuthQueryError {
    #[error("auth_dbname {0:?} has no [databases] entry")]
    NoDatabase(String),
    #[error("auth_query failed: {0}")]
    Pool(#[from] PoolError),
    #[error("auth_query failed: {0}")]
    Query(#[from] crate::backend::BackendError),
}

/// What the client whose login needed the lookup hears: no server address or OS error.
impl From<&AuthQueryError> for ClientError {
    fn from(e: &AuthQueryError) -> Self {
        let (mut told, cause) = match e {
            AuthQueryError::NoDatabase(_) => {
                let m = e.to_string();
                return ClientError::fatal(sqlstate::INVALID_AUTHORIZATION, m, Side::Internal);
            }
            AuthQueryError::Pool(e) => (ClientError::from(e), "auth_query failed"),
            AuthQueryError::Query(e) => (ClientError::from(e), "auth_query failed"),
        };
        told.message = format!("{cause}: {}", told.message).into();
        told
    }
}

/// Where a user's secret would be fetched from; `None` when no `auth_user` is configured.
pub fn fetch_key(config: &Config, db: &Database, user: &str) -> Option<FetchKey> {
    db.auth_user
        .as_ref()
        .or(config.general.auth_user.as_ref())?;
    Some(FetchKey {
        host: db.host.clone(),
        port: db.port,
        user: user.to_owned(),
    })
}

/// The secret `auth_query` gives `user` (`None`: no such user, or no password), through a pool of
/// `pools` and cached in `sources.store`. Served from the cache while fresh.
pub async fn fetch(
    pools: &Registry,
    sources: &Sources<'_>,
    config: &Config,
    db: &Database,
    database: &str,
    user: &str,
) -> Result<Option<Secret>, AuthQueryError> {
    let g = &config.general;
    let Some(key) = fetch_key(config, db, user) else {
        return Ok(None);
    };
    if let Some(hit) = sources.store.fetched(&key) {
        return Ok(hit);
    }
    let auth_user = db
        .auth_user
        .as_deref()
        .or(g.auth_user.as_deref())
        .unwrap_or(user);
    let auth_db = db
        .auth_dbname
        .as_deref()
        .or(g.auth_dbname.as_deref())
        .unwrap_or(database);
    let query = db.auth_query.as_deref().unwrap_or(&g.auth_query);
    let settings = PoolSettings::resolve(config, auth_db, auth_user, sources)
        .ok_or_else(|| AuthQueryError::NoDatabase(auth_db.to_owned()))?;
    let pool = pools.get_or_create(
        PoolKey {
            database: auth_db.to_owned(),
            user: auth_user.to_owned(),
        },
        settings,
    );
    let mut conn = pool.checkout().await?;
    // A failed query drops the connection rather than trusting its state.
    let found = lookup_second_column(&mut conn.server, query, user).await?;
    pool.checkin(conn);
    let secret = found.filter(|s| !s.is_empty()).map(|s| Secret::parse(&s));
    sources.store.store_fetched(key, secret.clone());
    Ok(secret)
}
