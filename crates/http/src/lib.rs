//! HTTP-aware proxying (issue #16): connections to HTTP service ports are
//! served per request, so every request (not every connection) is balanced,
//! retried and timed out on its own.
//!
//! # Layout, in the order a request flows
//!
//! - [`config`]: the `http` section of the agent's config (limits, timeouts,
//!   retry budget).
//! - [`front`]: the client side: per client connection handed over by the
//!   proxy ([`edgemesh_proxy::HttpServe`]), a lean HTTP/1.1 reader for
//!   requests without a body, then one hyper server connection for the rest:
//!   HTTP/1.1 keep-alive and HTTP/2 cleartext (prior knowledge and
//!   `Upgrade: h2c`), the limits (header size and count, request-head
//!   timeout, idle timeout, concurrent streams, connections), forwarding
//!   headers, hop-by-hop headers, upgrades (WebSocket), and errors turned
//!   into responses ([`error`]).
//! - [`dispatch`]: one request to one endpoint: the per-request pick
//!   (round robin, random, consistent hash on a header or cookie,
//!   least-request), retries within a budget, per-try and overall
//!   timeouts, passive health, and the pooled upstream connections (local
//!   TCP and tunnel streams; HTTP/1.1 or HTTP/2 as the port says).
//! - [`error`]: what went wrong with a request, as the status (502, 503,
//!   504) or gRPC status the client gets.
//!
//! # Data flow
//!
//! ```text
//! proxy (accept, admission) -> HttpServe::serve -> front (hyper server conn)
//!     -> per request: dispatch::Dispatcher::send -> pick -> upstream pool -> endpoint
//!     <- response, or error::DispatchError -> 502/503/504 text (gRPC: status trailers)
//! ```
#![forbid(unsafe_code)]
#![warn(clippy::unwrap_used)] // outside tests: an error with context, or an `expect` naming the invariant

pub mod config;
pub mod dispatch;
pub mod error;
pub mod front;

pub use config::HttpConfig;
pub use dispatch::{Dispatcher, RequestBody, RequestContext, SendFuture, TimeoutOverride, Upstream, UpstreamBody};
pub use error::DispatchError;
pub use front::HttpProxy;
