#![allow(dead_code)]
//! Helpers: tunnels on loopback, a test directory, real servers.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

pub use edgemesh_test_support::eventually;
// (Test binaries that use none of them would warn.)
use edgemesh_metrics::{AgentRegistry, Format};
#[allow(unused_imports)]
pub use edgemesh_test_support::loopback::{closed_tcp_port, tcp_echo, tcp_echo_on, udp_echo, udp_echo_on};
use edgemesh_tunnel::{
    CancellationToken, Directory, Multiaddr, PeerId, Tunnel, TunnelConfig, TunnelMetrics, TunnelProtocol, TunnelStream,
    load_or_create_identity,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    task::JoinHandle,
};

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
}

/// Node name -> peer ID, and the endpoints this node serves.
#[derive(Default)]
pub struct TestDirectory {
    pub peers: Mutex<HashMap<String, PeerId>>,
    pub serves: Mutex<HashSet<(SocketAddr, TunnelProtocol)>>,
}

impl TestDirectory {
    pub fn bind(&self, node: &str, peer: PeerId) {
        self.peers.lock().unwrap().insert(node.into(), peer);
    }
    pub fn serve(&self, target: SocketAddr, p: TunnelProtocol) {
        self.serves.lock().unwrap().insert((target, p));
    }
}

impl Directory for TestDirectory {
    fn peer_of(&self, node: &str) -> Option<PeerId> {
        self.peers.lock().unwrap().get(node).copied()
    }
    fn serves(&self, target: SocketAddr, protocol: TunnelProtocol) -> bool {
        self.serves.lock().unwrap().contains(&(target, protocol))
    }
}

pub struct Node {
    pub tunnel: Tunnel,
    pub stop: CancellationToken,
    pub task: JoinHandle<()>,
    pub dir: Arc<TestDirectory>,
    pub name: String,
}

impl Node {
    /// The address others dial: the first TCP listen address with /p2p/<peer>.
    pub fn addr(&self) -> Multiaddr {
        let a = self
            .tunnel
            .listen_addrs()
            .into_iter()
            .find(|a| a.to_string().contains("/tcp/"))
            .expect("a TCP listen address");
        a.with(edgemesh_tunnel::multiaddr::Protocol::P2p(self.tunnel.peer_id()))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub struct Keys {
    pub dir: tempfile::TempDir,
}

impl Keys {
    pub fn new() -> Self {
        Keys { dir: tempfile::tempdir().unwrap() }
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.key"))
    }
    pub fn peer(&self, name: &str) -> PeerId {
        load_or_create_identity(&self.path(name)).unwrap().public().to_peer_id()
    }
}

pub fn config(keys: &Keys, name: &str) -> TunnelConfig {
    let mut c = TunnelConfig::new(name, keys.path(name));
    c.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    c.mdns = false;
    // No SSDP search on the host's network.
    c.upnp = false;
    c.connect_timeout = Duration::from_secs(5);
    c
}

pub async fn start(config: TunnelConfig, dir: Arc<TestDirectory>) -> Node {
    let stop = CancellationToken::new();
    let name = config.node_name.clone();
    let (tunnel, task) = Tunnel::start(config, dir.clone(), stop.clone()).await.expect("tunnel starts");
    Node { tunnel, stop, task, dir, name }
}

/// [`start`], with the tunnel's series in a registry of its own (scrape it with
/// `registry.encode`).
pub async fn start_metered(config: TunnelConfig, dir: Arc<TestDirectory>) -> (Node, AgentRegistry) {
    let mut registry = AgentRegistry::new("test");
    let metrics = Arc::new(TunnelMetrics::register(registry.edgemesh(), 100));
    let stop = CancellationToken::new();
    let name = config.node_name.clone();
    let (tunnel, task) =
        Tunnel::start_with_metrics(config, dir.clone(), stop.clone(), metrics).await.expect("tunnel starts");
    (Node { tunnel, stop, task, dir, name }, registry)
}

/// A sample of `registry`'s text exposition (0 when absent).
pub fn sample(registry: &AgentRegistry, series: &str) -> f64 {
    edgemesh_test_support::scrape::sample(&registry.encode(Format::Text), series).unwrap_or(0.0)
}

/// One byte there and back through a tunnel stream to an echo server.
pub async fn round_trip(s: &mut TunnelStream) {
    s.write_all(b"x").await.unwrap();
    let mut one = [0u8; 1];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut one)).await.expect("echo in time").unwrap();
    assert_eq!(&one, b"x");
}

/// Reads until EOF, then answers with "got <n> bytes" and closes.
pub async fn count_then_answer_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let n = s.read_to_end(&mut buf).await.unwrap_or(0);
                let _ = s.write_all(format!("got {n} bytes").as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

/// B, and A bootstrapped from B, sharing one directory that binds both names.
pub async fn pair(keys: &Keys) -> (Node, Node, Arc<TestDirectory>) {
    let dir = Arc::new(TestDirectory::default());
    dir.bind("a", keys.peer("a"));
    dir.bind("b", keys.peer("b"));
    let b = start(config(keys, "b"), dir.clone()).await;
    let mut ca = config(keys, "a");
    ca.bootstrap = vec![b.addr()];
    let a = start(ca, dir.clone()).await;
    (a, b, dir)
}
