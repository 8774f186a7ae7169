//! The [`Dispatcher`]: the tries of one request, each to an endpoint of
//! the pick's order, until one answers, a failure may not be retried, the
//! retries (or the port's retry budget) run out, or the overall timeout
//! expires.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use edgemesh_core::Backend;
use edgemesh_metrics::Registry;
use edgemesh_proxy::pool::Targets;
use hyper::header::{CONNECTION, HOST, HeaderName, HeaderValue, UPGRADE};
use hyper::http::request::Parts;
use hyper::{Method, Request, Response, StatusCode, Uri, Version};

use super::lean::{Home, LeanConn, LeanError};
use super::metrics::DispatchMetrics;
use super::pick;
use super::port::{InFlight, PortState};
use super::retry::{BodySlot, ReplayBody, is_idempotent};
use super::upstream::{self, OpenError, Protocol, Sender};
use super::{RequestBody, RequestContext, SendFuture, Upstream, UpstreamBody};
use crate::{DispatchError, HttpConfig};

/// The agent's [`Upstream`]: one per agent, shared by every HTTP port.
#[derive(Clone)]
pub struct Dispatcher {
    shared: Arc<Shared>,
}

struct Shared {
    config: HttpConfig,
    metrics: Arc<DispatchMetrics>,
}

impl Dispatcher {
    /// A dispatcher with `config`'s retries, timeouts and pool sizes, whose
    /// counters are registered into `registry` (the agent's `edgemesh_`
    /// registry; the `service` label is the one the proxy's pools carry,
    /// bounded by `metrics.maxServices`).
    pub fn new(config: &HttpConfig, registry: &mut Registry) -> Self {
        let metrics = DispatchMetrics::register(registry);
        Self { shared: Arc::new(Shared { config: config.clone(), metrics }) }
    }
}

impl Upstream for Dispatcher {
    fn send(&self, req: Request<RequestBody>, ctx: Arc<RequestContext>) -> SendFuture {
        let shared = self.shared.clone();
        Box::pin(async move { shared.dispatch(req, &ctx).await })
    }
}

/// How far a failed try got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Nothing of the request left this node.
    Unsent,
    /// The request may have reached the endpoint.
    Sent,
}

struct Failure {
    error: DispatchError,
    stage: Stage,
}

