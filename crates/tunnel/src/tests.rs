//! Hostile peers, with raw streams that skip the client-side checks of `Tunnel::open_*`.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use libp2p::{PeerId, StreamProtocol, multiaddr::Protocol};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt};

use crate::{
    CancellationToken, Directory, Tunnel, TunnelConfig, TunnelProtocol, load_or_create_identity,
    streams::{HELLO, TCP, UDP},
    wire::{self, Header, Reply},
};

#[derive(Default)]
struct Dir {
    peers: Mutex<HashMap<String, PeerId>>,
    serves: Mutex<HashSet<(SocketAddr, TunnelProtocol)>>,
    host_ports: Mutex<HashSet<u16>>,
    /// True while the directory is still loading its first full view.
    loading: tokio::sync::watch::Sender<bool>,
}

impl Directory for Dir {
    fn peer_of(&self, node: &str) -> Option<PeerId> {
        self.peers.lock().unwrap().get(node).copied()
    }
    fn serves(&self, target: SocketAddr, protocol: TunnelProtocol) -> bool {
        self.serves.lock().unwrap().contains(&(target, protocol))
    }
    fn allows_host_port(&self, port: u16) -> bool {
        self.host_ports.lock().unwrap().contains(&port)
    }
    fn ready(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        let mut loading = self.loading.subscribe();
        Box::pin(async move {
            let _ = loading.wait_for(|loading| !loading).await;
        })
    }
}

struct Net {
    keys: tempfile::TempDir,
    stop: CancellationToken,
}

impl Net {
    fn new() -> Self {
        Net { keys: tempfile::tempdir().unwrap(), stop: CancellationToken::new() }
    }
    fn peer(&self, key: &str) -> PeerId {
        load_or_create_identity(&self.keys.path().join(key)).unwrap().public().to_peer_id()
    }
    async fn start(&self, name: &str, key: &str, dir: Arc<Dir>, bootstrap: Option<&Tunnel>) -> Tunnel {
        self.start_with(name, key, dir, bootstrap, |_| {}).await
    }

