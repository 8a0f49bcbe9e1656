//! A canned PostgreSQL server: it lets anyone in (AuthenticationOk, BackendKeyData, ReadyForQuery)
//! and answers every simple Query with pgbench's select-only reply. The benchmarks measure
//! pgsluice's own work against it, and the tests in `tests/canned.rs` drive the relay and the pool
//! with it: a tier between unit tests and the real PostgreSQL, where a server can be made to fail
//! exactly as a test needs.

use super::{frame, select_reply};
use bytes::BytesMut;
use pgsluice::backend::params::ParamSet;
use pgsluice::backend::{BackendKey, Server, ServerAddr};
use pgsluice::net::stream::Stream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::AbortHandle;

/// The far end of a server connection: answers every Query with `select_reply`, by counting the
/// Query frames in what arrives.
pub async fn answer_queries(mut sock: UnixStream) {
    let reply = select_reply(1);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut out = BytesMut::new();
    loop {
        match sock.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        while buf.len() >= 5 {
            let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize + 1;
            if buf.len() < len {
                break;
            }
            let tag = buf[0];
            let _ = buf.split_to(len);
            if tag == b'Q' {
                out.extend_from_slice(&reply);
            }
        }
        if !out.is_empty() && sock.write_all(&out).await.is_err() {
            return;
        }
        out.clear();
    }
}

/// The server connections a [`login_server`] accepted: how many, and a handle on each one's task
/// (aborting it closes that connection, as a server that died would).
#[derive(Default)]
pub struct Accepted {
    pub count: AtomicUsize,
    pub connections: parking_lot::Mutex<Vec<AbortHandle>>,
}

/// Serves logins on `listener` and then queries, for a pool to open its servers against.
pub async fn login_server(listener: UnixListener, accepted: Arc<Accepted>) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            return;
        };
        accepted.count.fetch_add(1, Ordering::SeqCst);
        let task = tokio::spawn(async move {
            let mut len = [0u8; 4];
            if sock.read_exact(&mut len).await.is_err() {
                return;
            }
            let mut startup = vec![0u8; (u32::from_be_bytes(len) as usize).saturating_sub(4)];
            if sock.read_exact(&mut startup).await.is_err() {
                return;
            }
            let mut out = BytesMut::new();
            frame(&mut out, b'R', &0u32.to_be_bytes());
            frame(&mut out, b'K', &[0, 0, 0, 1, 0, 0, 0, 2]);
            frame(&mut out, b'Z', b"I");
            if sock.write_all(&out).await.is_ok() {
                answer_queries(sock).await;
            }
        });
        accepted.connections.lock().push(task.abort_handle());
    }
}

/// A logged-in server over `near`: the pooler's end of a socket pair whose other end is the
/// test's or the canned server's.
pub fn server_over(near: UnixStream) -> Server {
    Server {
        stream: Stream::from(near),
        rbuf: BytesMut::new(),
        params: ParamSet::default(),
        key: BackendKey { pid: 1, secret: 2 },
        addr: Arc::new(ServerAddr {
            host: "/canned".into(),
            port: 5432,
        }),
        created: tokio::time::Instant::now(),
        last_used: tokio::time::Instant::now(),
        id: 1,
        statements: Default::default(),
        tracked: None,
    }
}
