//! The addresses a Service's EndpointSlices offer: ready, not terminating, valid IPs, on the
//! PostgreSQL port. Pure, so that odd or hostile API answers are tested (and fuzzed) without a
//! cluster.

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::Event;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

/// How many endpoints are taken from all slices: a Service for one database never has more, and a
/// hostile answer cannot grow the pools' candidate lists without bound.
pub const MAX_ENDPOINTS: usize = 64;

/// The port of a slice: the one named `postgres`, else the only one, else `default_port`.
fn port_of(slice: &EndpointSlice, default_port: u16) -> u16 {
    let ports = slice.ports.as_deref().unwrap_or_default();
    let named = ports.iter().find(|p| p.name.as_deref() == Some("postgres"));
    let only = (ports.len() == 1).then(|| &ports[0]);
    named
        .or(only)
        .and_then(|p| p.port)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
        .unwrap_or(default_port)
}

/// The ready endpoints of all `slices`, sorted and without duplicates. `ready` unset counts as
/// ready and `terminating` unset as not terminating, as the API documents them.
pub fn ready<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    default_port: u16,
) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for slice in slices {
        if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
            continue; // FQDN slices name hosts, not addresses: DNS is the fallback for those.
        }
        let port = port_of(slice, default_port);
        for e in &slice.endpoints {
            let c = e.conditions.as_ref();
            let ready = c.and_then(|c| c.ready).unwrap_or(true);
            let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
            if !ready || terminating {
                continue;
            }
            for a in &e.addresses {
                if let Ok(ip) = a.parse::<IpAddr>() {
                    if !ip.is_unspecified() && !ip.is_multicast() {
                        out.push(SocketAddr::new(ip, port));
                    }
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out.truncate(MAX_ENDPOINTS);
    out
}

/// The slices of one Service as a watch reports them. A relist (after the watch restarts) builds
/// the next set aside and swaps it in when complete, so the pools never see half a list.
#[derive(Debug, Default)]
pub struct SliceSet {
    by_name: BTreeMap<String, EndpointSlice>,
    relisting: Option<BTreeMap<String, EndpointSlice>>,
    listed: bool,
}

impl SliceSet {
    /// Applies one watch event. True when the set is complete, so its endpoints may be published.
    pub fn apply(&mut self, event: Event<EndpointSlice>) -> bool {
        let key = |s: &EndpointSlice| s.metadata.name.clone().unwrap_or_default();
        match event {
            Event::Init => self.relisting = Some(BTreeMap::new()),
            Event::InitApply(s) => {
                if let Some(r) = self.relisting.as_mut() {
                    r.insert(key(&s), s);
                }
            }
            Event::InitDone => {
                self.by_name = self.relisting.take().unwrap_or_default();
                self.listed = true;
            }
            Event::Apply(s) => {
                self.by_name.insert(key(&s), s);
            }
            Event::Delete(s) => {
                self.by_name.remove(&key(&s));
            }
        }
        self.listed && self.relisting.is_none()
    }

    /// Whether a complete list was ever had.
    pub fn listed(&self) -> bool {
        self.listed
    }

    /// The ready endpoints of the set (see [`ready`]).
    pub fn ready(&self, default_port: u16) -> Vec<SocketAddr> {
        ready(self.by_name.values(), default_port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relist_is_published_only_when_complete() {
        let named = |name: &str, ip: &str| {
            slice(serde_json::json!({
                "metadata": {"name": name}, "addressType": "IPv4",
                "endpoints": [{"addresses": [ip]}]
            }))
        };
        let mut set = SliceSet::default();
        assert!(!set.apply(Event::Init));
        assert!(!set.apply(Event::InitApply(named("a", "10.0.0.1"))));
        assert!(set.apply(Event::InitDone));
        assert_eq!(
            set.ready(5432),
            vec!["10.0.0.1:5432".parse::<SocketAddr>().unwrap()]
        );
        assert!(set.apply(Event::Apply(named("b", "10.0.0.2"))));
        assert_eq!(set.ready(5432).len(), 2);
        // The watch restarts: the old set stands until the new list is complete.
        assert!(!set.apply(Event::Init));
        assert!(!set.apply(Event::InitApply(named("c", "10.0.0.3"))));
        assert_eq!(set.ready(5432).len(), 2, "half a relist is not published");
        assert!(set.apply(Event::InitDone));
        assert_eq!(
            set.ready(5432),
            vec!["10.0.0.3:5432".parse::<SocketAddr>().unwrap()]
        );
        assert!(set.apply(Event::Delete(named("c", "10.0.0.3"))));
        assert!(set.ready(5432).is_empty());
    }

    fn slice(json: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn only_ready_non_terminating_valid_addresses_on_the_postgres_port() {
        let s = slice(serde_json::json!({
            "metadata": {"name": "pg-rw-1"},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.0.0.12"], "conditions": {"ready": true}},
                {"addresses": ["10.0.0.13"], "conditions": {"ready": false}},
                {"addresses": ["10.0.0.14"], "conditions": {"ready": true, "terminating": true}},
                {"addresses": ["10.0.0.15"]},
                {"addresses": ["not-an-ip", "0.0.0.0", "10.0.0.12"]}
            ],
            "ports": [{"name": "metrics", "port": 9187}, {"name": "postgres", "port": 5433}]
        }));
        let got = ready([&s], 5432);
        let want: Vec<SocketAddr> = vec![
            "10.0.0.12:5433".parse().unwrap(),
            "10.0.0.15:5433".parse().unwrap(),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn no_port_means_the_default_and_fqdn_slices_are_skipped() {
        let ip = slice(serde_json::json!({
            "metadata": {"name": "a"}, "addressType": "IPv6",
            "endpoints": [{"addresses": ["fd00::1"]}]
        }));
        let fqdn = slice(serde_json::json!({
            "metadata": {"name": "b"}, "addressType": "FQDN",
            "endpoints": [{"addresses": ["db.example"]}]
        }));
        assert_eq!(
            ready([&ip, &fqdn], 5432),
            vec!["[fd00::1]:5432".parse::<SocketAddr>().unwrap()]
        );
    }

    #[test]
    fn a_huge_list_is_capped() {
        let endpoints: Vec<_> = (0..10_000u32)
            .map(|i| serde_json::json!({"addresses": [format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255)]}))
            .collect();
        let s = slice(
            serde_json::json!({"metadata": {"name": "x"}, "addressType": "IPv4", "endpoints": endpoints}),
        );
        assert_eq!(ready([&s], 5432).len(), MAX_ENDPOINTS);
    }
}
