//! The echo client: each method called through a real tonic channel, and
//! the trailer [`TRAILER`](crate::TRAILER) checked at the end of each call.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;
use tonic::{Status, Streaming};
use tonic_prost::ProstCodec;

use crate::messages::{EchoReply, EchoRequest};
use crate::{BIDI, SERVER_STREAM, TRAILER, UNARY};

/// A client on one HTTP/2 connection (tonic's channel) to `addr`.
pub struct Client {
    grpc: tonic::client::Grpc<Channel>,
}

/// What a call got: its replies, and the server named by the trailer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replies {
    pub replies: Vec<EchoReply>,
    pub trailer: String,
}

impl Client {
    /// Connects (cleartext HTTP/2, prior knowledge) to `addr`.
    pub async fn connect(addr: SocketAddr) -> Result<Client, tonic::transport::Error> {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .expect("a valid URI")
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await?;
        Ok(Client { grpc: tonic::client::Grpc::new(channel) })
    }

    async fn ready(&mut self) -> Result<(), Status> {
        self.grpc.ready().await.map_err(|e| Status::unavailable(format!("channel not ready: {e}")))
    }

    /// `Unary`: one reply echoing `message`.
    pub async fn unary(&mut self, message: &str) -> Result<Replies, Status> {
        self.ready().await?;
        let request = EchoRequest { message: message.to_owned(), count: 1 };
        let response = self
            .grpc
            .unary(tonic::Request::new(request), PathAndQuery::from_static(UNARY), ProstCodec::default())
            .await?;
        // tonic merges the trailers into a unary response's metadata.
        let trailer = trailer(Some(response.metadata()))?;
        Ok(Replies { replies: vec![response.into_inner()], trailer })
    }

    /// `ServerStream`: `count` replies echoing `message`.
    pub async fn server_stream(&mut self, message: &str, count: u32) -> Result<Replies, Status> {
        self.ready().await?;
        let request = EchoRequest { message: message.to_owned(), count };
        let stream = self
            .grpc
            .server_streaming(
                tonic::Request::new(request),
                PathAndQuery::from_static(SERVER_STREAM),
                ProstCodec::default(),
            )
            .await?
            .into_inner();
        read_to_end(stream).await
    }

    /// `Bidi`, one message at a time: each is sent only once the reply to
    /// the one before arrived, so both directions must stream (a proxy
    /// that waits for the whole request body stalls it).
    pub async fn bidi(&mut self, messages: &[&str]) -> Result<Replies, Status> {
        self.ready().await?;
        let (tx, rx) = mpsc::channel(1);
        let mut messages = messages.iter().map(|m| EchoRequest { message: (*m).to_owned(), count: 1 });
        let mut outstanding = messages.next();
        if let Some(first) = outstanding.take() {
            tx.send(first).await.expect("the request stream is open");
        }
        let mut stream = self
            .grpc
            .streaming(
                tonic::Request::new(ReceiverStream::new(rx)),
                PathAndQuery::from_static(BIDI),
                ProstCodec::default(),
            )
            .await?
            .into_inner();
        let mut tx = Some(tx);
        let mut replies = Vec::new();
        loop {
            let reply = stream.message().await?;
            let Some(reply) = reply else { break };
            replies.push(reply);
            match (messages.next(), &tx) {
                (Some(next), Some(sender)) => {
                    if sender.send(next).await.is_err() {
                        return Err(Status::internal("the request stream closed early"));
                    }
                }
                // The last reply arrived: end the request stream.
                _ => tx = None,
            }
        }
        let trailer = trailer(stream.trailers().await?.as_ref())?;
        Ok(Replies { replies, trailer })
    }
}

/// Every reply of `stream`, then its trailer.
async fn read_to_end(mut stream: Streaming<EchoReply>) -> Result<Replies, Status> {
    let mut replies = Vec::new();
    while let Some(reply) = stream.message().await? {
        replies.push(reply);
    }
    let trailer = trailer(stream.trailers().await?.as_ref())?;
    Ok(Replies { replies, trailer })
}

/// The value of [`TRAILER`], or an error saying it did not arrive.
fn trailer(metadata: Option<&MetadataMap>) -> Result<String, Status> {
    metadata
        .and_then(|m| m.get(TRAILER))
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .ok_or_else(|| Status::internal(format!("the call ended without the trailer {TRAILER}")))
}
