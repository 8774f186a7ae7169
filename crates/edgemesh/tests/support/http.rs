//! HTTP services for the HTTP end-to-end tests (`http_e2e.rs`): a node
//! namespace running the agent, a pod namespace holding the endpoints
//! (real hyper HTTP/1.1 + HTTP/2 servers, WebSocket echo, tonic gRPC echo
//! servers), and clients run from the node (curl, hyper's HTTP/2 client,
//! a tokio-tungstenite WebSocket client, the tonic client).
//!
//! ```text
//!  node ns: agent (VIPs 127.251.x.y), clients    pod ns: endpoints
//!  10.244.1.1 ─────────────── veth ─────────────── 10.244.1.2 .. 10.244.1.5 (eth0)
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::eventually;
use super::netns::{Netns, NsAgent, in_netns, link};
use super::write_manifest;

/// The pod namespace's endpoint addresses.
pub const PODS: [&str; 4] = ["10.244.1.2", "10.244.1.3", "10.244.1.4", "10.244.1.5"];

/// What an endpoint does with a request.
#[derive(Clone, Copy, Debug)]
pub enum Behaviour {
    /// Answers `200` with its name (and `\n`) after `delay`.
    Answer { delay: Duration },
    /// Reads the whole request body, then resets the connection without
    /// an answer (a crash after the request arrived).
    ResetAfterBody,
}

/// Answers at once.
pub const ANSWER: Behaviour = Behaviour::Answer { delay: Duration::ZERO };

/// A real HTTP endpoint (hyper, HTTP/1.1 and HTTP/2 cleartext, upgrades
/// to a WebSocket echo) inside a namespace; stopped on drop, its listener
/// and every connection closed, as a killed pod's would be.
pub struct HttpBackend {
    pub name: String,
    requests: Arc<AtomicU32>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Endpoint {
    name: String,
    behaviour: Behaviour,
    requests: Arc<AtomicU32>,
}

impl HttpBackend {
    /// Serves on `addr` (e.g. `10.244.1.2:8080`) inside `ns` as `name`.
    pub fn start(ns: &Netns, addr: &str, name: &str, behaviour: Behaviour) -> HttpBackend {
        let listener = {
            let addr = addr.to_owned();
            in_netns(&ns.name, move || std::net::TcpListener::bind(&addr).expect("bind the HTTP endpoint"))
        };
        listener.set_nonblocking(true).unwrap();
        let requests = Arc::new(AtomicU32::new(0));
        let endpoint = Arc::new(Endpoint { name: name.to_owned(), behaviour, requests: requests.clone() });
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let serve = async {
                    loop {
                        let Ok((conn, _)) = listener.accept().await else { continue };
                        if matches!(endpoint.behaviour, Behaviour::ResetAfterBody) {
                            // Closing then sends a reset, not a FIN.
                            let _ = conn.set_zero_linger();
                        }
                        let endpoint = endpoint.clone();
                        let service = hyper::service::service_fn(move |req| handle(endpoint.clone(), req));
                        tokio::spawn(async move {
                            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                                .serve_connection_with_upgrades(TokioIo::new(conn), service)
                                .await;
                        });
                    }
                };
                tokio::select! {
                    () = serve => {}
                    _ = stopped => {}
                }
            });
        });
        HttpBackend { name: name.to_owned(), requests, stop: Some(stop), thread: Some(thread) }
    }

    /// Requests this endpoint received (answered or not).
    pub fn requests(&self) -> u32 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Its request counter, readable after the endpoint is gone.
    pub fn counter(&self) -> Arc<AtomicU32> {
        self.requests.clone()
    }
}

impl Drop for HttpBackend {
    fn drop(&mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
        let _ = self.thread.take().map(std::thread::JoinHandle::join);
    }
}

