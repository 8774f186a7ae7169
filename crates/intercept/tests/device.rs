//! The VIP device against the real kernel, over rtnetlink, in a network
//! namespace made for each test (as root; CI runs as root): it holds the
//! node-local DNS address and exactly the VIPs the snapshot has, follows
//! services one address at a time, is made again when deleted behind the
//! agent's back, and goes at stop with the table.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::process::Command;
use std::sync::atomic::Ordering;

use edgemesh_core::registry::RegistryState;
use edgemesh_core::{Object, ObjectKey, ObjectKind, RegistryConfig, SourceEvent, VipPolicy, build};
use edgemesh_intercept::{DeviceSpec, InterceptSetup, Interceptor, Nft, TableScope, TableSpec};
use edgemesh_test_support::netns::{Netns, in_netns};

/// Runs `f` on a Tokio runtime inside the namespace: the netlink socket
/// the device uses belongs to the namespace it is made in.
fn run_in<T: Send + 'static>(ns: &Netns, f: impl AsyncFnOnce() -> T + Send + 'static) -> T {
    in_netns(&ns.name, move || {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f())
    })
}

fn ip(ns: &str, args: &[&str]) -> std::process::Output {
    Command::new("ip").args(["-n", ns]).args(args).output().unwrap()
}

/// The addresses on `dev` in namespace `ns` (IPv6 link-local left out), or
/// None if there is no such device.
fn addresses(ns: &str, dev: &str) -> Option<BTreeSet<IpAddr>> {
    let out = ip(ns, &["-j", "addr", "show", "dev", dev]);
    if !out.status.success() {
        return None;
    }
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    Some(
        json[0]["addr_info"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["local"].as_str().unwrap().parse().unwrap())
            .filter(|ip: &IpAddr| !matches!(ip, IpAddr::V6(v6) if v6.is_unicast_link_local()))
            .collect(),
    )
}

fn config(ns: &Netns) -> InterceptSetup {
    InterceptSetup {
        table: Some(TableSpec { name: "em_test".into(), port: 15006, mark: 0x454d, scope: TableScope::Every }),
        other_mode_table: None,
        nft: Nft::in_netns(&ns.name),
        device: Some(DeviceSpec { name: "edge0".into(), fixed: vec!["169.254.96.16".parse().unwrap()] }),
    }
}

fn node_mode_registry() -> RegistryState {
    RegistryState::new(&RegistryConfig {
        vip_cidr: "9.251.0.0/16".parse().unwrap(),
        vips: VipPolicy::WhereNeeded,
        ..Default::default()
    })
}

fn delete(name: &str) -> SourceEvent {
    SourceEvent::Delete(ObjectKey { kind: ObjectKind::Service, namespace: "default".into(), name: name.into() })
}

fn vip(state: &RegistryState, name: &str) -> Option<IpAddr> {
    state.snapshot().service(&edgemesh_core::ServiceKey::new("default", name)).and_then(|s| s.vip)
}

fn set(ips: &[IpAddr]) -> BTreeSet<IpAddr> {
    ips.iter().copied().collect()
}

