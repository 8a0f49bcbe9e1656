//! Sending a CancelRequest to a server, over a new connection as the protocol requires.

use super::{BackendKey, ServerAddr};
use crate::proto::encode;
use bytes::BytesMut;

/// Asks the server to cancel what the backend `key` is running. PostgreSQL never answers a cancel,
/// so a failure is only logged.
pub async fn send(addr: &ServerAddr, key: BackendKey) {
    let mut packet = BytesMut::with_capacity(16);
    encode::cancel_request(&mut packet, key.pid, key.secret);
    if let Err(e) = crate::net::oneshot::send(&addr.host, addr.port, &packet).await {
        tracing::warn!(error = %e, "could not send cancel request to server");
    }
}
