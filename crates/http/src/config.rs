//! The `http` section of the agent's config (keys in camelCase): limits on
//! clients of HTTP service ports, and how requests are retried and timed
//! out. Per service, the annotations `edgemesh.io/http-timeout` and
//! `edgemesh.io/http-per-try-timeout` override the timeouts.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// HTTP-aware proxying settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpConfig {
    /// Serve HTTP ports per request; false: every port per connection (L4).
    pub enabled: bool,
    /// Largest request head (request line and headers) accepted; larger
    /// gets 431.
    pub max_header_bytes: usize,
    /// Most headers in a request head; more gets 431.
    pub max_headers: usize,
    /// Time a client has to send a complete request head once it connected
    /// or sent its last request (slowloris).
    #[serde(with = "edgemesh_core::duration")]
    pub request_head_timeout: Duration,
    /// A client connection with no request in flight for this long is
    /// closed.
    #[serde(with = "edgemesh_core::duration")]
    pub idle_timeout: Duration,
    /// HTTP/2 streams one client connection may have open at once.
    pub max_concurrent_streams: u32,
    /// Client connections to HTTP ports open at once (on top of the
    /// proxy's own connection limit); past it, new ones are refused.
    pub max_connections: usize,
    /// Time one request may take, retries included (default for services
    /// without `edgemesh.io/http-timeout`); 0: none.
    #[serde(with = "edgemesh_core::duration")]
    pub request_timeout: Duration,
    /// Time one try may take (default for services without
    /// `edgemesh.io/http-per-try-timeout`); 0: only the request timeout.
    #[serde(with = "edgemesh_core::duration")]
    pub per_try_timeout: Duration,
    /// Retries of one request at most.
    pub max_retries: u32,
    /// Retry budget: retries may add at most this fraction of the requests
    /// of the last 10 s ...
    pub retry_budget_ratio: f64,
    /// ... plus this many retries per second.
    pub retry_budget_min_per_second: u32,
    /// An idle pooled connection to an endpoint is closed after this long.
    #[serde(with = "edgemesh_core::duration")]
    pub upstream_idle_timeout: Duration,
    /// Idle pooled connections kept per endpoint and proxy worker thread.
    /// Above a worker's concurrent requests to an endpoint, or every
    /// response closes a connection the next request reopens: with 32, 50
    /// concurrent HTTP/2 streams per worker cost a third of the req/s and
    /// doubled p99 (BENCHMARKS.md, session 13). Idle ones still close after
    /// `upstream_idle_timeout`.
    pub max_idle_per_endpoint: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            request_head_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            max_concurrent_streams: 100,
            max_connections: 10_000,
            request_timeout: Duration::from_secs(15),
            per_try_timeout: Duration::ZERO,
            max_retries: 2,
            retry_budget_ratio: 0.2,
            retry_budget_min_per_second: 10,
            upstream_idle_timeout: Duration::from_secs(90),
            max_idle_per_endpoint: 128,
        }
    }
}
