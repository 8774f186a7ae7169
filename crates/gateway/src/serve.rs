//! Serving a gateway listener: its client connections go to the agent's
//! HTTP front (`edgemesh_http::HttpProxy`: limits, timeouts, forwarding
//! headers, errors as responses), whose [`Upstream`] is a
//! [`GatewayUpstream`]: each request is routed on its own by the
//! listener's table, its rule's filters applied, one backend Service picked
//! by weight, and the request sent through the agent's dispatcher with
//! that Service's pool (its endpoints, strategy, retries, passive health;
//! local or through the tunnel).
//!
//! ```text
//! listener accept -> HttpProxy (front) -> GatewayUpstream::send
//!     route (404) -> redirect (3xx) | header edits, rewrite -> pick (500) -> pool (503)
//!     -> Dispatcher::send (the Service's endpoints) -> response header edits
//! ```
//!
//! HTTPS listeners terminate TLS first and hand the session to the same
//! front; TLS passthrough and TCP listeners go to [`crate::l4`].
//!
//! The listener's own pseudo pool (no endpoints) names the Gateway and the
//! listener's port in the front's metrics and error texts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arc_swap::ArcSwap;
use edgemesh_core::{LbStrategy, ServiceKey};
use edgemesh_http::{DispatchError, RequestBody, RequestContext, SendFuture, TimeoutOverride, Upstream};
use edgemesh_proxy::pool::{Pool, Targets};
use edgemesh_proxy::{ClientStream, HttpConnection, HttpFuture, HttpServe, Reach};
use hyper::header::HOST;
use hyper::http::uri::{Authority, PathAndQuery};
use hyper::{Request, Uri};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::Compiled;
use crate::backend::{PoolSlot, ServiceRef, Target};
use crate::compile::ObjectRef;
use crate::compile::Protocol;
use crate::filter::{HeaderEdits, Origin};
use crate::hostname::request_host;
use crate::matching::RequestView;
use crate::metrics::Handshake;

/// The agent's pools of Service ports, for the routes' backends.
pub trait ServicePools: Send + Sync + 'static {
    /// The pool of `service` (its endpoints, strategy, passive health) and
    /// how its endpoints are reached; None when this agent serves no such
    /// Service port.
    fn pool(&self, service: &ServiceRef) -> Option<(Arc<Pool>, Reach)>;

    /// A number that changes whenever [`ServicePools::pool`] may answer
    /// differently (a pool made or dropped): a route's backends keep what
    /// they resolved while it stays the same. None (the default): every
    /// request asks `pool`.
    fn generation(&self) -> Option<u64> {
        None
    }
}

/// The pool of `service`, from `slot` while the pools' generation holds,
/// else from `pools` (kept in `slot`).
fn resolve(pools: &dyn ServicePools, service: &ServiceRef, slot: &PoolSlot) -> Option<(Arc<Pool>, Reach)> {
    let Some(generation) = pools.generation() else { return pools.pool(service) };
    if let Some(resolved) = slot.get(generation) {
        return Some(resolved);
    }
    let (pool, reach) = pools.pool(service)?;
    slot.set(generation, pool.clone(), reach.clone());
    Some((pool, reach))
}

/// A request ready to go on (edited in place): the context of its
/// backend's pool, and the edits its response gets.
struct Forward {
    target: Arc<RequestContext>,
    response_edits: Option<HeaderEdits>,
}

/// Routes each request of a gateway listener and sends it on.
pub struct GatewayUpstream {
    routes: Arc<ArcSwap<Compiled>>,
    pools: Arc<dyn ServicePools>,
    dispatcher: Arc<dyn Upstream>,
    /// `http` or `https`: what redirects keep when they name no scheme,
    /// on ports the compiled objects do not say are HTTPS.
    scheme: &'static str,
}

impl GatewayUpstream {
    /// Routes by the tables in `routes` (swapped whole when objects
    /// change), sends through `dispatcher` (the agent's).
    pub fn new(
        routes: Arc<ArcSwap<Compiled>>,
        pools: Arc<dyn ServicePools>,
        dispatcher: Arc<dyn Upstream>,
        scheme: &'static str,
    ) -> Self {
        Self { routes, pools, dispatcher, scheme }
    }

