//! A byte stream over TCP, TLS over TCP, or a unix socket, so that the rest of the pooler is
//! written once.

use parking_lot::Mutex;
use rustls::pki_types::{CertificateDer, ServerName};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::TlsStream;

#[derive(Debug)]
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    /// TLS, accepted from a client or opened to a server. The lock lets [`Stream::split`] hand out a
    /// reading and a writing half of one rustls session; both halves are used by one task, so it is
    /// never contended.
    Tls(Box<Mutex<TlsStream<TcpStream>>>),
    /// What is left when a TLS handshake failed part way: every read sees EOF, every write fails.
    Closed,
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "connection closed")
}

impl Stream {
    /// Non-blocking read used to check that an idle connection is still healthy: `Ok(0)` means the
    /// peer closed it, `WouldBlock` means nothing arrived, which is what a healthy idle server shows.
    pub fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.try_read(buf),
            Stream::Unix(s) => s.try_read(buf),
            Stream::Tls(s) => {
                // rustls has no try_read: poll once with a waker that does nothing.
                let mut cx = Context::from_waker(std::task::Waker::noop());
                let mut rb = ReadBuf::new(buf);
                match Pin::new(&mut *s.lock()).poll_read(&mut cx, &mut rb) {
                    Poll::Ready(Ok(())) => Ok(rb.filled().len()),
                    Poll::Ready(Err(e)) => Err(e),
                    Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
                }
            }
            Stream::Closed => Ok(0),
        }
    }

    /// Readiness to read (or EOF), for the idle wait's hand-written poll loop: no future to store,
    /// and no buffer needed until bytes are there. TLS answers at once, since rustls may hold
    /// decrypted bytes the socket no longer shows; a read then waits as usual.
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Stream::Tcp(s) => s.poll_read_ready(cx),
            Stream::Unix(s) => s.poll_read_ready(cx),
            Stream::Tls(_) | Stream::Closed => Poll::Ready(Ok(())),
        }
    }

    pub fn peer_description(&self) -> String {
        let tcp = match self {
            Stream::Tcp(s) => s,
            Stream::Tls(s) => {
                return s
                    .lock()
                    .get_ref()
                    .0
                    .peer_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_else(|_| "?".into())
            }
            Stream::Unix(_) => return "unix".into(),
            Stream::Closed => return "?".into(),
        };
        tcp.peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| "?".into())
    }

    /// The peer's IP address, for hba rules; `None` on a unix socket.
    pub fn peer_ip(&self) -> Option<std::net::IpAddr> {
        self.peer_addr().map(|a| a.ip())
    }

    /// The peer's address and port; `None` on a unix socket.
    pub fn peer_addr(&self) -> Option<std::net::SocketAddr> {
        match self {
            Stream::Tcp(s) => s.peer_addr().ok(),
            Stream::Tls(s) => s.lock().get_ref().0.peer_addr().ok(),
            Stream::Unix(_) | Stream::Closed => None,
        }
    }

    /// Our own address and port on this connection; `None` on a unix socket.
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        match self {
            Stream::Tcp(s) => s.local_addr().ok(),
            Stream::Tls(s) => s.lock().get_ref().0.local_addr().ok(),
            Stream::Unix(_) | Stream::Closed => None,
        }
    }

    /// The uid of the process at the other end of a unix socket, for `peer` authentication.
    pub fn peer_uid(&self) -> Option<u32> {
        match self {
            Stream::Unix(s) => s.peer_cred().ok().map(|c| c.uid()),
            _ => None,
        }
    }

    /// Writes all of `buf` and flushes. TLS keeps what the socket would not take at once in its own
    /// buffer, where it stays until the next write or a flush: a reply written without a flush may
    /// never arrive.
    pub async fn write_flushed(&mut self, buf: &[u8]) -> io::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.write_all(buf).await?;
        self.flush().await
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    pub fn is_unix(&self) -> bool {
        matches!(self, Stream::Unix(_))
    }

    /// The certificate the peer presented in the TLS handshake, if any.
    pub fn peer_certificate(&self) -> Option<CertificateDer<'static>> {
        let Stream::Tls(s) = self else { return None };
        let guard = s.lock();
        let certs = match &*guard {
            TlsStream::Server(t) => t.get_ref().1.peer_certificates(),
            TlsStream::Client(t) => t.get_ref().1.peer_certificates(),
        };
        certs
            .and_then(|c| c.first())
            .map(|c| c.clone().into_owned())
    }

    /// The protocol the client chose by ALPN, on an accepted TLS connection.
    pub fn alpn_protocol(&self) -> Option<Vec<u8>> {
        let Stream::Tls(s) = self else { return None };
        let guard = s.lock();
        match &*guard {
            TlsStream::Server(t) => t.get_ref().1.alpn_protocol().map(<[u8]>::to_vec),
            TlsStream::Client(t) => t.get_ref().1.alpn_protocol().map(<[u8]>::to_vec),
        }
    }

    /// The first byte the peer sent, without taking it, to tell a TLS ClientHello (direct TLS, as
    /// PostgreSQL 17 clients may send) from a startup packet. `None` for unix sockets and at EOF.
    pub async fn peek_first(&self) -> io::Result<Option<u8>> {
        let Stream::Tcp(s) = self else {
            return Ok(None);
        };
        let mut b = [0u8; 1];
        Ok((s.peek(&mut b).await? == 1).then_some(b[0]))
    }

    fn take_tcp(&mut self) -> io::Result<TcpStream> {
        match std::mem::replace(self, Stream::Closed) {
            Stream::Tcp(s) => Ok(s),
            other => {
                *self = other;
                Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "TLS needs a plain TCP connection",
                ))
            }
        }
    }

    /// Runs the server side of a TLS handshake on this TCP connection.
    pub async fn accept_tls(&mut self, acceptor: &tokio_rustls::TlsAcceptor) -> io::Result<()> {
        let tcp = self.take_tcp()?;
        let tls = acceptor.accept(tcp).await?;
        *self = Stream::Tls(Box::new(Mutex::new(TlsStream::Server(tls))));
        Ok(())
    }

    /// Runs the client side of a TLS handshake on this TCP connection, towards `name`.
    pub async fn connect_tls(
        &mut self,
        connector: &tokio_rustls::TlsConnector,
        name: ServerName<'static>,
    ) -> io::Result<()> {
        let tcp = self.take_tcp()?;
        let tls = connector.connect(name, tcp).await?;
        *self = Stream::Tls(Box::new(Mutex::new(TlsStream::Client(tls))));
        Ok(())
    }
}

