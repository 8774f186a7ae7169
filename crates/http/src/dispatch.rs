//! One request to one endpoint of its service port (the contract between
//! `front`, which serves clients, and the dispatcher, which reaches
//! endpoints).
//!
//! The dispatcher is shared by every client connection of every HTTP port
//! (one per agent): it owns the pooled upstream connections, the
//! per-endpoint load figures of `LeastRequest`, and the retry budgets.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use edgemesh_proxy::pool::Pool;
use edgemesh_proxy::remote::Reach;

/// What the dispatcher needs to know of the request's connection.
#[derive(Clone)]
pub struct RequestContext {
    /// The service port's pool: endpoints, strategy, passive health, metrics.
    pub pool: Arc<Pool>,
    /// Direct or through the tunnel, per endpoint.
    pub reach: Reach,
    pub connect_timeout: Duration,
    pub upstream_mark: Option<u32>,
    /// The client's address (`ConsistentHash` by source IP; affinity).
    pub client: SocketAddr,
}

/// Sends requests to endpoints; see the module docs.
///
/// `send(&self, req: hyper::Request<hyper::body::Incoming>, ctx: &RequestContext)
///   -> Result<hyper::Response<hyper::body::Incoming>, DispatchError>` is the
/// contract `front` calls. For an upgrade request (WebSocket), the response
/// comes from an HTTP/1.1 connection that is not returned to the pool, so
/// `hyper::upgrade::on(response)` yields the endpoint's side.
pub struct Dispatcher {
    _private: (),
}
