//! The messages, as `protoc` would generate them from:
//!
//! ```proto
//! message EchoRequest { string message = 1; uint32 count = 2; }
//! message EchoReply { string message = 1; string server = 2; uint32 index = 3; }
//! ```

/// What the client sends.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct EchoRequest {
    #[prost(string, tag = "1")]
    pub message: String,
    /// Server streaming: how many replies to send.
    #[prost(uint32, tag = "2")]
    pub count: u32,
}

/// What the server answers.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct EchoReply {
    /// The request's message.
    #[prost(string, tag = "1")]
    pub message: String,
    /// The server's name (which endpoint answered).
    #[prost(string, tag = "2")]
    pub server: String,
    /// The reply's position in its stream, from 0.
    #[prost(uint32, tag = "3")]
    pub index: u32,
}
