//! Sending a CancelRequest to a server, over a new connection as the protocol requires.

use super::{BackendKey, ServerAddr};
use crate::proto::encode;
use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UnixStream};

/// Asks the server to cancel what the backend `key` is running. PostgreSQL never answers a cancel,
/// so a failure is only logged.
pub async fn send(addr: &ServerAddr, key: BackendKey) {
    let mut packet = BytesMut::with_capacity(16);
    encode::cancel_request(&mut packet, key.pid, key.secret);
    let result = if addr.host.starts_with('/') {
        match UnixStream::connect(format!("{}/.s.PGSQL.{}", addr.host, addr.port)).await {
            Ok(mut s) => s.write_all(&packet).await,
            Err(e) => Err(e),
        }
    } else {
        match TcpStream::connect((addr.host.as_str(), addr.port)).await {
            Ok(mut s) => s.write_all(&packet).await,
            Err(e) => Err(e),
        }
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, "could not send cancel request to server");
    }
}
