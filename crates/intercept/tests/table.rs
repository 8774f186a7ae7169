//! The interceptor against real nftables, in a network namespace made for
//! each test (as root; CI runs as root): 10,000 services are set elements,
//! one more service is one transaction of its own elements, a failed
//! transaction is repaired by a rebuild, and the table goes at stop.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use edgemesh_core::object::{ObjectMeta, ServicePortSpec};
use edgemesh_core::registry::RegistryState;
use edgemesh_core::{
    LbStrategy, Object, ObjectKey, ObjectKind, Protocol, RegistryConfig, ServiceObject, SourceEvent, TargetPort,
};
use edgemesh_intercept::{InterceptSetup, Interceptor, Nft, TableScope, TableSpec};
use edgemesh_test_support::netns::Netns;

/// How many elements `set` of table `inet table` holds.
fn element_count(ns: &Netns, table: &str, set: &str) -> usize {
    ns.set_elements(table, set).unwrap_or_else(|| panic!("set {set} of table {table} exists")).len()
}

fn service(i: u32) -> Object {
    let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + i + 1);
    Object::Service(ServiceObject {
        meta: ObjectMeta { namespace: "default".into(), name: format!("svc-{i}"), ..Default::default() },
        cluster_ips: vec![IpAddr::V4(ip)],
        ports: vec![ServicePortSpec {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port: 80,
            target_port: TargetPort::Number(8080),
            node_port: None,
            app_protocol: None,
        }],
        service_type: "ClusterIP".into(),
        ..Default::default()
    })
}

/// A registry with VIPs outside the loopback range (UDP's DNAT targets).
fn node_registry() -> RegistryState {
    RegistryState::new(&RegistryConfig {
        vip_cidr: "9.251.0.0/16".parse().unwrap(),
        default_strategy: LbStrategy::RoundRobin,
        ..Default::default()
    })
}

/// Service `i` as a NodePort service, its port on `node_port`.
fn node_port_service(i: u32, node_port: u16) -> ServiceObject {
    let Object::Service(mut svc) = service(i) else { unreachable!() };
    svc.service_type = "NodePort".into();
    svc.ports[0].node_port = Some(node_port);
    svc
}

fn config(ns: &Netns) -> InterceptSetup {
    InterceptSetup {
        table: Some(TableSpec { name: "em_test".into(), port: 15006, mark: 0x454d, scope: TableScope::Every }),
        other_mode_table: None,
        nft: Nft::in_netns(&ns.name),
        device: None,
    }
}

#[tokio::test]
async fn ten_thousand_services_then_one_more_is_one_small_transaction() {
    let ns = Netns::new("ic");
    let mut state = RegistryState::new(&RegistryConfig {
        vip_cidr: "127.240.0.0/14".parse().unwrap(),
        default_strategy: LbStrategy::RoundRobin,
        ..Default::default()
    });
    for i in 0..10_000 {
        state.apply(SourceEvent::Apply(service(i)));
    }
    let snapshot = state.take_generation();
    let mut interceptor = Interceptor::start(config(&ns)).await.unwrap();
    let status = interceptor.status();
    let start = Instant::now();
    interceptor.reconcile(&snapshot).await.unwrap();
    eprintln!("10,000 services (20,000 elements) installed in {:?}", start.elapsed());
    assert_eq!(element_count(&ns, "em_test", "tcp4"), 20_000, "cluster IP and VIP of each service");

    state.apply(SourceEvent::Apply(service(10_000)));
    let snapshot = state.take_generation();
    let transactions = status.transactions.load(Ordering::Relaxed);
    let start = Instant::now();
    interceptor.reconcile(&snapshot).await.unwrap();
    let took = start.elapsed();
    eprintln!("one more service in {took:?}");
    assert_eq!(status.transactions.load(Ordering::Relaxed), transactions + 1, "one transaction");
    assert_eq!(element_count(&ns, "em_test", "tcp4"), 20_002);
    assert!(took < Duration::from_secs(2), "adding one service took {took:?}");

    state.apply(SourceEvent::Delete(ObjectKey {
        kind: ObjectKind::Service,
        namespace: "default".into(),
        name: "svc-17".into(),
    }));
    interceptor.reconcile(&state.take_generation()).await.unwrap();
    assert_eq!(element_count(&ns, "em_test", "tcp4"), 20_000);
    assert_eq!(status.elements.load(Ordering::Relaxed), 20_000);

    interceptor.remove().await.unwrap();
    assert!(!ns.nft(&["list", "tables"]).stdout.windows(7).any(|w| w == b"em_test"), "table removed");
}

