//! The client side: the login handshake and the per-client session loop.

mod accept;
pub mod auth_query;
pub mod authenticate;
mod console;
pub mod handshake;
mod login;
mod route;
pub mod session;
pub mod task;

pub use accept::serve;
pub use task::ClientTask;

use crate::error::ClientError;
use crate::net::stream::Stream;
use bytes::BytesMut;

/// Tells the client `e`, best effort (it may already be gone), and counts it.
pub async fn tell(events: &crate::metrics::Events, stream: &mut Stream, e: &ClientError) {
    events.client_error(&e.code);
    let mut out = BytesMut::with_capacity(64 + e.message.len());
    e.encode(&mut out);
    let _ = stream.write_flushed(&out).await;
}

/// Counts a login by result (ok, failed, timeout, abandoned) and method ("none" when it ended
/// before the method was chosen), and how long it took.
fn count_login(
    app: &crate::app::App,
    method: Option<authenticate::Method>,
    result: &str,
    started: tokio::time::Instant,
) {
    let method = method.map_or("none", authenticate::Method::label);
    let e = &app.events;
    e.logins.with_label_values(&[result, method]).inc();
    e.login_seconds
        .with_label_values(&[method])
        .observe(started.elapsed().as_secs_f64());
}

/// A connection just accepted (who it is from is in the client's span).
#[derive(Debug)]
pub struct Accepted {
    pub stream: Stream,
}

/// The login; the session it opens.
async fn log_in(app: &crate::app::App, accepted: Box<Accepted>) -> Option<session::Session> {
    let Accepted { mut stream } = *accepted;
    let mut buf = BytesMut::with_capacity(1024);
    let me = match login_within_timeout(app, &mut stream, &mut buf).await? {
        handshake::Login::Pool(me) => me,
        handshake::Login::Console(role) => {
            console::serve(app, &mut stream, &mut buf, role).await;
            return None;
        }
    };
    let max_held = app.with_config(|c| c.general.max_held_message);
    Some(session::Session::new(stream, buf, me, max_held))
}

/// The login, cut off at `client_login_timeout`; `None` when the client is not let in.
async fn login_within_timeout(
    app: &crate::app::App,
    stream: &mut Stream,
    buf: &mut BytesMut,
) -> Option<handshake::Login> {
    let config = app.config();
    let g = &config.general;
    let started = tokio::time::Instant::now();
    let mut method = None;
    let login = handshake::login(app, stream, buf, &mut method);
    let logged_in = match g.client_login_timeout {
        Some(t) => match tokio::time::timeout(t, login).await {
            Ok(r) => r,
            Err(_) => {
                let e = ClientError::protocol_violation("client_login_timeout");
                tell(&app.events, stream, &e).await;
                if g.log_pooler_errors {
                    tracing::warn!("client_login_timeout");
                }
                count_login(app, method, "timeout", started);
                return None;
            }
        },
        None => login.await,
    };
    let me = match logged_in {
        Ok(me) => me,
        Err(handshake::LoginEnd::Cancel) => return None,
        Err(handshake::LoginEnd::Gone) => {
            count_login(app, method, "abandoned", started);
            return None;
        }
        Err(handshake::LoginEnd::Rejected(reason)) => {
            if g.log_pooler_errors {
                tracing::warn!("login rejected: {reason}");
            }
            count_login(app, method, "failed", started);
            return None;
        }
    };
    count_login(app, method, "ok", started);
    if let (true, handshake::Login::Pool(me)) = (g.log_connections, &me) {
        let tls = if stream.is_tls() { "yes" } else { "no" };
        let (db, user) = (&me.pool().key.database, &me.pool().key.user);
        tracing::info!("login attempt: db={db} user={user} tls={tls}");
    }
    Some(me)
}
