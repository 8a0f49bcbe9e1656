//! From the first byte to ReadyForQuery: startup packet, login checks, authentication, welcome.

use super::send_error;
use crate::app::App;
use crate::auth::client::{authenticate, AuthError};
use crate::backend::params::ParamSet;
use crate::net::stream::Stream;
use crate::pool::{Pool, PoolKey, PoolSettings};
use crate::proto::encode::{self, Severity};
use crate::proto::startup::{self, StartupMessage, StartupPacket};
use crate::proto::{sqlstate, ProtoError};
use bytes::BytesMut;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A client that is logged in and has been welcomed.
#[derive(Debug)]
pub struct LoggedIn {
    pub pool: Arc<Pool>,
    pub user: String,
    pub database: String,
    pub params: ParamSet,
    pub cancel: super::cancel::CancelRegistration,
}

/// Why a login ended without a session. Rejections have already been told to the client.
#[derive(Debug, thiserror::Error)]
pub enum LoginEnd {
    #[error("cancel request")]
    Cancel,
    #[error("{0}")]
    Rejected(String),
    #[error("client went away during login")]
    Gone,
}

/// Parameters a client may set at startup without being refused.
const ALWAYS_ACCEPTED: [&str; 2] = ["user", "database"];

async fn reject(stream: &mut Stream, code: &str, message: String) -> LoginEnd {
    send_error(stream, Severity::Fatal, code, &message, None).await;
    LoginEnd::Rejected(message)
}

/// Reads the startup packet, answering SSLRequest and GSSENCRequest with `N` (no TLS yet).
async fn read_startup(
    app: &App,
    stream: &mut Stream,
    buf: &mut BytesMut,
) -> Result<StartupMessage, LoginEnd> {
    loop {
        match startup::parse(buf) {
            Ok(Some(StartupPacket::SslRequest | StartupPacket::GssEncRequest)) => {
                if !buf.is_empty() {
                    // Bytes after an SSLRequest, before our answer, would be a buffer-stuffing attack.
                    return Err(reject(
                        stream,
                        sqlstate::PROTOCOL_VIOLATION,
                        "unexpected data after SSLRequest".into(),
                    )
                    .await);
                }
                stream.write_all(b"N").await.map_err(|_| LoginEnd::Gone)?;
                continue;
            }
            Ok(Some(StartupPacket::Cancel { pid, secret })) => {
                app.cancels.forward(pid, secret).await;
                return Err(LoginEnd::Cancel);
            }
            Ok(Some(StartupPacket::Startup(m))) => return Ok(m),
            Ok(None) => {}
            Err(e @ ProtoError::UnsupportedProtocol { .. }) => {
                return Err(reject(stream, sqlstate::FEATURE_NOT_SUPPORTED, e.to_string()).await)
            }
            Err(e) => {
                return Err(reject(
                    stream,
                    sqlstate::PROTOCOL_VIOLATION,
                    format!("invalid startup packet: {e}"),
                )
                .await)
            }
        }
        match stream.read_buf(buf).await {
            Ok(0) | Err(_) => return Err(LoginEnd::Gone),
            Ok(_) => {}
        }
    }
}

/// Runs the whole login. On success the client has received AuthenticationOk, the parameters,
/// its BackendKeyData and ReadyForQuery.
pub async fn login(
    app: &App,
    stream: &mut Stream,
    buf: &mut BytesMut,
) -> Result<LoggedIn, LoginEnd> {
    let mut m = read_startup(app, stream, buf).await?;
    let config = app.config();
    let g = &config.general;

    // Protocol options (`_pq_.*`) and minor versions above 0 are declined, as PostgreSQL does.
    let unknown_options: Vec<String> = m
        .params
        .iter()
        .filter(|(k, _)| k.starts_with("_pq_."))
        .map(|(k, _)| k.clone())
        .collect();
    if m.minor > 0 || !unknown_options.is_empty() {
        let mut out = BytesMut::new();
        let names: Vec<&str> = unknown_options.iter().map(String::as_str).collect();
        encode::negotiate_protocol_version(&mut out, 0, &names);
        stream.write_all(&out).await.map_err(|_| LoginEnd::Gone)?;
        m.params.retain(|(k, _)| !k.starts_with("_pq_."));
    }

    let Some(user) = m.get("user").map(str::to_owned) else {
        return Err(reject(
            stream,
            sqlstate::INVALID_AUTHORIZATION,
            "no PostgreSQL user name specified in startup packet".into(),
        )
        .await);
    };
    let database = m
        .get("database")
        .filter(|d| !d.is_empty())
        .unwrap_or(&user)
        .to_owned();

    let mut params = ParamSet::default();
    for (k, v) in &m.params {
        if ALWAYS_ACCEPTED.contains(&k.as_str()) {
            continue;
        }
        if g.tracked_parameters
            .iter()
            .any(|t| t.eq_ignore_ascii_case(k))
        {
            params.set(k, v);
        } else if g
            .ignore_startup_parameters
            .iter()
            .any(|t| t.eq_ignore_ascii_case(k))
        {
            continue;
        } else {
            return Err(reject(
                stream,
                sqlstate::PROTOCOL_VIOLATION,
                format!("unsupported startup parameter: {k}"),
            )
            .await);
        }
    }

    let Some(settings) = PoolSettings::resolve(&config, &database, &user) else {
        // Refused before authentication, with PgBouncer's message and SQLSTATE.
        return Err(reject(
            stream,
            sqlstate::PROTOCOL_VIOLATION,
            format!("no such database: {database}"),
        )
        .await);
    };

    let secret = config.auth_secrets.get(&user);
    if let Err(e) = authenticate(stream, buf, g.auth_type, &user, secret, &app.verifiers).await {
        return Err(match e {
            AuthError::Closed | AuthError::Io(_) => LoginEnd::Gone,
            AuthError::Failed(_) => {
                reject(
                    stream,
                    e.sqlstate(),
                    format!("password authentication failed for user \"{user}\""),
                )
                .await
            }
            other => reject(stream, other.sqlstate(), other.to_string()).await,
        });
    }

    let key = PoolKey {
        database: database.clone(),
        user: user.clone(),
    };
    let pool = app.pools.get_or_create(key, settings);
    let welcome = match pool.welcome_params() {
        Some(w) => w,
        None => match pool.checkout().await {
            Ok(conn) => {
                let w = conn.server.params.clone();
                pool.checkin(conn);
                w
            }
            Err(e) => {
                let code = match &e {
                    crate::pool::PoolError::Connect(b) => b.sqlstate().to_owned(),
                    crate::pool::PoolError::WaitTimeout => sqlstate::PROTOCOL_VIOLATION.to_owned(),
                };
                return Err(reject(stream, &code, e.to_string()).await);
            }
        },
    };
    // The client sees the server's parameters, with its own values for the tracked ones.
    let mut shown = welcome;
    for (k, v) in params.iter() {
        shown.set(k, v);
    }
    let cancel = app.cancels.register();
    let mut out = BytesMut::with_capacity(512);
    encode::auth_ok(&mut out);
    for (k, v) in shown.iter() {
        encode::parameter_status(&mut out, k, v);
    }
    encode::backend_key_data(&mut out, cancel.pid, cancel.target_secret());
    encode::ready_for_query(&mut out, b'I');
    stream.write_all(&out).await.map_err(|_| LoginEnd::Gone)?;
    Ok(LoggedIn {
        pool,
        user,
        database,
        params: shown,
        cancel,
    })
}
