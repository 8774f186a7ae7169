//! A fake Kubernetes API server for tests, speaking the list/watch wire
//! protocol to the real `kube` client on loopback.
//!
//! The real API server cannot run here, so this stands in for it, with the
//! behaviour a watch client must cope with:
//!
//! - `GET /api/v1/services` (and `endpoints`, `nodes`,
//!   `/apis/discovery.k8s.io/v1/endpointslices`): a list with
//!   `metadata.resourceVersion`;
//! - one object (`.../namespaces/<ns>/<plural>/<name>`, `/status` too),
//!   and a JSON merge patch of its `status` (`PATCH .../status`, refused
//!   with `409` when its `metadata.resourceVersion` is not the object's):
//!   how the gateway writes status;
//! - the same with `watch=true&resourceVersion=N`: a chunked HTTP/1.1 body of
//!   newline-separated JSON events (`ADDED`, `MODIFIED`, `DELETED`,
//!   `BOOKMARK`) after `N`, then live ones; an `ERROR` event with a `410`
//!   status when `N` is older than the retained history ([`FakeApiServer::compact`]);
//! - faults: dropped connections mid-stream, `503` for every request
//!   ([`FakeApiServer::set_unavailable`]), a server that is not listening at
//!   all ([`FakeApiServer::stop`] / [`FakeApiServer::restart`], or
//!   [`FakeApiServer::reserve`] to be down from the start), and an API
//!   without `discovery.k8s.io/v1` ([`FakeApiServer::without_endpoint_slices`]),
//!   and one without the DestinationRule CRD
//!   (`/apis/networking.istio.io/v1alpha3/destinationrules`,
//!   [`FakeApiServer::set_destination_rules`]).
//!
//! The server runs on its own thread and runtime, so both `#[tokio::test]`s
//! and plain threaded tests (driving the real binary) can use it; every
//! method is synchronous.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Body, Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc, watch};

/// A resource the fake serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    Services,
    EndpointSlices,
    Endpoints,
    Nodes,
    /// `v1` Secrets (the gateway's TLS certificates; the fake ignores the
    /// field selector and lists every Secret).
    Secrets,
    /// Istio's `networking.istio.io/v1alpha3` DestinationRules (a CRD:
    /// [`FakeApiServer::set_destination_rules`] takes it away).
    DestinationRules,
    /// The edge gateway's CRDs: the Gateway API's kinds at the versions
    /// the agent lists them (`gateway.networking.k8s.io`), and Istio's
    /// `Gateway` and `VirtualService` (`networking.istio.io/v1alpha3`).
    Gateways,
    HttpRoutes,
    GrpcRoutes,
    TlsRoutes,
    TcpRoutes,
    ReferenceGrants,
    IstioGateways,
    VirtualServices,
}

/// The routing resources: path, apiVersion and kind.
const ROUTING: [(Resource, &str, &str, &str); 8] = [
    (Resource::Gateways, "/apis/gateway.networking.k8s.io/v1/gateways", "gateway.networking.k8s.io/v1", "Gateway"),
    (
        Resource::HttpRoutes,
        "/apis/gateway.networking.k8s.io/v1/httproutes",
        "gateway.networking.k8s.io/v1",
        "HTTPRoute",
    ),
    (
        Resource::GrpcRoutes,
        "/apis/gateway.networking.k8s.io/v1/grpcroutes",
        "gateway.networking.k8s.io/v1",
        "GRPCRoute",
    ),
    (
        Resource::TlsRoutes,
        "/apis/gateway.networking.k8s.io/v1alpha2/tlsroutes",
        "gateway.networking.k8s.io/v1alpha2",
        "TLSRoute",
    ),
    (
        Resource::TcpRoutes,
        "/apis/gateway.networking.k8s.io/v1alpha2/tcproutes",
        "gateway.networking.k8s.io/v1alpha2",
        "TCPRoute",
    ),
    (
        Resource::ReferenceGrants,
        "/apis/gateway.networking.k8s.io/v1beta1/referencegrants",
        "gateway.networking.k8s.io/v1beta1",
        "ReferenceGrant",
    ),
    (Resource::IstioGateways, "/apis/networking.istio.io/v1alpha3/gateways", "networking.istio.io/v1alpha3", "Gateway"),
    (
        Resource::VirtualServices,
        "/apis/networking.istio.io/v1alpha3/virtualservices",
        "networking.istio.io/v1alpha3",
        "VirtualService",
    ),
];

