//! The agent in-process: the `edgemesh` library's [`Agent`] built with test
//! [`Deps`] (a clock the test moves, a host with no resolvers, a fake
//! `Remote` for other nodes) against the fake API server or a manifests
//! directory, on loopback, without root, nginx or dig. Readiness, drain, a
//! component's failure, cache replay and source outages; and every key
//! family reaching its component.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use edgemesh::config::SourceKind;
use edgemesh::{Agent, Config, Deps, FixedHost};
use edgemesh_core::{Clock, ServiceKey};
use edgemesh_fake_apiserver::{FakeApiServer, Resource};
use edgemesh_proxy::{Remote, RemoteDatagrams, RemoteFuture, RemoteStream};
use edgemesh_test_support::scrape::{promtool_check, sample};
use serde_json::{Value, json};
use support::{eventually, http_get, manifest_dir, service_yaml, unique_vip_cidr, write_manifest};
use tokio_util::sync::CancellationToken;

/// A wall clock the test moves by hand; it panics once `fail` is set (a
/// component that reads it then fails).
#[derive(Clone, Default)]
struct TestClock {
    offset_secs: Arc<AtomicU64>,
    fail: Arc<AtomicBool>,
}

impl TestClock {
    fn clock(&self) -> Clock {
        let (offset, fail) = (self.offset_secs.clone(), self.fail.clone());
        let base = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        Clock::from_fn(move || {
            assert!(!fail.load(Ordering::SeqCst), "the test clock was told to fail");
            base + Duration::from_secs(offset.load(Ordering::SeqCst))
        })
    }

    fn advance(&self, secs: u64) {
        self.offset_secs.fetch_add(secs, Ordering::SeqCst);
    }
}

fn deps(clock: &TestClock) -> Deps {
    Deps {
        clock: clock.clock(),
        host: Arc::new(FixedHost { node_name: Some("test-node".into()), nameservers: Vec::new() }),
        ..Deps::system()
    }
}

/// Loopback ports the kernel picks, a VIP range of this agent's own.
fn config(state_dir: &Path) -> Config {
    let mut c = Config {
        state_dir: state_dir.to_owned(),
        vip_cidr: Some(unique_vip_cidr().parse().unwrap()),
        ..Config::default()
    };
    c.dns.listen = Some("127.0.0.1:0".parse().unwrap());
    c.admin.listen = "127.0.0.1:0".parse().unwrap();
    c.proxy.workers = 1;
    c
}

fn kube_config(state_dir: &Path, api: &FakeApiServer) -> Config {
    let mut c = config(state_dir);
    c.source = SourceKind::Kube;
    c.kube.api = Some(api.url());
    c
}

/// A built agent running on a runtime of its own.
struct Running {
    runtime: tokio::runtime::Runtime,
    dns: SocketAddr,
    admin: SocketAddr,
    stop: CancellationToken,
    run: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    fn start(config: Config, deps: Deps) -> Running {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let agent = runtime.block_on(Agent::build(config, deps)).expect("the agent builds");
        let (dns, admin, stop) = (agent.dns_addr(), agent.admin_addr(), CancellationToken::new());
        let run = Some(runtime.spawn(agent.run(stop.clone().cancelled_owned())));
        Running { runtime, dns, admin, stop, run }
    }

    fn get(&self, path: &str) -> (u16, String) {
        http_get(self.admin, path).unwrap_or_else(|| panic!("GET {path} from the admin endpoint"))
    }

    fn readyz(&self) -> (u16, String) {
        self.get("/readyz")
    }

    fn services(&self) -> Value {
        serde_json::from_str(&self.get("/services").1).unwrap()
    }

    /// The VIP DNS answers for `name.ns.svc.<domain>`, if any.
    fn resolve(&self, name: &str) -> Option<std::net::Ipv4Addr> {
        dns_a(self.dns, name)
    }

    /// Stops the agent and returns how `run` ended.
    fn stop(mut self) -> anyhow::Result<()> {
        self.stop.cancel();
        let run = self.run.take().unwrap();
        self.runtime
            .block_on(async { tokio::time::timeout(Duration::from_secs(10), run).await })
            .expect("the agent drains within 10 s")
            .expect("run does not panic")
    }
}

