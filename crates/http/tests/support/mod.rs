//! Loopback pieces for the dispatcher's tests: real hyper endpoints (HTTP/1.1
//! or HTTP/2) that answer with their name, a minimal front (a hyper server
//! that hands each request to the dispatcher and turns its errors into
//! responses, as `front` does), and a keep-alive client.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use edgemesh_core::{Backend, LbStrategy, ServiceKey};
use edgemesh_http::{Dispatcher, HttpConfig, RequestContext, Upstream};
use edgemesh_metrics::Registry;
use edgemesh_proxy::Reach;
use edgemesh_proxy::pool::{Pool, Targets};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::AbortHandle;

/// How a test endpoint answers.
#[derive(Clone)]
pub struct Behaviour {
    pub delay: Duration,
    pub status: StatusCode,
    pub http2: bool,
    /// HTTP/1.1 keep-alive; without it the endpoint closes each connection
    /// after its response.
    pub keep_alive: bool,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self { delay: Duration::ZERO, status: StatusCode::OK, http2: false, keep_alive: true }
    }
}

/// A real HTTP endpoint on loopback that answers with its name.
pub struct Endpoint {
    pub addr: SocketAddr,
    pub requests: Arc<AtomicUsize>,
    pub connections: Arc<AtomicUsize>,
    /// Connections that ended.
    pub closed: Arc<AtomicUsize>,
    /// Most requests in flight at once.
    pub max_in_flight: Arc<AtomicUsize>,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Endpoint {
    pub async fn start(name: &str, behaviour: Behaviour) -> Endpoint {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let max_in_flight = Arc::new(AtomicUsize::new(0));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let tasks: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let name: Bytes = Bytes::copy_from_slice(name.as_bytes());
        let (r, c, m, t) = (requests.clone(), connections.clone(), max_in_flight.clone(), tasks.clone());
        let ended = closed.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                c.fetch_add(1, Ordering::SeqCst);
                let (r, m, in_flight, name, b) =
                    (r.clone(), m.clone(), in_flight.clone(), name.clone(), behaviour.clone());
                let service = service_fn(move |req: Request<Incoming>| {
                    let (r, m, in_flight, name, b) = (r.clone(), m.clone(), in_flight.clone(), name.clone(), b.clone());
                    async move {
                        if req.headers().contains_key(hyper::header::UPGRADE) {
                            return Ok(echo_upgrade(req));
                        }
                        let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                        m.fetch_max(now, Ordering::SeqCst);
                        // Read the whole request, as a server does.
                        let _ = req.into_body().collect().await;
                        r.fetch_add(1, Ordering::SeqCst);
                        if !b.delay.is_zero() {
                            tokio::time::sleep(b.delay).await;
                        }
                        in_flight.fetch_sub(1, Ordering::SeqCst);
                        let mut response = Response::new(full(name));
                        *response.status_mut() = b.status;
                        Ok::<_, Infallible>(response)
                    }
                });
                let io = TokioIo::new(stream);
                let ended = ended.clone();
                let conn = if behaviour.http2 {
                    tokio::spawn(async move {
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, service)
                            .await;
                        ended.fetch_add(1, Ordering::SeqCst);
                    })
                } else {
                    let keep_alive = behaviour.keep_alive;
                    tokio::spawn(async move {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .keep_alive(keep_alive)
                            .serve_connection(io, service)
                            .with_upgrades()
                            .await;
                        ended.fetch_add(1, Ordering::SeqCst);
                    })
                };
                t.lock().unwrap().push(conn.abort_handle());
            }
        });
        tasks.lock().unwrap().push(accept.abort_handle());
        Endpoint { addr, requests, connections, closed, max_in_flight, tasks }
    }

    pub async fn named(name: &str) -> Endpoint {
        Self::start(name, Behaviour::default()).await
    }

    /// Stops listening and closes every connection, as a killed pod does.
    pub fn kill(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn closed(&self) -> usize {
        self.closed.load(Ordering::SeqCst)
    }
}