impl Resource {
    fn of_path(path: &str) -> Option<Resource> {
        match path {
            "/api/v1/services" => Some(Resource::Services),
            "/api/v1/endpoints" => Some(Resource::Endpoints),
            "/api/v1/nodes" => Some(Resource::Nodes),
            "/api/v1/secrets" => Some(Resource::Secrets),
            "/apis/discovery.k8s.io/v1/endpointslices" => Some(Resource::EndpointSlices),
            "/apis/networking.istio.io/v1alpha3/destinationrules" => Some(Resource::DestinationRules),
            _ => ROUTING.iter().find(|(_, p, _, _)| *p == path).map(|(r, _, _, _)| *r),
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Resource::EndpointSlices => "discovery.k8s.io/v1",
            Resource::DestinationRules => "networking.istio.io/v1alpha3",
            Resource::Services | Resource::Endpoints | Resource::Nodes | Resource::Secrets => "v1",
            routing => ROUTING.iter().find(|(r, _, _, _)| *r == routing).map_or("v1", |(_, _, v, _)| v),
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Resource::Services => "Service",
            Resource::EndpointSlices => "EndpointSlice",
            Resource::Endpoints => "Endpoints",
            Resource::Nodes => "Node",
            Resource::Secrets => "Secret",
            Resource::DestinationRules => "DestinationRule",
            routing => ROUTING.iter().find(|(r, _, _, _)| *r == routing).map_or("", |(_, _, _, k)| k),
        }
    }
}

/// What live watches receive.
#[derive(Clone, Debug)]
enum Broadcast {
    /// One event line for watches of `resource`.
    Event { resource: Resource, line: Bytes },
    /// Every open connection is cut (mid-stream, without a final chunk).
    DropAll,
    /// Every watch ends cleanly after what it was sent, as when its
    /// `timeoutSeconds` expire; the client watches again from the last
    /// resourceVersion it saw (a bookmark's included).
    EndWatches,
}

#[derive(Default)]
struct Store {
    rv: u64,
    objects: BTreeMap<(Resource, String, String), Value>,
    /// (resourceVersion, resource, event line), oldest first.
    history: Vec<(u64, Resource, Bytes)>,
    /// Watches from before this version get `410 Gone`.
    oldest: u64,
}

struct Shared {
    store: Mutex<Store>,
    events: broadcast::Sender<Broadcast>,
    requests: AtomicUsize,
    log: Mutex<Vec<String>>,
    logged: std::sync::Condvar,
    unavailable: AtomicBool,
    slices: AtomicBool,
    rules: AtomicBool,
}

impl Shared {
    /// Counts a request and logs it (`request_log`, `wait_request`).
    fn record(&self, line: String) {
        self.requests.fetch_add(1, Ordering::SeqCst);
        self.log.lock().unwrap().push(line);
        self.logged.notify_all();
    }
}

/// A running (or stopped) fake API server on 127.0.0.1; see the crate docs.
pub struct FakeApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    /// Stops the accept loop (and its connections) of the current run.
    stop: Mutex<Option<watch::Sender<bool>>>,
    runtime: tokio::runtime::Handle,
    _thread: RuntimeThread,
}

/// The server's runtime thread; stopped on drop.
struct RuntimeThread {
    done: Option<std::sync::mpsc::Sender<()>>,
}

impl Drop for RuntimeThread {
    fn drop(&mut self) {
        self.done.take();
    }
}

impl FakeApiServer {
    /// Starts listening on a free port.
    pub fn start() -> FakeApiServer {
        let server = Self::reserve();
        server.restart();
        server
    }

