use super::*;
use edgemesh_core::{InternalTrafficPolicy, Protocol, TargetPort};

fn backend(addr: &str) -> Backend {
    Backend { addr: addr.parse().unwrap(), node_name: Some(Arc::from("node-a")) }
}

/// A service entry as the registry would publish it: VIPs `vips` (IPv4
/// and/or IPv6; none in node mode when it has cluster IPs), cluster IPs,
/// and one port of `protocol` with `node_port`, whose endpoints are
/// `backends`.
pub(crate) fn entry(
    vips: &[&str],
    cluster_ips: &[&str],
    protocol: Protocol,
    node_port: Option<u16>,
    backends: &[&str],
) -> ServiceEntry {
    let ips = |list: &[&str]| list.iter().map(|a| a.parse::<IpAddr>().unwrap()).collect::<Vec<_>>();
    let vips = ips(vips);
    ServiceEntry {
        key: ServiceKey::new("default", "web"),
        vip: vips.iter().copied().find(IpAddr::is_ipv4),
        vip6: vips.iter().copied().find(IpAddr::is_ipv6),
        cluster_ips: ips(cluster_ips).into(),
        headless: false,
        service_type: Arc::from(if node_port.is_some() { "NodePort" } else { "ClusterIP" }),
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
            node_port,
            app_protocol: Default::default(),
            backends: backends.iter().map(|a| backend(a)).collect(),
        }]
        .into(),
        endpoints: Box::default(),
        problem: None,
    }
}

/// The addresses a frontend forwards to.
fn targets_of(entry: &ServiceEntry, frontend: &str) -> Vec<String> {
    let t = Targets::for_port(entry, &entry.ports[0], frontend.parse().unwrap(), "node-a");
    t.backends.iter().map(|b| b.addr.to_string()).collect()
}

#[test]
fn a_frontend_forwards_to_endpoints_of_its_own_family() {
    let dual = entry(&[], &["10.96.0.10", "fd00:96::10"], Protocol::Tcp, None, &["10.0.0.1:8080", "[fd00::1]:8080"]);
    assert_eq!(targets_of(&dual, "10.96.0.10"), ["10.0.0.1:8080"]);
    assert_eq!(targets_of(&dual, "fd00:96::10"), ["[fd00::1]:8080"]);
    let udp = entry(&["127.251.0.1", "fd00:9:251::1"], &[], Protocol::Udp, None, &["10.0.0.1:53", "[fd00::1]:53"]);
    assert_eq!(targets_of(&udp, "127.251.0.1"), ["10.0.0.1:53"]);
    assert_eq!(targets_of(&udp, "fd00:9:251::1"), ["[fd00::1]:53"]);
}

/// An IPv6 address of a service whose pods are all IPv4 has no endpoints:
/// refused, and said at debug as the service working as specified (an
/// empty service is still a warning).
#[test]
fn no_endpoint_of_the_frontends_family_is_refused_quietly() {
    let v4_pods = entry(&[], &["10.96.0.10", "fd00:96::10"], Protocol::Tcp, None, &["10.0.0.1:8080"]);
    let port = &v4_pods.ports[0];
    let v6: SocketAddr = "[fd00:96::10]:80".parse().unwrap();
    let pool = Pool::new(v4_pods.key.clone(), v6, Targets::for_port(&v4_pods, port, v6.ip(), "node-a"));
    let targets = pool.targets();
    assert!(targets.backends.is_empty());
    let error = pool.no_backends(&targets);
    assert!(matches!(error, ProxyError::NoBackendsInFamily { family: "IPv6", .. }), "{error:?}");
    assert!(error.is_expected());
    assert!(error.to_string().contains("default/web port 80 has no IPv6 endpoints"), "{error}");

    let empty = entry(&[], &["10.96.0.10"], Protocol::Tcp, None, &[]);
    let v4: SocketAddr = "10.96.0.10:80".parse().unwrap();
    let pool = Pool::new(empty.key.clone(), v4, Targets::for_port(&empty, &empty.ports[0], v4.ip(), "node-a"));
    let error = pool.no_backends(&pool.targets());
    assert!(matches!(error, ProxyError::NoBackends { .. }) && !error.is_expected(), "{error:?}");
}