fn nonzero(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

impl Shared {
    async fn dispatch(
        &self,
        req: Request<RequestBody>,
        ctx: &RequestContext,
    ) -> Result<Response<UpstreamBody>, DispatchError> {
        let targets = ctx.pool.targets();
        match nonzero(ctx.timeouts.request.or(targets.http.timeout).unwrap_or(self.config.request_timeout)) {
            Some(timeout) => tokio::time::timeout(timeout, self.tries(req, ctx, &targets))
                .await
                .unwrap_or(Err(DispatchError::Timeout { timeout })),
            None => self.tries(req, ctx, &targets).await,
        }
    }

    async fn tries(
        &self,
        req: Request<RequestBody>,
        ctx: &RequestContext,
        targets: &Targets,
    ) -> Result<Response<UpstreamBody>, DispatchError> {
        let pool = &ctx.pool;
        let port = PortState::of(pool, &self.config, &self.metrics);
        port.deposit();
        let (parts, body) = req.into_parts();
        let order = pick::order(pool, targets, &parts.headers, ctx.client, port);
        if order.is_empty() {
            return Err(DispatchError::NoEndpoints { service: pool.service.to_string(), port: pool.port });
        }
        let protocol = Protocol::of(targets.app_protocol, parts.headers.contains_key(UPGRADE));
        let body = BodySlot::new(body);
        let idempotent = is_idempotent(&parts.method);
        let per_try =
            nonzero(ctx.timeouts.per_try.or(targets.http.per_try_timeout).unwrap_or(self.config.per_try_timeout));
        let mut last = None;
        for attempt in 0..=self.config.max_retries as usize {
            if attempt > 0 {
                if !port.withdraw() {
                    port.counters.budget_exhausted.inc();
                    break;
                }
                port.counters.retries.inc();
            }
            // Each retry goes to the next endpoint; round again when all
            // were tried.
            let backend = &targets.backends[order[attempt % order.len()]];
            let exchange = self.exchange(ctx, targets, port, backend, &parts, &body, protocol);
            let tried = match per_try {
                Some(timeout) => match tokio::time::timeout(timeout, exchange).await {
                    Ok(tried) => tried,
                    Err(_) => {
                        // No answer in time (a silent, black-holed endpoint
                        // never answers): passive health ejects it like a
                        // refused connect, or every later request pays the
                        // per-try timeout on it again.
                        pool.failed(backend.addr);
                        Err(Failure { error: DispatchError::Timeout { timeout }, stage: Stage::Sent })
                    }
                },
                None => exchange.await,
            };
            let retry = match &tried {
                // The endpoint says it did not process the request.
                Ok(response) => response.status() == StatusCode::SERVICE_UNAVAILABLE && body.is_whole(),
                Err(failure) => body.is_whole() && (failure.stage == Stage::Unsent || idempotent),
            };
            if !retry {
                return tried.map_err(|f| f.error);
            }
            last = Some(tried);
        }
        match last.expect("at least one try") {
            Ok(response) => Ok(response),
            Err(failure) => Err(failure.error),
        }
    }

    /// One try: a pooled connection to `backend` (or a new one) and the
    /// request on it, up to the response head. A request without a body to
    /// an HTTP/1.1 endpoint takes the lean exchange.
    #[allow(clippy::too_many_arguments)]
    async fn exchange(
        &self,
        ctx: &RequestContext,
        targets: &Targets,
        port: &PortState,
        backend: &Backend,
        parts: &Parts,
        body: &BodySlot,
        protocol: Protocol,
    ) -> Result<Response<UpstreamBody>, Failure> {
        let addr = backend.addr;
        let thread = std::thread::current().id();
        let in_flight = port.start(targets, addr);
        if protocol == Protocol::Http1 && body.is_empty() && parts.method != Method::CONNECT {
            return self.lean_exchange(ctx, targets, port, backend, parts, thread, in_flight).await;
        }
        let mut reuse = true;
        loop {
            let (mut sender, fresh) = self.connection(ctx, targets, port, backend, protocol, thread, reuse).await?;
            match sender.send(request(parts, body.body(), protocol, addr)).await {
                Ok(response) => {
                    drop(in_flight);
                    ctx.pool.connected(targets, ctx.client.ip(), addr);
                    if protocol != Protocol::Upgrade {
                        port.checkin(targets, addr, sender, thread, self.config.max_idle_per_endpoint);
                    }
                    return Ok(response.map(UpstreamBody::Hyper));
                }
                Err(mut e) => {
                    let unsent = e.take_message().is_some();
                    // A pooled connection the endpoint closed meanwhile:
                    // nothing was sent and the endpoint is not to blame: the
                    // try goes on a new connection.
                    if unsent && !fresh {
                        reuse = false;
                        continue;
                    }
                    if fresh {
                        ctx.pool.failed(addr);
                    }
                    let reason = e.into_error().to_string();
                    tracing::debug!(service = %ctx.pool.service, endpoint = %addr, %reason, fresh, "request failed");
                    let stage = if unsent { Stage::Unsent } else { Stage::Sent };
                    return Err(Failure { error: DispatchError::EndpointFailed { endpoint: addr, reason }, stage });
                }
            }
        }
    }
}

impl Shared {
    /// [`Shared::exchange`] of a request without a body to an HTTP/1.1
    /// endpoint, on a lean connection ([`lean`]): pooled per endpoint and
    /// thread like hyper's, handed back by the response body once it ended.
    #[allow(clippy::too_many_arguments)]
    async fn lean_exchange(
        &self,
        ctx: &RequestContext,
        targets: &Targets,
        port: &PortState,
        backend: &Backend,
        parts: &Parts,
        thread: std::thread::ThreadId,
        in_flight: InFlight<'_>,
    ) -> Result<Response<UpstreamBody>, Failure> {
        let addr = backend.addr;
        let idle = port.lean_idle(targets, addr);
        let mut reuse = true;
        loop {
            let pooled = if reuse { idle.checkout(thread) } else { None };
            let fresh = pooled.is_none();
            let conn = match pooled {
                Some(conn) => conn,
                None => match upstream::connect(ctx, backend).await {
                    Ok(stream) => {
                        port.counters.opened.inc();
                        LeanConn::new(stream)
                    }
                    Err(reason) => {
                        ctx.pool.failed(addr);
                        tracing::debug!(service = %ctx.pool.service, endpoint = %addr, %reason, "endpoint failed");
                        let error = DispatchError::EndpointFailed { endpoint: addr, reason };
                        return Err(Failure { error, stage: Stage::Unsent });
                    }
                },
            };
            let home = Home {
                idle: idle.clone(),
                thread,
                max: self.config.max_idle_per_endpoint,
                idle_timeout: self.config.upstream_idle_timeout,
            };
            let (reason, stage) = match conn.exchange(parts, addr, home).await {
                Ok(response) => {
                    drop(in_flight);
                    ctx.pool.connected(targets, ctx.client.ip(), addr);
                    return Ok(response.map(UpstreamBody::Lean));
                }
                // A pooled connection the endpoint closed meanwhile: nothing
                // was processed and the endpoint is not to blame: the try
                // goes on a new connection.
                Err(LeanError::Unsent(_)) if !fresh => {
                    reuse = false;
                    continue;
                }
                Err(LeanError::Unsent(reason)) => (reason, Stage::Unsent),
                Err(LeanError::Sent(reason)) => (reason, Stage::Sent),
            };
            if fresh {
                ctx.pool.failed(addr);
            }
            let reason = format!("endpoint {addr}: {reason}");
            tracing::debug!(service = %ctx.pool.service, endpoint = %addr, %reason, fresh, "request failed");
            return Err(Failure { error: DispatchError::EndpointFailed { endpoint: addr, reason }, stage });
        }
    }

    /// A connection to `backend` for one request: a pooled one of this
    /// thread if `reuse`, else a new one (`true`). New HTTP/2 connections
    /// are opened one at a time per endpoint and pooled at once, so
    /// concurrent requests share the first instead of each opening their
    /// own.
    #[allow(clippy::too_many_arguments)]
    async fn connection(
        &self,
        ctx: &RequestContext,
        targets: &Targets,
        port: &PortState,
        backend: &Backend,
        protocol: Protocol,
        thread: std::thread::ThreadId,
        reuse: bool,
    ) -> Result<(Sender, bool), Failure> {
        let addr = backend.addr;
        let pooled = || reuse.then(|| port.checkout(targets, addr, protocol, thread)).flatten();
        if let Some(sender) = pooled() {
            return Ok((sender, false));
        }
        let _opening = match protocol {
            Protocol::Http2 => {
                let lock = port.opening(targets, addr);
                let held = lock.lock_owned().await;
                if let Some(sender) = pooled() {
                    return Ok((sender, false));
                }
                Some(held)
            }
            Protocol::Http1 | Protocol::Upgrade => None,
        };
        match upstream::open(ctx, backend, protocol, self.config.upstream_idle_timeout).await {
            Ok(sender) => {
                port.counters.opened.inc();
                if let Sender::Http2(h2) = &sender {
                    let shared = Sender::Http2(h2.clone());
                    port.checkin(targets, addr, shared, thread, self.config.max_idle_per_endpoint);
                }
                Ok((sender, true))
            }
            Err(e) => {
                ctx.pool.failed(addr);
                let reason = match e {
                    OpenError::Connect(reason) | OpenError::Handshake(reason) => reason,
                };
                tracing::debug!(service = %ctx.pool.service, endpoint = %addr, %reason, "endpoint failed");
                Err(Failure { error: DispatchError::EndpointFailed { endpoint: addr, reason }, stage: Stage::Unsent })
            }
        }
    }
}

/// Connection-specific fields HTTP/2 forbids (RFC 9113 §8.2.2) that have no
/// constant in `http`.
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// The request one try sends: the client's head (its extensions stay
/// behind: they belong to the client's connection) in the form the
/// endpoint's protocol wants.
fn request(parts: &Parts, body: ReplayBody, protocol: Protocol, addr: SocketAddr) -> Request<ReplayBody> {
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.headers_mut() = parts.headers.clone();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    match protocol {
        Protocol::Http2 => {
            *req.version_mut() = Version::HTTP_2;
            let headers = req.headers_mut();
            for name in [&CONNECTION, &UPGRADE, &hyper::header::TRANSFER_ENCODING, &KEEP_ALIVE, &PROXY_CONNECTION] {
                headers.remove(name);
            }
            *req.uri_mut() = Uri::builder()
                .scheme("http")
                .authority(authority(parts, addr).as_str())
                .path_and_query(path)
                .build()
                .unwrap_or_else(|_| parts.uri.clone());
        }
        Protocol::Http1 | Protocol::Upgrade => {
            *req.version_mut() = Version::HTTP_11;
            let headers = req.headers_mut();
            if !headers.contains_key(HOST)
                && let Ok(host) = HeaderValue::from_str(&authority(parts, addr))
            {
                headers.insert(HOST, host);
            }
            if protocol == Protocol::Upgrade && !headers.contains_key(CONNECTION) {
                headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
            }
            *req.uri_mut() = if parts.uri.scheme().is_none() {
                parts.uri.clone()
            } else {
                path.parse().unwrap_or_else(|_| parts.uri.clone())
            };
        }
    }
    req
}

/// The authority a request is for: its URI's (absolute form, HTTP/2), else
/// its `Host`, else the endpoint's address.
fn authority(parts: &Parts, addr: SocketAddr) -> String {
    parts
        .uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| parts.headers.get(HOST).and_then(|h| h.to_str().ok()).map(str::to_owned))
        .unwrap_or_else(|| addr.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut req = Request::get(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(()).unwrap().into_parts().0
    }

    const ADDR: &str = "10.0.0.7:8080";

    #[test]
    fn http1_endpoints_get_origin_form_and_a_host() {
        let req = request(
            &parts("http://web.default/a?b=1", &[]),
            ReplayBody::empty(),
            Protocol::Http1,
            ADDR.parse().unwrap(),
        );
        assert_eq!(req.uri(), "/a?b=1");
        assert_eq!(req.headers()[HOST], "web.default", "from the absolute URI");
        assert_eq!(req.version(), Version::HTTP_11);
        let req =
            request(&parts("/a", &[("host", "web")]), ReplayBody::empty(), Protocol::Http1, ADDR.parse().unwrap());
        assert_eq!((req.uri().to_string().as_str(), &req.headers()[HOST]), ("/a", &HeaderValue::from_static("web")));
        let bare = request(&parts("/a", &[]), ReplayBody::empty(), Protocol::Http1, ADDR.parse().unwrap());
        assert_eq!(bare.headers()[HOST], ADDR, "HTTP/1.1 requires a Host: the endpoint's");
    }

    #[test]
    fn http2_endpoints_get_an_absolute_uri_and_no_connection_headers() {
        let from =
            parts("/a", &[("host", "web"), ("connection", "keep-alive"), ("keep-alive", "5"), ("te", "trailers")]);
        let req = request(&from, ReplayBody::empty(), Protocol::Http2, ADDR.parse().unwrap());
        assert_eq!(req.uri(), "http://web/a");
        assert_eq!(req.version(), Version::HTTP_2);
        assert!(!req.headers().contains_key(CONNECTION) && !req.headers().contains_key("keep-alive"));
        assert_eq!(req.headers()["te"], "trailers", "gRPC needs it");
    }

    #[test]
    fn an_upgrade_keeps_asking_for_it() {
        let from = parts("/chat", &[("host", "web"), ("upgrade", "websocket")]);
        let req = request(&from, ReplayBody::empty(), Protocol::Upgrade, ADDR.parse().unwrap());
        assert_eq!(req.headers()[CONNECTION], "upgrade");
        assert_eq!(req.headers()[UPGRADE], "websocket");
    }
}