    /// Picks a free port but does not listen yet: an API server that is down
    /// at start-up. [`FakeApiServer::restart`] brings it up.
    pub fn reserve() -> FakeApiServer {
        let addr = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port");
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("fake-apiserver".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
                handle_tx.send(rt.handle().clone()).expect("handle");
                // Runs until the server is dropped.
                rt.block_on(async move {
                    let _ = tokio::task::spawn_blocking(move || done_rx.recv()).await;
                });
            })
            .expect("spawn fake-apiserver thread");
        let runtime = handle_rx.recv().expect("runtime handle");
        let (events, _) = broadcast::channel(4096);
        let shared = Arc::new(Shared {
            store: Mutex::new(Store { rv: 100, ..Store::default() }),
            events,
            requests: AtomicUsize::new(0),
            log: Mutex::new(Vec::new()),
            logged: std::sync::Condvar::new(),
            unavailable: AtomicBool::new(false),
            slices: AtomicBool::new(true),
            rules: AtomicBool::new(true),
        });
        FakeApiServer { shared, addr, stop: Mutex::new(None), runtime, _thread: RuntimeThread { done: Some(done_tx) } }
    }

    /// `http://127.0.0.1:PORT`, for `--kube-api`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves 404 for EndpointSlices, like an API without `discovery.k8s.io/v1`.
    pub fn without_endpoint_slices(&self) {
        self.shared.slices.store(false, Ordering::SeqCst);
    }

    /// Without (`false`) or with (`true`, the default) the DestinationRule
    /// CRD: without it, its list and watch get `404`, as on a cluster
    /// where neither Istio nor EdgeMesh installed it.
    pub fn set_destination_rules(&self, served: bool) {
        self.shared.rules.store(served, Ordering::SeqCst);
    }

    /// Stops listening and cuts every connection: the API server is down.
    pub fn stop(&self) {
        if let Some(stop) = self.stop.lock().unwrap().take() {
            let _ = stop.send(true);
        }
        let _ = self.shared.events.send(Broadcast::DropAll);
    }

    /// Listens again on the same port (or for the first time).
    pub fn restart(&self) {
        self.stop();
        let (stop_tx, stop_rx) = watch::channel(false);
        let shared = self.shared.clone();
        let addr = self.addr;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        self.runtime.spawn(async move {
            let listener = loop {
                // The old listener may take a moment to close.
                match tokio::net::TcpListener::bind(addr).await {
                    Ok(l) => break l,
                    Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
                }
            };
            let _ = ready_tx.send(());
            accept_loop(listener, shared, stop_rx).await;
        });
        ready_rx.recv().expect("fake API server listening");
        *self.stop.lock().unwrap() = Some(stop_tx);
    }

    /// Cuts every open connection mid-stream (watches see a broken body).
    pub fn drop_connections(&self) {
        let _ = self.shared.events.send(Broadcast::DropAll);
    }

    /// Ends every watch cleanly (see `Broadcast::EndWatches`).
    pub fn end_watches(&self) {
        let _ = self.shared.events.send(Broadcast::EndWatches);
    }

    /// While set, every request is answered `503 Service Unavailable`.
    pub fn set_unavailable(&self, unavailable: bool) {
        self.shared.unavailable.store(unavailable, Ordering::SeqCst);
    }

    /// Forgets the event history: a watch from an older resourceVersion gets
    /// `410 Gone` and the client must list again.
    pub fn compact(&self) {
        let mut store = self.shared.store.lock().unwrap();
        store.history.clear();
        store.oldest = store.rv;
    }

    /// Sends a `BOOKMARK` with the current resourceVersion to every watch.
    pub fn bookmark(&self) {
        let store = self.shared.store.lock().unwrap();
        let core = [
            Resource::Services,
            Resource::EndpointSlices,
            Resource::Endpoints,
            Resource::Nodes,
            Resource::DestinationRules,
        ];
        for r in core.into_iter().chain(ROUTING.iter().map(|(r, _, _, _)| *r)) {
            let line = event_line(
                "BOOKMARK",
                &json!({"apiVersion": r.api_version(), "kind": r.kind(), "metadata": {"resourceVersion": store.rv.to_string()}}),
            );
            let _ = self.shared.events.send(Broadcast::Event { resource: r, line });
        }
    }

    /// Creates or replaces an object (namespace and name from its metadata)
    /// and tells the watches; returns its new resourceVersion.
    pub fn apply(&self, resource: Resource, mut object: Value) -> u64 {
        let mut store = self.shared.store.lock().unwrap();
        store.rv += 1;
        let rv = store.rv;
        object["apiVersion"] = json!(resource.api_version());
        object["kind"] = json!(resource.kind());
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let ns = object["metadata"]["namespace"].as_str().unwrap_or_default().to_owned();
        let name = object["metadata"]["name"].as_str().expect("metadata.name").to_owned();
        let kind = if store.objects.contains_key(&(resource, ns.clone(), name.clone())) { "MODIFIED" } else { "ADDED" };
        let line = event_line(kind, &object);
        store.objects.insert((resource, ns, name), object);
        self.record(&mut store, rv, resource, line);
        rv
    }

    /// Deletes an object; returns whether it existed.
    pub fn delete(&self, resource: Resource, namespace: &str, name: &str) -> bool {
        let mut store = self.shared.store.lock().unwrap();
        let Some(mut object) = store.objects.remove(&(resource, namespace.to_owned(), name.to_owned())) else {
            return false;
        };
        store.rv += 1;
        let rv = store.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let line = event_line("DELETED", &object);
        self.record(&mut store, rv, resource, line);
        true
    }

    fn record(&self, store: &mut Store, rv: u64, resource: Resource, line: Bytes) {
        store.history.push((rv, resource, line.clone()));
        let _ = self.shared.events.send(Broadcast::Event { resource, line });
    }

    /// The object as stored now (with what status writes made of it).
    pub fn object(&self, resource: Resource, namespace: &str, name: &str) -> Option<Value> {
        self.shared.store.lock().unwrap().objects.get(&(resource, namespace.to_owned(), name.to_owned())).cloned()
    }

    /// Requests received so far (including refused ones).
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Every request so far as `path?query`, oldest first.
    pub fn request_log(&self) -> Vec<String> {
        self.shared.log.lock().unwrap().clone()
    }

    /// Waits until a request after the first `after` ones matches `pred`;
    /// returns it, or `None` after `timeout`.
    pub fn wait_request(
        &self,
        after: usize,
        timeout: std::time::Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Option<String> {
        let deadline = std::time::Instant::now() + timeout;
        let mut log = self.shared.log.lock().unwrap();
        loop {
            if let Some(r) = log.iter().skip(after).find(|r| pred(r)) {
                return Some(r.clone());
            }
            let left = deadline.checked_duration_since(std::time::Instant::now())?;
            log = self.shared.logged.wait_timeout(log, left).unwrap().0;
        }
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).expect("JSON");
    line.push(b'\n');
    Bytes::from(line)
}

