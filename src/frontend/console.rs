//! A client of the admin console (database `pgbouncer` or `pgsluice`): who may log in, the welcome,
//! and the loop that reads simple Queries and hands each to [`admin::execute`].
//!
//! Console input is as untrusted as any: a command over [`MAX_COMMAND`] bytes is skipped unread and
//! answered with an error, extended-protocol messages get an error (and ReadyForQuery at their
//! Sync), and the connection stays usable in every case.

use super::login::{auth_failed, auth_method, reject, LoginEnd};
use super::tell;
use crate::admin::{self, After, Console, Role, Until};
use crate::app::App;
use crate::error::{ClientError, Side};
use crate::frontend::authenticate::{authenticate, AuthContext, Method};
use crate::net::stream::Stream;
use crate::proto::{encode, sqlstate};
use crate::shutdown::Phase;
use bytes::{Buf, BytesMut};
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// The longest command read; PgBouncer's own parser takes far less.
pub const MAX_COMMAND: usize = 64 * 1024;

/// How often a PAUSE or WAIT_CLOSE waiting for servers to go looks again.
const PAUSE_POLL: Duration = Duration::from_millis(20);

/// PgBouncer's rule: user `pgbouncer` on the unix socket, from the uid the pooler runs as, is an
/// admin without a password (CloudNativePG's Pooler pods drive the pooler exactly so).
fn same_uid_superuser(stream: &Stream, user: &str) -> bool {
    user == "pgbouncer" && stream.peer_uid() == Some(rustix::process::geteuid().as_raw())
}

/// Authenticates a console client as any client is (auth_type, hba, auth_file; no auth_query),
/// then admits `admin_users` and `stats_users`. Others are refused after authentication, so that
/// the answer does not tell who is an admin.
pub(super) async fn log_in(
    app: &App,
    stream: &mut Stream,
    buf: &mut BytesMut,
    user: &str,
    database: &str,
    method_seen: &mut Option<Method>,
) -> Result<Role, LoginEnd> {
    let config = app.config();
    let g = &config.general;
    let role = if same_uid_superuser(stream, user) || g.admin_users.iter().any(|u| u == user) {
        Some(Role::Admin)
    } else if g.stats_users.iter().any(|u| u == user) {
        Some(Role::Stats)
    } else {
        None
    };
    if same_uid_superuser(stream, user) {
        *method_seen = Some(Method::Peer);
    } else {
        let method = match auth_method(g, stream, database, user) {
            Ok(m) => m,
            Err(e) => return Err(reject(&app.events, stream, e).await),
        };
        *method_seen = Some(method);
        let ctx = AuthContext {
            user,
            secret: config.auth_secrets.get(user),
            verifiers: &app.verifiers,
            keys: &app.secrets,
            end_point: g.client_tls.end_point.as_deref(),
        };
        if let Err(e) = authenticate(stream, buf, method, &ctx).await {
            return Err(auth_failed(&app.events, stream, e, user).await);
        }
    }
    let Some(role) = role else {
        let m = format!("user \"{user}\" is not allowed to use the admin console");
        let e = ClientError::fatal(sqlstate::INVALID_AUTHORIZATION, m, Side::Client);
        return Err(reject(&app.events, stream, e).await);
    };
    let mut out = BytesMut::with_capacity(256);
    encode::auth_ok(&mut out);
    for (k, v) in [
        ("server_version", admin::SERVER_VERSION),
        ("client_encoding", "UTF8"),
        ("server_encoding", "UTF8"),
        ("DateStyle", "ISO"),
        ("TimeZone", "GMT"),
        ("standard_conforming_strings", "on"),
        ("is_superuser", "on"),
    ] {
        encode::parameter_status(&mut out, k, v);
    }
    // Nothing to cancel on the console; the key is there for drivers that insist on one.
    encode::backend_key_data(&mut out, rand::random(), rand::random());
    encode::ready_for_query(&mut out, b'I');
    stream
        .write_flushed(&out)
        .await
        .map_err(|_| LoginEnd::Gone)?;
    Ok(role)
}

/// One message from the console client.
enum Message {
    /// Tag and body.
    Frame(u8, BytesMut),
    /// A message over [`MAX_COMMAND`], skipped.
    TooLarge(u8),
    Gone,
}

async fn next_message(stream: &mut Stream, buf: &mut BytesMut) -> Message {
    loop {
        if buf.len() >= 5 {
            let tag = buf[0];
            let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            if len < 4 {
                return Message::Gone;
            }
            if len > MAX_COMMAND {
                // Skip the rest as it arrives, a bounded buffer at a time.
                let mut left = 1 + len;
                loop {
                    let n = left.min(buf.len());
                    buf.advance(n);
                    left -= n;
                    if left == 0 {
                        return Message::TooLarge(tag);
                    }
                    buf.reserve(MAX_COMMAND.min(left));
                    match stream.read_buf(buf).await {
                        Ok(0) | Err(_) => return Message::Gone,
                        Ok(_) => {}
                    }
                }
            }
            if buf.len() > len {
                let mut frame = buf.split_to(1 + len);
                frame.advance(5);
                return Message::Frame(tag, frame);
            }
        }
        buf.reserve(1024);
        match stream.read_buf(buf).await {
            Ok(0) | Err(_) => return Message::Gone,
            Ok(_) => {}
        }
    }
}

