//! One request to one endpoint of its service port: the contract between
//! `front`, which serves clients, and the [`Dispatcher`], which reaches
//! endpoints.
//!
//! The dispatcher is shared by every client connection of every HTTP port
//! (one per agent): it owns the pooled upstream connections, the
//! per-endpoint load figures of `LeastRequest`, and the retry budgets.
//!
//! # Layout, in the order a request flows
//!
//! - [`Dispatcher::send`] (here): the tries of one request, within its
//!   overall timeout.
//! - [`pick`]: the endpoints it tries, in order (the strategy, per request).
//! - [`port`]: the service port's state (counters, budget, load figures,
//!   pooled connections), kept in its pool.
//! - [`upstream`]: connections to endpoints (direct or through the
//!   tunnel; HTTP/1.1 or HTTP/2), pooled per endpoint and worker thread.
//! - [`lean`]: the HTTP/1.1 exchange of a request without a body, on a
//!   connection the request's own task reads and writes (no hyper client).
//! - [`retry`]: which failed tries are tried again, the retry budget, and
//!   the replayable request body.
//! - [`metrics`]: the counters.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use edgemesh_proxy::pool::Pool;
use edgemesh_proxy::remote::Reach;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::{Request, Response};

use crate::DispatchError;

pub mod lean;
mod metrics;
pub mod pick;
mod port;
pub mod retry;
mod send;
pub mod upstream;

pub use send::Dispatcher;

/// What the dispatcher needs to know of a request's client connection;
/// made once per client connection and shared by its requests.
#[derive(Clone)]
pub struct RequestContext {
    /// The service port's pool: endpoints, strategy, passive health, metrics.
    pub pool: Arc<Pool>,
    /// Direct or through the tunnel, per endpoint.
    pub reach: Reach,
    /// How long one direct connect to an endpoint may take.
    pub connect_timeout: Duration,
    /// Mark for upstream sockets (`intercept.mark`).
    pub upstream_mark: Option<u32>,
    /// The client's address (`ConsistentHash` by source IP).
    pub client: SocketAddr,
    /// Timeouts that override the service's for this request (a gateway
    /// route's `timeouts`); none for the agent's own ports.
    pub timeouts: TimeoutOverride,
}

/// A request's own timeouts, over the service port's and the config's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimeoutOverride {
    /// The whole request, retries included.
    pub request: Option<Duration>,
    /// Each try.
    pub per_try: Option<Duration>,
}

/// A client's request body: hyper's, or none (a request the lean
/// HTTP/1.1 front read itself, which only takes requests without a body).
#[derive(Debug)]
pub enum RequestBody {
    Hyper(Incoming),
    Empty,
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            RequestBody::Hyper(body) => Pin::new(body).poll_frame(cx),
            RequestBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Hyper(body) => body.is_end_stream(),
            RequestBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Hyper(body) => body.size_hint(),
            RequestBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// The future [`Upstream::send`] returns.
pub type SendFuture = Pin<Box<dyn Future<Output = Result<Response<UpstreamBody>, DispatchError>> + Send + 'static>>;

/// An endpoint's response body: from hyper's client connection, or read
/// by the lean exchange ([`lean`]).
pub enum UpstreamBody {
    Hyper(Incoming),
    Lean(lean::LeanBody),
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            UpstreamBody::Hyper(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            UpstreamBody::Lean(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Hyper(body) => body.is_end_stream(),
            UpstreamBody::Lean(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Hyper(body) => body.size_hint(),
            UpstreamBody::Lean(body) => body.size_hint(),
        }
    }
}

/// Sends one request to an endpoint of `ctx.pool` and returns its response
/// (whatever its status: a 5xx the endpoint sent is a response, not an
/// error, once retries are spent). `req` arrives as the client sent it,
/// hop-by-hop headers already removed and forwarding headers already set
/// by `front`. For an upgrade request (WebSocket), the response comes from
/// hyper's HTTP/1.1 connection, not returned to the pool, so
/// `hyper::upgrade::on(response)` yields the endpoint's side.
pub trait Upstream: Send + Sync + 'static {
    fn send(&self, req: Request<RequestBody>, ctx: Arc<RequestContext>) -> SendFuture;
}
