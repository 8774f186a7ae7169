//! A gateway listener served for real: a TCP listener on loopback, the
//! agent's HTTP front and dispatcher, real HTTP/1.1 backends, and HTTP
//! requests written by hand on real sockets. Each request is routed on its
//! own (many on one keep-alive connection land as their rules say), with
//! weights, filters, redirects, timeouts, and the gateway's own answers
//! (404, 500, 503) as responses.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use edgemesh_core::{Backend, LbStrategy, ServiceKey};
use edgemesh_gateway::backend::ServiceRef;
use edgemesh_gateway::serve::{ListenerContext, listener_pool, serve_listener};
use edgemesh_gateway::{Compiled, GatewayUpstream, ObjectRef, ServicePools};
use edgemesh_http::{Dispatcher, HttpConfig, HttpProxy};
use edgemesh_metrics::Registry;
use edgemesh_proxy::Reach;
use edgemesh_proxy::pool::{Pool, Targets};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

mod support;

/// The listener port the Gateway names (the test binds any free port).
const LISTENER_PORT: u16 = 8000;

/// An HTTP/1.1 backend answering `<name> <path?query> env=<x-env>`,
/// after `delay`, with the header `x-backend: <name>`.
async fn backend(name: &'static str, delay: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let service = service_fn(move |req: Request<Incoming>| async move {
                tokio::time::sleep(delay).await;
                let env = req.headers().get("x-env").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
                let host = req.headers().get("host").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
                let target = req.uri().path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default();
                let body = format!("{name} {target} env={env} host={host}");
                let response =
                    Response::builder().header("x-backend", name).body(Full::new(Bytes::from(body))).unwrap();
                Ok::<_, Infallible>(response)
            });
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service));
        }
    });
    addr
}

/// Pools of Service ports, each with one endpoint.
struct StaticPools(BTreeMap<ServiceRef, Arc<Pool>>);

impl ServicePools for StaticPools {
    fn pool(&self, service: &ServiceRef) -> Option<(Arc<Pool>, Reach)> {
        self.0.get(service).map(|p| (p.clone(), Reach::direct()))
    }
}

fn pool(namespace: &str, name: &str, port: u16, endpoint: SocketAddr) -> (ServiceRef, Arc<Pool>) {
    let targets = Targets::new(LbStrategy::RoundRobin, Arc::from(vec![Backend { addr: endpoint, node_name: None }]));
    let frontend = SocketAddr::from(([127, 0, 0, 1], port));
    let service = ServiceRef { namespace: namespace.into(), name: name.into(), port };
    (service, Arc::new(Pool::new(ServiceKey::new(namespace, name), frontend, targets)))
}

const OBJECTS: &str = r#"
kind: Gateway
metadata: {name: edge, namespace: shop}
spec:
  gatewayClassName: edgemesh
  listeners: [{name: web, port: 8000, protocol: HTTP}]
---
kind: HTTPRoute
metadata: {name: shop, namespace: shop}
spec:
  parentRefs: [{name: edge}]
  hostnames: [shop.example.com]
  rules:
  - backendRefs: [{name: web, port: 80, weight: 3}, {name: canary, port: 80, weight: 1}]
  - matches: [{path: {type: PathPrefix, value: /api}}]
    filters:
    - {type: URLRewrite, urlRewrite: {hostname: api.internal, path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}}
    - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-env, value: prod}]}}
    - {type: ResponseHeaderModifier, responseHeaderModifier: {add: [{name: x-served-by, value: edge}], remove: [x-backend]}}
    backendRefs: [{name: api, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /old}}]
    filters: [{type: RequestRedirect, requestRedirect: {scheme: https, statusCode: 301}}]
  - matches: [{path: {type: Exact, value: /slow}}]
    timeouts: {request: 300ms}
    backendRefs: [{name: slow, port: 80}]
  - matches: [{path: {type: Exact, value: /missing}}]
    backendRefs: [{name: missing, port: 80}]
  - matches: [{path: {type: Exact, value: /unserved}}]
    backendRefs: [{name: unserved, port: 80}]
"#;

/// A running gateway listener; its address.
async fn gateway() -> SocketAddr {
    let compiled = support::load(
        OBJECTS,
        &[("shop/web", 80), ("shop/canary", 80), ("shop/api", 8080), ("shop/slow", 80), ("shop/unserved", 80)],
    );
    let pools = StaticPools(BTreeMap::from([
        pool("shop", "web", 80, backend("web", Duration::ZERO).await),
        pool("shop", "canary", 80, backend("canary", Duration::ZERO).await),
        pool("shop", "api", 8080, backend("api", Duration::ZERO).await),
        pool("shop", "slow", 80, backend("slow", Duration::from_secs(5)).await),
    ]));
    serve(compiled, Arc::new(pools)).await
}

