//! One client's life after login: wait for a request, get a server, relay, give the server back.

use super::handshake::LoggedIn;
use super::send_error;
use crate::app::App;
use crate::backend::params::ParamSet;
use crate::backend::query::run_simple;
use crate::config::PoolMode;
use crate::net::stream::Stream;
use crate::pool::{Conn, PoolError};
use crate::prepared::ClientState;
use crate::proto::encode::{self, Severity};
use crate::proto::scan::{self, Scanner};
use crate::proto::sqlstate;
use crate::relay::{self, ClientSide, Outcome, Prepared, RelayError, Timeouts};
use crate::shutdown::Phase;
use bytes::BytesMut;
use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::sync::atomic::Ordering;
use std::task::{ready, Poll};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{sleep_until, Instant, Sleep};

/// Why a session ended, for the disconnect log line.
pub type EndReason = String;

/// How many bytes an idle client's read buffer gets once its next request starts to arrive.
const REQUEST_BUFFER: usize = 2048;

/// What a client keeps from one request to the next, in one allocation per client.
pub struct Session {
    pub stream: Stream,
    /// Who the client is, for the log.
    pub peer: Box<str>,
    /// Empty, with no capacity, while the client is idle.
    buf: BytesMut,
    pub me: LoggedIn,
    scanner: Scanner,
    /// The client's prepared statements, by its own names (transaction and statement mode);
    /// created at its first request, so a client that never sends one costs nothing here.
    statements: Option<Box<ClientState>>,
    /// An error owed to the client: its server died between requests, so the next request gets it.
    owed_error: Option<Box<str>>,
    /// `client_idle_timeout`'s timer, allocated once and re-armed for every idle wait.
    idle_timer: Option<Pin<Box<Sleep>>>,
}

impl Session {
    pub fn new(stream: Stream, buf: BytesMut, peer: String, me: LoggedIn) -> Self {
        Self {
            stream,
            peer: peer.into_boxed_str(),
            buf,
            me,
            scanner: Scanner::for_client(),
            statements: None,
            owed_error: None,
            idle_timer: None,
        }
    }
}

/// Serves a logged-in client until it leaves or is closed.
///
/// The task's size is fixed at spawn by its largest state, and most clients spend most of their
/// life idle. So the session's state lives on the heap, the idle wait is small and holds no read
/// buffer, and everything a request needs (checkout, relay, check-in) runs in a future allocated
/// per request.
#[allow(clippy::manual_async_fn)] // the `async move` form halves the arguments' room in the state
pub fn run<'a>(app: &'a App, s: &'a mut Session) -> impl Future<Output = EndReason> + Send + 'a {
    // An `async move` block rather than an `async fn`, which would hold `app` and `s` twice.
    async move {
        loop {
            if let Err(reason) = wait_for_request(app, s).await {
                return reason;
            }
            if let Some(message) = s.owed_error.take() {
                if let Err(reason) =
                    Box::pin(answer_with_error(&mut s.stream, &mut s.buf, &message)).await
                {
                    return reason;
                }
                continue;
            }
            if let Some(reason) = Box::pin(serve_request(app, s)).await {
                return reason;
            }
        }
    }
}

/// What ended an idle wait.
enum Woke {
    Read(std::io::Result<usize>),
    IdleTimeout,
    Shutdown,
}

