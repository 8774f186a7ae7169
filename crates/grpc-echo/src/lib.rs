//! A gRPC echo server and client for the HTTP end-to-end tests (issue
//! #16): real tonic on both sides, so the agent's HTTP path is checked
//! against what gRPC needs (HTTP/2, streaming both ways, trailers).
//!
//! - [`messages`]: the two messages, hand-written with `prost::Message`
//!   (no `protoc`, no build script).
//! - [`server`]: `edgemesh.test.Echo` with a unary, a server-streaming and
//!   a bidirectional-streaming method, served over cleartext HTTP/2; every
//!   call ends with the trailer [`TRAILER`] naming the server.
//! - [`client`]: calls each method and checks the trailer arrived.
//!
//! Dev-only (`publish = false`): tonic stays out of the agent.
#![forbid(unsafe_code)]

pub mod client;
pub mod messages;
pub mod server;

pub use client::{Client, Replies};
pub use messages::{EchoReply, EchoRequest};
pub use server::Server;

/// The custom trailer every call ends with; its value is the server's name.
pub const TRAILER: &str = "x-echo-server";

/// The gRPC service name (`package.Service`).
pub const SERVICE: &str = "edgemesh.test.Echo";
/// Unary: one reply echoing the message.
pub const UNARY: &str = "/edgemesh.test.Echo/Unary";
/// Server streaming: `count` replies.
pub const SERVER_STREAM: &str = "/edgemesh.test.Echo/ServerStream";
/// Bidirectional streaming: one reply per request, as each arrives.
pub const BIDI: &str = "/edgemesh.test.Echo/Bidi";
