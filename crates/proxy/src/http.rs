//! The hand-off of connections to HTTP service ports (issue #16) to the
//! agent's HTTP layer (`edgemesh-http`), which proxies them per request.
//!
//! The proxy knows nothing of HTTP, as it knows nothing of the tunnel: the
//! agent hands it an [`HttpServe`] ([`crate::Proxy::with_http`]), and a
//! connection accepted for a port whose `Targets::app_protocol` is HTTP is
//! given to it once admitted (counted against the connection limit, active
//! in the port's gauge until the returned future ends) instead of being
//! connected to one endpoint and spliced. Without an `HttpServe`, HTTP
//! ports are proxied per connection like any other.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::pool::Pool;
use crate::remote::Reach;

/// A client connection to an HTTP service port, with what the HTTP layer
/// needs to reach the port's endpoints.
pub struct HttpConnection {
    pub client: ClientStream,
    /// The client's address.
    pub peer: SocketAddr,
    /// The pool of the service port the client connected to: endpoints
    /// ([`Pool::targets`]), passive health ([`Pool::failed`],
    /// [`Pool::healthy`]), metrics.
    pub pool: Arc<Pool>,
    /// Which endpoints are dialled directly and which through the tunnel.
    pub reach: Reach,
    /// How long one direct connect to an endpoint may take
    /// (`proxy.connectTimeout`, live).
    pub connect_timeout: Duration,
    /// Mark for upstream sockets (`intercept.mark`), so interception lets
    /// them pass.
    pub upstream_mark: Option<u32>,
    /// Cancelled when the agent drains: the connection should end once its
    /// requests in flight are answered (the proxy drops it at shutdown).
    pub drain: CancellationToken,
}

/// The byte stream from an HTTP client: a plain socket (every service
/// port, and the gateway's HTTP listeners), or a TLS session the gateway
/// terminated on an HTTPS listener.
///
/// An enum rather than a boxed stream: the plain socket, the common case,
/// is served without a virtual call per read or write (the HTTP layer
/// matches once and serves each variant with its own code); only the TLS
/// session, whose decryption costs far more than a call, is boxed.
pub enum ClientStream {
    Tcp(TcpStream),
    /// A terminated TLS session: requests on it are `https`.
    Tls(Box<dyn ClientIo>),
}

/// What a [`ClientStream::Tls`] session is: any byte stream.
pub trait ClientIo: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> ClientIo for T {}

impl ClientStream {
    /// Whether the client's bytes arrived over TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, ClientStream::Tls(_))
    }
}

impl From<TcpStream> for ClientStream {
    fn from(stream: TcpStream) -> Self {
        ClientStream::Tcp(stream)
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ClientStream::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ClientStream::Tcp(s) => s.is_write_vectored(),
            ClientStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// A future the [`HttpServe`] returns.
pub type HttpFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Serves connections to HTTP service ports, per request.
pub trait HttpServe: Send + Sync + 'static {
    /// Serves `conn` until the client closes it (or a limit or shutdown
    /// ends it); runs on the proxy worker that accepted it.
    fn serve(&self, conn: HttpConnection) -> HttpFuture;

    /// The service port `port` labelled `service` has no listener left:
    /// its series go, as the proxy's own do.
    fn port_removed(&self, _service: &Arc<str>, _port: u16) {}
}

impl std::fmt::Debug for dyn HttpServe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HttpServe")
    }
}