/// A UDP session opened to an ejected endpoint (the ejection expired, or
/// every endpoint is ejected) does not clear its ejection: only a reply
/// does, so a refusing endpoint's back-off keeps doubling.
#[test]
fn opening_a_udp_session_is_no_proof_of_health() {
    let backends: Arc<[Backend]> = vec![backend("10.0.0.1:53"), backend("10.0.0.2:53")].into();
    let pool = Pool::new(
        ServiceKey::new("default", "dns"),
        "127.251.0.1:53".parse().unwrap(),
        Targets::new(LbStrategy::RoundRobin, backends.clone()),
    );
    let targets = pool.targets();
    let client: IpAddr = "127.0.0.1".parse().unwrap();
    let dead = backends[0].addr;
    let last_tried = |pool: &Pool| *pool.plan(&targets, client, 0).last().unwrap();
    pool.failed(dead);
    for _ in 0..4 {
        assert_eq!(last_tried(&pool), 0, "the ejected endpoint is tried last");
    }
    pool.session_opened(&targets, client, dead);
    for _ in 0..4 {
        assert_eq!(last_tried(&pool), 0, "still ejected after a session was opened to it");
    }
    pool.healthy(&dead);
    let lasts: std::collections::HashSet<usize> = (0..4).map(|_| last_tried(&pool)).collect();
    assert_eq!(lasts.len(), 2, "a reply clears the ejection: round robin again");
}

#[test]
fn log_limiter_lets_one_through_per_interval() {
    let l = LogLimiter::default();
    assert!(l.allow());
    assert!(!l.allow());
    assert!(!l.allow());
}

#[test]
fn pool_update_reports_changes_only() {
    let b1: Arc<[Backend]> = Arc::from(vec![Backend { addr: "10.0.0.1:80".parse().unwrap(), node_name: None }]);
    let pool = Pool::new(
        ServiceKey::new("d", "w"),
        "127.0.0.1:80".parse().unwrap(),
        Targets::new(LbStrategy::RoundRobin, b1.clone()),
    );
    assert!(!pool.update(Targets::new(LbStrategy::RoundRobin, b1.clone())));
    let same_contents: Arc<[Backend]> = Arc::from(b1.to_vec());
    assert!(!pool.update(Targets::new(LbStrategy::RoundRobin, same_contents)), "equal lists are not a change");
    assert!(pool.update(Targets::new(LbStrategy::Random, b1.clone())));
    assert!(pool.update(Targets::new(LbStrategy::Random, Arc::from(Vec::new()))));
    assert!(pool.targets().backends.is_empty());
    assert!(pool.update(Targets::new(LbStrategy::ConsistentHash, b1)));
    assert!(pool.targets().ring.is_some(), "a consistent-hash port has its ring");
}

/// What `edgemesh status service` shows: each endpoint's failures since its
/// last success and how long it stays ejected; a success clears both.
#[tokio::test(start_paused = true)]
async fn endpoint_health_reports_ejections_and_failures() {
    let backends: Arc<[Backend]> = vec![backend("10.0.0.1:80"), backend("10.0.0.2:80")].into();
    let pool = Pool::new(
        ServiceKey::new("default", "web"),
        "127.251.0.1:80".parse().unwrap(),
        Targets::new(LbStrategy::RoundRobin, backends.clone()),
    );
    let health = |pool: &Pool| {
        pool.endpoint_health().into_iter().map(|e| (e.consecutive_failures, e.ejected_for_seconds)).collect::<Vec<_>>()
    };
    assert_eq!(health(&pool), [(0, None), (0, None)], "no failure: all healthy");
    pool.failed(backends[0].addr);
    assert_eq!(health(&pool), [(1, Some(1.0)), (0, None)], "ejected for the base back-off");
    tokio::time::advance(Duration::from_millis(1500)).await;
    pool.failed(backends[0].addr);
    assert_eq!(health(&pool), [(2, Some(2.0)), (0, None)], "a failed retry doubles it");
    tokio::time::advance(Duration::from_secs(3)).await;
    assert_eq!(health(&pool), [(2, None), (0, None)], "ejection over; the failures stay until a success");
    pool.healthy(&backends[0].addr);
    assert_eq!(health(&pool), [(0, None), (0, None)]);
    assert_eq!(pool.endpoint_health()[1].address, backends[1].addr);
}
