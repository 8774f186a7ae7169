//! Helpers for the integration tests: a registry-fed server on 127.0.0.1:0,
//! the real `dig`, and a fake upstream resolver.

#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use edgemesh_core::registry::EventSink;
use edgemesh_core::{Object, RegistryHandle, ServiceKey, Snapshot, SourceEvent};
use edgemesh_dns::{DnsConfig, DnsServer};
use edgemesh_metrics::{AgentRegistry, Format};
use edgemesh_test_support::registry::{RunningRegistry, start_registry};
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, SOA};
use hickory_proto::rr::{Name, RData, Record};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;

/// A running DNS server fed by a real registry.
pub struct Harness {
    pub addr: SocketAddr,
    pub sink: EventSink,
    pub snapshots: RegistryHandle,
    /// The agent registry the server's metrics are registered in.
    pub metrics: AgentRegistry,
    shutdown: CancellationToken,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl Harness {
    /// Starts the registry with `objects` applied and the server on
    /// 127.0.0.1:0 with these upstreams.
    pub async fn start(objects: Vec<Object>, upstreams: Vec<SocketAddr>) -> Self {
        Self::start_with(objects, DnsConfig { upstreams, ..config() }).await
    }

    pub async fn start_with(objects: Vec<Object>, config: DnsConfig) -> Self {
        Self::start_bound(objects, |snapshots| async move { DnsServer::bind(config, snapshots).await }).await
    }

    async fn start_bound<F, Fut>(objects: Vec<Object>, bind: F) -> Self
    where
        F: FnOnce(RegistryHandle) -> Fut,
        Fut: std::future::Future<Output = Result<DnsServer, edgemesh_dns::DnsError>>,
    {
        let RunningRegistry { sink, snapshots, .. } = start_registry("9.251.0.0/16");
        let server = bind(snapshots.clone()).await.expect("bind DNS");
        let addr = server.local_addr();
        assert_ne!(addr.port(), 0);
        let mut metrics = AgentRegistry::new("test");
        server.register_metrics(metrics.edgemesh());
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let server = tokio::spawn(async move { server.run(token).await.expect("DNS run") });
        let harness = Self { addr, sink, snapshots, metrics, shutdown, server: Some(server) };
        harness.apply_all(objects).await;
        harness.sink.send(SourceEvent::Synced).await.unwrap();
        harness.wait_for(|s| s.synced).await;
        harness
    }

    /// Applies objects and waits until the registry has published them.
    pub async fn apply_all(&self, objects: Vec<Object>) {
        let before = self.snapshots.borrow().generation;
        let any = !objects.is_empty();
        for object in objects {
            self.sink.send(SourceEvent::Apply(object)).await.unwrap();
        }
        if any {
            self.wait_for(|s| s.generation > before).await;
        }
    }

    pub async fn wait_for(&self, pred: impl FnMut(&Arc<Snapshot>) -> bool) -> Arc<Snapshot> {
        let mut rx = self.snapshots.clone();
        let snap = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(pred)).await.expect("snapshot in time");
        snap.unwrap().clone()
    }

    pub fn vip(&self, ns: &str, name: &str) -> String {
        let snap = self.snapshots.borrow();
        snap.service(&ServiceKey::new(ns, name)).and_then(|s| s.vip).expect("service with a VIP").to_string()
    }

    /// Every metric, in the classic text format (what `curl /metrics` gets).
    pub fn scrape(&self) -> String {
        self.metrics.encode(Format::Text)
    }

    /// Runs `dig` against the server with `args`.
    pub async fn dig(&self, args: &[&str]) -> Dig {
        dig(self.addr, args).await
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        let server = self.server.take().unwrap();
        tokio::time::timeout(Duration::from_secs(5), server).await.expect("server stops in time").unwrap();
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub fn config() -> DnsConfig {
    DnsConfig {
        listen: Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))),
        upstreams: Vec::new(),
        cluster_domain: "cluster.local".into(),
        service_ttl: 5,
        upstream_timeout: Duration::from_secs(1),
        cache_size: 1000,
        ..DnsConfig::default()
    }
}

/// The parts of dig's output the tests look at.
#[derive(Debug, Default)]
pub struct Dig {
    pub raw: String,
    pub status: String,
    pub flags: Vec<String>,
    pub answer: Vec<Vec<String>>,
    pub authority: Vec<Vec<String>>,
    pub additional: Vec<Vec<String>>,
}

impl Dig {
    pub fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    /// The rdata (fields after the type) of answers of type `rtype`, sorted.
    pub fn answers(&self, rtype: &str) -> Vec<String> {
        rdata(&self.answer, rtype)
    }

    pub fn additionals(&self, rtype: &str) -> Vec<String> {
        rdata(&self.additional, rtype)
    }

    /// TTL of the first answer.
    pub fn ttl(&self) -> u32 {
        self.answer[0][1].parse().unwrap()
    }
}

fn rdata(section: &[Vec<String>], rtype: &str) -> Vec<String> {
    let mut out: Vec<String> =
        section.iter().filter(|r| r.get(3).map(String::as_str) == Some(rtype)).map(|r| r[4..].join(" ")).collect();
    out.sort();
    out
}

pub async fn dig(addr: SocketAddr, args: &[&str]) -> Dig {
    let mut cmd = Command::new("dig");
    cmd.arg("-p").arg(addr.port().to_string()).arg(format!("@{}", addr.ip())).args(["+tries=1", "+time=2"]).args(args);
    let output =
        tokio::task::spawn_blocking(move || cmd.output()).await.unwrap().expect("dig runs (apt-get install dnsutils)");
    let raw = String::from_utf8_lossy(&output.stdout).into_owned();
    parse_dig(raw)
}

