//! Prometheus metrics and health probes, served over HTTP on `metrics_addr` (http.rs).
//!
//! Everything is exposed from a registry the application owns, never the crate's process-global
//! one, so that several pooler instances (tests run many) keep apart. Two kinds of metrics:
//! - per-pool families (pools.rs), read when scraped from what the pools keep anyway: their census,
//!   settings, counters and latency histograms. The data path adds nothing for them beyond the
//!   per-transaction additions it already made;
//! - [`Events`], counted where they happen, off the data path: logins, errors pgsluice itself sends
//!   to clients, reloads and TLS handshakes.
//!
//! This module knows the pools, not the application: the application implements [`Endpoint`].

mod family;
pub mod http;
mod pools;

pub use family::Family;

use crate::error::Disconnect;
use crate::pool::latency::BOUNDS_US;
use crate::pool::registry::Registry as Pools;
use crate::pool::stats::ConnectFailure;
use prometheus::proto::MetricFamily;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use std::sync::atomic::{AtomicU64, Ordering};

/// What the HTTP endpoint asks of the application.
pub trait Endpoint: Send + Sync + 'static {
    /// The text exposition of every metric.
    fn metrics_text(&self) -> String;
    /// Ok while the pooler should get new clients; else why not (for `/readyz`).
    fn ready(&self) -> Result<(), &'static str>;
}

/// Events counted where they happen.
#[derive(Debug)]
pub struct Events {
    registry: Registry,
    /// `result` is ok or failed; `method` is how the client was authenticated.
    pub logins: IntCounterVec,
    pub login_seconds: HistogramVec,
    /// Errors pgsluice itself sent to clients (the servers' own are passed through uncounted).
    pub client_errors: IntCounterVec,
    pub reloads: IntCounterVec,
    /// Ended client sessions, by why they ended.
    pub disconnects: IntCounterVec,
    /// Client TLS handshakes that succeeded and failed (the servers' are counted by their pools).
    client_tls: [AtomicU64; 2],
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .expect("a counter's name and labels are constants");
    registry
        .register(Box::new(c.clone()))
        .expect("each family is registered once");
    c
}

impl Default for Events {
    fn default() -> Self {
        let registry = Registry::new();
        let logins = counter(
            &registry,
            "pgsluice_client_logins_total",
            "Client logins by result (ok, failed) and authentication method.",
            &["result", "method"],
        );
        let buckets = BOUNDS_US.iter().map(|us| *us as f64 / 1e6).collect();
        let login_seconds = HistogramVec::new(
            HistogramOpts::new(
                "pgsluice_client_login_seconds",
                "Client logins, from the startup message to ReadyForQuery or refusal.",
            )
            .buckets(buckets),
            &["method"],
        )
        .expect("a histogram's name and buckets are constants");
        registry
            .register(Box::new(login_seconds.clone()))
            .expect("each family is registered once");
        let client_errors = counter(
            &registry,
            "pgsluice_client_errors_total",
            "Errors pgsluice itself sent to clients, by SQLSTATE class (its first two characters).",
            &["sqlstate_class"],
        );
        let reloads = counter(
            &registry,
            "pgsluice_reloads_total",
            "Configuration reloads by result (ok, failed).",
            &["result"],
        );
        let disconnects = counter(
            &registry,
            "pgsluice_client_disconnects_total",
            "Client sessions that ended after login, by reason.",
            &["reason"],
        );
        // Series that alerts watch exist from the start, at zero, not from their first event.
        for result in ["ok", "failed"] {
            reloads.with_label_values(&[result]);
        }
        for reason in Disconnect::KINDS {
            disconnects.with_label_values(&[reason]);
        }
        Self {
            registry,
            logins,
            login_seconds,
            client_errors,
            reloads,
            disconnects,
            client_tls: Default::default(),
        }
    }
}

impl Events {
    /// An error sent to a client, by its SQLSTATE's class.
    pub fn client_error(&self, sqlstate: &str) {
        let class = sqlstate.get(..2).unwrap_or("??");
        self.client_errors.with_label_values(&[class]).inc();
    }

    /// A client session ended.
    pub fn disconnect(&self, why: &Disconnect) {
        self.disconnects.with_label_values(&[why.kind()]).inc();
    }

    pub fn reload(&self, ok: bool) {
        self.reloads
            .with_label_values(&[if ok { "ok" } else { "failed" }])
            .inc();
    }

    /// A client's TLS handshake ended.
    pub fn client_tls_handshake(&self, ok: bool) {
        self.client_tls[usize::from(!ok)].fetch_add(1, Ordering::Relaxed);
    }

    /// Both sides' TLS handshakes: the clients' counted here, the servers' by their pools.
    fn tls_family(&self, pools: &Pools) -> MetricFamily {
        let mut f = Family::counter(
            "pgsluice_tls_handshakes_total",
            "TLS handshakes by side (client, server) and result (ok, failed).",
        );
        let (mut ok, mut failed) = (0, 0);
        for p in pools.all() {
            ok += p.stats.tls_handshakes.load(Ordering::Relaxed);
            failed +=
                p.stats.connect_failures[ConnectFailure::Tls as usize].load(Ordering::Relaxed);
        }
        let client = |i: usize| self.client_tls[i].load(Ordering::Relaxed) as f64;
        f.add(&[("side", "client"), ("result", "ok")], client(0));
        f.add(&[("side", "client"), ("result", "failed")], client(1));
        f.add(&[("side", "server"), ("result", "ok")], ok as f64);
        f.add(&[("side", "server"), ("result", "failed")], failed as f64);
        f.done()
    }
}

/// The text exposition of the events, the pools' families and the application's `extra` ones.
pub fn render(events: &Events, pools: &Pools, extra: Vec<MetricFamily>) -> String {
    let mut families = events.registry.gather();
    families.push(events.tls_family(pools));
    families.extend(pools::families(pools));
    families.extend(extra);
    // A family with no series yet (no pool so far) is left out: the format has no empty family.
    families.retain(|f| !f.get_metric().is_empty());
    families.sort_by(|a, b| a.name().cmp(b.name()));
    prometheus::TextEncoder::new()
        .encode_to_string(&families)
        .unwrap_or_else(|e| format!("# metrics could not be encoded: {e}\n"))
}
