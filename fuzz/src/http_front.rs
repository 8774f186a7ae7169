//! The agent's HTTP front (`edgemesh_http::HttpProxy`) fed from memory: a
//! client connection as an in-memory stream, and an upstream that answers
//! every request with a fixed response from an in-memory hyper server (or,
//! for a path containing `fail`, with the agent's own 503), all under
//! tokio's paused clock, so the front's timeouts pass in no real time.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use edgemesh_core::{LbStrategy, ServiceKey};
use edgemesh_http::{
    DispatchError, HttpConfig, HttpProxy, RequestBody, RequestContext, SendFuture, Upstream, UpstreamBody,
};
use edgemesh_proxy::Reach;
use edgemesh_proxy::pool::{Pool, Targets};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, Version};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The front's settings: the defaults, with limits small enough for
/// inputs of a few kilobytes to reach them (header bytes at hyper's
/// smallest buffer, header count, HTTP/2 streams) and an idle timeout
/// short enough that a run which must wait for it stays short in virtual
/// time too.
pub fn config() -> HttpConfig {
    HttpConfig {
        max_header_bytes: edgemesh_http::front::MIN_HEADER_BYTES,
        max_headers: 16,
        max_concurrent_streams: 4,
        idle_timeout: Duration::from_secs(30),
        ..HttpConfig::default()
    }
}

/// The longest the front may keep a connection its client leaves open and
/// silent: a head may take the head timeout, a request the request
/// timeout, then the connection may sit idle for the idle timeout.
pub fn close_within(config: &HttpConfig) -> Duration {
    config.request_head_timeout + config.request_timeout + config.idle_timeout + Duration::from_secs(1)
}

/// What the front did with one client connection.
pub struct Outcome {
    /// Everything it wrote back.
    pub written: Vec<u8>,
    /// Virtual time from the connection's start to the front's close; `None`
    /// when it had not closed after [`close_within`].
    pub closed_after: Option<Duration>,
    /// Client connections the front still counts once this one ended.
    pub connections_left: usize,
}

/// Serves `request` (the client's bytes) through the front; the client
/// half-closes after sending when `half_close`, else it waits, silent.
pub fn serve(request: &[u8], half_close: bool) -> Outcome {
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().expect("runtime");
    runtime.block_on(async {
        let config = config();
        let limit = close_within(&config);
        let proxy = HttpProxy::new(Arc::new(FixedUpstream), config);
        // Larger than any input and any output: neither side waits for room.
        let (mut client, server) = tokio::io::duplex(4 << 20);
        let started = Instant::now();
        let front = tokio::spawn(proxy.serve_stream(server, context(), CancellationToken::new()));
        // A front that closes early makes the write fail: that is its answer.
        if client.write_all(request).await.is_ok() && half_close {
            let _ = client.shutdown().await;
        }
        let mut written = Vec::new();
        let closed_after = match tokio::time::timeout(limit, client.read_to_end(&mut written)).await {
            Ok(_) => Some(started.elapsed()),
            Err(_) => None,
        };
        drop(client);
        // The front's task ends with the connection (a drop of the client's side ends it otherwise).
        let _ = tokio::time::timeout(limit, front).await;
        Outcome { written, closed_after, connections_left: proxy.connections() }
    })
}

/// The request context of service `default/web` port 80, for a pod client.
fn context() -> RequestContext {
    let targets = Targets::new(LbStrategy::RoundRobin, Arc::from(Vec::new()));
    let addr: SocketAddr = "10.96.0.10:80".parse().expect("address");
    RequestContext {
        pool: Arc::new(Pool::new(ServiceKey::new("default", "web"), addr, targets)),
        reach: Reach::direct(),
        connect_timeout: Duration::from_secs(1),
        upstream_mark: None,
        client: "10.244.1.2:40000".parse().expect("address"),
        timeouts: Default::default(),
    }
}

