//! A Service's endpoints from the Kubernetes API: the EndpointSlices labelled
//! `kubernetes.io/service-name=<service>`, listed and watched by kube's runtime watcher (which
//! follows bookmarks, relists after 410 Gone and backs off while the API server is unreachable).
//!
//! What the pools see:
//! - until the first list completes, [`Endpoints::Unknown`] (they use the configured host);
//! - after it, the ready endpoints after every change, empty while there is none;
//! - when the API server cannot be reached or answers errors, the last endpoints known, kept;
//! - when the watch is forbidden (or no API is configured) before anything was listed,
//!   [`Endpoints::Fallback`], said once in the log.

use super::{endpoints, Endpoints, Service};
use futures_util::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher;
use kube::runtime::WatchStreamExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::watch;

async fn client(kubeconfig: Option<&std::path::Path>) -> Result<kube::Client, String> {
    let config = match kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| format!("no Kubernetes API configuration: {e}"))?,
    };
    kube::Client::try_from(config).map_err(|e| format!("Kubernetes API client: {e}"))
}

/// An API answer that retrying will not change: the watch is not allowed, or the resource absent.
fn refused(e: &watcher::Error) -> Option<u16> {
    let inner = match e {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => e,
        _ => return None,
    };
    match inner {
        kube::Error::Api(s) if matches!(s.code, 401 | 403 | 404) => Some(s.code),
        _ => None,
    }
}

/// Watches `service` until the pools no longer read it (every receiver dropped).
pub async fn watch_service(
    service: Service,
    kubeconfig: Option<std::path::PathBuf>,
    default_port: u16,
    tx: watch::Sender<Endpoints>,
    changes: Arc<AtomicU64>,
) {
    let (ns, name) = (service.namespace.as_str(), service.name.as_str());
    let client = match client(kubeconfig.as_deref()).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(
                namespace = ns,
                service = name,
                "discovery falls back to DNS: {e}"
            );
            tx.send_replace(Endpoints::Fallback);
            return;
        }
    };
    let api = kube::Api::<EndpointSlice>::namespaced(client, ns);
    let config = watcher::Config::default().labels(&format!("kubernetes.io/service-name={name}"));
    let events = watcher::watcher(api, config).default_backoff();
    futures_util::pin_mut!(events);
    let mut slices = endpoints::SliceSet::default();
    let mut failing = false;
    loop {
        let event = tokio::select! {
            e = events.next() => e,
            () = tx.closed() => return,
        };
        let Some(event) = event else { return };
        match event {
            Ok(event) => {
                if failing {
                    tracing::info!(
                        namespace = ns,
                        service = name,
                        "Kubernetes API reachable again"
                    );
                    failing = false;
                }
                if slices.apply(event) && publish(&tx, &service, slices.ready(default_port)) {
                    changes.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(e) => {
                if let (Some(code), false) = (refused(&e), slices.listed()) {
                    tracing::warn!(namespace = ns, service = name, code, error = %e,
                        "discovery falls back to DNS: the EndpointSlice watch is refused (RBAC: get, list, watch on endpointslices)");
                    tx.send_replace(Endpoints::Fallback);
                    return;
                }
                // The watcher retries with backoff; the pools keep the last endpoints known.
                if !failing {
                    tracing::warn!(namespace = ns, service = name, error = %e,
                        "Kubernetes API: keeping the last endpoints known while retrying");
                    failing = true;
                }
            }
        }
    }
}

/// Tells the pools, if the endpoints changed; whether they did.
fn publish(
    tx: &watch::Sender<Endpoints>,
    service: &Service,
    now: Vec<std::net::SocketAddr>,
) -> bool {
    let now = Endpoints::Ready(now);
    tx.send_if_modified(|e| {
        if *e == now {
            return false;
        }
        tracing::info!(namespace = %service.namespace, service = %service.name, from = ?e, to = ?now, "endpoints changed");
        *e = now;
        true
    })
}