impl From<TcpStream> for Stream {
    fn from(s: TcpStream) -> Self {
        // Every message is a request or a reply someone waits for: never delay small writes.
        let _ = s.set_nodelay(true);
        Stream::Tcp(s)
    }
}

impl From<UnixStream> for Stream {
    fn from(s: UnixStream) -> Self {
        Stream::Unix(s)
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.get_mut()).poll_read(cx, buf),
            Stream::Closed => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.get_mut()).poll_write(cx, buf),
            Stream::Closed => Poll::Ready(Err(closed())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.get_mut()).poll_flush(cx),
            Stream::Closed => Poll::Ready(Err(closed())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.get_mut()).poll_shutdown(cx),
            Stream::Closed => Poll::Ready(Err(closed())),
        }
    }
}

/// The reading half of a borrowed [`Stream`]; no lock, unlike `tokio::io::split`.
#[derive(Debug)]
pub enum ReadHalf<'a> {
    Tcp(tokio::net::tcp::ReadHalf<'a>),
    Unix(tokio::net::unix::ReadHalf<'a>),
    Tls(&'a Mutex<TlsStream<TcpStream>>),
    Closed,
}

/// The writing half of a borrowed [`Stream`].
#[derive(Debug)]
pub enum WriteHalf<'a> {
    Tcp(tokio::net::tcp::WriteHalf<'a>),
    Unix(tokio::net::unix::WriteHalf<'a>),
    Tls(&'a Mutex<TlsStream<TcpStream>>),
    Closed,
}

impl Stream {
    /// Splits into halves that can be read and written at the same time in one task.
    pub fn split(&mut self) -> (ReadHalf<'_>, WriteHalf<'_>) {
        match self {
            Stream::Tcp(s) => {
                let (r, w) = s.split();
                (ReadHalf::Tcp(r), WriteHalf::Tcp(w))
            }
            Stream::Unix(s) => {
                let (r, w) = s.split();
                (ReadHalf::Unix(r), WriteHalf::Unix(w))
            }
            Stream::Tls(s) => (ReadHalf::Tls(s), WriteHalf::Tls(s)),
            Stream::Closed => (ReadHalf::Closed, WriteHalf::Closed),
        }
    }
}

impl WriteHalf<'_> {
    /// Whether bytes written may wait in a buffer of the stream's own until flushed (TLS).
    pub fn buffers(&self) -> bool {
        matches!(self, WriteHalf::Tls(_))
    }
}

impl AsyncRead for ReadHalf<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadHalf::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            ReadHalf::Unix(s) => Pin::new(s).poll_read(cx, buf),
            ReadHalf::Tls(s) => Pin::new(&mut *s.lock()).poll_read(cx, buf),
            ReadHalf::Closed => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncWrite for WriteHalf<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteHalf::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            WriteHalf::Unix(s) => Pin::new(s).poll_write(cx, buf),
            WriteHalf::Tls(s) => Pin::new(&mut *s.lock()).poll_write(cx, buf),
            WriteHalf::Closed => Poll::Ready(Err(closed())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Tcp(s) => Pin::new(s).poll_flush(cx),
            WriteHalf::Unix(s) => Pin::new(s).poll_flush(cx),
            WriteHalf::Tls(s) => Pin::new(&mut *s.lock()).poll_flush(cx),
            WriteHalf::Closed => Poll::Ready(Err(closed())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            WriteHalf::Unix(s) => Pin::new(s).poll_shutdown(cx),
            WriteHalf::Tls(s) => Pin::new(&mut *s.lock()).poll_shutdown(cx),
            WriteHalf::Closed => Poll::Ready(Err(closed())),
        }
    }
}
