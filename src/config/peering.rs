//! How pooler replicas behind one Service cooperate: PgBouncer's `peer_id` and `[peers]`, or the
//! peers found in the pooler's own Service (`peer_discovery = kubernetes`), a shared secret for
//! the cancels they forward to each other, and whether limits are per replica or for the Service.

use super::{ConfigError, KubeService, RawConfig};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

/// The largest peer id, as PgBouncer's (14 bits of the cancel key carry it).
pub const MAX_PEER_ID: u16 = 16_383;

/// Where a peer listens, as its `[peers]` entry says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAddr {
    /// A host name, an IP, or a unix socket directory (starting with `/`).
    pub host: String,
    pub port: u16,
    /// PgBouncer's cap on cancels in flight to the peer; shown by SHOW PEERS. pgsluice bounds
    /// each forwarded cancel by a timeout instead.
    pub pool_size: Option<usize>,
}

/// Whether `max_db_connections`, `max_user_connections` and the pool sizes are this replica's or
/// the whole Service's (then divided among the live replicas).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BudgetScope {
    #[default]
    Replica,
    Service,
}

/// The validated peering settings.
#[derive(Clone, Default)]
pub struct Peering {
    /// This process's id; 0 when peering is off. With Kubernetes peers it is derived from
    /// `address` (so every replica can tell which replica owns a key from its address alone).
    pub id: u16,
    /// `[peers]`: id → where that peer listens. This process's own entry is left out.
    pub statics: BTreeMap<u16, PeerAddr>,
    /// The pooler's own Service, whose ready endpoints are the live replicas.
    pub service: Option<KubeService>,
    /// This replica's address as its peers see it (`peer_address`, else `$POD_IP`).
    pub address: Option<IpAddr>,
    /// Signs forwarded cancels; without it cancels are forwarded as PgBouncer forwards them.
    pub secret: Option<zeroize::Zeroizing<Vec<u8>>>,
    pub budget: BudgetScope,
    /// How long a replica waits before it takes a larger share of a budget, so that the others
    /// have given theirs up first.
    pub settle: Duration,
}

impl std::fmt::Debug for Peering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peering")
            .field("id", &self.id)
            .field("statics", &self.statics)
            .field("service", &self.service)
            .field("address", &self.address)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

impl Peering {
    /// Whether cancel keys carry an owner and cancels for other owners are forwarded.
    pub fn enabled(&self) -> bool {
        self.id != 0
    }
}

/// The peer id of the replica at `ip`: FNV-1a of its address bytes folded into 1..=16383. Every
/// replica computes the same id for the same address; two replicas that collide both receive a
/// forwarded cancel, and only the owner of the key acts on it.
pub fn id_of_address(ip: IpAddr) -> u16 {
    let bytes = match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    (h % u32::from(MAX_PEER_ID)) as u16 + 1
}

fn invalid(m: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(m.into())
}

/// This replica's address: `peer_address`, else `$POD_IP` (set from the downward API in the
/// manifests), else the listen address when it names one IP.
fn own_address(configured: &str, listen: &[String]) -> Result<Option<IpAddr>, ConfigError> {
    let from_env = std::env::var("POD_IP").ok();
    let chosen = [Some(configured.trim()), from_env.as_deref().map(str::trim)]
        .into_iter()
        .flatten()
        .find(|s| !s.is_empty());
    if let Some(a) = chosen {
        return a
            .parse()
            .map(Some)
            .map_err(|_| invalid(format!("peer_address \"{a}\" is not an IP address")));
    }
    Ok(match listen {
        [one] => one.parse().ok().filter(|ip: &IpAddr| !ip.is_unspecified()),
        _ => None,
    })
}

pub(super) fn parse(raw: &RawConfig) -> Result<Peering, ConfigError> {
    let g = &raw.general;
    if g.peer_id > MAX_PEER_ID {
        return Err(invalid(format!(
            "peer_id {} is above {MAX_PEER_ID}",
            g.peer_id
        )));
    }
    let statics = static_peers(raw)?;
    let service = peer_service(g)?;
    let address = own_address(&g.peer_address, &g.listen_addr)?;
    let id = match (&service, address) {
        (Some(_), Some(ip)) => id_of_address(ip),
        (Some(_), None) => return Err(invalid(
            "peer_discovery = kubernetes needs this replica's address: set peer_address or POD_IP",
        )),
        (None, _) => g.peer_id,
    };
    if id == 0 && !statics.is_empty() {
        return Err(invalid(
            "[peers] is set but peer_id is not: give this process its own id",
        ));
    }
    let budget = match g.budget_scope.trim() {
        "" | "replica" => BudgetScope::Replica,
        "service" => BudgetScope::Service,
        other => {
            return Err(invalid(format!(
                "budget_scope \"{other}\": expected replica or service"
            )))
        }
    };
    if budget == BudgetScope::Service && id == 0 {
        return Err(invalid(
            "budget_scope = service needs peers: [peers] with peer_id, or peer_discovery = kubernetes",
        ));
    }
    Ok(Peering {
        id,
        statics,
        service,
        address,
        secret: (!g.peer_secret.is_empty())
            .then(|| zeroize::Zeroizing::new(g.peer_secret.as_bytes().to_vec())),
        budget,
        settle: Duration::try_from_secs_f64(g.budget_settle)
            .map_err(|_| invalid("budget_settle must be a number of seconds ≥ 0"))?,
    })
}