#[test]
fn the_device_holds_the_dns_address_and_exactly_the_vips_services_need() {
    let ns = Netns::new("dev");
    let cfg = config(&ns);
    let ns_name = ns.name.clone();
    let dns: IpAddr = "169.254.96.16".parse().unwrap();
    let checks = run_in(&ns, async move || {
        let ns = ns_name.as_str();
        let mut state = node_mode_registry();
        let apply = |state: &mut RegistryState, o: Object| state.apply(SourceEvent::Apply(o));
        // A TCP service with a cluster IP needs no VIP; one without a
        // cluster IP does, and so does a UDP service (its DNAT target).
        apply(&mut state, build::service("default", "tcp").cluster_ip("10.96.0.10").port("http", 80, 80).object());
        apply(&mut state, build::service("default", "bare").port("http", 80, 80).object());
        apply(&mut state, build::service("default", "udp").cluster_ip("10.96.0.53").udp_port("dns", 53, 53).object());
        let snapshot = state.take_generation();
        let mut interceptor = Interceptor::start(cfg).await.unwrap();
        assert_eq!(addresses(ns, "edge0"), Some(set(&[dns])), "the DNS address from the start");
        interceptor.reconcile(&snapshot).await.unwrap();
        let (bare, udp) = (vip(&state, "bare").unwrap(), vip(&state, "udp").unwrap());
        assert!(vip(&state, "tcp").is_none());
        assert_eq!(addresses(ns, "edge0"), Some(set(&[dns, bare, udp])));
        assert_eq!(interceptor.status().addresses.load(Ordering::Relaxed), 3);

        // A service goes: its address goes, the others stay.
        state.apply(delete("bare"));
        interceptor.reconcile(&state.take_generation()).await.unwrap();
        assert_eq!(addresses(ns, "edge0"), Some(set(&[dns, udp])));
        // One comes: its address comes.
        apply(&mut state, build::service("default", "new").port("http", 80, 80).object());
        interceptor.reconcile(&state.take_generation()).await.unwrap();
        let new = vip(&state, "new").unwrap();
        assert_eq!(addresses(ns, "edge0"), Some(set(&[dns, udp, new])));
        // After a failure (the table deleted behind the agent's back) the
        // rebuild also makes the device's addresses exactly the agent's: one
        // added by hand goes.
        assert!(ip(ns, &["addr", "add", "9.251.255.1/32", "dev", "edge0"]).status.success());
        let nft = Command::new("ip").args(["netns", "exec", ns, "nft", "delete", "table", "inet", "em_test"]).status();
        assert!(nft.unwrap().success());
        apply(&mut state, build::service("default", "other").cluster_ip("10.96.0.11").port("http", 80, 80).object());
        let next = state.take_generation();
        assert!(interceptor.reconcile(&next).await.is_err());
        interceptor.reconcile(&next).await.unwrap();
        assert_eq!(addresses(ns, "edge0"), Some(set(&[dns, udp, new])));

        // Deleted behind the agent's back: the next step fails, the one
        // after makes the device again with exactly its addresses.
        assert!(ip(ns, &["link", "del", "edge0"]).status.success());
        apply(&mut state, build::service("default", "later").port("http", 80, 80).object());
        let next = state.take_generation();
        let err = interceptor.reconcile(&next).await.unwrap_err();
        assert!(err.to_string().contains("edge0"), "{err}");
        interceptor.reconcile(&next).await.unwrap();
        let later = vip(&state, "later").unwrap();
        assert_eq!(addresses(ns, "edge0"), Some(set(&[dns, udp, new, later])));

        interceptor.remove().await.unwrap();
        addresses(ns, "edge0")
    });
    assert_eq!(checks, None, "the device goes at stop");
    let tables = ns.tables();
    assert!(!tables.contains("em_test"), "and the table with it");
}

#[test]
fn a_foreign_device_is_refused_and_nothing_is_left_behind() {
    let ns = Netns::new("dev");
    // A bridge with a port is someone's LAN, not a VIP device.
    ns.ip(&["link", "add", "edge0", "type", "bridge"]);
    ns.ip(&["link", "add", "v0", "type", "veth", "peer", "name", "v1"]);
    ns.ip(&["link", "set", "v0", "master", "edge0"]);
    let cfg = config(&ns);
    let err = run_in(&ns, async move || Interceptor::start(cfg).await.err().unwrap().to_string());
    assert!(err.contains("edge0") && err.contains("1 port") && err.contains("--vip-device"), "{err}");
    assert!(addresses(&ns.name, "edge0").unwrap().is_empty(), "the foreign device is untouched");
    let tables = ns.tables();
    assert!(!tables.contains("em_test"), "the table made first is gone again");

    // Another device holding the DNS address already: the VIP device does
    // not take it too.
    ns.ip(&["link", "del", "edge0"]);
    ns.ip(&["link", "set", "lo", "up"]);
    ns.ip(&["addr", "add", "169.254.96.16/32", "dev", "lo"]);
    let cfg = config(&ns);
    let ns_name = ns.name.clone();
    let on_device = run_in(&ns, async move || {
        let interceptor = Interceptor::start(cfg).await.unwrap();
        let on_device = addresses(&ns_name, "edge0");
        interceptor.remove().await.unwrap();
        on_device
    });
    assert_eq!(on_device, Some(BTreeSet::new()));
}