/// Answers every request with `200 fixed` from an in-memory HTTP/1.1
/// server, which reads the request as an endpoint would; a path with
/// `fail` in it gets the agent's own error (no ready endpoint: 503).
struct FixedUpstream;

impl Upstream for FixedUpstream {
    fn send(&self, mut req: Request<RequestBody>, _ctx: Arc<RequestContext>) -> SendFuture {
        Box::pin(async move {
            if req.uri().path().contains("fail") {
                return Err(DispatchError::NoEndpoints { service: "default/web".into(), port: 80 });
            }
            let failed = |e: hyper::Error| DispatchError::EndpointFailed {
                endpoint: "10.244.1.9:8080".parse().expect("address"),
                reason: e.to_string(),
            };
            // The endpoint speaks HTTP/1.1, whatever the client spoke.
            *req.version_mut() = Version::HTTP_11;
            let (near, far) = tokio::io::duplex(64 * 1024);
            let endpoint = service_fn(|_req: Request<Incoming>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"fixed\n"))))
            });
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(far), endpoint));
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(near)).await.map_err(failed)?;
            tokio::spawn(connection);
            sender.send_request(req).await.map(|r| r.map(UpstreamBody::Hyper)).map_err(failed)
        })
    }
}

/// Panics unless `written` is what an HTTP server may send: HTTP/2 frames
/// (the first a SETTINGS on stream 0) when the client sent the HTTP/2
/// preface, else an HTTP/1.1 response head that parses (HTTP/1.0 for an
/// HTTP/1.0 request). Nothing at all is
/// fine: a connection may be closed unanswered.
pub fn check_written(request: &[u8], written: &[u8]) {
    if written.is_empty() {
        return;
    }
    if request.starts_with(PREFACE) {
        check_h2_frames(written);
    } else {
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(written) {
            Ok(httparse::Status::Complete(_)) => {
                // An HTTP/1.0 client is answered in HTTP/1.0 (hyper's choice, which RFC 9110 §2.5 allows).
                // Empty lines before the request line are skipped, as RFC 9112 §2.2 lets a server do.
                let http_1_0 = request
                    .split(|&b| b == b'\n')
                    .find(|line| !line.trim_ascii_end().is_empty())
                    .is_some_and(|line| line.trim_ascii_end().ends_with(b"HTTP/1.0"));
                let expected = if http_1_0 { [Some(0), Some(1)].as_slice() } else { [Some(1)].as_slice() };
                assert!(expected.contains(&response.version), "not HTTP/1.1: {:?}", String::from_utf8_lossy(written));
                let code = response.code.expect("a status code");
                assert!((100..600).contains(&code), "status {code}");
            }
            other => panic!("no HTTP/1.1 response head ({other:?}): {:?}", String::from_utf8_lossy(written)),
        }
    }
}

/// Whole frames of known types, the first a SETTINGS (not an ACK) on
/// stream 0 whose length is a multiple of 6 (RFC 9113 §3.4, §6.5).
fn check_h2_frames(mut written: &[u8]) {
    let mut first = true;
    while !written.is_empty() {
        assert!(written.len() >= 9, "a partial frame header: {written:02x?}");
        let len = usize::from(written[0]) << 16 | usize::from(written[1]) << 8 | usize::from(written[2]);
        let (kind, flags) = (written[3], written[4]);
        let stream = u32::from_be_bytes([written[5], written[6], written[7], written[8]]) & 0x7fff_ffff;
        assert!(kind <= 9, "unknown frame type {kind}");
        assert!(written.len() >= 9 + len, "a frame of {len} bytes cut at {}", written.len() - 9);
        if first {
            assert_eq!((kind, flags & 1, stream), (4, 0, 0), "the server's first frame is not its SETTINGS");
            assert_eq!(len % 6, 0, "SETTINGS of {len} bytes");
            first = false;
        }
        written = &written[9 + len..];
    }
}