/// Sends an A query for `name` over UDP; returns the query's length and
/// the reply.
fn ask_dns(server: SocketAddr, name: &str) -> (usize, Vec<u8>) {
    let mut query = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        query.push(u8::try_from(label.len()).expect("a DNS label"));
        query.extend_from_slice(label.as_bytes());
    }
    query.extend_from_slice(&[0, 0, 1, 0, 1]);
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    socket.send_to(&query, server).unwrap();
    let mut buf = vec![0u8; 512];
    let n = socket.recv(&mut buf).expect("a DNS answer");
    buf.truncate(n);
    (query.len(), buf)
}

/// An A query; `None` for NXDOMAIN or no address.
fn dns_a(server: SocketAddr, name: &str) -> Option<std::net::Ipv4Addr> {
    let (_, reply) = ask_dns(server, name);
    let answers = u16::from_be_bytes([reply[6], reply[7]]);
    // One A record at the end of a reply with one answer: its last 4 bytes.
    let rdata = &reply[reply.len() - 4..];
    (answers == 1 && reply[3] & 0x0f == 0).then(|| std::net::Ipv4Addr::new(rdata[0], rdata[1], rdata[2], rdata[3]))
}

/// An echo server on loopback: every connection gets its bytes back.
fn echo_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 || stream.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// Sends `msg` through `addr` and reads it back.
fn echo_through(addr: SocketAddr, msg: &[u8]) -> Option<TcpStream> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(msg).ok()?;
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).ok()?;
    (back == msg).then_some(s)
}

fn service(ns: &str, name: &str) -> Value {
    json!({"metadata": {"name": name, "namespace": ns},
           "spec": {"ports": [{"name": "web", "port": 80, "targetPort": "web"}]}})
}

fn slice(ns: &str, svc: &str, port: u16, node: &str) -> Value {
    json!({"metadata": {"name": format!("{svc}-{port}"), "namespace": ns,
                        "labels": {"kubernetes.io/service-name": svc}},
           "addressType": "IPv4", "ports": [{"name": "web", "port": port}],
           "endpoints": [{"addresses": ["127.0.0.1"], "nodeName": node}]})
}

#[test]
fn not_ready_until_the_source_answers_then_ready_and_serving() {
    let api = FakeApiServer::reserve();
    api.apply(Resource::Services, service("shop", "web"));
    api.apply(Resource::EndpointSlices, slice("shop", "web", echo_server(), "test-node"));
    let state = tempfile::tempdir().unwrap();
    let clock = TestClock::default();
    let agent = Running::start(kube_config(state.path(), &api), deps(&clock));

    let (status, body) = agent.readyz();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("waiting for the first full read of the service source"), "{body}");
    assert_eq!(agent.resolve("web.shop.svc.cluster.local"), None, "nothing served before the source answers");

    api.restart();
    eventually(Duration::from_secs(10), "ready", || (agent.readyz() == (200, "ready (live)\n".into())).then_some(()));
    let vip = agent.resolve("web.shop.svc.cluster.local").expect("web resolves");
    assert!(echo_through(SocketAddr::from((vip, 80)), b"hello").is_some(), "web's VIP proxies to its endpoint");
    agent.stop().unwrap();
}

