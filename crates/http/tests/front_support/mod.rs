//! Real servers and clients around the front, on loopback: an HTTP/1.1
//! backend that echoes what it received, a silent one, a WebSocket echo
//! server, the front serving a listener (with the agent's dispatcher, or a
//! stand-in that controls timing), and `curl`.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use edgemesh_core::{Backend, LbStrategy, ServiceKey};
use edgemesh_http::{Dispatcher, HttpConfig, HttpProxy, Upstream};
use edgemesh_metrics::Registry;
use edgemesh_proxy::pool::{Pool, Targets};
use edgemesh_proxy::{HttpConnection, HttpServe, Reach};
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// An HTTP/1.1 backend answering every request with `name` and what it
/// received: `method path`, each header as `name: value`, and the body's
/// length (`body bytes: Ok(n)`).
pub async fn echo_backend(name: &'static str) -> SocketAddr {
    slow_echo_backend(name, Duration::ZERO).await
}

/// As [`echo_backend`], each answer sent `delay` after its request arrived.
pub async fn slow_echo_backend(name: &'static str, delay: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let service = hyper::service::service_fn(move |req: Request<Incoming>| async move {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                let mut text = format!("backend: {name}\n{} {}\n", req.method(), req.uri());
                for (k, v) in req.headers() {
                    text.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("?")));
                }
                let body = req.into_body().collect().await.map(|b| b.to_bytes().len());
                text.push_str(&format!("body bytes: {body:?}\n"));
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

/// A backend that accepts connections and never answers.
pub async fn silent_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
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

/// Round robin over `endpoints`.
pub fn targets(endpoints: &[SocketAddr]) -> Targets {
    let backends: Arc<[Backend]> = endpoints.iter().map(|&addr| Backend { addr, node_name: None }).collect();
    Targets::new(LbStrategy::RoundRobin, backends)
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
    /// The front sending requests through the agent's [`Dispatcher`] to
    /// `endpoints` (round robin, dialled directly).
    pub async fn dispatching(endpoints: &[SocketAddr], config: HttpConfig) -> Front {
        Self::dispatching_to(targets(endpoints), config).await
    }

    /// As [`Front::dispatching`], to the endpoints of `targets`.
    pub async fn dispatching_to(targets: Targets, config: HttpConfig) -> Front {
        let dispatcher = Dispatcher::new(&config, &mut Registry::default());
        Self::start_with(dispatcher, config, targets).await
    }

    /// The front sending requests through `upstream`, a stand-in for the
    /// dispatcher (service port without endpoints).
    pub async fn start(upstream: impl Upstream, config: HttpConfig) -> Front {
        Self::start_with(upstream, config, Targets::new(LbStrategy::RoundRobin, Arc::from(Vec::new()))).await
    }

    async fn start_with(upstream: impl Upstream, config: HttpConfig, targets: Targets) -> Front {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let proxy = Arc::new(HttpProxy::new(Arc::new(upstream), config));
        let pool = Arc::new(Pool::new(ServiceKey::new("default", "web"), addr, targets));
        let front = proxy.clone();
        let drain = CancellationToken::new();
        let draining = drain.clone();
        tokio::spawn(async move {
            loop {
                let Ok((client, peer)) = listener.accept().await else { return };
                let conn = HttpConnection {
                    client: client.into(),
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
