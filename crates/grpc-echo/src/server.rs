//! The echo server: `edgemesh.test.Echo` routed by hand (what tonic-build
//! would generate), served over cleartext HTTP/2 on a thread of its own.
//!
//! Every call's response stream ends with an `Ok` status that carries the
//! trailer [`TRAILER`](crate::TRAILER): tonic sends a stream's final status
//! as HTTP/2 trailers, so a proxy that drops or buffers trailers fails the
//! client's check.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::{BoxFuture, Context, Poll, Service, StdError, http};
use tonic::metadata::MetadataMap;
use tonic::server::{Grpc, ServerStreamingService, StreamingService};
use tonic::{Code, Status, Streaming};
use tonic_prost::ProstCodec;

use crate::messages::{EchoReply, EchoRequest};
use crate::{BIDI, SERVER_STREAM, TRAILER, UNARY};

/// The most replies one server-streaming call sends.
const MAX_STREAM: u32 = 10_000;

/// A running echo server; stopped on drop (its listener and every
/// connection closed, as a killed endpoint's would be).
pub struct Server {
    pub addr: SocketAddr,
    calls: Arc<AtomicU32>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Serves on `listener` (bound by the caller, e.g. inside a network
    /// namespace) as `name`, which replies and the trailer carry (ASCII).
    pub fn start(listener: std::net::TcpListener, name: &str) -> Server {
        let addr = listener.local_addr().expect("a bound listener");
        listener.set_nonblocking(true).expect("non-blocking listener");
        let echo = Echo { name: name.into(), calls: Arc::new(AtomicU32::new(0)) };
        let calls = echo.calls.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                let serve = async {
                    loop {
                        let Ok((conn, _)) = listener.accept().await else { continue };
                        let service = TowerToHyperService::new(echo.clone());
                        tokio::spawn(async move {
                            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                                .serve_connection(TokioIo::new(conn), service)
                                .await;
                        });
                    }
                };
                tokio::select! {
                    () = serve => {}
                    _ = stopped => {}
                }
            });
            // Dropping the runtime here drops every connection's task.
        });
        Server { addr, calls, stop: Some(stop), thread: Some(thread) }
    }

    /// Calls this server has answered (of any method).
    pub fn calls(&self) -> u32 {
        self.calls.load(Ordering::Relaxed)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
        let _ = self.thread.take().map(std::thread::JoinHandle::join);
    }
}

/// The service: routes a request by its path to its method.
#[derive(Clone)]
struct Echo {
    name: Arc<str>,
    calls: Arc<AtomicU32>,
}

impl<B> Service<http::Request<B>> for Echo
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let name = self.name.clone();
        let mut grpc = Grpc::new(ProstCodec::<EchoReply, EchoRequest>::default());
        match req.uri().path() {
            // Unary on the wire is a stream of one message: served as
            // one so that it can end with the trailer too.
            UNARY => Box::pin(async move { Ok(grpc.server_streaming(Replies { name, unary: true }, req).await) }),
            SERVER_STREAM => {
                Box::pin(async move { Ok(grpc.server_streaming(Replies { name, unary: false }, req).await) })
            }
            BIDI => Box::pin(async move { Ok(grpc.streaming(Bidi { name }, req).await) }),
            other => {
                let status = Status::unimplemented(format!("no method {other}"));
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

type ReplyStream = ReceiverStream<Result<EchoReply, Status>>;

/// The final status of every call: `Ok`, with the trailer.
fn ending(name: &str) -> Status {
    let mut trailer = MetadataMap::new();
    trailer.insert(TRAILER, name.parse().expect("an ASCII server name"));
    Status::with_metadata(Code::Ok, "", trailer)
}

/// Unary (one reply) and server streaming (`count` replies).
struct Replies {
    name: Arc<str>,
    unary: bool,
}

impl ServerStreamingService<EchoRequest> for Replies {
    type Response = EchoReply;
    type ResponseStream = ReplyStream;
    type Future = BoxFuture<tonic::Response<ReplyStream>, Status>;

    fn call(&mut self, request: tonic::Request<EchoRequest>) -> Self::Future {
        let (name, req) = (self.name.clone(), request.into_inner());
        let count = if self.unary { 1 } else { req.count.min(MAX_STREAM) };
        Box::pin(async move {
            let (tx, rx) = mpsc::channel(16);
            tokio::spawn(async move {
                for index in 0..count {
                    let reply = EchoReply { message: req.message.clone(), server: name.to_string(), index };
                    if tx.send(Ok(reply)).await.is_err() {
                        return;
                    }
                }
                let _ = tx.send(Err(ending(&name))).await;
            });
            Ok(tonic::Response::new(ReceiverStream::new(rx)))
        })
    }
}

/// Bidirectional streaming: a reply to each request as it arrives.
struct Bidi {
    name: Arc<str>,
}

impl StreamingService<EchoRequest> for Bidi {
    type Response = EchoReply;
    type ResponseStream = ReplyStream;
    type Future = BoxFuture<tonic::Response<ReplyStream>, Status>;

    fn call(&mut self, request: tonic::Request<Streaming<EchoRequest>>) -> Self::Future {
        let (name, mut requests) = (self.name.clone(), request.into_inner());
        Box::pin(async move {
            let (tx, rx) = mpsc::channel(16);
            tokio::spawn(async move {
                let mut index = 0;
                loop {
                    match requests.message().await {
                        Ok(Some(req)) => {
                            let reply = EchoReply { message: req.message, server: name.to_string(), index };
                            if tx.send(Ok(reply)).await.is_err() {
                                return;
                            }
                            index += 1;
                        }
                        Ok(None) => break,
                        Err(status) => {
                            let _ = tx.send(Err(status)).await;
                            return;
                        }
                    }
                }
                let _ = tx.send(Err(ending(&name))).await;
            });
            Ok(tonic::Response::new(ReceiverStream::new(rx)))
        })
    }
}
