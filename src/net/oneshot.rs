//! One packet over a new connection, then close: how CancelRequests travel, to servers and to
//! peer replicas. Bounded by a timeout, since nobody waits for the answer a cancel never gets.

use std::io;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// A cancel that cannot be delivered within this is given up.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends `packet` to `host:port`, a unix socket directory when `host` starts with `/`.
pub async fn send(host: &str, port: u16, packet: &[u8]) -> io::Result<()> {
    let attempt = async {
        let mut s = super::connect::connect(host, port).await?;
        s.write_all(packet).await?;
        s.shutdown().await
    };
    tokio::time::timeout(SEND_TIMEOUT, attempt)
        .await
        .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
}