#[test]
fn stopping_drains_connections_and_releases_every_socket() {
    let (_dir, manifests) = manifest_dir();
    let backend = echo_server();
    write_manifest(&manifests, "web.yaml", &service_yaml("shop", "web", 80, &[backend], ""));
    let state = tempfile::tempdir().unwrap();
    let mut c = config(state.path());
    c.manifests.dir = manifests;
    // The open connection below outlives the drain: closed at its end.
    c.drain_timeout = Duration::from_millis(300);
    let agent = Running::start(c, deps(&TestClock::default()));
    eventually(Duration::from_secs(5), "ready", || (agent.readyz().0 == 200).then_some(()));
    let vip = agent.resolve("web.shop.svc.cluster.local").expect("web resolves");
    let mut open = echo_through(SocketAddr::from((vip, 80)), b"before stop").expect("a proxied connection");
    // The proxy's metrics reach /metrics, the open connection's bytes
    // already counted.
    let web = r#"{service="shop/web",port="80"}"#;
    let expected = [
        (format!("edgemesh_tcp_connections_opened_total{web}"), 1.0),
        (format!("edgemesh_tcp_connections_active{web}"), 1.0),
        (format!("edgemesh_tcp_sent_bytes_total{web}"), 11.0),
        (format!("edgemesh_tcp_received_bytes_total{web}"), 11.0),
    ];
    let scrape = eventually(Duration::from_secs(5), "the connection in /metrics", || {
        let (_, scrape) = agent.get("/metrics");
        expected.iter().all(|(series, value)| sample(&scrape, series) == Some(*value)).then_some(scrape)
    });
    promtool_check(&scrape);
    let (dns, admin) = (agent.dns, agent.admin);

    let started = std::time::Instant::now();
    agent.stop().expect("a requested stop is a clean exit");
    assert!(started.elapsed() < edgemesh::DRAIN_DEADLINE, "drained in {:?}", started.elapsed());
    let mut buf = [0u8; 16];
    assert!(matches!(open.read(&mut buf), Ok(0) | Err(_)), "the proxied connection is closed");
    TcpListener::bind(admin).expect("the admin port is free again");
    UdpSocket::bind(dns).expect("the DNS port is free again");
    TcpListener::bind(dns).expect("the DNS TCP port is free again");
    TcpListener::bind((vip, 80)).expect("the VIP listener is closed");
}

/// With tokio's time paused: the manifests source's polls and every other
/// timer run on virtual time, so nothing here waits for real.
#[tokio::test(start_paused = true)]
async fn a_failing_component_stops_the_agent_and_names_it() {
    let (_dir, manifests) = manifest_dir();
    let state = tempfile::tempdir().unwrap();
    let mut c = config(state.path());
    c.manifests.dir = manifests;
    let clock = TestClock::default();
    let agent = Agent::build(c, deps(&clock)).await.unwrap();
    let (dns, admin, mut snapshots) = (agent.dns_addr(), agent.admin_addr(), agent.snapshots());
    let run = tokio::spawn(agent.run(std::future::pending()));
    snapshots.wait_for(|s| s.synced).await.expect("the agent reads its source");

    // The manifests source reads the clock at its next poll (to report the
    // directory readable): it fails then.
    clock.fail.store(true, Ordering::SeqCst);
    let ended = tokio::time::timeout(Duration::from_secs(60), run).await.expect("the agent stops by itself");
    let error = ended.expect("run does not panic").expect_err("a component failed: the agent stops with an error");
    assert!(error.to_string().contains("the manifests source panicked"), "the error names the component: {error:#}");
    TcpListener::bind(admin).expect("the other components were stopped: the admin port is free");
    UdpSocket::bind(dns).expect("and the DNS port");
}

#[test]
fn a_restart_while_the_api_is_down_serves_the_cache_and_says_how_old() {
    let api = FakeApiServer::start();
    api.apply(Resource::Services, service("shop", "web"));
    api.apply(Resource::EndpointSlices, slice("shop", "web", echo_server(), "test-node"));
    let state = tempfile::tempdir().unwrap();
    let clock = TestClock::default();
    // The same settings (VIP range included) both times.
    let config = kube_config(state.path(), &api);
    let first = Running::start(config.clone(), deps(&clock));
    eventually(Duration::from_secs(10), "live", || (first.readyz().1 == "ready (live)\n").then_some(()));
    let vip = first.resolve("web.shop.svc.cluster.local").expect("web resolves");
    first.stop().unwrap();

    api.stop();
    clock.advance(42);
    let second = Running::start(config, deps(&clock));
    let (_, body) =
        eventually(Duration::from_secs(1), "ready from the cache", || Some(second.readyz()).filter(|r| r.0 == 200));
    assert!(body.starts_with("ready (from cache, 42s old; the source has not answered yet"), "{body}");
    assert_eq!(second.services()["state"]["origin"], "cache");
    assert_eq!(second.resolve("web.shop.svc.cluster.local"), Some(vip), "the cached service keeps its VIP");
    assert!(echo_through(SocketAddr::from((vip, 80)), b"cached").is_some(), "and is proxied");

    // The API returns without `web`: live again, and `web` is gone.
    api.delete(Resource::Services, "shop", "web");
    api.apply(Resource::Services, service("shop", "cart"));
    api.restart();
    eventually(Duration::from_secs(10), "live without web", || {
        (second.readyz().1 == "ready (live)\n" && second.resolve("web.shop.svc.cluster.local").is_none()).then_some(())
    });
    assert!(second.resolve("cart.shop.svc.cluster.local").is_some());
    second.stop().unwrap();
}

