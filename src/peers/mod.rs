//! Pooler replicas behind one Service, cooperating. A client's cancel key names the replica that
//! owns it (key.rs), so a CancelRequest that the Service's load balancing sends to another
//! replica is forwarded to the owner; and limits declared for the whole Service are divided among
//! the live replicas (pool/budget.rs, driven from app/peers.rs).
//!
//! Peers are PgBouncer's static `[peers]` (id → address), or the ready endpoints of the pooler's
//! own Service (`peer_discovery = kubernetes`), where each replica's id is derived from its
//! address. With a `peer_secret`, forwarded cancels are signed and a replica acts only on signed
//! ones; without it they travel as PgBouncer forwards them (a plain CancelRequest, TTL lowered),
//! which lets pgsluice and PgBouncer processes peer with each other.

pub mod key;

use crate::config::{id_of_address, PeerAddr, Peering};
use crate::discovery::{Discovery, Endpoints, Watch};
use crate::pool::budget::Split;
use crate::proto::encode;
use crate::proto::startup::PeerCancel;
use bytes::BytesMut;
use parking_lot::RwLock;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Forwarded cancels, for the metrics.
#[derive(Debug, Default)]
pub struct PeerCounts {
    /// Sent to the replica owning the key.
    pub forwarded: AtomicU64,
    /// Received from a peer with a valid signature.
    pub accepted: AtomicU64,
    /// Received from a peer with a bad or stale signature, or while no secret is configured.
    pub rejected: AtomicU64,
}