async fn handle(endpoint: Arc<Endpoint>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, std::io::Error> {
    endpoint.requests.fetch_add(1, Ordering::Relaxed);
    if let Some(key) = req.headers().get("sec-websocket-key").cloned() {
        return Ok(websocket_echo(req, key.as_bytes()));
    }
    let forwarded_for = req.headers().get("x-forwarded-for").cloned();
    let _ = req.into_body().collect().await;
    match endpoint.behaviour {
        Behaviour::ResetAfterBody => Err(std::io::Error::other("reset after the request body")),
        Behaviour::Answer { delay } => {
            tokio::time::sleep(delay).await;
            let mut response = Response::new(Full::new(Bytes::from(format!("{}\n", endpoint.name))));
            if let Some(v) = forwarded_for {
                response.headers_mut().insert("x-seen-forwarded-for", v);
            }
            Ok(response)
        }
    }
}

/// Answers a WebSocket handshake with `101`, then echoes every text and
/// binary message on the upgraded connection.
fn websocket_echo(req: Request<Incoming>, key: &[u8]) -> Response<Full<Bytes>> {
    let accept = derive_accept_key(key);
    tokio::spawn(async move {
        let Ok(upgraded) = hyper::upgrade::on(req).await else { return };
        let mut ws =
            tokio_tungstenite::WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(message)) = ws.next().await {
            if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err() {
                return;
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", accept)
        .body(Full::default())
        .unwrap()
}

/// A tonic gRPC echo server on `addr` inside `ns` (see `edgemesh-grpc-echo`).
pub fn grpc_backend(ns: &Netns, addr: &str, name: &str) -> edgemesh_grpc_echo::Server {
    let addr = addr.to_owned();
    let listener = in_netns(&ns.name, move || std::net::TcpListener::bind(&addr).expect("bind the gRPC endpoint"));
    edgemesh_grpc_echo::Server::start(listener, name)
}

/// The node (agent, clients) and the pod namespace (endpoints at [`PODS`]).
pub struct HttpNode {
    pub node: Netns,
    pub pod: Netns,
    dir: tempfile::TempDir,
}

impl HttpNode {
    pub fn new() -> HttpNode {
        let (node, pod) = (Netns::new("hnode"), Netns::new("hpod"));
        link(&node, "eth-pod", &pod, "eth0");
        node.addr("eth-pod", "10.244.1.1/24");
        for address in PODS {
            pod.addr("eth0", &format!("{address}/24"));
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("manifests")).unwrap();
        HttpNode { node, pod, dir }
    }

    /// Writes the manifests the agent serves.
    pub fn manifests(&self, objects: &[String]) {
        write_manifest(&self.dir.path().join("manifests"), "cluster.yaml", &objects.join("---\n"));
    }

    /// The agent on the node, with `config` as its config file (YAML; may
    /// be empty) and `extra` flags.
    pub fn start(&self, config: &str, extra: &[&str]) -> NsAgent {
        let file = self.dir.path().join("config.yaml");
        std::fs::write(&file, config).unwrap();
        let (manifests, state) = (self.dir.path().join("manifests"), self.dir.path().join("state"));
        let mut args = vec!["--config", file.to_str().unwrap(), "--node-name", "test-node"];
        args.extend(["--dns-upstream", "127.0.0.1:9"]);
        args.extend(["--manifest-dir", manifests.to_str().unwrap(), "--state-dir", state.to_str().unwrap()]);
        args.extend_from_slice(extra);
        NsAgent::start(&self.node, &args, Duration::from_secs(20))
    }
}

/// A Service with one TCP port and an EndpointSlice with one endpoint per
/// address (`spec(...).yaml()`).
pub struct ServiceSpec<'a> {
    name: &'a str,
    port_name: &'a str,
    port: u16,
    target: u16,
    endpoints: &'a [&'a str],
    app_protocol: Option<&'a str>,
    annotations: &'a [&'a str],
    node: &'a str,
}

/// Service `name`, port `port_name` on `port`, endpoints at `endpoints`
/// port `target` on node `test-node`, no `appProtocol`, no annotations.
pub fn spec<'a>(
    name: &'a str,
    port_name: &'a str,
    port: u16,
    endpoints: &'a [&'a str],
    target: u16,
) -> ServiceSpec<'a> {
    ServiceSpec { name, port_name, port, target, endpoints, app_protocol: None, annotations: &[], node: "test-node" }
}

impl<'a> ServiceSpec<'a> {
    pub fn app_protocol(mut self, app_protocol: &'a str) -> Self {
        self.app_protocol = Some(app_protocol);
        self
    }