#[test]
fn a_source_outage_keeps_serving_and_says_for_how_long() {
    let api = FakeApiServer::start();
    api.apply(Resource::Services, service("shop", "web"));
    api.apply(Resource::EndpointSlices, slice("shop", "web", echo_server(), "test-node"));
    let state = tempfile::tempdir().unwrap();
    let clock = TestClock::default();
    let agent = Running::start(kube_config(state.path(), &api), deps(&clock));
    eventually(Duration::from_secs(10), "live", || (agent.readyz().1 == "ready (live)\n").then_some(()));

    api.stop();
    eventually(Duration::from_secs(10), "the outage noticed", || {
        (agent.services()["state"]["source"]["connection"] == "disconnected").then_some(())
    });
    clock.advance(30);
    let (status, body) = agent.readyz();
    assert_eq!(status, 200, "serving the last known state is the point: still ready");
    assert!(body.starts_with("ready (stale: source disconnected for 30s"), "{body}");
    let vip = agent.resolve("web.shop.svc.cluster.local").expect("web still resolves");
    assert!(echo_through(SocketAddr::from((vip, 80)), b"outage").is_some(), "and is proxied");
    // The metrics say the same: synced once, disconnected now, nothing new for 30 s.
    let metrics = agent.get("/metrics").1;
    let metric = |series| edgemesh_test_support::scrape::sample(&metrics, series);
    assert_eq!(metric("edgemesh_source_connected"), Some(0.0), "{metrics}");
    assert_eq!(metric("edgemesh_source_synced"), Some(1.0), "{metrics}");
    assert_eq!(metric("edgemesh_source_last_update_age_seconds"), Some(30.0), "{metrics}");
    let service_applies = r#"edgemesh_source_events_total{source="kube",kind="Service",action="apply"}"#;
    assert_eq!(metric(service_applies), Some(1.0), "{metrics}");

    api.restart();
    eventually(Duration::from_secs(15), "live again", || (agent.readyz().1 == "ready (live)\n").then_some(()));
    let metrics = agent.get("/metrics").1;
    let connected = edgemesh_test_support::scrape::sample(&metrics, "edgemesh_source_connected");
    assert_eq!(connected, Some(1.0), "{metrics}");
    agent.stop().unwrap();
}

/// Endpoints on other nodes through a test `Remote` (in place of the
/// tunnel): it records where it was asked to go and connects there.
#[derive(Default)]
struct LoopbackRemote {
    opened: Mutex<Vec<(String, SocketAddr)>>,
}

impl Remote for LoopbackRemote {
    fn open_tcp(&self, node: &str, target: SocketAddr, _: &ServiceKey) -> RemoteFuture<RemoteStream> {
        self.opened.lock().unwrap().push((node.to_owned(), target));
        Box::pin(async move { Ok(Box::new(tokio::net::TcpStream::connect(target).await?) as RemoteStream) })
    }

    fn open_udp(&self, _: &str, _: SocketAddr, _: &ServiceKey) -> RemoteFuture<RemoteDatagrams> {
        Box::pin(async { Err(std::io::ErrorKind::Unsupported.into()) })
    }
}