    async fn start_with(
        &self,
        name: &str,
        key: &str,
        dir: Arc<Dir>,
        bootstrap: Option<&Tunnel>,
        tweak: impl FnOnce(&mut TunnelConfig),
    ) -> Tunnel {
        let mut c = TunnelConfig::new(name, self.keys.path().join(key));
        c.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
        c.mdns = false;
        // No SSDP search on the host's network.
        c.upnp = false;
        c.connect_timeout = Duration::from_secs(3);
        if let Some(b) = bootstrap {
            c.bootstrap = vec![b.listen_addrs()[0].clone().with(Protocol::P2p(b.peer_id()))];
        }
        tweak(&mut c);
        Tunnel::start(c, dir, self.stop.child_token()).await.unwrap().0
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A TCP server counting the connections it accepted (echoes).
async fn counted_echo() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let n = Arc::new(AtomicUsize::new(0));
    let c = n.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    (addr, n)
}

/// Opens a raw stream from `from` to `to`, skipping every check.
async fn raw(from: &Tunnel, to: PeerId, protocol: StreamProtocol) -> Option<Compat<libp2p::Stream>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if from.ctx.control.is_connected(&to) {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let Ok(o) = from.ctx.control.open(to, protocol) else {
        eprintln!("raw: open refused");
        return None;
    };
    match o.rx.await {
        Ok(Ok(s)) => Some(s.compat()),
        other => {
            eprintln!("raw: {:?}", other.map(|r| r.map(|_| ())));
            None
        }
    }
}

/// The reply byte to a header, or None when the stream ends without one.
async fn reply_to(s: &mut Compat<libp2p::Stream>, bytes: &[u8]) -> Option<u8> {
    let exchange = async {
        s.write_all(bytes).await?;
        s.flush().await?;
        s.read_u8().await
    };
    tokio::time::timeout(Duration::from_secs(10), exchange).await.expect("bounded").ok()
}

fn header(target: SocketAddr, protocol: TunnelProtocol) -> Vec<u8> {
    wire::encode_header(&Header { protocol, target, to_host: false, service: "steal".into() })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_peers_raw_streams_get_nothing() {
    let net = Net::new();
    let dir = Arc::new(Dir::default());
    dir.peers.lock().unwrap().insert("a".into(), net.peer("a"));
    dir.peers.lock().unwrap().insert("b".into(), net.peer("b"));
    let (echo, accepted) = counted_echo().await;
    dir.serves.lock().unwrap().insert((echo, TunnelProtocol::Tcp));
    dir.serves.lock().unwrap().insert((echo, TunnelProtocol::Udp));
    let b = net.start("b", "b", dir.clone(), None).await;

    // An impersonator of "a" and a stranger; both rush a proxy stream before the verdict.
    let mut reached = 0;
    for (name, key) in [("a", "mallory"), ("stranger", "stranger")] {
        let t = net.start(name, key, Arc::new(Dir::default()), Some(&b)).await;
        for proto in [TCP, UDP] {
            let p = if proto == TCP { TunnelProtocol::Tcp } else { TunnelProtocol::Udp };
            if let Some(mut s) = raw(&t, b.peer_id(), proto).await {
                assert_eq!(reply_to(&mut s, &header(echo, p)).await, None, "{name} got a reply");
                reached += 1;
            }
        }
    }
    assert!(reached > 0, "no raw stream reached b: the test proves nothing");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(accepted.load(Ordering::SeqCst), 0, "the endpoint was dialed for an untrusted peer");
    assert!(b.peers().iter().all(|p| !p.trusted || p.node.as_deref() != Some("a")));

    // A trusted peer whose binding is revoked afterwards loses access at once.
    let a = net.start("a", "a", dir.clone(), Some(&b)).await;
    let mut s = raw(&a, b.peer_id(), TCP).await.unwrap();
    assert_eq!(reply_to(&mut s, &header(echo, TunnelProtocol::Tcp)).await, Some(Reply::Ok as u8));
    dir.peers.lock().unwrap().remove("a");
    let mut s = raw(&a, b.peer_id(), TCP).await.unwrap();
    assert_eq!(reply_to(&mut s, &header(echo, TunnelProtocol::Tcp)).await, None);
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_headers_never_crash_or_stall_the_agent() {
    let net = Net::new();
    let dir = Arc::new(Dir::default());
    for n in ["a", "b", "c"] {
        dir.peers.lock().unwrap().insert(n.into(), net.peer(n));
    }
    let (echo, accepted) = counted_echo().await;
    dir.serves.lock().unwrap().insert((echo, TunnelProtocol::Tcp));
    let b = net.start("b", "b", dir.clone(), None).await;
    let a = net.start("a", "a", dir.clone(), Some(&b)).await;
    let bp = b.peer_id();
    // Make sure a is trusted first.
    a.open_tcp("b", echo, "warm-up").await.unwrap();

    // Garbage, wrong version, wrong protocol for the stream, truncated header.
    let cases: Vec<(Vec<u8>, StreamProtocol)> = vec![
        (b"GET / HTTP/1.1\r\n\r\n".to_vec(), TCP),
        (vec![9, 1, 4, 127, 0, 0, 1, 0, 80, 0], TCP),
        (header(echo, TunnelProtocol::Udp), TCP),
        (header(echo, TunnelProtocol::Tcp), UDP),
        (vec![1, 1, 6, 0, 0], TCP),
    ];
    for (bytes, proto) in cases {
        let mut s = raw(&a, bp, proto).await.unwrap();
        let r = reply_to(&mut s, &bytes).await;
        assert!(r == Some(Reply::BadRequest as u8) || r.is_none(), "{bytes:?}: {r:?}");
    }
    // Streams that stop mid-header are closed after the header time limit; hundreds at once
    // do not stall the agent. (yamux lets 256 opened streams wait for their first answer.)
    let mut silent = Vec::new();
    for i in 0..200 {
        let mut s = raw(&a, bp, TCP).await.unwrap_or_else(|| panic!("silent stream {i}"));
        s.write_all(&[1]).await.unwrap();
        s.flush().await.unwrap();
        silent.push(s);
    }
    let started = std::time::Instant::now();
    a.open_tcp("b", echo, "meanwhile").await.expect("still served while others stall");
    assert!(started.elapsed() < Duration::from_secs(1));
    for mut s in silent {
        let mut one = [0u8; 1];
        let r =
            tokio::time::timeout(Duration::from_secs(10), s.read(&mut one)).await.expect("closed by the time limit");
        assert!(matches!(r, Ok(0) | Ok(1) | Err(_)));
    }
    // A garbage hello gets "malformed" and the connection closed.
    let c = net.start("c", "c", dir.clone(), Some(&b)).await;
    let mut h = raw(&c, bp, HELLO).await.unwrap();
    let r = reply_to(&mut h, b"EMH\x01\x00\x00\x00").await;
    assert_eq!(r, Some(wire::HelloStatus::Malformed as u8));
    let cp = c.peer_id().to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while b.peers().iter().any(|p| p.peer_id == cp) {
        assert!(tokio::time::Instant::now() < deadline, "c not disconnected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Only the legitimate opens reached the endpoint.
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_ports_are_the_accepting_nodes_decision() {
    let net = Net::new();
    let (dir_a, dir_b) = (Arc::new(Dir::default()), Arc::new(Dir::default()));
    for dir in [&dir_a, &dir_b] {
        dir.peers.lock().unwrap().insert("a".into(), net.peer("a"));
        dir.peers.lock().unwrap().insert("b".into(), net.peer("b"));
    }
    let (allowed, accepted) = counted_echo().await;
    let (other, other_accepted) = counted_echo().await;
    // b lists `allowed`; a lists `other`, which does not make it reachable on b.
    dir_b.host_ports.lock().unwrap().insert(allowed.port());
    dir_a.host_ports.lock().unwrap().insert(other.port());
    let b = net.start("b", "b", dir_b.clone(), None).await;
    let a = net.start("a", "a", dir_a, Some(&b)).await;

    let mut s = a.open_host("b", allowed.port(), "socks").await.expect("an allowed port of b's host");
    s.write_all(b"ping").await.unwrap();
    let mut got = [0u8; 4];
    s.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"ping");
    match a.open_host("b", other.port(), "socks").await {
        Err(crate::TunnelError::NotServed { node, .. }) => assert_eq!(node, "b"),
        other => panic!("a port b does not list: {:?}", other.map(|_| ())),
    }
    // Not for UDP, nor as an endpoint the directory does not serve.
    let mut udp = raw(&a, b.peer_id(), UDP).await.unwrap();
    let host_udp = wire::encode_header(&Header {
        protocol: TunnelProtocol::Udp,
        target: allowed,
        to_host: true,
        service: "socks".into(),
    });
    assert_eq!(reply_to(&mut udp, &host_udp).await, Some(Reply::NotServed as u8));
    let mut tcp = raw(&a, b.peer_id(), TCP).await.unwrap();
    assert_eq!(reply_to(&mut tcp, &header(allowed, TunnelProtocol::Tcp)).await, Some(Reply::NotServed as u8));
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    assert_eq!(other_accepted.load(Ordering::SeqCst), 0);
}

fn addr_of(t: &Tunnel) -> libp2p::Multiaddr {
    t.listen_addrs()[0].clone().with(Protocol::P2p(t.peer_id()))
}

/// A relay, and node "b" using it; the directory binds "a" and "b" and lets them reach an echo
/// server.
struct RelayAndB {
    dir: Arc<Dir>,
    echo: SocketAddr,
    r: Tunnel,
    relay: libp2p::Multiaddr,
    b: Tunnel,
}

async fn relay_and_b(net: &Net) -> RelayAndB {
    let dir = Arc::new(Dir::default());
    dir.peers.lock().unwrap().insert("a".into(), net.peer("a"));
    dir.peers.lock().unwrap().insert("b".into(), net.peer("b"));
    let (echo, _) = counted_echo().await;
    dir.serves.lock().unwrap().insert((echo, TunnelProtocol::Tcp));
    let r = net.start_with("relay", "r", dir.clone(), None, |c| c.relay_server = true).await;
    let relay = addr_of(&r);
    let b = net.start_with("b", "b", dir.clone(), None, |c| c.relays = vec![relay.clone()]).await;
    RelayAndB { dir, echo, r, relay, b }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_falls_back_to_the_relay_when_the_direct_path_breaks() {
    let net = Net::new();
    let RelayAndB { dir, echo, r, relay, b } = relay_and_b(&net).await;
    let a = net.start_with("a", "a", dir.clone(), None, |c| c.relays = vec![relay.clone()]).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let first = loop {
        match a.open_tcp("b", echo, "x").await {
            Ok(s) => break s,
            Err(e) => {
                assert!(tokio::time::Instant::now() < deadline, "never reached b: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert!(first.is_relayed());
    // Wait for hole punching, then break the direct connection.
    let direct = loop {
        let conns = a.ctx.control.connections(&b.peer_id());
        if let Some((id, _)) = conns.iter().find(|(_, relayed)| !relayed) {
            break *id;
        }
        assert!(tokio::time::Instant::now() < deadline, "no hole punching: {conns:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut on_direct = a.open_tcp("b", echo, "x").await.unwrap();
    assert!(!on_direct.is_relayed(), "a direct connection is preferred");
    a.ctx.commands.send(crate::messages::Command::Close { connection: direct }).unwrap();
    // A stream on the closed connection ends as reset, at once: neither a clean end (the
    // proxy would pass a cut answer off as complete) nor a hang.
    let mut one = [0u8; 1];
    let ended = tokio::time::timeout(Duration::from_secs(5), on_direct.read(&mut one)).await.expect("no hang");
    assert_eq!(ended.expect_err("not a clean end").kind(), std::io::ErrorKind::ConnectionReset);
    while a.ctx.control.connections(&b.peer_id()).iter().any(|(id, _)| *id == direct) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut s = a.open_tcp("b", echo, "x").await.expect("falls back to the relayed connection");
    assert!(s.is_relayed());
    s.write_all(b"still here").await.unwrap();
    let mut buf = [0u8; 10];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"still here");
    // The first (relayed) stream was never disturbed.
    let mut first = first;
    first.write_all(b"1").await.unwrap();
    let mut one = [0u8; 1];
    first.read_exact(&mut one).await.unwrap();
    drop(r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_waits_for_the_directorys_first_full_view() {
    let net = Net::new();
    let (echo, _) = counted_echo().await;
    // B has just started: its directory knows no node yet.
    let dir_b = Arc::new(Dir::default());
    dir_b.loading.send_replace(true);
    dir_b.serves.lock().unwrap().insert((echo, TunnelProtocol::Tcp));
    let b = net.start("b", "b", dir_b.clone(), None).await;
    let dir_a = Arc::new(Dir::default());
    for n in ["a", "b"] {
        dir_a.peers.lock().unwrap().insert(n.into(), net.peer(n));
    }
    let a = net.start("a", "a", dir_a, Some(&b)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let first = loop {
        if let Some((id, _)) = a.ctx.control.connections(&b.peer_id()).first() {
            break *id;
        }
        assert!(tokio::time::Instant::now() < deadline, "a never connected to b");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // A's hello (a loopback round trip) reaches B while it is still loading; B's first full
    // view, binding both names, comes a little later.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for n in ["a", "b"] {
        dir_b.peers.lock().unwrap().insert(n.into(), net.peer(n));
    }
    dir_b.loading.send_replace(false);

    // B accepted A's name on that first connection (no refusal, no new connection).
    let mut s = a.open_tcp("b", echo, "x").await.expect("a reaches b");
    s.write_all(b"hi").await.unwrap();
    let mut buf = [0u8; 2];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"hi");
    let conns = a.ctx.control.connections(&b.peer_id());
    assert!(conns.iter().any(|(id, _)| *id == first), "the first connection survived: {conns:?}");
    let seen = b.peers();
    assert!(seen.iter().any(|p| p.node.as_deref() == Some("a") && p.trusted), "{seen:?}");
}

/// An agent from before TLS (Noise only) and a current one (TLS, then Noise) reach each other
/// whichever dials; two current agents refuse a peer ID other than the one dialed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noise_only_agents_still_connect_and_tls_checks_the_peer_id() {
    let net = Net::new();
    let dir = Arc::new(Dir::default());
    for n in ["old", "new", "new2", "old2"] {
        dir.peers.lock().unwrap().insert(n.into(), net.peer(n));
    }
    let (echo, _) = counted_echo().await;
    dir.serves.lock().unwrap().insert((echo, TunnelProtocol::Tcp));
    let old = net.start_with("old", "old", dir.clone(), None, |c| c.tls = false).await;
    let new = net.start("new", "new", dir.clone(), Some(&old)).await;
    let new2 = net.start("new2", "new2", dir.clone(), None).await;
    let old2 = net.start_with("old2", "old2", dir.clone(), Some(&new2), |c| c.tls = false).await;
    for (from, to) in [(&new, "old"), (&old, "new"), (&old2, "new2"), (&new2, "old2")] {
        let mut s = from.open_tcp(to, echo, "x").await.unwrap_or_else(|e| panic!("to {to}: {e}"));
        s.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
    }

    // "new" dials new2's address expecting another peer ID: the TLS handshake succeeds, the
    // peer ID in the certificate does not match, and the connection is dropped.
    let wrong = net.peer("nobody");
    dir.peers.lock().unwrap().insert("fake".into(), wrong);
    let listen = new2.listen_addrs()[0].clone();
    let liar = net
        .start_with("liar-dialer", "new3", dir.clone(), None, |c| c.bootstrap = vec![listen.with(Protocol::P2p(wrong))])
        .await;
    let e = liar.open_tcp("fake", echo, "x").await.unwrap_err();
    assert!(matches!(e, crate::TunnelError::PeerUnreachable { .. }), "{e}");
    assert!(liar.ctx.control.connections(&new2.peer_id()).is_empty());
    assert!(liar.ctx.control.connections(&wrong).is_empty());
}

/// A node asked to reach another right at its start, while its own connection to the relay is
/// still being made (libp2p's relay client cancels a circuit through a relay it is still
/// dialling), reaches it through the relay once that connection is up: at the first try.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_asked_for_at_start_waits_for_the_relay_connection() {
    let net = Net::new();
    let RelayAndB { dir, echo, r, relay, b } = relay_and_b(&net).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !b.peers().iter().any(|p| p.relay_reserved) {
        assert!(tokio::time::Instant::now() < deadline, "b never reserved a slot: {:?}", b.peers());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let a = net.start_with("a", "a", dir.clone(), None, |c| c.relays = vec![relay.clone()]).await;
    let mut s = a.open_tcp("b", echo, "x").await.expect("b reached through the relay at the first try");
    assert!(s.is_relayed());
    s.write_all(b"hi").await.unwrap();
    let mut buf = [0u8; 2];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"hi");
    drop(r);
}