#[derive(Debug, Default)]
pub struct Peers {
    /// This replica's id; 0 when peering is off.
    id: u16,
    secret: Option<zeroize::Zeroizing<Vec<u8>>>,
    statics: RwLock<BTreeMap<u16, PeerAddr>>,
    /// The pooler Service's endpoints, when peers are discovered.
    watch: Option<Watch>,
    own: Option<IpAddr>,
    pub counts: PeerCounts,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Peers {
    /// Peers as configured; the pooler Service's endpoints are watched from now on, through
    /// `kubeconfig` as discovery does, `listen_port` where a slice names no port.
    pub fn new(
        p: &Peering,
        discovery: &Discovery,
        kubeconfig: Option<&std::path::Path>,
        listen_port: u16,
    ) -> Self {
        Self {
            id: p.id,
            secret: p.secret.clone(),
            statics: RwLock::new(p.statics.clone()),
            watch: p
                .service
                .as_ref()
                .map(|s| discovery.service(s, kubeconfig, listen_port)),
            own: p.address,
            counts: PeerCounts::default(),
        }
    }

    /// A reload may change `[peers]`; the id, the secret and the Service stay as started.
    pub fn reload(&self, p: &Peering) {
        *self.statics.write() = p.statics.clone();
    }

    pub fn id(&self) -> u16 {
        self.id
    }

    pub fn enabled(&self) -> bool {
        self.id != 0
    }

    /// The pooler Service's endpoints, when peers are discovered.
    pub fn watch(&self) -> Option<Watch> {
        self.watch.clone()
    }

    /// A fresh cancel key for a client of this replica.
    pub fn mint(&self) -> (u32, u32) {
        key::mint(self.id, rand::random())
    }

    /// What the client registry files the key under.
    pub fn lookup(&self, pid: u32, secret: u32) -> u64 {
        key::lookup(pid, secret, self.enabled())
    }

    /// The peer that owns a key when it is not this replica.
    pub fn owner_elsewhere(&self, pid: u32) -> Option<u16> {
        let owner = key::owner(pid);
        (self.enabled() && owner != self.id).then_some(owner)
    }

    /// Every peer this replica knows, by id: the `[peers]` entries, then the other ready
    /// endpoints of the pooler Service.
    pub fn list(&self) -> Vec<(u16, PeerAddr)> {
        let mut out: Vec<(u16, PeerAddr)> = self
            .statics
            .read()
            .iter()
            .map(|(id, a)| (*id, a.clone()))
            .collect();
        if let Some(Endpoints::Ready(addrs)) = self.watch.as_ref().map(Watch::current) {
            out.extend(addrs.iter().filter(|a| Some(a.ip()) != self.own).map(|a| {
                let host = a.ip().to_string();
                let addr = PeerAddr {
                    host,
                    port: a.port(),
                    pool_size: None,
                };
                (id_of_address(a.ip()), addr)
            }));
        }
        out
    }

    /// Sends a client's cancel on to the replica that owns its key. Like every cancel it gets no
    /// answer; a key whose TTL is spent, or whose owner is unknown, is dropped.
    pub async fn forward(&self, pid: u32, secret: u32) {
        let owner = key::owner(pid);
        let Some(secret) = key::next_hop(secret) else {
            tracing::debug!(owner, "cancel request dropped: forwarded too many times");
            return;
        };
        // More than one only if two replicas' addresses give the same id.
        let targets: Vec<(String, u16)> = self
            .list()
            .into_iter()
            .filter(|(id, _)| *id == owner)
            .map(|(_, a)| (a.host, a.port))
            .collect();
        if targets.is_empty() {
            tracing::debug!(owner, "cancel request dropped: no peer has this id");
            return;
        }
        let mut packet = BytesMut::with_capacity(64);
        match &self.secret {
            Some(k) => {
                let sent = now_ms();
                let tag = key::sign(k, pid, secret, sent);
                encode::peer_cancel(&mut packet, pid, secret, sent, &tag);
            }
            None => encode::cancel_request(&mut packet, pid, secret),
        }
        let sends = targets.iter().map(|(host, port)| {
            let packet = &packet;
            async move {
                match crate::net::oneshot::send(host, *port, packet).await {
                    Ok(()) => {
                        self.counts.forwarded.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(owner, peer = %host, "cancel request forwarded");
                    }
                    Err(e) => {
                        tracing::warn!(owner, peer = %host, error = %e, "could not forward cancel request to peer")
                    }
                }
            }
        });
        futures_util::future::join_all(sends).await;
    }

    /// The key of a cancel forwarded by a peer, if it is signed with the shared secret and fresh.
    /// It is acted on here only: a peer's cancel is never forwarded again.
    pub fn accept(&self, c: &PeerCancel) -> Option<(u32, u32)> {
        let ok = self
            .secret
            .as_ref()
            .is_some_and(|k| key::verify(k, c, now_ms()));
        let counter = if ok {
            &self.counts.accepted
        } else {
            &self.counts.rejected
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if !ok {
            tracing::warn!(
                "forwarded cancel request dropped: not signed with this pooler's peer_secret"
            );
        }
        ok.then_some((c.pid, c.secret))
    }

    /// How this replica divides budgets declared for the whole Service, as far as it knows now,
    /// given the split in force (`previous`): among the `[peers]` ids, or the ready endpoints of the
    /// pooler Service it is one of.
    ///
    /// A replica that has been listed and is not any more (draining, or paused so that its readiness
    /// fails) keeps its share: its clients are still being served, and the others take more only
    /// `budget_settle` after they saw it go. If the Service cannot be watched at all (RBAC refuses
    /// it), budgets fall back to this replica's own rather than leave it without servers.
    pub fn split(&self, previous: Split) -> Split {
        let Some(watch) = &self.watch else {
            let statics = self.statics.read();
            let rank = statics.keys().filter(|id| **id < self.id).count();
            return Split::Part {
                n: statics.len() + 1,
                rank,
            };
        };
        match (watch.current(), self.own) {
            (Endpoints::Ready(addrs), Some(own)) => {
                let mut ips: Vec<IpAddr> = addrs.iter().map(|a| a.ip()).collect();
                ips.sort_unstable();
                ips.dedup();
                match ips.binary_search(&own) {
                    Ok(rank) => Split::Part { n: ips.len(), rank },
                    Err(_) if matches!(previous, Split::Part { .. }) => previous,
                    Err(_) => Split::Joining,
                }
            }
            (Endpoints::Fallback, _) => {
                if previous != Split::Whole {
                    tracing::warn!(
                        "the pooler Service cannot be watched: budget_scope = service falls back to this replica's own limits"
                    );
                }
                Split::Whole
            }
            // The first list is under way: take nothing until this replica is counted.
            _ => Split::Joining,
        }
    }
}