/// Idle: no server held. Returns once a request has started to arrive; `Err` ends the session.
#[allow(clippy::manual_async_fn)] // the `async move` form halves the arguments' room in the state
fn wait_for_request<'a>(
    app: &'a App,
    s: &'a mut Session,
) -> impl Future<Output = Result<(), EndReason>> + Send + 'a {
    async move {
        while !has_request(&s.buf) {
            if let Some(d) = app.with_config(|c| c.general.client_idle_timeout) {
                let deadline = Instant::now() + d;
                match &mut s.idle_timer {
                    Some(t) => t.as_mut().reset(deadline),
                    None => s.idle_timer = Some(Box::pin(sleep_until(deadline))),
                }
            } else {
                s.idle_timer = None;
            }
            let woke = {
                let (stream, buf, timer) = (&mut s.stream, &mut s.buf, &mut s.idle_timer);
                let nudge = &s.me.cancel.target.nudge;
                // Polled by hand rather than by `select!` over futures: this is the state an idle
                // client's task is sized by, and readiness needs no future of its own.
                poll_fn(|cx| {
                    if nudge
                        .poll_reached(cx, &app.shutdown, Phase::WaitForServers)
                        .is_ready()
                    {
                        return Poll::Ready(Woke::Shutdown);
                    }
                    if let Some(t) = timer.as_mut() {
                        if t.as_mut().poll(cx).is_ready() {
                            return Poll::Ready(Woke::IdleTimeout);
                        }
                    }
                    if buf.is_empty() {
                        // Give the buffer back while idle; a new one is allocated when bytes arrive.
                        if buf.capacity() > 0 {
                            *buf = BytesMut::new();
                        }
                        if let Err(e) = ready!(stream.poll_read_ready(cx)) {
                            return Poll::Ready(Woke::Read(Err(e)));
                        }
                        buf.reserve(REQUEST_BUFFER);
                    }
                    // `read_buf`'s future keeps no state between polls.
                    pin!(stream.read_buf(&mut *buf)).poll(cx).map(Woke::Read)
                })
                .await
            };
            let stream = &mut s.stream;
            match woke {
                Woke::IdleTimeout => {
                    Box::pin(send_error(
                        stream,
                        Severity::Fatal,
                        sqlstate::PROTOCOL_VIOLATION,
                        "client_idle_timeout",
                        None,
                    ))
                    .await;
                    return Err("client_idle_timeout".into());
                }
                Woke::Read(Ok(0) | Err(_)) => return Err("client unexpected eof".into()),
                Woke::Read(Ok(_)) => {}
                Woke::Shutdown => return Err(Box::pin(close_for_shutdown(stream)).await),
            }
            match drop_leading_noise(&mut s.buf) {
                Ok(Noise::Terminate) => return Err("client close request".into()),
                Ok(Noise::None) => {}
                Err(e) => {
                    Box::pin(send_error(
                        stream,
                        Severity::Fatal,
                        sqlstate::PROTOCOL_VIOLATION,
                        &e.to_string(),
                        None,
                    ))
                    .await;
                    return Err(format!("client protocol violation: {e}"));
                }
            }
        }
        Ok(())
    }
}

