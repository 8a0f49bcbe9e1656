//! What the metrics endpoint asks of the running pooler: `impl Endpoint for App`.

use super::App;
use crate::metrics::{Endpoint, Family};
use crate::pool::budget::Split;
use crate::shutdown::Phase;

impl App {
    /// Per watched Service: how many ready endpoints (-1 while unknown or fallen back to DNS), and
    /// how often they changed.
    fn discovery_families(&self) -> Vec<prometheus::proto::MetricFamily> {
        let mut endpoints = Family::gauge(
            "pgsluice_discovery_endpoints",
            "Ready endpoints of a watched Service; -1 before the first list, or after falling back to DNS.",
        );
        let mut changes = Family::counter(
            "pgsluice_discovery_changes_total",
            "Times a watched Service's ready endpoints changed (a primary going, or coming).",
        );
        for s in self.discovery.states() {
            let labels = [
                ("namespace", s.service.namespace.as_str()),
                ("service", s.service.name.as_str()),
            ];
            let n = match &s.endpoints {
                crate::discovery::Endpoints::Ready(v) => v.len() as f64,
                _ => -1.0,
            };
            endpoints.add(&labels, n);
            changes.add(&labels, s.changes as f64);
        }
        vec![endpoints.done(), changes.done()]
    }

    /// Cancels forwarded between replicas, the replicas known, and how budgets are divided.
    fn peer_families(&self) -> Vec<prometheus::proto::MetricFamily> {
        use std::sync::atomic::Ordering::Relaxed;
        let mut cancels = Family::counter(
            "pgsluice_peer_cancels_total",
            "Cancel requests forwarded to the replica owning the key, and those received from peers (accepted, or rejected for a bad signature).",
        );
        let counts = &self.peers.counts;
        for (outcome, n) in [
            ("forwarded", &counts.forwarded),
            ("accepted", &counts.accepted),
            ("rejected", &counts.rejected),
        ] {
            cancels.add(&[("outcome", outcome)], n.load(Relaxed) as f64);
        }
        let mut peers = Family::gauge(
            "pgsluice_peers",
            "Other pooler replicas known: [peers] entries and ready endpoints of the pooler's Service.",
        );
        peers.add(&[], self.peers.list().len() as f64);
        let mut replicas = Family::gauge(
            "pgsluice_budget_replicas",
            "Replicas the Service's budgets are divided among now; 1 when budgets are per replica, 0 while joining.",
        );
        let n = match self.pools.with_budget(|b| b.current()) {
            Split::Whole => 1,
            Split::Joining => 0,
            Split::Part { n, .. } => n,
        };
        replicas.add(&[], n as f64);
        vec![cancels.done(), peers.done(), replicas.done()]
    }
}

impl Endpoint for App {
    fn metrics_text(&self) -> String {
        let mut connections = Family::gauge(
            "pgsluice_client_connections",
            "Client connections open, logging in or logged in (the console's too).",
        );
        connections.add(&[], self.shutdown.clients() as f64);
        let mut max = Family::gauge(
            "pgsluice_max_client_conn",
            "Client connections allowed (max_client_conn).",
        );
        max.add(&[], self.with_config(|c| c.general.max_client_conn) as f64);
        let mut ready = Family::gauge(
            "pgsluice_ready",
            "1 while /readyz answers 200: not shutting down and not paused.",
        );
        ready.add(&[], f64::from(u8::from(self.ready().is_ok())));
        let mut info = Family::gauge("pgsluice_info", "pgsluice's version, as a label.");
        info.add(&[("version", env!("CARGO_PKG_VERSION"))], 1.0);
        let mut extra = vec![connections.done(), max.done(), ready.done(), info.done()];
        extra.extend(self.discovery_families());
        extra.extend(self.peer_families());
        crate::metrics::render(&self.events, &self.pools, extra)
    }

    fn ready(&self) -> Result<(), &'static str> {
        if self.shutdown.phase() != Phase::Running {
            return Err("shutting down");
        }
        if self.pools.is_paused(None) {
            return Err("paused");
        }
        Ok(())
    }
}