/// Answers an upgrade request with 101 and echoes what the client sends
/// on the upgraded connection.
fn echo_upgrade(req: Request<Incoming>) -> Response<Body> {
    let protocol = req.headers()[hyper::header::UPGRADE].clone();
    tokio::spawn(async move {
        if let Ok(upgraded) = hyper::upgrade::on(req).await {
            let (mut read, mut write) = tokio::io::split(TokioIo::new(upgraded));
            let _ = tokio::io::copy(&mut read, &mut write).await;
        }
    });
    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    response.headers_mut().insert(hyper::header::CONNECTION, "upgrade".parse().unwrap());
    response.headers_mut().insert(hyper::header::UPGRADE, protocol);
    response
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn service() -> ServiceKey {
    ServiceKey::new("default", "web")
}

/// A service port (`default/web:80`) over `endpoints`, with `strategy`.
pub fn targets(strategy: LbStrategy, endpoints: &[SocketAddr]) -> Targets {
    let backends: Arc<[Backend]> = endpoints.iter().map(|&addr| Backend { addr, node_name: None }).collect();
    Targets::new(strategy, backends)
}

pub fn pool(targets: Targets) -> Arc<Pool> {
    Arc::new(Pool::new(service(), "127.0.0.1:80".parse().unwrap(), targets))
}

/// A dispatcher and the registry its counters are in.
pub fn dispatcher(config: HttpConfig) -> (Dispatcher, Registry) {
    let mut registry = Registry::default();
    let dispatcher = Dispatcher::new(&config, &mut registry);
    (dispatcher, registry)
}

/// The value of counter `name` of the test service's port 80.
pub fn counter(registry: &Registry, name: &str) -> f64 {
    let mut text = String::new();
    edgemesh_metrics::prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    let series = format!("{name}_total{{service=\"default/web\",port=\"80\"}}");
    edgemesh_test_support::scrape::sample(&text, &series).unwrap_or(0.0)
}

/// A body of any kind (the dispatcher's responses are not `Sync`).
pub type Body = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

pub fn full(text: impl Into<Bytes>) -> Body {
    Full::new(text.into()).map_err(|never| match never {}).boxed_unsync()
}

/// A minimal front on loopback: each client connection is served by hyper
/// and each request handed to `dispatcher` with the context of `pool`;
/// dispatch errors become their status with a text body.
pub async fn front(dispatcher: Dispatcher, pool: Arc<Pool>, reach: Reach) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else { return };
            let ctx = Arc::new(RequestContext {
                pool: pool.clone(),
                reach: reach.clone(),
                connect_timeout: Duration::from_secs(1),
                upstream_mark: None,
                client: peer,
                timeouts: Default::default(),
            });
            let dispatcher = dispatcher.clone();
            let service = service_fn(move |mut req: Request<Incoming>| {
                let client_side =
                    req.headers().contains_key(hyper::header::UPGRADE).then(|| hyper::upgrade::on(&mut req));
                let sent = dispatcher.send(req.map(edgemesh_http::RequestBody::Hyper), ctx.clone());
                async move {
                    Ok::<_, Infallible>(match sent.await {
                        Ok(mut response) => {
                            if let (Some(client_side), StatusCode::SWITCHING_PROTOCOLS) =
                                (client_side, response.status())
                            {
                                let endpoint_side = hyper::upgrade::on(&mut response);
                                tokio::spawn(async move {
                                    let (Ok(client), Ok(endpoint)) = (client_side.await, endpoint_side.await) else {
                                        return;
                                    };
                                    let (mut client, mut endpoint) = (TokioIo::new(client), TokioIo::new(endpoint));
                                    let _ = tokio::io::copy_bidirectional(&mut client, &mut endpoint).await;
                                });
                            }
                            if response.status() != StatusCode::SWITCHING_PROTOCOLS {
                                // Hop-by-hop: the endpoint's connection is not the client's.
                                response.headers_mut().remove(hyper::header::CONNECTION);
                            }
                            response.map(BodyExt::boxed_unsync)
                        }
                        Err(error) => {
                            let mut response = Response::new(full(error.to_string()));
                            *response.status_mut() = error.status();
                            response
                        }
                    })
                }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

/// One keep-alive client connection.
pub struct Client {
    sender: hyper::client::conn::http1::SendRequest<Body>,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn.with_upgrades());
        Client { sender }
    }

    /// Sends `req`; the status and the body as text.
    pub async fn send(&mut self, req: Request<Body>) -> (StatusCode, String) {
        self.sender.ready().await.expect("the front keeps the connection open");
        let response = self.sender.send_request(req).await.expect("the front answers every request");
        let status = response.status();
        let body = response.into_body().collect().await.expect("a whole body").to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// Asks for an upgrade to `protocol`; the upgraded connection once the
    /// answer is 101.
    pub async fn upgrade(&mut self, protocol: &str) -> TokioIo<hyper::upgrade::Upgraded> {
        let req = Request::get("/chat")
            .header("host", "web.default")
            .header("connection", "upgrade")
            .header("upgrade", protocol)
            .body(full(Bytes::new()))
            .unwrap();
        self.sender.ready().await.unwrap();
        let response = self.sender.send_request(req).await.unwrap();
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        TokioIo::new(hyper::upgrade::on(response).await.expect("upgraded"))
    }

    /// A GET of `/` with `headers`.
    pub async fn get(&mut self, headers: &[(&str, &str)]) -> (StatusCode, String) {
        let mut req = Request::get("/").header("host", "web.default");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.send(req.body(full(Bytes::new())).unwrap()).await
    }
}

/// The front's address for a dispatcher with `config` over `targets`
/// (endpoints dialled directly).
pub async fn serve(config: HttpConfig, targets: Targets) -> (SocketAddr, Arc<Pool>, Registry) {
    let (dispatcher, registry) = dispatcher(config);
    let pool = pool(targets);
    let addr = front(dispatcher, pool.clone(), Reach::direct()).await;
    (addr, pool, registry)
}
