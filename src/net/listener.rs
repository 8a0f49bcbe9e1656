//! The sockets clients reach pgsluice on: TCP (every `listen_addr`, IPv4 and IPv6) and the unix
//! socket. frontend/accept.rs accepts on them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use tokio::net::{TcpListener, UnixListener};

/// The sockets pgsluice listens on.
#[derive(Debug)]
pub struct Listeners {
    pub tcp: Vec<TcpListener>,
    pub unix: Option<(UnixListener, PathBuf)>,
}

impl Listeners {
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.tcp
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }
}

fn bind_tcp(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        // `*` binds 0.0.0.0 and :: separately; the IPv6 socket must not claim IPv4 too.
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// Binds every configured address. `*` means all IPv4 and IPv6 addresses.
pub async fn bind(
    listen_addr: &[String],
    port: u16,
    unix_socket_dir: Option<&Path>,
) -> std::io::Result<Listeners> {
    let mut tcp = Vec::new();
    for a in listen_addr {
        let addrs: Vec<SocketAddr> = if a == "*" {
            vec![
                SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
                SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port),
            ]
        } else {
            tokio::net::lookup_host((a.as_str(), port)).await?.collect()
        };
        for addr in addrs {
            match bind_tcp(addr) {
                Ok(l) => tcp.push(l),
                // A machine without IPv6 still serves IPv4 for `*`.
                Err(e) if a == "*" && addr.is_ipv6() => {
                    tracing::warn!(error = %e, "could not listen on [::]")
                }
                Err(e) => {
                    return Err(std::io::Error::new(
                        e.kind(),
                        format!("could not listen on {addr}: {e}"),
                    ))
                }
            }
        }
    }
    let unix = match unix_socket_dir {
        Some(dir) => {
            // With port 0 the kernel picks the TCP port; the socket takes the same number, so
            // that a client finds both under one port.
            let port = match (port, tcp.first()) {
                (0, Some(l)) => l.local_addr().map_or(port, |a| a.port()),
                _ => port,
            };
            let path = dir.join(format!(".s.PGSQL.{port}"));
            // A stale socket from a crashed run would make bind fail.
            let _ = std::fs::remove_file(&path);
            Some((UnixListener::bind(&path)?, path))
        }
        None => None,
    };
    Ok(Listeners { tcp, unix })
}