    /// The request made ready to go on, or the gateway's own answer.
    fn prepare(&self, req: &mut Request<RequestBody>, ctx: &RequestContext) -> Result<Forward, DispatchError> {
        let listener_port = ctx.pool.port;
        // (The compile stays loaded while the request is prepared: the
        // route, its prefix and its pool slot are borrowed from it.)
        let compiled = self.routes.load();
        let authority = req
            .uri()
            .authority()
            .map(|a| a.as_str())
            .or_else(|| req.headers().get(HOST).and_then(|h| h.to_str().ok()))
            .unwrap_or_default();
        let host = request_host(authority);
        let no_route = || DispatchError::NoRoute { host: host.clone().into_owned(), path: req.uri().path().to_owned() };
        let scheme = match compiled.protocols.get(&listener_port) {
            Some(Protocol::Https) => "https",
            Some(_) => "http",
            None => self.scheme,
        };
        if scheme == "https"
            && let Some(server_name) = session_server_name(&ctx.pool)
            && compiled.tls.get(&listener_port).is_none_or(|certs| certs.misdirected(server_name, &host))
        {
            return Err(DispatchError::Misdirected { host: host.into_owned(), server_name: server_name.to_owned() });
        }
        let table = compiled.tables.get(&listener_port).ok_or_else(no_route)?;
        let view = RequestView {
            method: req.method(),
            path: req.uri().path(),
            query: req.uri().query(),
            headers: req.headers(),
        };
        let routed = table.route(&host, &view).ok_or_else(no_route)?;
        let (action, matched_prefix) = (routed.action, routed.matched_prefix);
        let filters = &action.filters;
        if let Some(redirect) = &filters.redirect {
            let origin = Origin {
                scheme,
                host: &host,
                listener_port,
                path: req.uri().path(),
                query: req.uri().query(),
                matched_prefix,
            };
            return Err(DispatchError::Redirect { status: redirect.status, location: redirect.location(origin) });
        }
        if let Some(edits) = &filters.request_headers {
            edits.apply(req.headers_mut());
        }
        if let Some(rewrite) = &filters.rewrite {
            let path = rewrite.path.as_ref().map(|p| p.apply(req.uri().path(), matched_prefix));
            let hostname = rewrite.hostname.as_deref();
            rewrite_request(req, path.as_deref(), hostname)?;
        }
        // (The route's name is formatted only for an answer that names it.)
        let route = || format!("{}/{} rule {}", action.route.namespace, action.route.name, action.rule);
        let (service, slot) = match action.backends.pick_slot() {
            None => return Err(DispatchError::NoBackend { reason: format!("HTTPRoute {} has no backend", route()) }),
            Some((Target::Invalid(why), _)) => {
                return Err(DispatchError::NoBackend { reason: format!("HTTPRoute {}: {why}", route()) });
            }
            Some((Target::Service(service), slot)) => (service, slot),
        };
        let (pool, reach) = resolve(&*self.pools, service, slot).ok_or_else(|| DispatchError::NoEndpoints {
            service: format!("{}/{}", service.namespace, service.name),
            port: service.port,
        })?;
        let timeouts = TimeoutOverride { request: action.timeouts.request, per_try: action.timeouts.backend_request };
        let target = RequestContext {
            pool,
            reach,
            connect_timeout: ctx.connect_timeout,
            upstream_mark: ctx.upstream_mark,
            client: ctx.client,
            timeouts,
        };
        Ok(Forward { target: Arc::new(target), response_edits: filters.response_headers.clone() })
    }
}

impl Upstream for GatewayUpstream {
    fn send(&self, mut req: Request<RequestBody>, ctx: Arc<RequestContext>) -> SendFuture {
        match self.prepare(&mut req, &ctx) {
            Err(answer) => Box::pin(std::future::ready(Err(answer))),
            // (No response edits: the dispatcher's future as it is.)
            Ok(Forward { target, response_edits: None }) => self.dispatcher.send(req, target),
            Ok(Forward { target, response_edits: Some(edits) }) => {
                let sent = self.dispatcher.send(req, target);
                Box::pin(async move {
                    let mut response = sent.await?;
                    edits.apply(response.headers_mut());
                    Ok(response)
                })
            }
        }
    }
}

