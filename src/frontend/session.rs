//! One client's life after login: wait for a request, get a server, relay, give the server back.

use super::handshake::LoggedIn;
use super::tell;
use crate::app::App;
use crate::backend::params::ParamSet;
use crate::backend::query::run_simple;
use crate::config::PoolMode;
use crate::error::{ClientError, Disconnect, Side};
use crate::net::stream::Stream;
use crate::pool::Conn;
use crate::prepared::ClientState;
use ending::{answer_with_error, close_for_shutdown, relay_failure, server_lost};

use crate::proto::scan::{self, Scanner};
use crate::proto::sqlstate;
use crate::relay::{self, ClientSide, Outcome, Prepared, RelayError, Timeouts};
use crate::shutdown::Phase;
use bytes::{Buf, BytesMut};
use std::future::Future;
use std::pin::{pin, Pin};
use std::task::{ready, Context, Poll};
use tokio::io::AsyncReadExt;
use tokio::time::{sleep_until, Instant, Sleep};

mod ending;

/// How many bytes an idle client's read buffer gets once its next request starts to arrive: at most
/// what glibc's per-thread cache serves (1032 bytes), so that taking it and giving it back, once per
/// request, costs a few dozen instructions rather than a few hundred (callgrind); a larger request
/// grows it.
const REQUEST_BUFFER: usize = 1024;

/// What a client keeps from one request to the next; held by its task while idle (see
/// [`super::task`]) and moved into each request's future.
pub struct Session {
    pub stream: Stream,
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
    /// When the client logged in, for the age in the disconnect line.
    pub started: Instant,
}

impl Session {
    /// `max_held`: the largest frame the client's scanner may hold whole (`max_held_message`).
    pub fn new(stream: Stream, buf: BytesMut, me: LoggedIn, max_held: usize) -> Self {
        Self {
            stream,
            buf,
            me,
            scanner: Scanner::for_client_holding_at_most(max_held),
            statements: None,
            owed_error: None,
            idle_timer: None,
            started: Instant::now(),
        }
    }
}

impl Session {
    /// The client's span, made when a line is to be logged for it: a span kept for the client's
    /// whole life would cost every idle client its fields in the subscriber.
    pub fn span(&self) -> tracing::Span {
        let who = &self.me.cancel.target.who;
        let peer = who
            .peer
            .map_or_else(|| "unix".to_owned(), |a| a.to_string());
        let key = &who.pool.key;
        tracing::info_span!("client", peer = %peer, db = %key.database, user = %key.user)
    }
}

/// What ended an idle wait.
pub enum Woke {
    /// A request has started to arrive.
    Request,
    End(Farewell),
}

/// Why a session ends, and what the client is told of it (see [`farewell`]).
pub enum Farewell {
    IdleTimeout,
    Eof,
    Shutdown,
    Terminate,
    ProtocolViolation(String),
    /// A request ended the session and has told the client what it had to.
    Ended(Disconnect),
}

/// Starts an idle wait: `client_idle_timeout` counts from here.
pub fn arm_idle_timer(app: &App, s: &mut Session) {
    if let Some(d) = app.with_config(|c| c.general.client_idle_timeout) {
        let deadline = Instant::now() + d;
        match &mut s.idle_timer {
            Some(t) => t.as_mut().reset(deadline),
            None => s.idle_timer = Some(Box::pin(sleep_until(deadline))),
        }
    } else {
        s.idle_timer = None;
    }
}

/// Idle: no server held. Ready once a request has started to arrive, or the session must end.
/// Polled by the task itself rather than through a future: this is the state an idle client's
/// task is sized by, and readiness needs no future of its own.
pub fn poll_idle(app: &App, s: &mut Session, cx: &mut Context<'_>) -> Poll<Woke> {
    loop {
        if has_request(&s.buf) {
            return Poll::Ready(Woke::Request);
        }
        if s.me
            .cancel
            .target
            .nudge
            .poll_reached(cx, &app.shutdown, Phase::WaitForServers)
            .is_ready()
        {
            return Poll::Ready(Woke::End(Farewell::Shutdown));
        }
        if let Some(t) = s.idle_timer.as_mut() {
            if t.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Woke::End(Farewell::IdleTimeout));
            }
        }
        let buf = &mut s.buf;
        if buf.is_empty() {
            // Give the buffer back while idle; a new one is allocated when bytes arrive.
            if buf.capacity() > 0 {
                *buf = BytesMut::new();
            }
            if ready!(s.stream.poll_read_ready(cx)).is_err() {
                return Poll::Ready(Woke::End(Farewell::Eof));
            }
            buf.reserve(REQUEST_BUFFER);
        }
        // `read_buf`'s future keeps no state between polls.
        match ready!(pin!(s.stream.read_buf(&mut *buf)).poll(cx)) {
            Ok(0) | Err(_) => return Poll::Ready(Woke::End(Farewell::Eof)),
            Ok(_) => {}
        }
        match drop_leading_noise(buf) {
            Ok(Noise::Terminate) => return Poll::Ready(Woke::End(Farewell::Terminate)),
            Ok(Noise::None) => {}
            Err(e) => {
                return Poll::Ready(Woke::End(Farewell::ProtocolViolation(e.to_string())));
            }
        }
        if !has_request(&s.buf) {
            // Part of a frame header: the wait starts over, as it would with nothing read.
            arm_idle_timer(app, s);
        }
    }
}