/// The `[peers]` section, less this process's own entry.
fn static_peers(raw: &RawConfig) -> Result<BTreeMap<u16, PeerAddr>, ConfigError> {
    let g = &raw.general;
    let mut statics = BTreeMap::new();
    for (key, p) in &raw.peers {
        let id: u16 = key
            .trim()
            .parse()
            .ok()
            .filter(|id| (1..=MAX_PEER_ID).contains(id))
            .ok_or_else(|| {
                invalid(format!(
                    "[peers] \"{key}\" is not a peer id (1-{MAX_PEER_ID})"
                ))
            })?;
        let host = p
            .host
            .clone()
            .filter(|h| !h.trim().is_empty())
            .ok_or_else(|| invalid(format!("[peers] {id} has no host")))?;
        if id != g.peer_id {
            statics.insert(
                id,
                PeerAddr {
                    host,
                    port: p.port.unwrap_or(6432),
                    pool_size: p.pool_size,
                },
            );
        }
    }
    Ok(statics)
}

/// `peer_discovery` and `peer_service`: the pooler's own Service, when replicas find each other
/// by Kubernetes.
fn peer_service(g: &super::raw::RawGeneral) -> Result<Option<KubeService>, ConfigError> {
    Ok(match g.peer_discovery.trim() {
        "" | "none" => None,
        "kubernetes" => {
            let s = g.peer_service.trim();
            let (ns, name) = match s.split_once('/') {
                Some((ns, name)) => (ns.to_owned(), name.to_owned()),
                None => (super::locate::own_namespace(), s.to_owned()),
            };
            if name.is_empty() {
                return Err(invalid(
                    "peer_discovery = kubernetes needs peer_service = [namespace/]name (the pooler's own Service)",
                ));
            }
            Some(KubeService {
                namespace: ns,
                name,
            })
        }
        other => {
            return Err(invalid(format!(
                "peer_discovery \"{other}\": pgsluice knows kubernetes"
            )))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_of_addresses_are_stable_and_in_range() {
        let a = id_of_address("10.1.2.3".parse().unwrap());
        assert_eq!(a, id_of_address("10.1.2.3".parse().unwrap()));
        assert_ne!(a, id_of_address("10.1.2.4".parse().unwrap()));
        for i in 0..=255u8 {
            let id = id_of_address(IpAddr::from([10, 0, 0, i]));
            assert!((1..=MAX_PEER_ID).contains(&id));
        }
    }

    fn raw(f: impl FnOnce(&mut RawConfig)) -> RawConfig {
        let mut r = RawConfig::default();
        f(&mut r);
        r
    }

    #[test]
    fn static_peers_leave_out_self_and_need_an_id() {
        let p = parse(&raw(|r| {
            r.general.peer_id = 2;
            for (id, host) in [("1", "10.0.0.1"), ("2", "10.0.0.2"), ("3", "/tmp/p3")] {
                r.peers.insert(
                    id.into(),
                    crate::config::RawPeer {
                        host: Some(host.into()),
                        port: None,
                        pool_size: None,
                    },
                );
            }
        }))
        .unwrap();
        assert_eq!(p.id, 2);
        assert_eq!(p.statics.keys().copied().collect::<Vec<_>>(), [1, 3]);
        assert_eq!(p.statics[&3].port, 6432);

        let no_id = raw(|r| {
            let host = Some("10.0.0.1".into());
            r.peers.insert(
                "1".into(),
                crate::config::RawPeer {
                    host,
                    ..Default::default()
                },
            );
        });
        assert!(parse(&no_id).is_err());
        assert!(parse(&raw(|r| r.general.peer_id = 20_000)).is_err());
        assert!(parse(&raw(|r| r.general.budget_scope = "service".into())).is_err());
        assert!(parse(&raw(|r| r.general.budget_scope = "cluster".into())).is_err());
    }

    #[test]
    fn kubernetes_peers_take_their_id_from_the_address() {
        let p = parse(&raw(|r| {
            r.general.peer_discovery = "kubernetes".into();
            r.general.peer_service = "ns/pooler".into();
            r.general.peer_address = "10.4.0.7".into();
        }))
        .unwrap();
        assert_eq!(p.id, id_of_address("10.4.0.7".parse().unwrap()));
        assert_eq!(p.service.unwrap().name, "pooler");
        let no_service = raw(|r| {
            r.general.peer_discovery = "kubernetes".into();
            r.general.peer_address = "10.4.0.7".into();
        });
        assert!(parse(&no_service).is_err());
    }
}