/// `URLRewrite`: a new path (the query kept) and/or host, in the URI (an
/// HTTP/2 request's `:authority`) and the `Host` header.
fn rewrite_request<B>(req: &mut Request<B>, path: Option<&str>, host: Option<&str>) -> Result<(), DispatchError> {
    let invalid =
        |what: &str| DispatchError::NoBackend { reason: format!("the route's URLRewrite makes an invalid {what}") };
    let mut parts = req.uri().clone().into_parts();
    if let Some(path) = path {
        let with_query = match req.uri().query() {
            Some(q) => format!("{path}?{q}"),
            None => path.to_owned(),
        };
        parts.path_and_query = Some(PathAndQuery::try_from(with_query).map_err(|_| invalid("path"))?);
    }
    if let Some(host) = host {
        if parts.authority.is_some() {
            parts.authority = Some(Authority::try_from(host).map_err(|_| invalid("host"))?);
        }
        if req.headers().contains_key(HOST) {
            req.headers_mut().insert(HOST, host.parse().map_err(|_| invalid("host"))?);
        }
    }
    *req.uri_mut() = Uri::from_parts(parts).map_err(|_| invalid("URI"))?;
    Ok(())
}

/// The pseudo pool of a listener: no endpoints; it names `gateway` and the
/// listener's configured `port` in the front's metrics and error texts.
pub fn listener_pool(gateway: &ObjectRef, ip: std::net::IpAddr, port: u16) -> Arc<Pool> {
    let targets = Targets::new(LbStrategy::RoundRobin, Arc::from(Vec::new()));
    Arc::new(Pool::new(ServiceKey::new(&gateway.namespace, &gateway.name), SocketAddr::new(ip, port), targets))
}

/// The server name a TLS session's ClientHello gave, kept in the
/// session's own pseudo pool (its extension slot, which no dispatcher uses:
/// a gateway request is sent with its backend's pool), the only value the
/// front hands from a connection to each of its requests.
#[derive(Default)]
struct SessionServerName(Option<Box<str>>);

/// The pseudo pool of an HTTPS session whose ClientHello named
/// `server_name`: `listener`'s names and port (the same metrics and error
/// texts), and the name (as requests' hosts are compared: lowercase, no
/// trailing dot), for the 421 check of each request.
fn session_pool(listener: &Pool, server_name: &str) -> Arc<Pool> {
    let targets = Targets::new(LbStrategy::RoundRobin, Arc::from(Vec::new()));
    let pool = Pool::new(listener.service.clone(), listener.addr, targets);
    pool.extension(|| SessionServerName(Some(request_host(server_name).into())));
    Arc::new(pool)
}

/// The server name the connection of `pool` (its pseudo pool) gave in
/// its ClientHello; None without one, or on a connection without TLS.
fn session_server_name(pool: &Pool) -> Option<&str> {
    pool.extension(SessionServerName::default)?.0.as_deref()
}

/// What every connection of one listener shares.
#[derive(Clone)]
pub struct ListenerContext {
    pub pool: Arc<Pool>,
    pub connect_timeout: std::time::Duration,
    pub upstream_mark: Option<u32>,
    pub drain: CancellationToken,
    /// The runtimes its connections run on, in turn ([`crate::workers`]);
    /// empty: the one that accepts them.
    pub workers: &'static [tokio::runtime::Handle],
}

