//! Where a database's primary is. Discovery answers with the endpoints of a source; it knows
//! nothing of clients or pools. Pools consume a [`Watch`]: they open servers at the endpoints it
//! gives, check each is writable, wait while it gives none, and retire their servers when an
//! endpoint goes away (pool/route.rs).
//!
//! The one source today is Kubernetes (kubernetes.rs): the ready, non-terminating endpoints of a
//! Service's EndpointSlices. A CloudNativePG cluster's `-rw` Service has its primary as its only
//! endpoint, and none between the old primary's demotion and the new one's promotion. Static host
//! lists need no watch: the pool tries them in order, as libpq does (`target_session_attrs`).

pub mod endpoints;
pub mod kubernetes;

use dashmap::DashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::watch;

/// What a source knows of a Service's endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoints {
    /// Nothing yet (the first list is under way): the configured host name is used meanwhile.
    Unknown,
    /// The source cannot be used (the watch is forbidden, no API server is configured): the
    /// configured host name, resolved by DNS, is used from now on.
    Fallback,
    /// The ready endpoints, sorted; none while the Service has none (mid-switchover).
    Ready(Vec<SocketAddr>),
}

/// A pool's view of a source.
#[derive(Debug, Clone)]
pub struct Watch(watch::Receiver<Endpoints>);

impl Watch {
    pub fn current(&self) -> Endpoints {
        self.0.borrow().clone()
    }

    /// Waits for the next change; false when the source has ended.
    pub async fn changed(&mut self) -> bool {
        self.0.changed().await.is_ok()
    }
}

pub use crate::config::KubeService as Service;

/// The sources in use, one per Service however many pools read it. Owned by the application.
#[derive(Debug, Default)]
pub struct Discovery {
    services: DashMap<Service, Source>,
}

#[derive(Debug, Clone)]
struct Source {
    watch: Watch,
    /// How often the endpoints changed (each a primary moving, or going and coming back).
    changes: Arc<AtomicU64>,
}

/// One Service as the metrics show it.
#[derive(Debug, Clone)]
pub struct SourceState {
    pub service: Service,
    pub endpoints: Endpoints,
    pub changes: u64,
}

impl Discovery {
    /// The watch on `service`'s endpoints, started on first use; `default_port` is used when the
    /// slices name no port. The API is reached through `kubeconfig`, or else what `kube` infers
    /// ($KUBECONFIG, ~/.kube/config, then the pod's service account).
    pub fn service(
        &self,
        service: &Service,
        kubeconfig: Option<&std::path::Path>,
        default_port: u16,
    ) -> Watch {
        if let Some(s) = self.services.get(service) {
            return s.watch.clone();
        }
        self.services
            .entry(service.clone())
            .or_insert_with(|| {
                let (tx, rx) = watch::channel(Endpoints::Unknown);
                let changes = Arc::new(AtomicU64::new(0));
                let task = kubernetes::watch_service(
                    service.clone(),
                    kubeconfig.map(std::path::Path::to_path_buf),
                    default_port,
                    tx,
                    changes.clone(),
                );
                tokio::spawn(task);
                Source {
                    watch: Watch(rx),
                    changes,
                }
            })
            .watch
            .clone()
    }

    /// The Services watched and what each has.
    pub fn all(&self) -> Vec<(Service, Endpoints)> {
        self.states()
            .into_iter()
            .map(|s| (s.service, s.endpoints))
            .collect()
    }

    /// The Services watched, what each has and how often it changed, for the metrics.
    pub fn states(&self) -> Vec<SourceState> {
        self.services
            .iter()
            .map(|e| SourceState {
                service: e.key().clone(),
                endpoints: e.value().watch.current(),
                changes: e.value().changes.load(Ordering::Relaxed),
            })
            .collect()
    }
}