pub fn parse_dig(raw: String) -> Dig {
    let mut dig = Dig::default();
    let mut section: Option<&str> = None;
    for line in raw.lines() {
        if let Some(rest) = line.split("status: ").nth(1) {
            dig.status = rest.split(',').next().unwrap_or_default().to_string();
        }
        if let Some(rest) = line.strip_prefix(";; flags:") {
            let flags = rest.split(';').next().unwrap_or_default();
            dig.flags = flags.split_whitespace().map(String::from).collect();
        }
        if line.starts_with(";; ANSWER SECTION") {
            section = Some("answer");
            continue;
        }
        if line.starts_with(";; AUTHORITY SECTION") {
            section = Some("authority");
            continue;
        }
        if line.starts_with(";; ADDITIONAL SECTION") {
            section = Some("additional");
            continue;
        }
        if line.trim().is_empty() || line.starts_with(';') {
            if line.trim().is_empty() {
                section = None;
            }
            continue;
        }
        let fields: Vec<String> = line.split_whitespace().map(String::from).collect();
        match section {
            Some("answer") => dig.answer.push(fields),
            Some("authority") => dig.authority.push(fields),
            Some("additional") => dig.additional.push(fields),
            _ => {}
        }
    }
    dig.raw = raw;
    dig
}

// ---- fake upstream ----

/// A tiny authoritative server on 127.0.0.1 (UDP and TCP, same port):
/// - `big.example.`: 80 A records; over UDP only a TC reply;
/// - names starting with `nx.`: NXDOMAIN with an SOA whose minimum is `ttl`;
/// - names starting with `slow.`: answered after 300 ms (UDP);
/// - anything else: one A record `192.0.2.1` with `ttl`.
///
/// Counts queries per transport.
pub struct FakeUpstream {
    pub addr: SocketAddr,
    pub udp_queries: Arc<AtomicUsize>,
    pub tcp_queries: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl FakeUpstream {
    pub async fn start(ttl: u32) -> Self {
        let (udp, tcp) = loop {
            let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
            let port = udp.local_addr().unwrap().port();
            if let Ok(tcp) = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await {
                break (udp, tcp);
            }
        };
        let addr = udp.local_addr().unwrap();
        let udp_queries = Arc::new(AtomicUsize::new(0));
        let tcp_queries = Arc::new(AtomicUsize::new(0));
        let counter = udp_queries.clone();
        let udp = Arc::new(udp);
        let udp_task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, peer)) = udp.recv_from(&mut buf).await else { continue };
                counter.fetch_add(1, Ordering::SeqCst);
                let slow = Message::from_vec(&buf[..n])
                    .ok()
                    .and_then(|m| m.queries.first().map(|q| q.name().to_ascii().to_lowercase().starts_with("slow.")))
                    .unwrap_or(false);
                let Some(reply) = upstream_reply(&buf[..n], ttl, true) else { continue };
                let udp = udp.clone();
                tokio::spawn(async move {
                    if slow {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                    let _ = udp.send_to(&reply, peer).await;
                });
            }
        });
        let counter = tcp_queries.clone();
        let tcp_task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = tcp.accept().await else { continue };
                let counter = counter.clone();
                tokio::spawn(async move {
                    while let Ok(len) = stream.read_u16().await {
                        let mut buf = vec![0u8; usize::from(len)];
                        if stream.read_exact(&mut buf).await.is_err() {
                            return;
                        }
                        counter.fetch_add(1, Ordering::SeqCst);
                        let Some(reply) = upstream_reply(&buf, ttl, false) else { return };
                        let mut framed = u16::try_from(reply.len()).expect("a DNS message").to_be_bytes().to_vec();
                        framed.extend_from_slice(&reply);
                        if stream.write_all(&framed).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self { addr, udp_queries, tcp_queries, tasks: vec![udp_task, tcp_task] }
    }

    pub fn queries(&self) -> usize {
        self.udp_queries.load(Ordering::SeqCst) + self.tcp_queries.load(Ordering::SeqCst)
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn upstream_reply(bytes: &[u8], ttl: u32, udp: bool) -> Option<Vec<u8>> {
    let request = Message::from_vec(bytes).ok()?;
    let query = request.queries.first()?.clone();
    let mut reply = Message::new(request.metadata.id, MessageType::Response, OpCode::Query);
    reply.metadata.recursion_desired = request.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.add_query(query.clone());
    let name = query.name().to_lowercase().to_ascii();
    if name == "big.example." {
        if udp {
            reply.metadata.truncation = true;
        } else {
            for i in 0..80u8 {
                let a = RData::A(A(Ipv4Addr::new(198, 51, 100, i)));
                reply.add_answer(Record::from_rdata(query.name().clone(), ttl, a));
            }
        }
    } else if name.starts_with("nx.") {
        reply.metadata.response_code = ResponseCode::NXDomain;
        let soa = SOA::new(Name::from_ascii("ns.example.").unwrap(), Name::root(), 1, 1, 1, 1, ttl);
        reply.add_authority(Record::from_rdata(Name::from_ascii("example.").unwrap(), 3600, RData::SOA(soa)));
    } else {
        reply.add_answer(Record::from_rdata(query.name().clone(), ttl, RData::A(A(Ipv4Addr::new(192, 0, 2, 1)))));
    }
    reply.to_vec().ok()
}

/// A 127.0.0.1 UDP socket that never answers; keep it alive while used.
pub async fn silent_upstream() -> UdpSocket {
    UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap()
}