async fn accept_loop(listener: tokio::net::TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    loop {
        let stream = tokio::select! {
            _ = stop.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
        };
        let shared = shared.clone();
        let mut stop = stop.clone();
        let mut drops = shared.events.subscribe();
        tokio::spawn(async move {
            let svc = service_fn({
                let shared = shared.clone();
                move |req| {
                    let shared = shared.clone();
                    async move { Ok::<_, Infallible>(handle(&shared, req).await) }
                }
            });
            let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
            let dropped = async {
                loop {
                    match drops.recv().await {
                        Ok(Broadcast::DropAll) | Err(broadcast::error::RecvError::Closed) => return,
                        _ => {}
                    }
                }
            };
            tokio::select! {
                _ = conn => {}
                _ = stop.changed() => {}
                _ = dropped => {}
            }
        });
    }
}

type Resp = Response<BoxBody<Bytes, std::io::Error>>;

/// One object's path (`.../namespaces/<ns>/<plural>/<name>[/status]`) in
/// a served collection: the resource, namespace and name.
fn object_path(path: &str) -> Option<(Resource, String, String)> {
    let path = path.strip_suffix("/status").unwrap_or(path);
    let (prefix, rest) = path.split_once("/namespaces/")?;
    let mut parts = rest.split('/');
    let (namespace, plural, name) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let resource = Resource::of_path(&format!("{prefix}/{plural}"))?;
    Some((resource, namespace.to_owned(), name.to_owned()))
}

/// GET of one object, and PATCH (a JSON merge patch) of its `status`
/// subresource, as the gateway writes status; every other request goes to
/// [`route`].
async fn handle(shared: &Arc<Shared>, req: Request<Incoming>) -> Resp {
    let Some((resource, namespace, name)) = object_path(req.uri().path()) else { return route(shared, req) };
    let key = (resource, namespace, name);
    if req.method() == hyper::Method::GET {
        shared.record(req.uri().to_string());
        let store = shared.store.lock().unwrap();
        return match store.objects.get(&key) {
            Some(object) => json_response(StatusCode::OK, object),
            None => status(StatusCode::NOT_FOUND, "NotFound", &format!("{} {:?} not found", resource.kind(), key.2)),
        };
    }
    if req.method() != hyper::Method::PATCH || !req.uri().path().ends_with("/status") {
        return status(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", "the fake serves GET and PATCH of status");
    }
    shared.record(format!("PATCH {}", req.uri()));
    let Ok(body) = req.into_body().collect().await else {
        return status(StatusCode::BAD_REQUEST, "BadRequest", "cannot read the body");
    };
    let Ok(patch) = serde_json::from_slice::<Value>(&body.to_bytes()) else {
        return status(StatusCode::BAD_REQUEST, "BadRequest", "the body is not JSON");
    };
    let mut store = shared.store.lock().unwrap();
    let rv = store.rv + 1;
    let Some(object) = store.objects.get_mut(&key) else {
        return status(StatusCode::NOT_FOUND, "NotFound", &format!("{} {:?} not found", resource.kind(), key.2));
    };
    if let Some(expected) = patch["metadata"]["resourceVersion"].as_str()
        && object["metadata"]["resourceVersion"].as_str() != Some(expected)
    {
        return status(
            StatusCode::CONFLICT,
            "Conflict",
            "the object has been modified; please apply your changes to the latest version",
        );
    }
    merge_patch(&mut object["status"], &patch["status"]);
    object["metadata"]["resourceVersion"] = json!(rv.to_string());
    let (object, line) = (object.clone(), event_line("MODIFIED", object));
    store.rv = rv;
    store.history.push((rv, resource, line.clone()));
    let _ = shared.events.send(Broadcast::Event { resource, line });
    json_response(StatusCode::OK, &object)
}

/// RFC 7386: `patch`'s members replace `target`'s, `null` removes one,
/// objects merge member by member.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(members) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let target = target.as_object_mut().expect("an object");
    for (name, value) in members {
        if value.is_null() {
            target.remove(name);
        } else {
            merge_patch(target.entry(name.clone()).or_insert(Value::Null), value);
        }
    }
}

