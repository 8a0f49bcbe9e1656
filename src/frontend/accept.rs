//! Accepting clients on the listeners until shutdown begins, within `max_client_conn`.

use crate::app::App;
use crate::error::{ClientError, Retry, Side};
use crate::net::listener::Listeners;
use crate::net::stream::Stream;
use crate::proto::sqlstate;
use crate::shutdown::Phase;
use std::sync::Arc;

/// Accepts clients until shutdown begins.
pub async fn serve(app: Arc<App>, listeners: Listeners) {
    let mut tasks = Vec::new();
    for l in listeners.tcp {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            accept_loop(app, || async {
                l.accept()
                    .await
                    .map(|(s, a)| (Stream::from(s), a.to_string()))
            })
            .await
        }));
    }
    if let Some((l, path)) = listeners.unix {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            accept_loop(app, || async {
                l.accept()
                    .await
                    .map(|(s, _)| (Stream::from(s), "unix".to_owned()))
            })
            .await;
            let _ = std::fs::remove_file(path);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

async fn accept_loop<F, Fut>(app: Arc<App>, accept: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = std::io::Result<(Stream, String)>>,
{
    let mut phase = app.shutdown.watch();
    loop {
        let accepted = tokio::select! {
            r = accept() => r,
            _ = crate::shutdown::reached(&mut phase, Phase::WaitForClients) => return,
        };
        let (mut stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: back off rather than spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let max = app.config().general.max_client_conn;
        let Some(guard) = app.shutdown.admit(max) else {
            let app = app.clone();
            tokio::spawn(async move {
                let e = ClientError::fatal(
                    sqlstate::TOO_MANY_CONNECTIONS,
                    "no more connections allowed (max_client_conn)",
                    Side::Internal,
                )
                .with_retry(Retry::Later);
                super::tell(&app.events, &mut stream, &e).await;
            });
            continue;
        };
        let app = app.clone();
        // The login's span: every line logged for it names the peer, and the database and user
        // once the login has named them (handshake.rs records them). It ends with the login: a
        // span kept for a client's whole life would cost every idle client its fields in the
        // subscriber (about 0.4 KiB each); later lines rebuild it (`Session::span`).
        let span = tracing::info_span!(
            "client",
            peer = %peer,
            db = tracing::field::Empty,
            user = tracing::field::Empty
        );
        // Boxed before the spawn, so that the task, sized once for the client's whole life, holds a
        // pointer rather than the stream.
        let accepted = Box::new(super::Accepted { stream });
        tokio::spawn(super::ClientTask::new(app, accepted, guard, span));
    }
}