/// Serves console commands until the client leaves or a SHUTDOWN ends the process.
pub(super) async fn serve(app: &App, stream: &mut Stream, buf: &mut BytesMut, role: Role) {
    let mut out = BytesMut::with_capacity(4096);
    // An extended-protocol batch was refused: its messages are ignored until its Sync.
    let mut refused_batch = false;
    // A console client holds no server: a shutdown that closes such clients (SIGINT on) closes it
    // too, waiting for a command or for its PAUSE alike.
    let mut phase = app.shutdown.watch();
    loop {
        out.clear();
        let next = tokio::select! {
            m = next_message(stream, buf) => Some(m),
            () = crate::shutdown::reached(&mut phase, Phase::WaitForServers) => None,
        };
        let Some(next) = next else {
            return shut_down(app, stream).await;
        };
        let after = match answer(app, role, next, &mut out, &mut refused_batch) {
            Step::Reply(after) => after,
            Step::Ignore => continue,
            Step::SendNow => {
                if stream.write_flushed(&out).await.is_err() {
                    return;
                }
                continue;
            }
            Step::Leave => return,
        };
        match after {
            After::Ready => {}
            After::Close => {
                let _ = stream.write_flushed(&out).await;
                return;
            }
            After::Wait(until, db) => {
                let waited = tokio::select! {
                    biased;
                    () = crate::shutdown::reached(&mut phase, Phase::WaitForServers) => None,
                    done = wait_until(app, stream, buf, until, db.as_deref()) => Some(done),
                };
                match waited {
                    Some(true) => encode::command_complete(&mut out, until.tag()),
                    Some(false) => return,
                    None => return shut_down(app, stream).await,
                }
            }
        }
        encode::ready_for_query(&mut out, b'I');
        if stream.write_flushed(&out).await.is_err() {
            return;
        }
    }
}

/// What one message from a console client calls for.
enum Step {
    /// The reply in `out`, then what the command asks (ReadyForQuery, a wait, or the end).
    Reply(After),
    /// Nothing: a message of a refused batch, or a Sync or Flush with nothing to answer.
    Ignore,
    /// The error in `out` now, and no ReadyForQuery until the batch's Sync.
    SendNow,
    /// The client left or said Terminate.
    Leave,
}

/// Answers one message into `out`: simple Queries run; extended-protocol batches are refused once
/// and ignored up to their Sync.
fn answer(
    app: &App,
    role: Role,
    next: Message,
    out: &mut BytesMut,
    refused_batch: &mut bool,
) -> Step {
    match next {
        Message::Gone | Message::Frame(b'X', _) => Step::Leave,
        Message::Frame(b'Q', body) => {
            *refused_batch = false;
            let text = body.strip_suffix(b"\0").unwrap_or(&body);
            Step::Reply(match std::str::from_utf8(text) {
                Ok(q) => admin::execute(app, role, q, out),
                Err(_) => {
                    admin::error(out, sqlstate::PROTOCOL_VIOLATION, "invalid command");
                    After::Ready
                }
            })
        }
        Message::TooLarge(b'Q') => {
            admin::error(out, sqlstate::PROTOCOL_VIOLATION, "command too long");
            Step::Reply(After::Ready)
        }
        Message::Frame(b'S', _) if *refused_batch => {
            *refused_batch = false;
            Step::Reply(After::Ready)
        }
        Message::Frame(b'S' | b'H', _) => Step::Ignore,
        Message::Frame(tag, _) | Message::TooLarge(tag) => {
            let extended = matches!(tag, b'P' | b'B' | b'D' | b'E' | b'C');
            if extended && *refused_batch {
                return Step::Ignore;
            }
            if extended {
                let m = "extended query protocol not supported by admin console";
                admin::error(out, sqlstate::PROTOCOL_VIOLATION, m);
                *refused_batch = true;
                return Step::SendNow;
            }
            let m = format!("unsupported packet type for admin console: {tag}");
            admin::error(out, sqlstate::PROTOCOL_VIOLATION, &m);
            Step::Reply(After::Ready)
        }
    }
}

/// Tells a console client the pooler is shutting down, as other clients are told.
async fn shut_down(app: &App, stream: &mut Stream) {
    let e = ClientError::fatal(
        sqlstate::ADMIN_SHUTDOWN,
        "pooler is shutting down",
        Side::Internal,
    );
    tell(&app.events, stream, &e).await;
}

/// Waits until a PAUSE or WAIT_CLOSE is done for the target; false if the client left meanwhile
/// (a pause stays, as in PgBouncer).
async fn wait_until(
    app: &App,
    stream: &mut Stream,
    buf: &mut BytesMut,
    until: Until,
    db: Option<&str>,
) -> bool {
    let done = || match until {
        Until::Paused => app.paused(db),
        Until::Closed => app.closed(db),
    };
    while !done() {
        tokio::select! {
            () = tokio::time::sleep(PAUSE_POLL) => {}
            r = stream.read_buf(buf) => {
                if matches!(r, Ok(0) | Err(_)) {
                    return false;
                }
            }
        }
        if buf.len() > MAX_COMMAND {
            // What a client sends while waiting is read later; a flood is not kept.
            return false;
        }
    }
    true
}