#[tokio::test]
async fn a_table_deleted_behind_the_agents_back_is_rebuilt() {
    let ns = Netns::new("ic");
    let mut state = RegistryState::new(&RegistryConfig {
        vip_cidr: "127.240.0.0/14".parse().unwrap(),
        default_strategy: LbStrategy::RoundRobin,
        ..Default::default()
    });
    state.apply(SourceEvent::Apply(service(1)));
    let mut interceptor = Interceptor::start(config(&ns)).await.unwrap();
    interceptor.reconcile(&state.take_generation()).await.unwrap();
    assert!(ns.nft(&["delete", "table", "inet", "em_test"]).status.success());
    state.apply(SourceEvent::Apply(service(2)));
    let next = state.take_generation();
    let err = interceptor.reconcile(&next).await.unwrap_err();
    assert!(err.to_string().contains("nft failed"), "{err}");
    // The next attempt rebuilds the whole table from the snapshot.
    interceptor.reconcile(&next).await.unwrap();
    assert_eq!(element_count(&ns, "em_test", "tcp4"), 4);
    assert_eq!(interceptor.status().failures.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn udp_cluster_ips_and_node_ports_map_to_the_vip_and_tcp_node_ports_are_a_set_of_ports() {
    let ns = Netns::new("ic");
    let mut state = node_registry();
    let mut svc = node_port_service(1, 30080);
    svc.ports.push(ServicePortSpec {
        name: "dns".into(),
        protocol: Protocol::Udp,
        port: 53,
        target_port: TargetPort::Number(5353),
        node_port: Some(30053),
        app_protocol: None,
    });
    state.apply(SourceEvent::Apply(Object::Service(svc)));
    let snapshot = state.take_generation();
    let vip = snapshot.services().next().unwrap().vip.unwrap();
    let mut interceptor = Interceptor::start(config(&ns)).await.unwrap();
    interceptor.reconcile(&snapshot).await.unwrap();
    let listing = String::from_utf8_lossy(&ns.nft(&["list", "table", "inet", "em_test"]).stdout).into_owned();
    assert!(listing.contains(&format!("10.96.0.2 . 53 : {vip} . 53")), "{listing}");
    assert!(listing.contains("elements = { 30080 }"), "TCP node ports: {listing}");
    assert!(listing.contains(&format!("30053 : {vip} . 53")), "UDP node ports map to the VIP: {listing}");
    assert_eq!(element_count(&ns, "em_test", "tcp4"), 2);

    // The service goes: one transaction deletes its elements from the set,
    // the map and the node ports.
    let transactions = interceptor.status().transactions.load(Ordering::Relaxed);
    state.apply(SourceEvent::Delete(ObjectKey {
        kind: ObjectKind::Service,
        namespace: "default".into(),
        name: "svc-1".into(),
    }));
    interceptor.reconcile(&state.take_generation()).await.unwrap();
    assert_eq!(interceptor.status().transactions.load(Ordering::Relaxed), transactions + 1);
    let listing = String::from_utf8_lossy(&ns.nft(&["list", "table", "inet", "em_test"]).stdout).into_owned();
    assert!(!listing.contains("elements"), "{listing}");
}

/// Mode `ebpf`'s table: node ports only (the fast path serves cluster IPs),
/// under a name of its own; at start it deletes the table an earlier run in
/// nftables mode left, in the same transaction. It is in the kernel only
/// while a node port needs it (a nat table turns connection tracking on
/// for the whole namespace): absent after start, made with the first node
/// port, deleted with the last, made again with the next.
#[tokio::test]
async fn a_node_port_table_holds_node_ports_only_and_replaces_the_other_modes_leftover() {
    let ns = Netns::new("ic");
    let mut state = node_registry();
    let svc = node_port_service(1, 30080);
    state.apply(SourceEvent::Apply(Object::Service(svc)));
    state.apply(SourceEvent::Apply(service(2)));
    let snapshot = state.take_generation();
    // A crash in nftables mode left its table.
    let leftover = Interceptor::start(config(&ns)).await.unwrap();
    drop(leftover);
    let has = |name: &str| ns.tables().lines().any(|l| l == format!("table inet {name}"));
    assert!(has("em_test"));

    let setup = InterceptSetup {
        table: Some(TableSpec { name: "em_test_np".into(), port: 15006, mark: 0x454d, scope: TableScope::NodePorts }),
        other_mode_table: Some("em_test".into()),
        nft: Nft::in_netns(&ns.name),
        device: None,
    };
    let mut interceptor = Interceptor::start(setup).await.unwrap();
    assert!(!has("em_test_np") && !has("em_test"), "no node port yet, no table: {}", ns.tables());
    interceptor.reconcile(&snapshot).await.unwrap();
    assert_eq!(ns.set_elements("em_test_np", "nodeport_tcp").unwrap(), ["30080"]);
    assert!(ns.set_elements("em_test_np", "tcp4").is_none(), "no cluster IP set");
    assert_eq!(interceptor.status().elements.load(Ordering::Relaxed), 1);
    // The last node port goes: so does the table.
    let delete = |name: &str| {
        SourceEvent::Delete(ObjectKey { kind: ObjectKind::Service, namespace: "default".into(), name: name.into() })
    };
    state.apply(delete("svc-1"));
    interceptor.reconcile(&state.take_generation()).await.unwrap();
    assert!(!has("em_test_np"), "no node port left: {}", ns.tables());
    state.apply(SourceEvent::Apply(Object::Service(node_port_service(3, 30090))));
    interceptor.reconcile(&state.take_generation()).await.unwrap();
    assert_eq!(ns.set_elements("em_test_np", "nodeport_tcp").unwrap(), ["30090"]);
    interceptor.remove().await.unwrap();
    assert!(!has("em_test_np"), "removed at stop");
}
