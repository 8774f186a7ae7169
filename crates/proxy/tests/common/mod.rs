//! Test harness: a real registry fed through its source sink, the proxy on a
//! VIP range of the test's own, and real TCP backends on 127.0.0.1.

#![allow(dead_code)]

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use edgemesh_core::registry::EventSink;
use edgemesh_core::{LbStrategy, Object, ObjectKey, ObjectKind, RegistryConfig, ServiceKey, Snapshot, SourceEvent};
use edgemesh_metrics::{AgentRegistry, Format};
use edgemesh_proxy::{Proxy, ProxyConfig, ProxyStatus};
use edgemesh_test_support::scrape::sample;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const NS: &str = "default";
/// Service port used by the tests (unprivileged).
pub const PORT: u16 = 8080;
/// How long a test waits for the proxy to catch up.
pub const WAIT: Duration = Duration::from_secs(5);

pub use edgemesh_test_support::eventually;
// (Test binaries that use none of them would warn.)
#[allow(unused_imports)]
pub use edgemesh_test_support::loopback::{closed_tcp_port, closed_udp_port, tcp_echo, udp_echo};
use edgemesh_test_support::registry::start_registry_with;

pub struct Harness {
    pub sink: EventSink,
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    pub status: Arc<ProxyStatus>,
    pub shutdown: CancellationToken,
    pub proxy: Option<JoinHandle<()>>,
    /// Kept so the registry outlives the proxy's receiver.
    _registry_rx: watch::Receiver<Arc<Snapshot>>,
}

/// A registry on `127.77.<net>.0/24` and a proxy following it.
pub async fn start(net: u8, strategy: LbStrategy) -> Harness {
    start_with(
        net,
        strategy,
        ProxyConfig { connect_timeout: Duration::from_secs(2), max_connections: 1000, ..ProxyConfig::default() },
    )
    .await
}

pub async fn start_with(net: u8, strategy: LbStrategy, config: ProxyConfig) -> Harness {
    let mut h = start_registry(net, strategy);
    h.start_proxy(config);
    h
}

/// A registry without a proxy yet (see [`Harness::start_proxy`]).
pub fn start_registry(net: u8, strategy: LbStrategy) -> Harness {
    let registry = start_registry_with(RegistryConfig {
        vip_cidr: format!("127.77.{net}.0/24").parse().unwrap(),
        default_strategy: strategy,
        ..Default::default()
    });
    Harness {
        sink: registry.sink,
        _registry_rx: registry.snapshots.clone(),
        snapshots: registry.snapshots,
        status: Arc::new(ProxyStatus::default()),
        shutdown: CancellationToken::new(),
        proxy: None,
    }
}

impl Harness {
    pub fn start_proxy(&mut self, config: ProxyConfig) {
        self.start_proxy_through(config, None);
    }

    /// Starts the proxy with `remote` carrying connections to endpoints on
    /// other nodes.
    pub fn start_proxy_through(&mut self, config: ProxyConfig, remote: Option<Arc<dyn edgemesh_proxy::Remote>>) {
        let proxy = self.proxy_through(config, remote);
        self.run_proxy(proxy);
    }

    /// Starts the proxy (through `remote`, if any) with its metrics in an
    /// agent's registry, at most `max_services` service labels; returns
    /// the registry to scrape.
    pub fn start_counted_proxy(
        &mut self,
        config: ProxyConfig,
        remote: Option<Arc<dyn edgemesh_proxy::Remote>>,
        max_services: usize,
    ) -> AgentRegistry {
        let mut registry = AgentRegistry::new("test");
        let proxy = self.proxy_through(config, remote).with_metrics(registry.edgemesh(), max_services);
        self.run_proxy(proxy);
        registry
    }

    fn proxy_through(&self, config: ProxyConfig, remote: Option<Arc<dyn edgemesh_proxy::Remote>>) -> Proxy {
        let proxy = Proxy::new(config, self.snapshots.clone());
        match remote {
            Some(remote) => proxy.with_remote(remote, Duration::from_secs(2)),
            None => proxy,
        }
    }

    pub fn run_proxy(&mut self, proxy: Proxy) {
        self.status = proxy.status();
        self.proxy = Some(tokio::spawn(proxy.run(self.shutdown.clone())));
    }

    /// Sends `object` and waits until the proxy has applied a snapshot in
    /// which `done` holds.
    pub async fn apply(&mut self, object: Object, done: impl Fn(&Snapshot) -> bool) {
        self.sink.send(SourceEvent::Apply(object)).await.unwrap();
        self.settle(done).await;
    }

