use edgemesh_core::registry::RegistryState;
use edgemesh_core::{RegistryConfig, SourceEvent, build};

use super::*;

/// A snapshot with `web.default` (cluster IP 10.96.0.10, TCP port 80) and
/// `dns.kube-system` (UDP port 53 only) on node "a".
fn snapshot() -> Snapshot {
    let mut state = RegistryState::new(&RegistryConfig {
        vip_cidr: "127.251.0.0/16".parse().unwrap(),
        node_name: "a".into(),
        ..Default::default()
    });
    state.apply(SourceEvent::Apply(
        build::service("default", "web").cluster_ip("10.96.0.10").port("http", 80, 8080).object(),
    ));
    state.apply(SourceEvent::Apply(build::service("kube-system", "dns").udp_port("dns", 53, 53).object()));
    state.take_generation()
}

fn routed(destination: Destination) -> Route {
    let is_node = |name: &str| name == "b" || name == "web.default-node";
    let names = Names { this_node: "A", cluster_domain: "cluster.local", allowed_ports: &[22], is_node: &is_node };
    route(&destination, &snapshot(), &names)
}

fn name(n: &str, port: u16) -> Destination {
    Destination::Name(n.into(), port)
}

#[test]
fn nodes_hosts_by_name_this_node_by_its_own_list() {
    assert_eq!(routed(name("a", 22)), Route::ThisHost(22));
    assert_eq!(routed(name("A.", 22)), Route::ThisHost(22), "case and a trailing dot do not matter");
    assert_eq!(routed(name("a", 2222)), Route::NotAllowed);
    // Another node's list is that node's to apply: any port goes to it.
    assert_eq!(routed(name("b", 22)), Route::NodeHost { node: "b".into(), port: 22 });
    assert_eq!(routed(name("b", 6443)), Route::NodeHost { node: "b".into(), port: 6443 });
    assert_eq!(routed(name("web.default-node", 80)), Route::NodeHost { node: "web.default-node".into(), port: 80 });
}

#[test]
fn services_by_every_name_form_and_address() {
    let web = ServiceKey::new("default", "web");
    let snapshot = snapshot();
    let vip = snapshot.service(&web).unwrap().vip.expect("every service has a VIP here");
    let to_vip = Route::Service { service: web.clone(), addr: SocketAddr::new(vip, 80) };
    for n in ["web.default", "web.default.svc", "web.default.svc.cluster.local", "WEB.default.svc.cluster.local."] {
        assert_eq!(routed(name(n, 80)), to_vip, "{n}");
    }
    assert_eq!(
        routed(Destination::Ip("10.96.0.10:80".parse().unwrap())),
        Route::Service { service: web.clone(), addr: "10.96.0.10:80".parse().unwrap() },
        "a cluster IP stays the address the client chose"
    );
    assert_eq!(routed(Destination::Ip(SocketAddr::new(vip, 80))), to_vip);
    assert_eq!(routed(name("web.default", 81)), Route::NoSuchPort(web.clone()));
    let dns = ServiceKey::new("kube-system", "dns");
    assert_eq!(routed(name("dns.kube-system", 53)), Route::NoSuchPort(dns), "a UDP port is no CONNECT target");
}

#[test]
fn unknown_names_and_addresses() {
    for n in ["nope.default", "web", "web.other", "web.default.svc.other.domain", ".default", "web.", "x.y.z"] {
        assert_eq!(routed(name(n, 80)), Route::Unknown, "{n}");
    }
    for addr in ["10.96.0.11:80", "127.0.0.1:22", "[::1]:22"] {
        assert_eq!(routed(Destination::Ip(addr.parse().unwrap())), Route::Unknown, "{addr}");
    }
}
