//! How a request fails or a session ends: a lost server, a failed relay, a shutdown or an admin's
//! kill, and the error owed to the next request; what the client hears in each case.

use super::{tell, Session};
use crate::app::App;
use crate::config::PoolMode;
use crate::error::{ClientError, Disconnect, Side};
use crate::net::stream::Stream;
use crate::proto::encode::{self, Severity};
use crate::proto::scan::{self, Inspect, Scanner};
use crate::proto::sqlstate;
use crate::relay::RelayError;
use bytes::{Buf, BytesMut};
use tokio::io::AsyncReadExt;

/// The server died. Inside a transaction block (or in session mode) the client is closed; outside,
/// each request owed a reply gets an error, or the next request does.
pub(super) async fn server_lost(
    app: &App,
    s: &mut Session,
    mode: PoolMode,
    in_flight: u32,
    message: Option<String>,
    in_transaction: bool,
) -> Option<Disconnect> {
    let lost = ClientError::error(
        sqlstate::CONNECTION_FAILURE,
        "server connection lost",
        Side::Server,
    );
    // The client's transaction died with the server. Kept open, the client would run what
    // follows (its COMMIT too) on another server, outside any transaction: a silent
    // half-transaction. It is closed instead, as PgBouncer does.
    if mode == PoolMode::Session || in_transaction {
        let mut e = lost.with_severity(Severity::Fatal);
        e.detail = message.map(Into::into);
        tell(&app.events, &mut s.stream, &e).await;
        return Some(Disconnect::ServerLost);
    }
    if in_flight == 0 {
        s.owed_error = Some(message.unwrap_or_else(|| lost.message.into_owned()).into());
        return None;
    }
    // Each request owed a reply gets what PostgreSQL gives a failed one: an error, then
    // ReadyForQuery. A pipelined request answered by ReadyForQuery alone would look complete to
    // the client without the replies it waits for, and desync it.
    let mut e = lost;
    e.detail = message.map(Into::into);
    let mut out = BytesMut::new();
    for _ in 0..in_flight {
        app.events.client_error(&e.code);
        e.encode(&mut out);
        encode::ready_for_query(&mut out, b'I');
    }
    if s.stream.write_flushed(&out).await.is_err() {
        return Some(Disconnect::ClientEof);
    }
    None
}

/// What a failed relay tells the client (nothing when the client itself is gone), and the reason.
pub(super) fn relay_failure(e: RelayError) -> (Option<ClientError>, Disconnect) {
    let lost = || {
        ClientError::fatal(
            sqlstate::CONNECTION_FAILURE,
            "server connection lost",
            Side::Server,
        )
    };
    match e {
        RelayError::ClientIo(_) => (None, Disconnect::ClientEof),
        RelayError::ClientProto(p) => (
            Some(ClientError::protocol_violation(p.to_string())),
            Disconnect::ClientProtocol(p.to_string()),
        ),
        RelayError::ServerProto(p) => (Some(lost()), Disconnect::ServerProtocol(p.to_string())),
        RelayError::ServerLostMidMessage => (Some(lost()), Disconnect::ServerLost),
    }
}

/// Tells the client why it is closed: the pooler shuts down (57P01), or an admin killed it
/// (KILL_CLIENT); the reason, for the log.
pub(super) async fn close_for_shutdown(
    app: &App,
    stream: &mut Stream,
    nudge: &crate::shutdown::Nudge,
) -> Disconnect {
    let (e, reason) = if nudge.killed() {
        (
            ClientError::protocol_violation("admin forced disconnect"),
            Disconnect::AdminKill,
        )
    } else {
        (
            ClientError::fatal(
                sqlstate::ADMIN_SHUTDOWN,
                "pooler is shutting down",
                Side::Internal,
            ),
            Disconnect::Shutdown,
        )
    };
    tell(&app.events, stream, &e).await;
    reason
}

/// Answers the client's next request with `message` (08006) instead of running it: the messages up
/// to and including the request's Query or Sync are read and dropped, streaming (a large one is
/// never held).
pub(super) async fn answer_with_error(
    app: &App,
    stream: &mut Stream,
    buf: &mut BytesMut,
    message: &str,
) -> Result<(), Disconnect> {
    let mut scanner = Scanner::default();
    let mut found = false;
    loop {
        if !found {
            let scanned = scanner
                .scan(
                    buf,
                    |tag, _| match tag {
                        b'Q' | b'S' => Inspect::Head(0),
                        _ => Inspect::Pass,
                    },
                    |e| {
                        found = matches!(e, scan::Event::Head { .. });
                        !found
                    },
                )
                .map_err(|e| Disconnect::ClientProtocol(e.to_string()))?;
            buf.advance(scanned.forward);
        }
        if found {
            // The rest of the request itself, and nothing after it.
            let n = scanner.pass_rest(buf.len());
            buf.advance(n);
            if scanner.at_boundary() {
                break;
            }
        }
        if stream
            .read_buf(buf)
            .await
            .map_err(|_| Disconnect::ClientEof)?
            == 0
        {
            return Err(Disconnect::ClientEof);
        }
    }
    let e = ClientError::error(
        sqlstate::CONNECTION_FAILURE,
        "server connection lost",
        Side::Server,
    )
    .with_detail(message.to_owned());
    app.events.client_error(&e.code);
    let mut out = BytesMut::new();
    e.encode(&mut out);
    encode::ready_for_query(&mut out, b'I');
    stream
        .write_flushed(&out)
        .await
        .map_err(|_| Disconnect::ClientEof)
}