/// One request, or the error owed from the last one. `Some` ends the session with that reason.
pub async fn serve(app: &App, s: &mut Session) -> Option<Disconnect> {
    if let Some(message) = s.owed_error.take() {
        return answer_with_error(app, &mut s.stream, &mut s.buf, &message)
            .await
            .err();
    }
    serve_request(app, s).await
}

/// Tells the client why its session ends, where it should be told; the reason, for the log.
pub async fn farewell(app: &App, s: &mut Session, why: Farewell) -> Disconnect {
    let stream = &mut s.stream;
    match why {
        Farewell::IdleTimeout => {
            let e = ClientError::protocol_violation("client_idle_timeout");
            tell(&app.events, stream, &e).await;
            Disconnect::ClientIdleTimeout
        }
        Farewell::Eof => Disconnect::ClientEof,
        Farewell::Shutdown => close_for_shutdown(app, stream, &s.me.cancel.target.nudge).await,
        Farewell::Terminate => Disconnect::ClientClose,
        Farewell::ProtocolViolation(e) => {
            tell(
                &app.events,
                stream,
                &ClientError::protocol_violation(e.clone()),
            )
            .await;
            Disconnect::ClientProtocol(e)
        }
        Farewell::Ended(reason) => reason,
    }
}

/// One request: a server from the pool, the relay until the server can be released, the server
/// back. `Some` ends the session with that reason.
async fn serve_request(app: &App, s: &mut Session) -> Option<Disconnect> {
    let config = app.config();
    let g = &config.general;
    let pool = s.me.pool().clone();
    let mode = pool.with_settings(|s| s.mode);
    if mode != PoolMode::Session && g.max_prepared_statements > 0 {
        if let Some(answered) = answer_without_server(app, s, &pool, g.client_statements).await {
            return answered.err();
        }
    }
    s.me.cancel.target.wait();
    let mut conn = match checkout(app, s, &pool, g).await {
        Ok(c) => c,
        Err(end) => return Some(end),
    };
    if let Err(end) = align_parameters(app, s, &mut conn, g).await {
        return Some(end);
    }
    let outcome = relay_attached(app, s, &pool, &mut conn.server, mode, g).await;
    settle(app, s, &pool, conn, mode, g, outcome).await
}

/// A batch of Parse (+ Describe) + Sync that what servers have shown of its statements answers
/// (see [`crate::prepared::local`]): no server is taken for it. `None`: the request needs a server.
async fn answer_without_server(
    app: &App,
    s: &mut Session,
    pool: &crate::pool::Pool,
    limits: crate::prepared::ClientLimits,
) -> Option<Result<(), Disconnect>> {
    if !s.scanner.at_boundary() {
        return None;
    }
    let state = s.statements.get_or_insert_with(Default::default);
    let mut out = BytesMut::new();
    // A malformed frame is the relay's to refuse, as always.
    let used = crate::prepared::local::answer(
        &s.buf,
        (&app.statements, &pool.accepted),
        (&mut state.statements, limits),
        &mut out,
    )
    .ok()??;
    s.buf.advance(used);
    crate::prepared::PreparedStats::bump(&pool.stats.prepared.answered_without_server);
    if s.stream.write_flushed(&out).await.is_err() {
        return Some(Err(Disconnect::ClientEof));
    }
    Some(Ok(()))
}

/// Relays between the client and its server until the server can be released or something ends
/// the attachment.
async fn relay_attached(
    app: &App,
    s: &mut Session,
    pool: &std::sync::Arc<crate::pool::Pool>,
    server: &mut crate::backend::Server,
    mode: PoolMode,
    g: &crate::config::General,
) -> Result<Outcome, RelayError> {
    let Session {
        stream,
        buf,
        me,
        scanner,
        statements,
        ..
    } = s;
    me.cancel.target.attach(server);
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
                    accepted: &pool.accepted,
                    capacity: g.max_prepared_statements,
                    max_held: g.max_held_message,
                    limits: g.client_statements,
                }
            }),
        },
        server,
        &pool.stats,
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
    outcome
}