#[test]
fn endpoints_on_other_nodes_go_through_the_remote() {
    let api = FakeApiServer::start();
    let backend = echo_server();
    api.apply(Resource::Services, service("shop", "web"));
    api.apply(Resource::EndpointSlices, slice("shop", "web", backend, "node-b"));
    let state = tempfile::tempdir().unwrap();
    let remote = Arc::new(LoopbackRemote::default());
    let deps = Deps { remote: Some(remote.clone()), ..deps(&TestClock::default()) };
    let agent = Running::start(kube_config(state.path(), &api), deps);
    eventually(Duration::from_secs(10), "live", || (agent.readyz().1 == "ready (live)\n").then_some(()));

    let vip = agent.resolve("web.shop.svc.cluster.local").expect("web resolves");
    assert!(echo_through(SocketAddr::from((vip, 80)), b"far").is_some(), "proxied through the remote");
    let target = SocketAddr::from(([127, 0, 0, 1], backend));
    assert_eq!(*remote.opened.lock().unwrap(), [("node-b".to_owned(), target)]);
    agent.stop().unwrap();
}

/// One behaviour per key family, each with a value other than its default:
/// a key that no longer reached its component would fail here.
#[test]
fn every_key_family_reaches_its_component() {
    let (_dir, manifests) = manifest_dir();
    let backend = echo_server();
    // Served only by endpoints of this node (`nodeName`), balanced by the
    // default strategy the proxy section names.
    let local_only = service_yaml("shop", "web", 80, &[backend], "")
        .replace("nodeName: test-node", "nodeName: edge-7")
        .replace("spec:\n", "spec:\n  internalTrafficPolicy: Local\n");
    write_manifest(&manifests, "web.yaml", &local_only);
    let state = tempfile::tempdir().unwrap();
    let (dns_port, admin_port) = (support::free_port(), support::free_port());
    let yaml = format!(
        "nodeName: edge-7\nvipCidr: {vip}\nstateDir: {state}\nmanifests:\n  dir: {dir}\n  pollInterval: 50ms\n\
         dns:\n  listen: 127.0.0.1:{dns_port}\n  clusterDomain: corp.test\n  serviceTtl: 17\n  negativeTtl: 3\n\
         proxy:\n  defaultStrategy: Random\n  workers: 1\nadmin:\n  listen: 127.0.0.1:{admin_port}\n",
        vip = unique_vip_cidr(),
        state = state.path().display(),
        dir = manifests.display(),
    );
    let config = Config::from_yaml(&yaml).unwrap();
    let vip_cidr = config.vip_cidr();
    let agent = Running::start(config, deps(&TestClock::default()));

    assert_eq!(agent.admin.port(), admin_port, "admin.listen");
    assert_eq!(agent.dns, SocketAddr::from(([127, 0, 0, 1], dns_port)), "dns.listen");
    eventually(Duration::from_secs(5), "ready", || (agent.readyz().0 == 200).then_some(()));
    let vip = agent.resolve("web.shop.svc.corp.test").expect("dns.clusterDomain: web resolves in corp.test");
    assert!(vip_cidr.contains(&std::net::IpAddr::V4(vip)), "vipCidr: {vip} in {vip_cidr}");
    assert_eq!(agent.resolve("web.shop.svc.cluster.local"), None, "not in the default domain");
    assert_eq!(dns_ttl(agent.dns, "web.shop.svc.corp.test"), 17, "dns.serviceTtl");
    assert_eq!(dns_ttl(agent.dns, "nothing.shop.svc.corp.test"), 3, "dns.negativeTtl: the SOA of an NXDOMAIN");
    let services = agent.services();
    assert_eq!(services["services"][0]["strategy"], "Random", "proxy.defaultStrategy: {services}");
    assert!(echo_through(SocketAddr::from((vip, 80)), b"local").is_some(), "nodeName: the endpoint is this node's");
    assert!(state.path().join("cache.redb").exists(), "stateDir holds the cache");
    agent.stop().unwrap();
}

/// The TTL of the first record of the answer (or authority) section.
fn dns_ttl(server: SocketAddr, name: &str) -> u32 {
    let (mut at, buf) = ask_dns(server, name);
    // After the header and the question (as sent): the owner name (labels,
    // or a compression pointer), type and class, then the TTL.
    loop {
        match buf[at] {
            0 => break at += 1,
            len if len & 0xc0 == 0xc0 => break at += 2,
            len => at += 1 + len as usize,
        }
    }
    at += 4;
    u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}
