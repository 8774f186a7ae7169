//! Table tests of what goes to the kernel and what stays on the agent.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use edgemesh_core::{
    AppProtocol, Backend, HashKey, InternalTrafficPolicy, LbStrategy, Protocol, ResolvedPort, ServiceEntry, ServiceKey,
    SessionAffinity, TargetPort, TrafficDistribution,
};
use edgemesh_ebpf::{FastBackend, FastService, Pick, ServicePort};

use super::{Route, ViaAgent, routes};

const NODE: &str = "node-a";
const VIP: &str = "9.251.0.7";
const CLUSTER_IP: &str = "10.96.0.10";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A service with VIP 9.251.0.7 and cluster IP 10.96.0.10, port 80 (TCP or
/// UDP) to `backends` ("address@node", node empty for none).
fn service(protocol: Protocol, backends: &[&str]) -> ServiceEntry {
    let backends: Vec<Backend> = backends
        .iter()
        .map(|b| {
            let (a, node) = b.split_once('@').unwrap();
            Backend { addr: addr(a), node_name: (!node.is_empty()).then(|| Arc::from(node)) }
        })
        .collect();
    ServiceEntry {
        key: ServiceKey::new("default", "web"),
        vip: Some(VIP.parse().unwrap()),
        vip6: None,
        cluster_ips: vec![CLUSTER_IP.parse::<IpAddr>().unwrap()].into(),
        headless: false,
        service_type: Arc::from("ClusterIP"),
        strategy: LbStrategy::RoundRobin,
        hash_key: HashKey::SourceIp,
        session_affinity: SessionAffinity::None,
        internal_traffic_policy: InternalTrafficPolicy::Cluster,
        traffic_distribution: None,
        ip_families: Box::default(),
        ip_family_policy: None,
        udp_idle_timeout: edgemesh_core::DEFAULT_UDP_IDLE_TIMEOUT,
        http: Default::default(),
        ports: vec![ResolvedPort {
            name: Arc::from("p"),
            protocol,
            port: 80,
            target_port: TargetPort::Number(8080),
            node_port: None,
            app_protocol: AppProtocol::Tcp,
            backends: backends.into(),
        }]
        .into(),
        endpoints: Box::default(),
        problem: None,
    }
}

fn tcp(ip: &str) -> ServicePort {
    ServicePort::tcp(SocketAddr::new(ip.parse().unwrap(), 80))
}

fn kernel(ip: &str, backends: &[&str]) -> Route {
    let backends = backends.iter().map(|b| FastBackend { addr: addr(b), host_only: addr(b).ip().is_loopback() });
    let service = FastService { backends: backends.collect(), ..FastService::via_agent(addr("9.251.0.7:80")) };
    Route { port: tcp(ip), service, via_agent: None }
}

fn agent(ip: &str, why: ViaAgent) -> Route {
    Route { port: tcp(ip), service: FastService::via_agent(addr("9.251.0.7:80")), via_agent: Some(why) }
}

fn none() -> HashSet<SocketAddr> {
    HashSet::new()
}

#[test]
fn local_endpoints_go_to_the_kernel_on_the_vip_and_the_cluster_ip() {
    let entry = service(Protocol::Tcp, &["10.0.1.1:8080@node-a", "127.0.0.1:8081@node-a", "10.0.1.3:8080@"]);
    let all = ["10.0.1.1:8080", "127.0.0.1:8081", "10.0.1.3:8080"];
    assert_eq!(routes(&entry, NODE, &none()), vec![kernel(VIP, &all), kernel(CLUSTER_IP, &all)]);
    let r = &routes(&entry, NODE, &none())[0];
    assert_eq!(r.service.backends.iter().filter(|b| b.host_only).count(), 1, "only the loopback endpoint is host-only");
}

#[test]
fn what_the_kernel_cannot_decide_goes_to_the_agent_and_the_vip_keeps_no_entry() {
    type Change = fn(&mut ServiceEntry);
    type Case<'a> = (&'a str, &'a [&'a str], Change, &'a [&'a str], ViaAgent);
    let cases: Vec<Case> = vec![
        ("remote endpoint", &["10.0.1.1:8080@node-a", "10.0.2.1:8080@node-b"], |_| {}, &[], ViaAgent::RemoteEndpoint),
        (
            "consistent hash",
            &["10.0.1.1:8080@node-a"],
            |e| e.strategy = LbStrategy::ConsistentHash,
            &[],
            ViaAgent::Strategy(LbStrategy::ConsistentHash),
        ),
        (
            "least request",
            &["10.0.1.1:8080@node-a"],
            |e| e.strategy = LbStrategy::LeastRequest,
            &[],
            ViaAgent::Strategy(LbStrategy::LeastRequest),
        ),
        (
            "http port",
            &["10.0.1.1:8080@node-a"],
            |e| {
                let mut ports = e.ports.to_vec();
                ports[0].app_protocol = AppProtocol::Http1;
                e.ports = ports.into();
            },
            &[],
            ViaAgent::Http,
        ),
        (
            "ejected endpoint",
            &["10.0.1.1:8080@node-a", "10.0.1.2:8080@node-a"],
            |_| {},
            &["10.0.1.2:8080"],
            ViaAgent::Ejected,
        ),
        ("no endpoint", &[], |_| {}, &[], ViaAgent::NoEndpoint),
        (
            "local policy, no local endpoint",
            &["10.0.2.1:8080@node-b"],
            |e| e.internal_traffic_policy = InternalTrafficPolicy::Local,
            &[],
            ViaAgent::NoEndpoint,
        ),
    ];
    for (name, backends, change, ejected, why) in cases {
        let mut entry = service(Protocol::Tcp, backends);
        change(&mut entry);
        let ejected: HashSet<SocketAddr> = ejected.iter().map(|a| addr(a)).collect();
        assert_eq!(routes(&entry, NODE, &ejected), vec![agent(CLUSTER_IP, why)], "{name}");
    }
}

