//! The addresses a Service's EndpointSlices offer: ready, not terminating, valid IPs, on the
//! PostgreSQL port. Pure, so that odd or hostile API answers are tested (and fuzzed) without a
//! cluster.

use k8s_openapi::api::discovery::v1::EndpointSlice;
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

#[cfg(test)]
mod tests {
    use super::*;

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
