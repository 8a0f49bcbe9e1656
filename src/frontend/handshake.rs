//! From the first byte to ReadyForQuery: startup packet, login checks, authentication, welcome.

pub use super::login::LoginEnd;
use super::login::{auth_failed, auth_method, reject};
use super::route::{route, Route, Target};
use crate::app::App;
use crate::backend::params::ParamSet;
use crate::config::Config;
use crate::error::{ClientError, Side};
use crate::frontend::authenticate::{authenticate, AuthContext, AuthError, Method};
use crate::net::stream::Stream;
use crate::net::tls::{ClientTls, ALPN_POSTGRESQL};
use crate::pool::{Pool, PoolKey, PoolSettings};
use crate::proto::encode;
use crate::proto::startup::{self, StartupMessage, StartupPacket};
use crate::proto::{sqlstate, ProtoError};
use bytes::BytesMut;
use std::sync::Arc;
use tokio::io::AsyncReadExt;

/// What a login opens: a session on a pool, or the admin console.
#[derive(Debug)]
pub enum Login {
    Pool(LoggedIn),
    Console(crate::admin::Role),
}

/// A client that is logged in and has been welcomed.
#[derive(Debug)]
pub struct LoggedIn {
    pub params: ParamSet,
    /// The client's entry in the registry, which also names its pool.
    pub cancel: crate::clients::CancelRegistration,
}

impl LoggedIn {
    /// The client's pool; its key holds the database and user names the client logged in with.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.cancel.target.who.pool
    }
}

/// The first byte of a TLS handshake record: a client starting TLS without SSLRequest.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Reads the startup packet. SSLRequest gets `S` and a TLS handshake when TLS is configured, `N`
/// otherwise; GSSENCRequest always gets `N`. A ClientHello as the very first bytes is PostgreSQL
/// 17's direct TLS, which must name the `postgresql` protocol by ALPN.
async fn read_startup(
    app: &App,
    stream: &mut Stream,
    buf: &mut BytesMut,
    tls: &ClientTls,
) -> Result<StartupMessage, LoginEnd> {
    accept_direct_tls(app, stream, buf, tls).await?;
    loop {
        match startup::parse(buf) {
            Ok(Some(StartupPacket::SslRequest | StartupPacket::GssEncRequest))
                if !buf.is_empty() =>
            {
                // Bytes after an SSLRequest, before our answer, would be a buffer-stuffing attack.
                let e = ClientError::protocol_violation("unexpected data after SSLRequest");
                return Err(reject(&app.events, stream, e).await);
            }
            Ok(Some(StartupPacket::SslRequest)) => {
                answer_ssl_request(app, stream, tls).await?;
                continue;
            }
            Ok(Some(StartupPacket::GssEncRequest)) => {
                stream
                    .write_flushed(b"N")
                    .await
                    .map_err(|_| LoginEnd::Gone)?;
                continue;
            }
            Ok(Some(StartupPacket::Cancel { pid, secret })) => {
                match app.peers.owner_elsewhere(pid) {
                    Some(_) => app.peers.forward(pid, secret).await,
                    None => app.cancels.forward(app.peers.lookup(pid, secret)).await,
                }
                return Err(LoginEnd::Cancel);
            }
            Ok(Some(StartupPacket::PeerCancel(c))) => {
                if let Some((pid, secret)) = app.peers.accept(&c) {
                    app.cancels.forward(app.peers.lookup(pid, secret)).await;
                }
                return Err(LoginEnd::Cancel);
            }
            Ok(Some(StartupPacket::Startup(m))) => return Ok(m),
            Ok(None) => {}
            Err(e @ ProtoError::UnsupportedProtocol { .. }) => {
                let told = ClientError::fatal(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    e.to_string(),
                    Side::Client,
                );
                return Err(reject(&app.events, stream, told).await);
            }
            Err(e) => {
                let told = ClientError::protocol_violation(format!("invalid startup packet: {e}"));
                return Err(reject(&app.events, stream, told).await);
            }
        }
        match stream.read_buf(buf).await {
            Ok(0) | Err(_) => return Err(LoginEnd::Gone),
            Ok(_) => {}
        }
    }
}

