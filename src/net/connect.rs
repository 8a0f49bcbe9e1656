//! Opening a connection to a PostgreSQL-style address: a unix socket directory when the host starts
//! with `/` (the socket is `.s.PGSQL.<port>` in it, as libpq names it), TCP otherwise. The only place
//! outside the listeners that opens sockets.

use super::stream::Stream;
use std::io;
use tokio::net::{TcpStream, UnixStream};

/// Connects to `host:port`.
pub async fn connect(host: &str, port: u16) -> io::Result<Stream> {
    if host.starts_with('/') {
        Ok(UnixStream::connect(socket_path(host, port)).await?.into())
    } else {
        Ok(TcpStream::connect((host, port)).await?.into())
    }
}

/// The socket a unix-domain `host` directory holds for `port`.
pub fn socket_path(dir: &str, port: u16) -> String {
    format!("{dir}/.s.PGSQL.{port}")
}

/// How an address is named in logs: the socket's path, or `host:port`.
pub fn describe(host: &str, port: u16) -> String {
    if host.starts_with('/') {
        socket_path(host, port)
    } else {
        format!("{host}:{port}")
    }
}