/// One request: a server from the pool, the relay until the server can be released, the server
/// back. `Some` ends the session with that reason.
async fn serve_request(app: &App, s: &mut Session) -> Option<EndReason> {
    let Session {
        stream,
        peer: _,
        buf,
        me,
        scanner,
        statements,
        owed_error,
        idle_timer: _,
    } = s;
    let config = app.config();
    let g = &config.general;
    {
        // A request: get a server.
        let pool = me.pool.clone();
        let mode = pool.with_settings(|s| s.mode);
        let mut conn = tokio::select! {
            r = pool.checkout() => match r {
                Ok(c) => c,
                Err(e) => {
                    let code = match &e {
                        PoolError::Connect(b) => b.sqlstate().to_owned(),
                        PoolError::WaitTimeout => sqlstate::PROTOCOL_VIOLATION.to_owned(),
                    };
                    if g.log_pooler_errors {
                        tracing::warn!(db = %me.pool.key.database, user = %me.pool.key.user, error = %e, "pooler error");
                    }
                    send_error(stream, Severity::Fatal, &code, &e.to_string(), None).await;
                    return Some(format!("{e}"));
                }
            },
            () = me.cancel.target.nudge.reached(&app.shutdown, Phase::Immediate) => return Some("pooler shutdown".into()),
        };
        // One string comparison in the common case: the server's projection of the tracked
        // parameters (cached until its set changes) is the client's set.
        if !conn.server.agrees_with(&me.params, &g.tracked_parameters) {
            if let Some(sql) =
                ParamSet::sync_query(&me.params, &conn.server.params, &g.tracked_parameters)
            {
                // Boxed, as every rare path here: an idle client's task is as large as its
                // largest state.
                if let Err(e) = Box::pin(run_simple(&mut conn.server, &sql)).await {
                    tracing::warn!(db = %me.pool.key.database, user = %me.pool.key.user, error = %e, "could not apply client parameters on server");
                    send_error(stream, Severity::Fatal, e.sqlstate(), &e.to_string(), None).await;
                    return Some("server parameter sync failed".into());
                }
            }
        }
        me.cancel.target.attach(&conn.server.addr, conn.server.key);
        let outcome = relay::run(
            ClientSide {
                stream,
                buf,
                scanner,
                params: &mut me.params,
                tracked: &g.tracked_parameters,
                prepared: (mode != PoolMode::Session && g.max_prepared_statements > 0).then(|| {
                    Prepared {
                        registry: &app.statements,
                        state: statements.get_or_insert_with(Default::default),
                        stats: &pool.stats.prepared,
                        capacity: g.max_prepared_statements,
                    }
                }),
            },
            &mut conn.server,
            mode,
            Timeouts {
                query: g.query_timeout,
                idle_transaction: g.idle_transaction_timeout,
            },
            me.cancel
                .target
                .nudge
                .reached(&app.shutdown, Phase::Immediate),
        )
        .await;
        me.cancel.target.detach();
        match outcome {
            Ok(Outcome::Released) => {
                pool.stats.xacts.fetch_add(1, Ordering::Relaxed);
                give_back(g, &pool, conn, mode, false).await;
                if app.shutdown.phase() >= Phase::WaitForServers {
                    return Some(close_for_shutdown(stream).await);
                }
            }
            Ok(Outcome::ClientGone { clean }) => {
                if clean {
                    give_back(g, &pool, conn, mode, true).await;
                }
                return Some("client close request".into());
            }
            Ok(Outcome::ServerLost { in_flight, message }) => {
                drop(conn);
                let text = "server connection lost";
                if mode == PoolMode::Session {
                    send_error(
                        stream,
                        Severity::Fatal,
                        sqlstate::CONNECTION_FAILURE,
                        text,
                        message.as_deref(),
                    )
                    .await;
                    return Some("server connection lost".into());
                }
                if in_flight == 0 {
                    *owed_error = Some(message.unwrap_or_else(|| text.to_owned()).into());
                    return None;
                }
                let mut out = BytesMut::new();
                encode::error_response(
                    &mut out,
                    Severity::Error,
                    sqlstate::CONNECTION_FAILURE,
                    text,
                    message.as_deref(),
                );
                for _ in 0..in_flight {
                    encode::ready_for_query(&mut out, b'I');
                }
                if stream.write_all(&out).await.is_err() {
                    return Some("client unexpected eof".into());
                }
            }
            Ok(Outcome::TransactionInStatementMode) => {
                drop(conn);
                let m = "transaction blocks not allowed in statement pooling mode";
                send_error(
                    stream,
                    Severity::Fatal,
                    sqlstate::PROTOCOL_VIOLATION,
                    m,
                    None,
                )
                .await;
                return Some(m.into());
            }
            Ok(Outcome::QueryTimeout) => {
                // Closing the connection alone would leave the query running until it next writes.
                let (addr, key) = (conn.server.addr.clone(), conn.server.key);
                tokio::spawn(async move { crate::backend::cancel::send(&addr, key).await });
                drop(conn);
                send_error(
                    stream,
                    Severity::Fatal,
                    sqlstate::QUERY_CANCELED,
                    "query_timeout",
                    None,
                )
                .await;
                return Some("query_timeout".into());
            }
            Ok(Outcome::IdleTransactionTimeout) => {
                drop(conn);
                send_error(
                    stream,
                    Severity::Fatal,
                    sqlstate::IDLE_IN_TRANSACTION_TIMEOUT,
                    "idle_transaction_timeout",
                    None,
                )
                .await;
                return Some("idle_transaction_timeout".into());
            }
            Ok(Outcome::Shutdown) => {
                drop(conn);
                return Some(close_for_shutdown(stream).await);
            }
            Err(e) => {
                drop(conn);
                match &e {
                    RelayError::ClientIo(_) => {}
                    RelayError::ClientProto(p) => {
                        send_error(
                            stream,
                            Severity::Fatal,
                            sqlstate::PROTOCOL_VIOLATION,
                            &p.to_string(),
                            None,
                        )
                        .await
                    }
                    RelayError::ServerProto(_) | RelayError::ServerLostMidMessage => {
                        send_error(
                            stream,
                            Severity::Fatal,
                            sqlstate::CONNECTION_FAILURE,
                            "server connection lost",
                            None,
                        )
                        .await
                    }
                }
                return Some(e.to_string());
            }
        }
    }
    None
}

