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
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::pool::Pool;
use crate::remote::Reach;

/// A client connection to an HTTP service port, with what the HTTP layer
/// needs to reach the port's endpoints.
pub struct HttpConnection {
    pub client: TcpStream,
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