fn route(shared: &Arc<Shared>, req: Request<Incoming>) -> Resp {
    let path = req.uri().path().to_owned();
    let query: BTreeMap<String, String> = req
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    shared.record(req.uri().to_string());
    if shared.unavailable.load(Ordering::SeqCst) {
        return status(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", "the server is unavailable");
    }
    let Some(resource) = Resource::of_path(&path) else {
        return status(StatusCode::NOT_FOUND, "NotFound", &format!("the server could not find {path}"));
    };
    if (resource == Resource::EndpointSlices && !shared.slices.load(Ordering::SeqCst))
        || (resource == Resource::DestinationRules && !shared.rules.load(Ordering::SeqCst))
    {
        return status(StatusCode::NOT_FOUND, "NotFound", "the server could not find the requested resource");
    }
    let watching = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    if !watching {
        return list(shared, resource);
    }
    let from: u64 = query.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
    watch_response(shared, resource, from)
}

fn list(shared: &Shared, resource: Resource) -> Resp {
    let store = shared.store.lock().unwrap();
    let items: Vec<&Value> = store.objects.iter().filter(|((r, _, _), _)| *r == resource).map(|(_, v)| v).collect();
    let body = json!({
        "apiVersion": resource.api_version(),
        "kind": format!("{}List", resource.kind()),
        "metadata": {"resourceVersion": store.rv.to_string()},
        "items": items,
    });
    json_response(StatusCode::OK, &body)
}

fn watch_response(shared: &Shared, resource: Resource, from: u64) -> Resp {
    let (tx, rx) = mpsc::unbounded_channel::<Result<Bytes, std::io::Error>>();
    {
        // Subscribe under the lock so no event falls between backlog and live.
        let store = shared.store.lock().unwrap();
        if from < store.oldest {
            let gone = json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": format!("too old resource version: {from} ({})", store.oldest),
                "reason": "Expired", "code": 410,
            });
            let _ = tx.send(Ok(event_line("ERROR", &gone)));
            drop(tx);
        } else {
            for (_, _, line) in store.history.iter().filter(|(rv, r, _)| *rv > from && *r == resource) {
                let _ = tx.send(Ok(line.clone()));
            }
            let mut live = shared.events.subscribe();
            tokio::spawn(async move {
                loop {
                    let item = tokio::select! {
                        item = live.recv() => item,
                        () = tx.closed() => return,
                    };
                    match item {
                        Ok(Broadcast::Event { resource: r, line }) if r == resource => {
                            if tx.send(Ok(line)).is_err() {
                                return;
                            }
                        }
                        Ok(Broadcast::Event { .. }) => {}
                        Ok(Broadcast::EndWatches) => return,
                        Ok(Broadcast::DropAll) | Err(_) => {
                            let _ = tx.send(Err(std::io::Error::other("connection dropped by the fake API server")));
                            return;
                        }
                    }
                }
            });
        }
    }
    let mut resp = Response::new(BoxBody::new(ChannelBody(rx)));
    resp.headers_mut().insert("content-type", "application/json".parse().expect("header"));
    resp
}

/// A streamed body fed by a channel; an `Err` item aborts the connection.
struct ChannelBody(mpsc::UnboundedReceiver<Result<Bytes, std::io::Error>>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|item| item.map(|r| r.map(Frame::data)))
    }
}

fn status(code: StatusCode, reason: &str, message: &str) -> Resp {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16(),
    });
    json_response(code, &body)
}

fn json_response(code: StatusCode, body: &Value) -> Resp {
    let bytes = Bytes::from(serde_json::to_vec(body).expect("JSON"));
    let mut resp = Response::new(Full::new(bytes).map_err(|never| match never {}).boxed());
    *resp.status_mut() = code;
    resp.headers_mut().insert("content-type", "application/json".parse().expect("header"));
    resp
}