/// Tells the client the pooler is going away (57P01) and gives the reason for the log.
async fn close_for_shutdown(stream: &mut Stream) -> EndReason {
    send_error(
        stream,
        Severity::Fatal,
        sqlstate::ADMIN_SHUTDOWN,
        "pooler is shutting down",
        None,
    )
    .await;
    "pooler shutdown".into()
}

/// Returns a server after use. In session mode (or with `server_reset_query_always`) the reset query
/// runs first; a server it fails on is closed.
async fn give_back(
    g: &crate::config::General,
    pool: &std::sync::Arc<crate::pool::Pool>,
    mut conn: Conn,
    mode: PoolMode,
    client_left: bool,
) {
    let reset = (mode == PoolMode::Session && client_left) || g.server_reset_query_always;
    if reset {
        if let Some(sql) = &g.server_reset_query {
            if let Err(e) = Box::pin(run_simple(&mut conn.server, sql)).await {
                tracing::warn!(error = %e, "server reset query failed; closing server");
                return;
            }
            let upper = sql.to_ascii_uppercase();
            if upper.contains("DISCARD ALL") || upper.contains("DEALLOCATE ALL") {
                conn.server.statements.clear();
            }
        }
    }
    pool.checkin(conn);
}

/// True once at least a frame header is buffered: enough to know a request has started.
fn has_request(buf: &BytesMut) -> bool {
    buf.len() >= 5
}

enum Noise {
    None,
    Terminate,
}

/// Handles what arrives while no server is held and needs none: Terminate, and copy messages left
/// over after a failed COPY (PostgreSQL ignores those too).
fn drop_leading_noise(buf: &mut BytesMut) -> Result<Noise, crate::proto::ProtoError> {
    while let Some(h) = scan::header(buf)? {
        match h.tag {
            b'X' => return Ok(Noise::Terminate),
            b'd' | b'c' | b'f' if buf.len() >= h.total => {
                let _ = buf.split_to(h.total);
            }
            _ => break,
        }
    }
    Ok(Noise::None)
}

/// Answers the client's next request with `message` (08006) instead of running it: the messages up
/// to and including the request's Query or Sync are read and dropped.
async fn answer_with_error(
    stream: &mut Stream,
    buf: &mut BytesMut,
    message: &str,
) -> Result<(), EndReason> {
    loop {
        let mut found = false;
        let scanned = Scanner::default()
            .scan(
                buf,
                |_, _| true,
                |e| {
                    found = matches!(
                        e,
                        scan::Event::Whole {
                            tag: b'Q' | b'S',
                            ..
                        }
                    );
                    !found
                },
            )
            .map_err(|e| e.to_string())?;
        let _ = buf.split_to(scanned.forward);
        if found {
            break;
        }
        if stream.read_buf(buf).await.map_err(|e| e.to_string())? == 0 {
            return Err("client unexpected eof".into());
        }
    }
    let mut out = BytesMut::new();
    encode::error_response(
        &mut out,
        Severity::Error,
        sqlstate::CONNECTION_FAILURE,
        "server connection lost",
        Some(message),
    );
    encode::ready_for_query(&mut out, b'I');
    stream.write_all(&out).await.map_err(|e| e.to_string())
}
