//! Errors.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use libp2p::Multiaddr;

/// Everything that can go wrong in the tunnel. (`peer` fields hold the peer ID as text.)
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// The identity key file is missing and cannot be created, has loose permissions, or does
    /// not hold a key.
    #[error("identity key file {}: {message}", path.display())]
    Identity { path: PathBuf, message: String },
    /// The pre-shared key file cannot be read or parsed.
    #[error("pre-shared key file {}: {message}", path.display())]
    Psk { path: PathBuf, message: String },
    /// An invalid configuration (e.g. a QUIC address together with a PSK).
    #[error("tunnel configuration: {0}")]
    Config(String),
    /// A listen address could not be bound.
    #[error("tunnel cannot listen on {addr}: {message}")]
    Listen { addr: Multiaddr, message: String },
    /// No peer ID is bound to the node (neither allow-list nor Node annotation).
    #[error("node {0:?}: no peer ID is bound to it")]
    UnknownNode(String),
    /// The agent on the node could not be reached (no address worked, no relay had it).
    #[error("node {node:?} (peer {peer}) unreachable: {reason}")]
    PeerUnreachable { node: String, peer: String, reason: String },
    /// The agent on the node does not accept this node's name claim (its directory does not bind
    /// our name to our peer ID), or does not speak the edgemesh hello.
    #[error("node {node:?} (peer {peer}) does not trust this node: {reason}")]
    Untrusted { node: String, peer: String, reason: String },
    /// The remote agent reached the endpoint's host but the endpoint refused the connection.
    #[error("node {node:?}: endpoint {target} refused the connection")]
    Refused { node: String, target: SocketAddr },
    /// The remote agent could not reach the endpoint (timeout, no route, local error).
    #[error("node {node:?}: endpoint {target} unreachable from that node")]
    Unreachable { node: String, target: SocketAddr },
    /// The remote agent does not serve this endpoint (it dials only its own endpoints).
    #[error("node {node:?} does not serve endpoint {target}")]
    NotServed { node: String, target: SocketAddr },
    /// The remote agent refused the stream at its limit of inbound streams (from this node, or
    /// in all); it keeps serving the streams it holds.
    #[error("node {node:?} refused the stream: it holds as many streams as its limits allow")]
    Busy { node: String },
    /// The remote agent broke the protocol (bad reply, reset stream, unknown version).
    #[error("node {node:?}: tunnel protocol error: {message}")]
    Protocol { node: String, message: String },
    /// Reaching the node or its reply took longer than the connect timeout.
    #[error("node {node:?}: no answer within {timeout:?}")]
    Timeout { node: String, timeout: Duration },
    /// The tunnel has been stopped.
    #[error("tunnel stopped")]
    Stopped,
}

impl TunnelError {
    /// The endpoint failed (refused, unreachable from its node, not served there): eject the
    /// endpoint; the node itself is fine.
    pub fn is_endpoint_failure(&self) -> bool {
        matches!(self, TunnelError::Refused { .. } | TunnelError::Unreachable { .. } | TunnelError::NotServed { .. })
    }

    /// The node's agent could not be used (unknown, unreachable, untrusted, timed out,
    /// protocol error): every endpoint on that node is affected.
    pub fn is_node_failure(&self) -> bool {
        matches!(
            self,
            TunnelError::UnknownNode(_)
                | TunnelError::PeerUnreachable { .. }
                | TunnelError::Untrusted { .. }
                | TunnelError::Protocol { .. }
                | TunnelError::Timeout { .. }
        )
    }
}