#[test]
fn topology_leaves_the_kernel_only_local_endpoints() {
    // internalTrafficPolicy: Local drops the remote endpoint.
    let mut entry = service(Protocol::Tcp, &["10.0.1.1:8080@node-a", "10.0.2.1:8080@node-b"]);
    entry.internal_traffic_policy = InternalTrafficPolicy::Local;
    assert_eq!(routes(&entry, NODE, &none())[1], kernel(CLUSTER_IP, &["10.0.1.1:8080"]));
    // PreferClose uses the remote one only while no local one is healthy.
    let mut entry = service(Protocol::Tcp, &["10.0.1.1:8080@node-a", "10.0.2.1:8080@node-b"]);
    entry.traffic_distribution = Some(TrafficDistribution::PreferClose);
    assert_eq!(routes(&entry, NODE, &none())[1], kernel(CLUSTER_IP, &["10.0.1.1:8080"]));
    let ejected: HashSet<SocketAddr> = [addr("10.0.1.1:8080")].into();
    assert_eq!(routes(&entry, NODE, &ejected), vec![agent(CLUSTER_IP, ViaAgent::Ejected)]);
}

#[test]
fn strategy_affinity_protocol_and_family_carry_over() {
    let mut entry = service(Protocol::Udp, &["10.0.1.1:5353@node-a", "[fd00::1]:5353@node-a"]);
    entry.strategy = LbStrategy::Random;
    entry.session_affinity = SessionAffinity::ClientIp { timeout_seconds: 30 };
    entry.cluster_ips = vec![CLUSTER_IP.parse().unwrap(), "fd00:96::10".parse().unwrap()].into();
    let routes = routes(&entry, NODE, &none());
    assert_eq!(routes.len(), 3, "the VIP and both cluster IPs: {routes:?}");
    for r in &routes {
        assert_eq!(r.port.protocol, edgemesh_ebpf::Protocol::Udp);
        assert_eq!(r.service.pick, Pick::Random);
        assert_eq!(r.service.affinity, Some(Duration::from_secs(30)));
        assert_eq!(r.service.backends.len(), 1, "only endpoints of the address' family: {r:?}");
        assert_eq!(r.service.backends[0].addr.is_ipv6(), r.port.addr.is_ipv6());
    }
    // No IPv6 VIP: an IPv6 cluster IP has no agent listener to fall back to.
    assert_eq!(routes[2].service.agent, None);
}

#[test]
fn headless_services_sctp_ports_and_services_without_a_vip_that_need_the_agent_get_nothing() {
    let mut entry = service(Protocol::Tcp, &["10.0.1.1:8080@node-a"]);
    entry.headless = true;
    assert_eq!(routes(&entry, NODE, &none()), vec![]);
    let entry = service(Protocol::Sctp, &["10.0.1.1:8080@node-a"]);
    assert_eq!(routes(&entry, NODE, &none()), vec![]);
    let mut entry = service(Protocol::Tcp, &["10.0.2.1:8080@node-b"]);
    entry.vip = None;
    assert_eq!(routes(&entry, NODE, &none()), vec![], "nowhere to send it: the cluster IP is left alone");
}