/// What a listener needs to serve more than HTTP: the compiled objects
/// (each connection reads its port's protocol, certificates and L4 routes
/// from the current ones), the Services' pools (for L4 backends) and the
/// port's TLS settings.
#[derive(Clone)]
pub struct GatewayRouting {
    pub routes: Arc<ArcSwap<Compiled>>,
    pub pools: Arc<dyn ServicePools>,
    /// The port's TLS server (see [`crate::tls::server_config`]).
    pub tls: Arc<rustls::ServerConfig>,
    /// How long a client may take to send its ClientHello (passthrough)
    /// or complete its TLS handshake (HTTPS); default
    /// [`crate::tls::HANDSHAKE_TIMEOUT`].
    pub handshake_timeout: std::time::Duration,
    /// Connections this listener serves at once, of any protocol (0: no
    /// bound but the front's and the process's); one more is reset.
    pub max_connections: usize,
    /// Connections it serves now.
    pub connections: Arc<AtomicUsize>,
    /// Connections every listener serves now (ports gone included, while
    /// their connections drain).
    pub all_connections: Arc<AtomicUsize>,
    /// Its TLS handshakes' series.
    pub tls_metrics: Arc<crate::metrics::PortTls>,
    /// Its open L4 connections (TLS passthrough, TCP), for their drain.
    pub l4: Arc<crate::l4::L4Connections>,
}