/// A gateway listener serving `compiled` with `pools`; its address.
async fn serve(compiled: Compiled, pools: Arc<dyn ServicePools>) -> SocketAddr {
    let mut registry = Registry::default();
    let dispatcher = Dispatcher::new(&HttpConfig::default(), &mut registry);
    let routes = Arc::new(ArcSwap::from_pointee(compiled));
    let upstream = GatewayUpstream::new(routes, pools, Arc::new(dispatcher), "http");
    let front = HttpProxy::new(Arc::new(upstream), HttpConfig::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let gateway = ObjectRef { kind: "Gateway", namespace: "shop".into(), name: "edge".into() };
    let ctx = ListenerContext {
        pool: listener_pool(&gateway, addr.ip(), LISTENER_PORT),
        connect_timeout: Duration::from_secs(1),
        upstream_mark: None,
        drain: CancellationToken::new(),
        workers: &[],
    };
    tokio::spawn(serve_listener(listener, Arc::new(front), ctx));
    addr
}

/// One response, read off a keep-alive connection.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// GET `target` with `Host: host` on `conn` (kept alive); the response,
/// whose body must have a Content-Length.
async fn get(conn: &mut TcpStream, host: &str, target: &str) -> Reply {
    let request = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nx-env: dev\r\n\r\n");
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = conn.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the gateway closed the connection: {}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
    let mut lines = head.lines();
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize =
        headers.iter().find(|(n, _)| n == "content-length").expect("a Content-Length").1.parse().unwrap();
    while buf.len() < head_end + length {
        let mut chunk = [0u8; 4096];
        let n = conn.read(&mut chunk).await.unwrap();
        assert!(n > 0);
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8(buf[head_end..head_end + length].to_vec()).unwrap();
    Reply { status, headers, body }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_on_one_connection_is_routed_weighted_and_filtered_on_its_own() {
    let addr = gateway().await;
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let host = "shop.example.com";

    // Eight requests on one keep-alive connection: 3:1 by weight.
    let mut landed = BTreeMap::new();
    for _ in 0..8 {
        let reply = get(&mut conn, host, "/").await;
        assert_eq!(reply.status, 200, "{reply:?}");
        *landed.entry(reply.body.split(' ').next().unwrap().to_owned()).or_insert(0) += 1;
    }
    assert_eq!(landed, BTreeMap::from([("canary".to_owned(), 2), ("web".to_owned(), 6)]));

    // Rewrite (prefix and host), request header set, response headers edited.
    let reply = get(&mut conn, "Shop.Example.com:8000", "/api/items?page=2").await;
    assert_eq!(reply.body, "api /v2/items?page=2 env=prod host=api.internal", "{reply:?}");
    assert_eq!(reply.header("x-served-by"), Some("edge"));
    assert_eq!(reply.header("x-backend"), None, "removed");

    // The gateway's own answers, on the same connection.
    let reply = get(&mut conn, host, "/old/page?x=1").await;
    assert_eq!((reply.status, reply.header("location")), (301, Some("https://shop.example.com/old/page?x=1")));
    let reply = get(&mut conn, "other.example.com", "/").await;
    assert_eq!(reply.status, 404, "no route for the host: {reply:?}");
    assert!(reply.body.contains("no route for other.example.com/"), "{reply:?}");
    let reply = get(&mut conn, host, "/missing").await;
    assert_eq!(reply.status, 500, "an unresolved backendRef: {reply:?}");
    assert!(reply.body.contains("Service shop/missing:80: no such Service"), "{reply:?}");
    let reply = get(&mut conn, host, "/unserved").await;
    assert_eq!(reply.status, 503, "a Service this agent has no pool for: {reply:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rules_request_timeout_answers_504_and_the_connection_goes_on() {
    let addr = gateway().await;
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let started = std::time::Instant::now();
    let reply = get(&mut conn, "shop.example.com", "/slow").await;
    assert_eq!(reply.status, 504, "{reply:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "the rule's 300ms, not the backend's 5s");
    let reply = get(&mut conn, "shop.example.com", "/").await;
    assert_eq!(reply.status, 200);
}

/// A loopback address of this test process's own (all of 127/8 is local),
/// so that fixed listener ports do not meet another test's.
fn own_loopback() -> std::net::IpAddr {
    let pid = std::process::id();
    std::net::IpAddr::from([127, 100 + (pid % 100) as u8, ((pid / 100) % 250) as u8, 7])
}

fn objects(port: u16, backend: &str) -> String {
    format!(
        "kind: Gateway\nmetadata: {{name: edge, namespace: shop}}\nspec:\n  gatewayClassName: edgemesh\n  \
         listeners: [{{name: web, port: {port}, protocol: HTTP}}]\n---\n\
         kind: HTTPRoute\nmetadata: {{name: shop, namespace: shop}}\n\
         spec: {{parentRefs: [{{name: edge}}], rules: [{{backendRefs: [{{name: {backend}, port: 80}}]}}]}}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_follow_the_objects_without_rebinding_ports_that_stay() {
    use edgemesh_gateway::listeners::{GatewayListeners, ListenerSettings};
    let services = [("shop/web", 80), ("shop/canary", 80)];
    let pools = StaticPools(BTreeMap::from([
        pool("shop", "web", 80, backend("web", Duration::ZERO).await),
        pool("shop", "canary", 80, backend("canary", Duration::ZERO).await),
    ]));
    let mut registry = Registry::default();
    let dispatcher = Dispatcher::new(&HttpConfig::default(), &mut registry);
    let routes = Arc::new(ArcSwap::from_pointee(support::load(&objects(18080, "web"), &services)));
    let upstream = GatewayUpstream::new(routes.clone(), Arc::new(pools), Arc::new(dispatcher), "http");
    let front = Arc::new(HttpProxy::new(Arc::new(upstream), HttpConfig::default()));
    let ip = own_loopback();
    let settings = ListenerSettings { ip, connect_timeout: Duration::from_secs(1), upstream_mark: None, workers: 2 };
    let mut listeners = GatewayListeners::new(settings, front);

    assert!(listeners.reconcile(routes.load().ports.clone()).await.is_empty());
    let first = SocketAddr::new(ip, 18080);
    assert_eq!(listeners.bound(), BTreeMap::from([(18080, first)]));
    let mut conn = TcpStream::connect(first).await.unwrap();
    assert!(get(&mut conn, "x", "/").await.body.starts_with("web "));

    // The route changes: the same connection's next request follows it.
    routes.store(Arc::new(support::load(&objects(18080, "canary"), &services)));
    assert!(listeners.reconcile(routes.load().ports.clone()).await.is_empty());
    assert!(get(&mut conn, "x", "/").await.body.starts_with("canary "), "no rebind, no reconnect");

    // The listener moves to another port: the old one stops accepting.
    routes.store(Arc::new(support::load(&objects(18081, "web"), &services)));
    assert!(listeners.reconcile(routes.load().ports.clone()).await.is_empty());
    assert!(TcpStream::connect(first).await.is_err(), "the old port is closed");
    let mut conn = TcpStream::connect(SocketAddr::new(ip, 18081)).await.unwrap();
    assert!(get(&mut conn, "x", "/").await.body.starts_with("web "));

    // A port someone else holds is reported, and bound once it is free.
    let squatter = std::net::TcpListener::bind(SocketAddr::new(ip, 18082)).unwrap();
    routes.store(Arc::new(support::load(&objects(18082, "web"), &services)));
    let failed = listeners.reconcile(routes.load().ports.clone()).await;
    assert!(failed[&18082].contains("in use"), "{failed:?}");
    drop(squatter);
    assert!(listeners.reconcile(routes.load().ports.clone()).await.is_empty());
    let mut conn = TcpStream::connect(SocketAddr::new(ip, 18082)).await.unwrap();
    assert!(get(&mut conn, "x", "/").await.body.starts_with("web "));
}

/// Pools that change under the gateway, with a generation (as the agent's
/// pool index has) and a count of lookups by name.
#[derive(Default)]
struct ChangingPools {
    pools: std::sync::RwLock<BTreeMap<ServiceRef, Arc<Pool>>>,
    generation: std::sync::atomic::AtomicU64,
    lookups: std::sync::atomic::AtomicUsize,
}

impl ChangingPools {
    fn set(&self, (service, pool): (ServiceRef, Arc<Pool>)) {
        self.pools.write().unwrap().insert(service, pool);
        self.generation.fetch_add(1, std::sync::atomic::Ordering::Release);
    }

    fn lookups(&self) -> usize {
        self.lookups.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl ServicePools for ChangingPools {
    fn pool(&self, service: &ServiceRef) -> Option<(Arc<Pool>, Reach)> {
        self.lookups.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.pools.read().unwrap().get(service).map(|p| (p.clone(), Reach::direct()))
    }

    fn generation(&self) -> Option<u64> {
        Some(self.generation.load(std::sync::atomic::Ordering::Acquire))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routes_backend_keeps_its_pool_until_the_pools_change() {
    let pools = Arc::new(ChangingPools::default());
    let addr = serve(support::load(&objects(LISTENER_PORT, "web"), &[("shop/web", 80)]), pools.clone()).await;
    let mut conn = TcpStream::connect(addr).await.unwrap();

    // The Service is routed before this agent has its pool (the proxy has
    // not reconciled it yet): 503, and nothing is kept.
    assert_eq!(get(&mut conn, "x", "/").await.status, 503);
    assert_eq!(get(&mut conn, "x", "/").await.status, 503);
    assert_eq!(pools.lookups(), 2);

    // Its pool appears: served, looked up once for many requests.
    pools.set(pool("shop", "web", 80, backend("web", Duration::ZERO).await));
    for _ in 0..5 {
        assert!(get(&mut conn, "x", "/").await.body.starts_with("web "));
    }
    assert_eq!(pools.lookups(), 3, "one lookup by name while the pools stay the same");

    // The pool is replaced (the Service's port moved to another
    // endpoint's pool): the next request follows it.
    pools.set(pool("shop", "web", 80, backend("web2", Duration::ZERO).await));
    assert!(get(&mut conn, "x", "/").await.body.starts_with("web2 "));
    assert!(get(&mut conn, "x", "/").await.body.starts_with("web2 "));
    assert_eq!(pools.lookups(), 4);
}