    /// `key: value` lines.
    pub fn annotations(mut self, annotations: &'a [&'a str]) -> Self {
        self.annotations = annotations;
        self
    }

    /// The node the endpoints run on.
    pub fn node(mut self, node: &'a str) -> Self {
        self.node = node;
        self
    }

    pub fn yaml(&self) -> String {
        let ServiceSpec { name, port_name, port, target, node, .. } = self;
        let annotations: String = self.annotations.iter().map(|a| format!("    {a}\n")).collect();
        let annotations = if annotations.is_empty() { String::new() } else { format!("  annotations:\n{annotations}") };
        let app_protocol = self.app_protocol.map(|a| format!("    appProtocol: {a}\n")).unwrap_or_default();
        let endpoints: String =
            self.endpoints.iter().map(|a| format!("- addresses: [\"{a}\"]\n  nodeName: {node}\n")).collect();
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\n{annotations}spec:\n  \
             ports:\n  - name: {port_name}\n    port: {port}\n    targetPort: {target}\n{app_protocol}\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  \
             namespace: default\n  labels:\n    kubernetes.io/service-name: {name}\naddressType: IPv4\nports:\n\
             - name: {port_name}\n  port: {target}\nendpoints:\n{endpoints}"
        )
    }
}

/// Drops every packet to and from `address` inside `ns` (an endpoint
/// gone silent, no reset); the table goes with the namespace.
pub fn black_hole(ns: &Netns, address: &str) {
    ns.nft_file(&format!(
        "table ip em_endpoint_hole {{\n\
         \tchain input {{\n\
         \t\ttype filter hook input priority filter - 10; policy accept;\n\
         \t\tip daddr {address} drop\n\
         \t}}\n\
         \tchain output {{\n\
         \t\ttype filter hook output priority filter - 10; policy accept;\n\
         \t\tip saddr {address} drop\n\
         \t}}\n\
         }}\n"
    ));
}

/// The VIP of `default/name` once the agent serves it.
pub fn wait_vip(agent: &NsAgent, name: &str) -> String {
    eventually(Duration::from_secs(10), &format!("a VIP for {name}"), || agent.vip("default", name))
}

/// How many of `bodies` each of `names` answered (in that order).
pub fn tally(bodies: &[String], names: &[&str]) -> Vec<usize> {
    names.iter().map(|n| bodies.iter().filter(|b| b.trim() == *n).count()).collect()
}

/// `count` GETs of `url` on one HTTP/1.1 keep-alive connection (curl,
/// from `ns`): each response's `status body` line, and how many
/// connections curl opened.
pub fn curl_keep_alive(ns: &Netns, url: &str, count: usize) -> (Vec<String>, usize) {
    let mut args = vec!["curl", "-sS", "--max-time", "60", "--http1.1", "-w", "%{http_code} %{num_connects}\n"];
    let urls = vec![url.to_owned(); count];
    args.extend(urls.iter().map(String::as_str));
    let out = ns.exec(&args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // Each answer is the endpoint's `name\n`, then curl's `code connects\n`.
    let lines: Vec<&str> = text.lines().collect();
    let (mut answers, mut connects) = (Vec::new(), 0);
    for pair in lines.chunks(2) {
        if let [body, status] = pair {
            let (code, opened) = status.split_once(' ').unwrap_or((status, "0"));
            connects += opened.parse::<usize>().unwrap_or(0);
            answers.push(format!("{code} {body}"));
        }
    }
    (answers, connects)
}

/// `count` GETs of `http://<addr>/` on one HTTP/2 connection (hyper's
/// client, prior knowledge, from `ns`), one after the other: each
/// response's status and body.
pub fn h2_requests(ns: &Netns, addr: SocketAddr, count: usize) -> Vec<(u16, String)> {
    in_netns(&ns.name, move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let stream = tokio::net::TcpStream::connect(addr).await.expect("connect to the VIP");
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
            tokio::spawn(conn);
            let mut answers = Vec::new();
            for _ in 0..count {
                let req = Request::get(format!("http://{addr}/")).body(http_body_util::Empty::<Bytes>::new()).unwrap();
                let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
                    .await
                    .expect("an answer within 10 s")
                    .expect("the HTTP/2 connection stays up");
                let status = response.status().as_u16();
                let body = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                answers.push((status, String::from_utf8_lossy(&body).into_owned()));
            }
            answers
        })
    })
}

/// Runs `f` (a future) on a runtime of its own on a thread inside `ns`.
pub fn block_on_in<T: Send + 'static, F: std::future::Future<Output = T> + 'static>(
    ns: &Netns,
    f: impl FnOnce() -> F + Send + 'static,
) -> T {
    in_netns(&ns.name, move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(f())
    })
}