/// One of a listener's connections, given back when its task ends.
/// (In its port's count and in every port's.)
struct Slot {
    port: Arc<AtomicUsize>,
    all: Arc<AtomicUsize>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.port.fetch_sub(1, Ordering::AcqRel);
        self.all.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Accepts `listener`'s connections and hands each to `front` until
/// `ctx.drain` is cancelled: an HTTP-only listener.
pub async fn serve_listener(listener: TcpListener, front: Arc<dyn HttpServe>, ctx: ListenerContext) {
    serve_gateway_listener(listener, front, ctx, None).await;
}

/// Accepts `listener`'s connections until `ctx.drain` is cancelled, each
/// handed to the next of `ctx.workers` (or run here when there are none)
/// and served by its port's protocol in the current compile: HTTP to `front`;
/// HTTPS after a TLS handshake (within `routing.handshake_timeout`)
/// to `front`; TLS passthrough and TCP at L4 ([`crate::l4`]). Without
/// `routing`, every connection is HTTP.
pub async fn serve_gateway_listener(
    listener: TcpListener,
    front: Arc<dyn HttpServe>,
    ctx: ListenerContext,
    routing: Option<GatewayRouting>,
) {
    let port = ctx.pool.port;
    let mut next_worker = 0usize;
    loop {
        let accepted = tokio::select! {
            () = ctx.drain.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (client, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of descriptors or memory: back off instead of spinning.
                tracing::warn!(error = %e, "gateway listener: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = client.set_nodelay(true);
        let mut slot = None;
        let protocol = match &routing {
            None => Some(Protocol::Http),
            Some(routing) => {
                let connections = &routing.connections;
                if connections.fetch_add(1, Ordering::AcqRel) >= routing.max_connections && routing.max_connections > 0
                {
                    connections.fetch_sub(1, Ordering::AcqRel);
                    tracing::debug!(%peer, port, max = routing.max_connections, "gateway listener at its connection limit: reset");
                    let _ = socket2::SockRef::from(&client).set_linger(Some(std::time::Duration::ZERO));
                    continue;
                }
                routing.all_connections.fetch_add(1, Ordering::AcqRel);
                slot = Some(Slot { port: connections.clone(), all: routing.all_connections.clone() });
                routing.routes.load().protocols.get(&port).copied()
            }
        };
        // The port's listeners went away; the listener closes at the next reconcile.
        let Some(protocol) = protocol else { continue };
        let connection =
            Connection { peer, protocol, front: front.clone(), ctx: ctx.clone(), routing: routing.clone() };
        if ctx.workers.is_empty() {
            tokio::spawn(connection.start(client, slot));
            continue;
        }
        // On the next worker: the socket leaves this runtime's event loop
        // for that worker's, and its future (timers included) is made in
        // the worker's context.
        let worker = &ctx.workers[next_worker % ctx.workers.len()];
        next_worker = next_worker.wrapping_add(1);
        let served = client.into_std().and_then(|client| {
            let _worker = worker.enter();
            Ok(connection.start(TcpStream::from_std(client)?, slot))
        });
        match served {
            Ok(served) => drop(worker.spawn(served)),
            Err(e) => tracing::debug!(%peer, port, error = %e, "gateway connection: cannot hand it to a worker"),
        }
    }
}

/// One accepted connection and what serves it.
struct Connection {
    peer: SocketAddr,
    protocol: Protocol,
    front: Arc<dyn HttpServe>,
    ctx: ListenerContext,
    routing: Option<GatewayRouting>,
}

impl Connection {
    /// What serves `client` by its port's protocol (without routing,
    /// HTTP), holding `slot`, its place in the listener's limit: an HTTP
    /// connection is the front's own future, with no layer around it
    /// that each poll goes through.
    fn start(self, client: TcpStream, slot: Option<Slot>) -> Served {
        let Connection { peer, protocol, front, ctx, routing } = self;
        let future: HttpFuture = match (protocol, routing) {
            (Protocol::Http, _) | (_, None) => front.serve(http_connection(ClientStream::Tcp(client), peer, &ctx)),
            (Protocol::Https, Some(routing)) => Box::pin(https(client, peer, front, ctx, routing)),
            (Protocol::TlsPassthrough, Some(routing)) => Box::pin(crate::l4::passthrough(client, peer, ctx, routing)),
            (Protocol::Tcp, Some(routing)) => Box::pin(crate::l4::tcp(client, peer, ctx, routing)),
        };
        Served { future, _slot: slot }
    }
}

/// A connection's future and its place in the listener's limit, given
/// back when the future is dropped (done or not).
struct Served {
    future: HttpFuture,
    _slot: Option<Slot>,
}

impl std::future::Future for Served {
    type Output = ();

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        self.future.as_mut().poll(cx)
    }
}

fn http_connection(client: ClientStream, peer: SocketAddr, ctx: &ListenerContext) -> HttpConnection {
    HttpConnection {
        client,
        peer,
        pool: ctx.pool.clone(),
        reach: Reach::direct(),
        connect_timeout: ctx.connect_timeout,
        upstream_mark: ctx.upstream_mark,
        drain: ctx.drain.clone(),
    }
}

/// An HTTPS connection: the TLS handshake (the certificate chosen by SNI
/// from the current compile), counted by how it ended, then the HTTP
/// front over the session.
async fn https(
    client: TcpStream,
    peer: SocketAddr,
    front: Arc<dyn HttpServe>,
    ctx: ListenerContext,
    routing: GatewayRouting,
) {
    let started = tokio::time::Instant::now();
    let port = ctx.pool.port;
    let handshake = async {
        // The ClientHello first: whether a listener has a certificate for
        // its name is known here (rustls' own error would not say).
        let hello = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), client).await?;
        let server_name = hello.client_hello().server_name().map(str::to_owned);
        let known = routing.routes.load().tls.get(&port).is_some_and(|c| c.choose(server_name.as_deref()).is_some());
        // (Without a certificate, rustls answers the handshake with an alert.)
        let session = hello.into_stream(routing.tls.clone()).await;
        Ok::<_, std::io::Error>((session, known, server_name))
    };
    let ended = tokio::select! {
        () = ctx.drain.cancelled() => return,
        ended = tokio::time::timeout(routing.handshake_timeout, handshake) => ended,
    };
    let metrics = routing.tls_metrics.get();
    let session = match ended {
        Ok(Ok((Ok(session), _, _))) => session,
        Ok(Ok((Err(e), known, server_name))) => {
            let result = if known { Handshake::of_error(&e) } else { Handshake::NoCertificate };
            tracing::debug!(%peer, port, ?server_name, result = result.as_str(), error = %e, "TLS handshake failed");
            return metrics.record(result, started.elapsed());
        }
        Ok(Err(e)) => {
            let result = Handshake::of_error(&e);
            tracing::debug!(%peer, port, result = result.as_str(), error = %e, "no TLS ClientHello");
            return metrics.record(result, started.elapsed());
        }
        Err(_) => {
            tracing::debug!(%peer, port, "TLS handshake not complete in time");
            return metrics.record(Handshake::Timeout, started.elapsed());
        }
    };
    metrics.record(Handshake::Ok, started.elapsed());
    // (With a server name, the session's own pseudo pool carries it.)
    let named = session.get_ref().1.server_name().map(|name| session_pool(&ctx.pool, name));
    let mut conn = http_connection(ClientStream::Tls(Box::new(session)), peer, &ctx);
    if let Some(pool) = named {
        conn.pool = pool;
    }
    front.serve(conn).await;
}
