//! Where a database's servers are: one host, a list tried in order, or a Kubernetes Service's
//! endpoints; read from `host`, `port`, `target_session_attrs` and pgsluice's `discovery` keys.

use super::ConfigError;

/// A Kubernetes Service by namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KubeService {
    pub namespace: String,
    pub name: String,
}

/// How a database's servers are found, beyond its first `host`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locate {
    /// Every host, in order, with its port; the first is the database's `host` and `port`.
    pub hosts: Vec<(String, u16)>,
    /// `target_session_attrs=read-write`, or discovery: a server in recovery or read-only is not used.
    pub read_write: bool,
    /// The Service whose endpoints are the candidates; `hosts` are the DNS fallback.
    pub kubernetes: Option<KubeService>,
}

/// The namespace pgsluice runs in: `$NAMESPACE` (CloudNativePG sets it in Pooler pods), else the
/// service account's, else `default`.
pub(super) fn own_namespace() -> String {
    if let Ok(ns) = std::env::var("NAMESPACE") {
        if !ns.trim().is_empty() {
            return ns.trim().to_owned();
        }
    }
    std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".to_owned())
}

/// `host:port`, or a bare host (an IPv6 address is bare: it has colons of its own).
fn host_port(item: &str, port: u16) -> (String, u16) {
    if item.parse::<std::net::Ipv6Addr>().is_err() {
        if let Some((h, p)) = item.rsplit_once(':') {
            if let Ok(p) = p.parse() {
                return (h.to_owned(), p);
            }
        }
    }
    (item.to_owned(), port)
}

impl Locate {
    pub fn parse(
        db: &str,
        host: &str,
        port: u16,
        target_session_attrs: Option<&str>,
        discovery: Option<&str>,
        discovery_service: Option<&str>,
    ) -> Result<Locate, ConfigError> {
        let invalid = |m: String| ConfigError::Invalid(format!("database \"{db}\": {m}"));
        let hosts: Vec<(String, u16)> = if host.starts_with('/') {
            vec![(host.to_owned(), port)] // a unix socket directory may hold commas
        } else {
            host.split(',')
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .map(|h| host_port(h, port))
                .collect()
        };
        if hosts.is_empty() {
            return Err(invalid("host is empty".into()));
        }
        let mut read_write = match target_session_attrs.map(str::trim) {
            None | Some("any") => false,
            Some("read-write") => true,
            Some(other) => {
                return Err(invalid(format!(
                    "target_session_attrs \"{other}\": pgsluice knows any and read-write"
                )))
            }
        };
        let kubernetes = match discovery.map(str::trim) {
            None | Some("" | "none" | "dns") => None,
            Some("kubernetes") => {
                read_write = true;
                let (ns, name) = match discovery_service.map(str::trim).filter(|s| !s.is_empty()) {
                    Some(s) => match s.split_once('/') {
                        Some((ns, name)) => (Some(ns.to_owned()), name.to_owned()),
                        None => (None, s.to_owned()),
                    },
                    // `svc`, or `svc.ns[.svc.cluster.local]`: a Service's DNS name.
                    None if hosts[0].0.parse::<std::net::IpAddr>().is_ok() => (None, String::new()),
                    None => {
                        let mut labels = hosts[0].0.split('.');
                        let name = labels.next().unwrap_or_default().to_owned();
                        (labels.next().map(str::to_owned), name)
                    }
                };
                if name.is_empty() {
                    return Err(invalid("discovery = kubernetes needs a Service: host=<service> or discovery_service=[namespace/]name".into()));
                }
                Some(KubeService {
                    namespace: ns.unwrap_or_else(own_namespace),
                    name,
                })
            }
            Some(other) => {
                return Err(invalid(format!(
                    "discovery \"{other}\": pgsluice knows kubernetes"
                )))
            }
        };
        Ok(Locate {
            hosts,
            read_write,
            kubernetes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_lists_ports_and_services() {
        let l = Locate::parse(
            "d",
            "10.0.0.1, db2:5433,::1",
            5432,
            Some("read-write"),
            None,
            None,
        )
        .unwrap();
        assert_eq!(
            l.hosts,
            [
                ("10.0.0.1".into(), 5432),
                ("db2".into(), 5433),
                ("::1".into(), 5432)
            ]
        );
        assert!(l.read_write && l.kubernetes.is_none());

        let k = Locate::parse("d", "pg-rw.prod.svc", 5432, None, Some("kubernetes"), None).unwrap();
        assert_eq!(
            k.kubernetes,
            Some(KubeService {
                namespace: "prod".into(),
                name: "pg-rw".into()
            })
        );
        assert!(
            k.read_write,
            "a discovered server is checked to be writable"
        );
        let k = Locate::parse("d", "x", 5432, None, Some("kubernetes"), Some("ns2/pg-rw")).unwrap();
        assert_eq!(
            k.kubernetes,
            Some(KubeService {
                namespace: "ns2".into(),
                name: "pg-rw".into()
            })
        );

        assert!(Locate::parse("d", "10.0.0.1", 5432, None, Some("kubernetes"), None).is_err());
        assert!(Locate::parse("d", "h", 5432, Some("primary"), None, None).is_err());
        assert!(Locate::parse("d", "h", 5432, None, Some("consul"), None).is_err());
        assert!(Locate::parse("d", " , ", 5432, None, None, None).is_err());
    }
}
