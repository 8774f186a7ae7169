//! Endpoints on other nodes, reached through the cross-node tunnel.
//!
//! The proxy knows nothing of the tunnel's transport: the agent hands it a
//! [`Remote`], and an endpoint whose `nodeName` is another node's is opened
//! through it instead of being dialled directly (edge nodes have no route to
//! each other's pod networks). Without a `Remote` every endpoint is dialled
//! directly, which suits a flat network.
//!
//! Failures come back as `io::Error`s whose kind the proxy classifies: a
//! refusal (the remote agent could connect to nothing at the endpoint) and
//! every other failure (node unknown or unreachable, peer untrusted) eject
//! the endpoint for the usual back-off, so its node is skipped and retried
//! later while other endpoints serve.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;

use edgemesh_core::{Backend, ServiceKey};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

mod pump;
pub use pump::{DatagramRecv, DatagramSend};

/// A future the [`Remote`] returns.
pub type RemoteFuture<T> = Pin<Box<dyn Future<Output = io::Result<T>> + Send + 'static>>;

/// A byte stream to an endpoint on another node; `shutdown` half-closes.
pub trait RemoteIo: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> RemoteIo for T {}

/// A boxed [`RemoteIo`].
pub type RemoteStream = Box<dyn RemoteIo>;

/// A datagram session with an endpoint on another node. Dropping `to_remote`
/// ends the session; `from_remote` ends when the remote side does.
#[derive(Debug)]
pub struct RemoteDatagrams {
    pub to_remote: mpsc::Sender<Vec<u8>>,
    pub from_remote: mpsc::Receiver<Vec<u8>>,
}

/// Opens connections and datagram sessions to endpoints on other nodes.
pub trait Remote: Send + Sync + 'static {
    /// A stream to `target` on node `node`; resolves once the agent there
    /// has connected to the endpoint.
    fn open_tcp(&self, node: &str, target: SocketAddr, service: &ServiceKey) -> RemoteFuture<RemoteStream>;

    /// A datagram session to `target` on node `node`.
    fn open_udp(&self, node: &str, target: SocketAddr, service: &ServiceKey) -> RemoteFuture<RemoteDatagrams>;
}

/// How this node reaches endpoints: directly, or through a [`Remote`] for
/// endpoints on other nodes.
#[derive(Clone, Default)]
pub struct Reach {
    /// (Shared: a gateway clones its Reach for every request.)
    node_name: std::sync::Arc<str>,
    remote: Option<std::sync::Arc<dyn Remote>>,
    /// How long reaching an endpoint through the tunnel may take: longer
    /// than a direct connect, as the first connection to a node may dial
    /// through a relay.
    timeout: std::time::Duration,
}

impl std::fmt::Debug for Reach {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reach")
            .field("node_name", &self.node_name)
            .field("remote", &self.remote.is_some())
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Reach {
    /// Every endpoint dialled directly.
    pub fn direct() -> Self {
        Self::default()
    }

    /// Endpoints of nodes other than `node_name` through `remote`, each
    /// open allowed `timeout`.
    pub fn through(node_name: &str, remote: std::sync::Arc<dyn Remote>, timeout: std::time::Duration) -> Self {
        Self { node_name: node_name.into(), remote: Some(remote), timeout }
    }

    /// How long one open through the tunnel may take.
    pub fn timeout(&self) -> std::time::Duration {
        self.timeout
    }

    /// The node and the tunnel through which `backend` is reached, or `None`
    /// to dial it directly. An endpoint without a node name is dialled
    /// directly (nothing says where it lives).
    pub fn remote_for<'a>(&'a self, backend: &'a Backend) -> Option<(&'a str, &'a dyn Remote)> {
        let remote = self.remote.as_deref()?;
        let node = backend.node_name.as_deref()?;
        (node != &*self.node_name).then_some((node, remote))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    struct Nowhere;
    impl Remote for Nowhere {
        fn open_tcp(&self, _: &str, _: SocketAddr, _: &ServiceKey) -> RemoteFuture<RemoteStream> {
            Box::pin(async { Err(io::ErrorKind::NotConnected.into()) })
        }
        fn open_udp(&self, _: &str, _: SocketAddr, _: &ServiceKey) -> RemoteFuture<RemoteDatagrams> {
            Box::pin(async { Err(io::ErrorKind::NotConnected.into()) })
        }
    }

    fn backend(node: Option<&str>) -> Backend {
        Backend { addr: "10.0.0.1:80".parse().unwrap(), node_name: node.map(Arc::from) }
    }

    #[test]
    fn only_endpoints_of_other_nodes_go_through_the_tunnel() {
        let reach = Reach::through("a", Arc::new(Nowhere), std::time::Duration::from_secs(1));
        assert!(reach.remote_for(&backend(Some("a"))).is_none(), "this node's endpoint is dialled directly");
        assert!(reach.remote_for(&backend(None)).is_none(), "an endpoint of no known node is dialled directly");
        assert_eq!(reach.remote_for(&backend(Some("b"))).map(|(n, _)| n), Some("b"));
        assert!(Reach::direct().remote_for(&backend(Some("b"))).is_none(), "no tunnel: everything direct");
    }
}
