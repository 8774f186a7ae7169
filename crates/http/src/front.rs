//! The client side of HTTP service ports: [`HttpProxy`] takes the
//! connections the proxy hands over ([`HttpServe`]) and serves each with
//! one hyper server connection (HTTP/1.1 keep-alive, HTTP/2 prior
//! knowledge), sending every request on its own through the [`Upstream`].
//!
//! # Layout, in the order a request flows
//!
//! - this file: the connection limit and the hyper server's settings (the
//!   limits hyper enforces itself: header size and count, HTTP/2 streams);
//! - `connection`: one client connection: the idle, preface and head timers, each
//!   request (headers, upgrades, errors), limits told from hyper's errors;
//! - `lean`: what serves a connection first: HTTP/1.1 requests without a
//!   body, read and answered without hyper's server; hyper takes the rest
//!   of the connection from the first request it does not serve;
//! - `headers`: hop-by-hop and forwarding headers (pure);
//! - `respond`: error responses (text or gRPC status) and the response body
//!   that ends a request's time;
//! - `limits`, `metrics`: what is counted and logged.
//!
//! `Upgrade: h2c` from an HTTP/1.1 client is answered over HTTP/1.1 (the
//! `Upgrade` and `HTTP2-Settings` headers removed): hyper cannot answer the
//! upgrading request as stream 1 of a new HTTP/2 connection, and RFC 9113
//! §3.1 deprecates the upgrade and lets a server ignore it.

mod connection;
pub mod headers;
mod lean;
pub mod limits;
pub mod metrics;
pub mod respond;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use edgemesh_metrics::Registry;
use edgemesh_proxy::{HttpConnection, HttpFuture, HttpServe};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

pub use self::limits::Limit;
pub use self::metrics::HttpMetrics;
use crate::{HttpConfig, RequestContext, Upstream};

/// hyper's smallest read buffer, hence the smallest `http.maxHeaderBytes`.
pub const MIN_HEADER_BYTES: usize = 8 * 1024;

/// Serves client connections to HTTP service ports; one per agent, shared
/// by every port and proxy worker.
pub struct HttpProxy {
    shared: Arc<Shared>,
}

/// What every client connection reads.
struct Shared {
    upstream: Arc<dyn Upstream>,
    config: HttpConfig,
    /// hyper's server settings, made once.
    builder: auto::Builder<TokioExecutor>,
    metrics: HttpMetrics,
    /// Client connections open now (`http.maxConnections`).
    connections: AtomicUsize,
}

impl HttpProxy {
    /// A front sending requests through `upstream`, its series registered
    /// nowhere (see [`HttpProxy::with_metrics`]).
    pub fn new(upstream: Arc<dyn Upstream>, config: HttpConfig) -> Self {
        Self::with_parts(upstream, config, HttpMetrics::unregistered())
    }

    /// As [`HttpProxy::new`], counting into `registry` (the agent's
    /// `edgemesh_` registry).
    pub fn with_metrics(upstream: Arc<dyn Upstream>, config: HttpConfig, registry: &mut Registry) -> Self {
        Self::with_parts(upstream, config, HttpMetrics::register(registry))
    }

    fn with_parts(upstream: Arc<dyn Upstream>, config: HttpConfig, metrics: HttpMetrics) -> Self {
        let builder = server_builder(&config);
        let connections = AtomicUsize::new(0);
        Self { shared: Arc::new(Shared { upstream, config, builder, metrics, connections }) }
    }

    /// Client connections being served now.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// Hits of `limit` so far.
    pub fn limit_hits(&self, limit: Limit) -> u64 {
        self.shared.metrics.limits.count(limit)
    }

    /// Serves one client connection read from `client`, any byte stream:
    /// what [`HttpServe::serve`] does with a socket the proxy accepted
    /// (counted in [`HttpProxy::connections`], but never refused: the
    /// limit's refusal is a TCP reset). For the fuzz target, which feeds
    /// the front from memory.
    pub fn serve_stream<S>(
        &self,
        client: S,
        ctx: RequestContext,
        drain: CancellationToken,
    ) -> impl Future<Output = ()> + Send + 'static
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        self.shared.connections.fetch_add(1, Ordering::AcqRel);
        let slot = Slot(self.shared.clone());
        connection::serve_stream(self.shared.clone(), client, ctx, drain, slot, connection::Scheme::Http)
    }
}

impl HttpServe for HttpProxy {
    fn serve(&self, conn: HttpConnection) -> HttpFuture {
        let max = self.shared.config.max_connections;
        if self.shared.connections.fetch_add(1, Ordering::AcqRel) >= max {
            self.shared.connections.fetch_sub(1, Ordering::AcqRel);
            self.shared.metrics.limits.hit(Limit::Connections, Some(conn.peer));
            // A reset, as the proxy refuses connections over its own limit:
            // the client sees a refusal at once, not an empty reply.
            // (A TLS session is closed as it drops: its handshake is done.)
            if let edgemesh_proxy::ClientStream::Tcp(client) = &conn.client {
                let _ = socket2::SockRef::from(client).set_linger(Some(Duration::ZERO));
            }
            return Box::pin(std::future::ready(()));
        }
        let slot = Slot(self.shared.clone());
        connection::serve(self.shared.clone(), conn, slot)
    }

    fn port_removed(&self, service: &Arc<str>, port: u16) {
        self.shared.metrics.remove_port(service, port);
    }
}

/// One place in `http.maxConnections`, given back when dropped.
struct Slot(Arc<Shared>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// hyper's server with the `http` section's limits. A zero timeout is none.
fn server_builder(config: &HttpConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // The head timeout is timed by `connection` (see there why not by hyper).
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(config.max_header_bytes.max(MIN_HEADER_BYTES))
        .max_headers(config.max_headers)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(config.max_concurrent_streams)
        .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX));
    builder
}