    pub async fn delete(&mut self, kind: ObjectKind, name: &str, done: impl Fn(&Snapshot) -> bool) {
        self.sink.send(SourceEvent::Delete(ObjectKey { kind, namespace: NS.into(), name: name.into() })).await.unwrap();
        self.settle(done).await;
    }

    /// Waits until the registry published a snapshot where `done` holds and
    /// the proxy applied it.
    pub async fn settle(&mut self, done: impl Fn(&Snapshot) -> bool) {
        let generation = tokio::time::timeout(Duration::from_secs(5), self.snapshots.wait_for(|s| done(s)))
            .await
            .expect("registry publishes the change")
            .unwrap()
            .generation;
        self.wait_applied(generation).await;
    }

    pub async fn wait_applied(&self, generation: u64) {
        let status = self.status.clone();
        eventually("proxy applies the snapshot", WAIT, || {
            let status = status.clone();
            async move { (status.has_applied(generation)).then_some(()) }
        })
        .await;
    }

    pub fn vip(&self, name: &str) -> IpAddr {
        self.snapshots.borrow().service(&ServiceKey::new(NS, name)).and_then(|s| s.vip).expect("service has a VIP")
    }

    pub fn addr(&self, name: &str) -> SocketAddr {
        SocketAddr::new(self.vip(name), PORT)
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.proxy.take() {
            tokio::time::timeout(Duration::from_secs(5), task).await.expect("proxy stops").unwrap();
        }
    }
}

/// Whether `name` has `n` backends in `snapshot`.
pub fn has_backends(name: &str, n: usize) -> impl Fn(&Snapshot) -> bool {
    let key = ServiceKey::new(NS, name);
    move |s| s.service(&key).is_some_and(|e| e.vip.is_some() && e.ports.first().is_some_and(|p| p.backends.len() == n))
}

pub fn exists(name: &str) -> impl Fn(&Snapshot) -> bool {
    let key = ServiceKey::new(NS, name);
    move |s| s.service(&key).is_some_and(|e| e.vip.is_some())
}

pub fn gone(name: &str) -> impl Fn(&Snapshot) -> bool {
    let key = ServiceKey::new(NS, name);
    move |s| s.service(&key).is_none()
}

/// The service object with one TCP port named `http`.
pub fn service(name: &str) -> Object {
    edgemesh_core::build::service(NS, name).port("http", PORT, 80).object()
}

/// One EndpointSlice per backend (each has its own port on 127.0.0.1).
pub fn slice_for(service: &str, index: usize, backend: SocketAddr) -> Object {
    edgemesh_core::build::slice(NS, &format!("{service}-{index}"), service)
        .endpoint(&backend.ip().to_string(), "node-a")
        .port("http", backend.port())
        .object()
}

/// The service and one slice per (backend, node name) (a UDP port `p` or a
/// TCP port `http`), waiting until the proxy serves them.
pub async fn add_on_nodes(h: &mut Harness, service: Object, name: &str, backends: &[(SocketAddr, &str)], udp: bool) {
    h.apply(service, exists(name)).await;
    for (i, (b, node)) in backends.iter().enumerate() {
        let s = edgemesh_core::build::slice(NS, &format!("{name}-{i}"), name).endpoint(&b.ip().to_string(), node);
        let s = if udp { s.udp_port("p", b.port()) } else { s.port("http", b.port()) };
        h.sink.send(SourceEvent::Apply(s.object())).await.unwrap();
    }
    h.settle(has_backends(name, backends.len())).await;
}

/// Service and its slices, waiting until the proxy serves them.
pub async fn add_service(h: &mut Harness, name: &str, backends: &[SocketAddr]) {
    h.apply(service(name), exists(name)).await;
    for (i, b) in backends.iter().enumerate() {
        h.sink.send(SourceEvent::Apply(slice_for(name, i, *b))).await.unwrap();
    }
    h.settle(has_backends(name, backends.len())).await;
}

/// A backend that writes its identity, half-closes, and drains the client.
pub async fn identity_backend(id: &'static str) -> SocketAddr {
    identity_backend_on("127.0.0.1:0", id).await
}

/// [`identity_backend`] bound to `bind` (e.g. `[::1]:0`).
pub async fn identity_backend_on(bind: &str, id: &'static str) -> SocketAddr {
    let listener = TcpListener::bind(bind).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let _ = s.write_all(id.as_bytes()).await;
                let _ = s.shutdown().await;
                let mut sink = [0u8; 256];
                while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
            });
        }
    });
    addr
}

