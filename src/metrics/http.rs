//! The HTTP endpoint: `GET /metrics` (Prometheus text format), `/healthz` (the process answers)
//! and `/readyz` (listening, not shutting down, not paused), so that Kubernetes probes need no
//! PostgreSQL connection. HTTP/1.1 through hyper; connections are served until the task serving
//! them is dropped.

use super::Endpoint;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// The exposition format's content type (version 0.0.4 is Prometheus' text format).
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A scraper that sends nothing is cut off after this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections served at once: scrapers and probes need a handful; more are refused (closed at
/// once), so that idle keep-alive connections cannot pile up without bound.
const MAX_CONNECTIONS: usize = 64;

/// Serves until dropped (every connection task with it).
pub async fn serve(listener: TcpListener, endpoint: Arc<dyn Endpoint>) {
    let mut connections = JoinSet::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            // Reap finished connections so the set stays as large as the open ones.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        if connections.len() >= MAX_CONNECTIONS {
            drop(stream);
            continue;
        }
        let endpoint = endpoint.clone();
        connections.spawn(async move {
            let service = service_fn(move |req| {
                let endpoint = endpoint.clone();
                async move { Ok::<_, Infallible>(answer(&req, endpoint.as_ref())) }
            });
            let mut builder = http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            // A client that goes away mid-request is not worth a log line.
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn answer(req: &Request<Incoming>, endpoint: &dyn Endpoint) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(TEXT_FORMAT));
        r
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
    }
    match req.uri().path() {
        "/metrics" => text(StatusCode::OK, endpoint.metrics_text()),
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => match endpoint.ready() {
            Ok(()) => text(StatusCode::OK, "ready\n".into()),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /healthz or /readyz\n".into(),
        ),
    }
}