/// PostgreSQL 17's direct TLS: a ClientHello as the very first bytes, which must name the
/// `postgresql` protocol by ALPN.
async fn accept_direct_tls(
    app: &App,
    stream: &mut Stream,
    buf: &BytesMut,
    tls: &ClientTls,
) -> Result<(), LoginEnd> {
    let Some(acceptor) = &tls.acceptor else {
        return Ok(());
    };
    if !buf.is_empty() || stream.peek_first().await.ok().flatten() != Some(TLS_HANDSHAKE_RECORD) {
        return Ok(());
    }
    let accepted = stream.accept_tls(acceptor).await;
    app.events.client_tls_handshake(accepted.is_ok());
    accepted.map_err(|_| LoginEnd::Gone)?;
    if stream.alpn_protocol().as_deref() != Some(ALPN_POSTGRESQL) {
        let e = ClientError::protocol_violation(
            "received direct SSL connection request without ALPN protocol negotiation extension",
        );
        return Err(reject(&app.events, stream, e).await);
    }
    Ok(())
}

/// SSLRequest: `S` and the TLS handshake when TLS is configured for this connection, else `N`.
async fn answer_ssl_request(
    app: &App,
    stream: &mut Stream,
    tls: &ClientTls,
) -> Result<(), LoginEnd> {
    let acceptor = match &tls.acceptor {
        Some(a) if !stream.is_tls() && !stream.is_unix() => a,
        _ => return stream.write_flushed(b"N").await.map_err(|_| LoginEnd::Gone),
    };
    stream
        .write_flushed(b"S")
        .await
        .map_err(|_| LoginEnd::Gone)?;
    // A failed handshake leaves nothing to send an error over.
    let accepted = stream.accept_tls(acceptor).await;
    app.events.client_tls_handshake(accepted.is_ok());
    accepted.map_err(|_| LoginEnd::Gone)
}

/// Runs the whole login. On success the client has received AuthenticationOk, the parameters,
/// its BackendKeyData and ReadyForQuery.
/// `method_seen` tells the caller how the client was to authenticate, once that is known.
pub async fn login(
    app: &App,
    stream: &mut Stream,
    buf: &mut BytesMut,
    method_seen: &mut Option<Method>,
) -> Result<Login, LoginEnd> {
    let config = app.config();
    let g = &config.general;
    let m = read_startup(app, stream, buf, &g.client_tls).await?;
    let routed = route(&m, g, |db| app.pools.is_disabled(db));
    // Protocol options (`_pq_.*`) and minor versions above 0 are declined, as PostgreSQL does,
    // before anything else is said.
    if let Some(r) = routed.as_ref().ok().filter(|r| r.negotiate()) {
        let mut out = BytesMut::new();
        let names: Vec<&str> = r.declined_options.iter().map(String::as_str).collect();
        encode::negotiate_protocol_version(&mut out, 0, &names);
        stream
            .write_flushed(&out)
            .await
            .map_err(|_| LoginEnd::Gone)?;
    }
    let Route {
        user,
        database,
        target,
        ..
    } = match routed {
        Ok(r) => r,
        Err(e) => return Err(reject(&app.events, stream, e).await),
    };
    let span = tracing::Span::current();
    span.record("db", tracing::field::display(&database));
    span.record("user", tracing::field::display(&user));
    let params = match target {
        Target::Console => {
            let role =
                super::console::log_in(app, stream, buf, &user, &database, method_seen).await?;
            return Ok(Login::Console(role));
        }
        Target::Pool(params) => params,
    };
    let Some(settings) = PoolSettings::resolve(&config, &database, &user, &app.sources()) else {
        // Refused before authentication, with PgBouncer's message and SQLSTATE.
        let e = ClientError::protocol_violation(format!("no such database: {database}"));
        return Err(reject(&app.events, stream, e).await);
    };
    let method = match auth_method(g, stream, &database, &user) {
        Ok(m) => m,
        Err(e) => return Err(reject(&app.events, stream, e).await),
    };
    *method_seen = Some(method);
    authenticate_client(app, &config, stream, buf, method, &database, &user).await?;
    let pool = app.pools.get_or_create(
        PoolKey {
            database: database.clone(),
            user: user.clone(),
        },
        settings,
    );
    welcome(app, stream, pool, params).await
}