/// A backend that reads until EOF, then replies `<id>:<bytes read>` and
/// closes.
pub async fn reply_after_eof_backend(id: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let mut got = Vec::new();
                if s.read_to_end(&mut got).await.is_ok() {
                    let _ = s.write_all(format!("{id}:{}", got.len()).as_bytes()).await;
                }
            });
        }
    });
    addr
}

/// A listener with a backlog of 0 whose queue is full and which never
/// accepts: connects to it are silently dropped and time out. Keep the
/// returned socket and connections for as long as it should stay stuck.
pub async fn stuck_endpoint() -> (SocketAddr, socket2::Socket, Vec<TcpStream>) {
    let stuck = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    stuck.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into()).unwrap();
    stuck.listen(0).unwrap();
    let addr = stuck.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_millis(100), TcpStream::connect(addr)).await {
            Ok(Ok(s)) => fillers.push(s),
            _ => break,
        }
        assert!(fillers.len() < 10, "the accept queue should fill after a connection or two");
    }
    (addr, stuck, fillers)
}

/// A client read ended by a reset or an immediate close.
pub fn is_reset_or_eof(r: &io::Result<usize>) -> bool {
    match r {
        Ok(0) => true,
        Err(e) => matches!(e.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted),
        Ok(_) => false,
    }
}

/// Connects and reads once: how a refused-by-the-proxy connection ends. The
/// reset can arrive before tokio's connect returns, so a reset from connect
/// counts as well.
pub async fn connect_and_read(addr: std::net::SocketAddr) -> io::Result<usize> {
    let mut s = TcpStream::connect(addr).await?;
    tokio::time::timeout(Duration::from_secs(1), s.read(&mut [0u8; 16])).await.expect("closed at once")
}

/// `name{service="default/<service>",port="8080"}`.
pub fn series(name: &str, service: &str) -> String {
    let service = if service == "other" { service.to_owned() } else { format!("{NS}/{service}") };
    format!("{name}{{service=\"{service}\",port=\"{PORT}\"}}")
}

pub fn failed(service: &str, reason: &str) -> String {
    format!("edgemesh_tcp_connections_failed_total{{service=\"{NS}/{service}\",port=\"{PORT}\",reason=\"{reason}\"}}")
}

/// Waits until every sample in `expected` has its value (`None`: absent),
/// or fails showing the scrape.
pub async fn settles(registry: &AgentRegistry, expected: &[(String, Option<f64>)]) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = registry.encode(Format::Text);
        let wrong: Vec<_> = expected
            .iter()
            .filter(|(series, value)| sample(&text, series) != *value)
            .map(|(series, value)| format!("{series}: want {value:?}, have {:?}", sample(&text, series)))
            .collect();
        if wrong.is_empty() {
            return text;
        }
        assert!(Instant::now() < deadline, "not reached in {WAIT:?}:\n{}\n--- the scrape:\n{text}", wrong.join("\n"));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn is(series: String, value: f64) -> (String, Option<f64>) {
    (series, Some(value))
}

/// Connects and returns everything the backend sent before closing.
pub async fn ask(addr: SocketAddr) -> io::Result<String> {
    let mut s = TcpStream::connect(addr).await?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out)).await??;
    Ok(out)
}

pub fn load(counter: &std::sync::atomic::AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// Sends `total` sequence numbers through the connected `client` with at
/// most 32 unanswered at a time (so no socket buffer on the way overflows;
/// loopback loses nothing otherwise), and checks that every reply comes back
/// in order as `prefix` bytes of the echo's own followed by the number.
pub async fn paced_stream(client: &tokio::net::UdpSocket, total: u32, prefix: usize) {
    const WINDOW: u32 = 32;
    let (mut sent, mut received) = (0u32, 0u32);
    let mut buf = [0u8; 64];
    while received < total {
        while sent < total && sent - received < WINDOW {
            client.send(&sent.to_be_bytes()).await.unwrap();
            sent += 1;
        }
        let n = tokio::time::timeout(Duration::from_secs(2), client.recv(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("datagram lost: {received} of {sent} answered"))
            .unwrap();
        assert_eq!(n, prefix + 4);
        let seq = u32::from_be_bytes(buf[prefix..prefix + 4].try_into().unwrap());
        assert_eq!(seq, received, "in order on loopback");
        received += 1;
    }
}
