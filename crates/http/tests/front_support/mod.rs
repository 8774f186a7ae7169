//! Real servers and clients around the front, on loopback: an HTTP/1.1
//! backend that echoes what it received, a WebSocket echo server, the front
//! serving a listener, and `curl`.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use edgemesh_core::{LbStrategy, ServiceKey};
use edgemesh_http::{DispatchError, HttpConfig, HttpProxy, RequestContext, SendFuture, Upstream};
use edgemesh_proxy::pool::{Pool, Targets};
use edgemesh_proxy::{HttpConnection, HttpServe, Reach};
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::HOST;
use hyper::{Request, Response, Version};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// An HTTP/1.1 backend answering every request with `name` and what it
/// received: `method path`, then each header as `name: value`.
pub async fn echo_backend(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let service = hyper::service::service_fn(move |req: Request<Incoming>| async move {
                let mut text = format!("backend: {name}\n{} {}\n", req.method(), req.uri());
                for (k, v) in req.headers() {
                    text.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("?")));
                }
                let response = Response::builder()
                    .header("connection", "x-resp-hop")
                    .header("x-resp-hop", "1")
                    .header("keep-alive", "timeout=5")
                    .header("x-resp-end", "2")
                    .body(Full::new(Bytes::from(text)))
                    .unwrap();
                Ok::<_, std::convert::Infallible>(response)
            });
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service));
        }
    });
    addr
}

/// A WebSocket server echoing every message.
pub async fn websocket_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else { return };
                while let Some(Ok(message)) = ws.next().await {
                    if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// The dispatch layer's stand-in: every request goes, over a new HTTP/1.1
/// connection of a plain hyper client, to one backend.
pub struct ToBackend(pub SocketAddr);

impl Upstream for ToBackend {
    fn send(&self, mut req: Request<Incoming>, _ctx: Arc<RequestContext>) -> SendFuture {
        let addr = self.0;
        let failed =
            move |e: &dyn std::fmt::Display| DispatchError::EndpointFailed { endpoint: addr, reason: e.to_string() };
        Box::pin(async move {
            let stream = TcpStream::connect(addr).await.map_err(|e| failed(&e))?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| failed(&e))?;
            tokio::spawn(conn.with_upgrades());
            if let Some(authority) = req.uri().authority() {
                let host = authority.as_str().parse().unwrap();
                req.headers_mut().entry(HOST).or_insert(host);
            }
            *req.uri_mut() = req.uri().path_and_query().map_or("/", |p| p.as_str()).parse().unwrap();
            *req.version_mut() = Version::HTTP_11;
            sender.send_request(req).await.map_err(|e| failed(&e))
        })
    }
}

/// An upstream that fails every request with what `error` makes.
pub struct Failing(pub fn() -> DispatchError);

impl Upstream for Failing {
    fn send(&self, _req: Request<Incoming>, _ctx: Arc<RequestContext>) -> SendFuture {
        let error = (self.0)();
        Box::pin(async move { Err(error) })
    }
}

/// The front serving a loopback listener, as the proxy would hand it the
/// connections of service `default/web`'s port.
pub struct Front {
    pub addr: SocketAddr,
    pub proxy: Arc<HttpProxy>,
    /// Cancel to drain the front's connections, as the proxy does.
    pub drain: CancellationToken,
}

impl Front {
    pub async fn start(upstream: impl Upstream, config: HttpConfig) -> Front {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let proxy = Arc::new(HttpProxy::new(Arc::new(upstream), config));
        let pool = Arc::new(Pool::new(
            ServiceKey::new("default", "web"),
            addr,
            Targets::new(LbStrategy::RoundRobin, Arc::from(Vec::new())),
        ));
        let front = proxy.clone();
        let drain = CancellationToken::new();
        let draining = drain.clone();
        tokio::spawn(async move {
            loop {
                let Ok((client, peer)) = listener.accept().await else { return };
                let conn = HttpConnection {
                    client,
                    peer,
                    pool: pool.clone(),
                    reach: Reach::direct(),
                    connect_timeout: Duration::from_secs(1),
                    upstream_mark: None,
                    drain: drain.clone(),
                };
                tokio::spawn(front.serve(conn));
            }
        });
        Front { addr, proxy, drain: draining }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// Runs curl with `args` (off the runtime's threads); its stdout, or a
/// panic with its stderr.
pub async fn curl(args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let out = Command::new("curl").args(["-sS", "--max-time", "10"]).args(&args).output().expect("curl runs");
        assert!(out.status.success(), "curl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    })
    .await
    .unwrap()
}