/// Authenticates the client by `method`, with the secret the auth file or `auth_query` has.
async fn authenticate_client(
    app: &App,
    config: &Config,
    stream: &mut Stream,
    buf: &mut BytesMut,
    method: Method,
    database: &str,
    user: &str,
) -> Result<(), LoginEnd> {
    let mut fetched_from = None;
    let secret = match (config.auth_secrets.get(user), config.database(database)) {
        (Some(s), _) => Some(s.clone()),
        (None, Some(db)) if method.needs_secret() => {
            match crate::frontend::auth_query::fetch(
                &app.pools,
                &app.sources(),
                config,
                db,
                database,
                user,
            )
            .await
            {
                Ok(s) => {
                    fetched_from = crate::frontend::auth_query::fetch_key(config, db, user);
                    s
                }
                Err(e) => {
                    tracing::warn!(error = %e, "auth_query failed");
                    return Err(reject(&app.events, stream, ClientError::from(&e)).await);
                }
            }
        }
        _ => None,
    };
    let ctx = AuthContext {
        user,
        secret: secret.as_ref(),
        verifiers: &app.verifiers,
        keys: &app.secrets,
        end_point: config.general.client_tls.end_point.as_deref(),
    };
    let Err(e) = authenticate(stream, buf, method, &ctx).await else {
        return Ok(());
    };
    // A changed password is fetched afresh on the next try. A client that merely went away says
    // nothing about the secret.
    if let (Some(key), AuthError::Failed(_)) = (&fetched_from, &e) {
        app.secrets.forget_fetched(key);
    }
    Err(auth_failed(&app.events, stream, e, user).await)
}

/// Registers the logged-in client and welcomes it: AuthenticationOk, the server's parameters with
/// the client's own values for the tracked ones, its BackendKeyData and ReadyForQuery.
async fn welcome(
    app: &App,
    stream: &mut Stream,
    pool: Arc<Pool>,
    params: ParamSet,
) -> Result<Login, LoginEnd> {
    let g = &app.config().general;
    let welcome = match pool.welcome_params() {
        Some(w) => w,
        None => match pool.checkout().await {
            Ok(conn) => {
                let w = conn.server.params.clone();
                pool.checkin(conn);
                w
            }
            Err(e) => {
                tracing::warn!(error = %e, "no server for a logging-in client");
                return Err(reject(&app.events, stream, ClientError::from(&e)).await);
            }
        },
    };
    // The client sees the server's parameters, with its own values for the tracked ones.
    let greeting = pool.greeting(&welcome, &params, &g.tracked_parameters);
    let who = crate::clients::Who {
        pool: pool.clone(),
        peer: stream.peer_addr(),
        local: stream.local_addr(),
        tls: stream.is_tls(),
        connected: std::time::SystemTime::now(),
        application_name: params
            .get("application_name")
            .filter(|n| !n.is_empty())
            .map(Into::into),
    };
    let cancel = app
        .cancels
        .register(who, || app.peers.mint(), |p, s| app.peers.lookup(p, s));
    let mut out = BytesMut::with_capacity(64 + greeting.statuses.len());
    encode::auth_ok(&mut out);
    out.extend_from_slice(&greeting.statuses);
    encode::backend_key_data(&mut out, cancel.pid, cancel.secret);
    encode::ready_for_query(&mut out, b'I');
    stream
        .write_flushed(&out)
        .await
        .map_err(|_| LoginEnd::Gone)?;
    // From here on only the tracked parameters matter (a server is aligned to them); keeping the
    // server's whole set would cost every idle client a copy of it (about 1 KiB).
    pool.client_joined();
    Ok(Login::Pool(LoggedIn {
        params: greeting.tracked,
        cancel,
    }))
}

impl Drop for LoggedIn {
    fn drop(&mut self) {
        self.pool().client_left();
    }
}
