//! The SOCKS5 entry to nodes and services (EdgeMesh's port 10800): operators
//! reach a port of any node's host (SSH to edge boxes behind NAT) or any
//! service, through this node's agent.
//!
//! RFC 1928 CONNECT only (no BIND, no UDP ASSOCIATE: "command not
//! supported"), destinations as names, IPv4 or IPv6; optional RFC 1929
//! username/password from a file. Where a CONNECT goes is decided in
//! [`route`]: this node's host (if `allowedPorts` lists the port), another
//! node's host through the tunnel (the agent there decides by its own
//! `allowedPorts`, so no node is an open proxy of its host), or a service's
//! address, where the proxy balances the connection like any other.
//!
//! # Layout
//!
//! - [`handshake`]: the wire format, parsed from any byte stream, bounded;
//! - [`credentials`]: the `user:password` file;
//! - [`route`]: the destination -> target decision, without I/O;
//! - [`server`]: the listener, a task per client with a handshake time
//!   limit and a bound on clients, connecting and copying;
//! - `metrics`: connections by outcome.
//!
//! The tunnel reaches this crate through [`NodeHosts`], which the agent
//! implements; this crate knows nothing of libp2p.
#![forbid(unsafe_code)]
#![warn(clippy::unwrap_used)] // outside tests: an error with context, or an `expect` naming the invariant

pub mod credentials;
pub mod handshake;
mod metrics;
pub mod route;
pub mod server;

use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};

pub use credentials::{Credentials, CredentialsError};
pub use server::{SocksEnv, SocksServer};

/// The port EdgeMesh's SOCKS5 proxy listens on.
pub const DEFAULT_PORT: u16 = 10800;
/// The default listen address outside node mode (node mode: the node-local
/// DNS address, on [`DEFAULT_PORT`]).
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), DEFAULT_PORT);

/// The `socks` section of the agent's config (keys in camelCase).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct SocksConfig {
    /// Serve the SOCKS5 entry on this node.
    pub enabled: bool,
    /// Where it listens. `None`: [`DEFAULT_LISTEN`], or in node mode the
    /// node-local DNS address on port 10800 (the agent decides).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// Ports of this node's host that SOCKS clients (of this node, or of
    /// any node through the tunnel) may reach. Applies even with `enabled`
    /// off: it is what this node answers to other nodes' entries.
    pub allowed_ports: Vec<u16>,
    /// `user:password` lines; when set, clients must log in (RFC 1929).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<PathBuf>,
    /// A client that has not sent its whole handshake within this is closed.
    #[serde(with = "edgemesh_core::duration")]
    pub handshake_timeout: Duration,
    /// Clients served at once; past it new ones are closed at once.
    pub max_connections: usize,
}

impl Default for SocksConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: None,
            allowed_ports: vec![22],
            credentials_file: None,
            handshake_timeout: Duration::from_secs(10),
            max_connections: 1024,
        }
    }
}

impl SocksConfig {
    /// Every problem with these settings.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.handshake_timeout.is_zero() {
            problems.push("socks.handshakeTimeout must be greater than zero".into());
        }
        if self.max_connections == 0 {
            problems.push("socks.maxConnections must be greater than zero".into());
        }
        if self.allowed_ports.contains(&0) {
            problems.push("socks.allowedPorts lists port 0".into());
        }
        problems
    }
}

/// A byte stream to a node's host.
pub trait HostIo: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> HostIo for T {}

/// What [`NodeHosts::open`] returns.
pub type HostFuture = Pin<Box<dyn Future<Output = io::Result<Box<dyn HostIo>>> + Send + 'static>>;

/// Other nodes' hosts, through the tunnel (the agent implements it).
pub trait NodeHosts: Send + Sync + 'static {
    /// Whether `name` is another node this agent can reach.
    fn is_node(&self, name: &str) -> bool;
    /// A stream to TCP port `port` of node `node`'s host. Errors by kind:
    /// `PermissionDenied` when that node does not allow the port,
    /// `ConnectionRefused` when nothing listens there, `HostUnreachable`
    /// (or `TimedOut`, `NotConnected`) when the node cannot be reached.
    fn open(&self, node: &str, port: u16) -> HostFuture;
}