/// What follows the relay: the server back to the pool or closed, and what the client is told.
/// `Some` ends the session with that reason.
async fn settle(
    app: &App,
    s: &mut Session,
    pool: &std::sync::Arc<crate::pool::Pool>,
    conn: Conn,
    mode: PoolMode,
    g: &crate::config::General,
    outcome: Result<Outcome, RelayError>,
) -> Option<Disconnect> {
    match outcome {
        Ok(Outcome::Released) => {
            give_back(g, pool, conn, mode, false).await;
            let nudge = &s.me.cancel.target.nudge;
            if app.shutdown.phase() >= Phase::WaitForServers || nudge.killed() {
                return Some(close_for_shutdown(app, &mut s.stream, nudge).await);
            }
            None
        }
        Ok(Outcome::ClientGone { clean }) => {
            if clean {
                give_back(g, pool, conn, mode, true).await;
            }
            Some(Disconnect::ClientClose)
        }
        Ok(Outcome::QueryTimeout) => {
            // Closing the connection alone would leave the query running until it next writes.
            let (addr, key) = (conn.server.addr.clone(), conn.server.key);
            tokio::spawn(async move { crate::backend::cancel::send(&addr, key).await });
            drop(conn);
            let e = ClientError::fatal(sqlstate::QUERY_CANCELED, "query_timeout", Side::Client);
            tell(&app.events, &mut s.stream, &e).await;
            Some(Disconnect::QueryTimeout)
        }
        Ok(Outcome::ServerLost {
            in_flight,
            message,
            in_transaction,
        }) => {
            drop(conn);
            server_lost(app, s, mode, in_flight, message, in_transaction).await
        }
        Ok(other) => {
            drop(conn);
            let (told, end) = match other {
                Outcome::TransactionInStatementMode => (
                    Some(ClientError::protocol_violation(
                        "transaction blocks not allowed in statement pooling mode",
                    )),
                    Disconnect::TransactionInStatementMode,
                ),
                Outcome::IdleTransactionTimeout => (
                    Some(ClientError::fatal(
                        sqlstate::IDLE_IN_TRANSACTION_TIMEOUT,
                        "idle_transaction_timeout",
                        Side::Client,
                    )),
                    Disconnect::IdleTransactionTimeout,
                ),
                _ => {
                    let nudge = &s.me.cancel.target.nudge;
                    return Some(close_for_shutdown(app, &mut s.stream, nudge).await);
                }
            };
            if let Some(e) = told {
                tell(&app.events, &mut s.stream, &e).await;
            }
            Some(end)
        }
        Err(e) => {
            drop(conn);
            let (told, end) = relay_failure(e);
            if let Some(told) = told {
                tell(&app.events, &mut s.stream, &told).await;
            }
            Some(end)
        }
    }
}

/// A server for the request, or why the session ends (told to the client).
async fn checkout(
    app: &App,
    s: &mut Session,
    pool: &std::sync::Arc<crate::pool::Pool>,
    g: &crate::config::General,
) -> Result<Conn, Disconnect> {
    let nudge = &s.me.cancel.target.nudge;
    let checked_out = tokio::select! {
        r = pool.checkout() => r,
        // Waiting, the client holds no server: SIGINT's shutdown closes it now, as it closes
        // every client whose server is released (it would not be served before the exit).
        () = nudge.reached(&app.shutdown, Phase::WaitForServers) => {
            return Err(close_for_shutdown(app, &mut s.stream, nudge).await);
        }
    };
    match checked_out {
        Ok(conn) => Ok(conn),
        Err(e) => {
            if g.log_pooler_errors {
                tracing::warn!(parent: &s.span(), error = %e, "pooler error");
            }
            tell(&app.events, &mut s.stream, &ClientError::from(&e)).await;
            Err(Disconnect::PoolerError(e.to_string()))
        }
    }
}

/// Aligns the server's tracked parameters with the client's. One string comparison in the common
/// case: the server's projection of the tracked parameters (cached until its set changes) is the
/// client's set.
async fn align_parameters(
    app: &App,
    s: &mut Session,
    conn: &mut Conn,
    g: &crate::config::General,
) -> Result<(), Disconnect> {
    let me = &s.me;
    if conn.server.agrees_with(&me.params, &g.tracked_parameters) {
        return Ok(());
    }
    let Some(sql) = ParamSet::sync_query(&me.params, &conn.server.params, &g.tracked_parameters)
    else {
        return Ok(());
    };
    // Boxed, as every rare path here: an idle client's task is as large as its largest state.
    let Err(e) = Box::pin(run_simple(&mut conn.server, &sql)).await else {
        return Ok(());
    };
    tracing::warn!(parent: &s.span(), error = %e, "could not apply client parameters on server");
    tell(&app.events, &mut s.stream, &ClientError::from(&e)).await;
    Err(Disconnect::ServerParameterSync)
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
