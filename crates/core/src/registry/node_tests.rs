//! Nodes in the snapshot, and the index of this node's backends behind
//! `Snapshot::serves_endpoint`.

use std::net::{IpAddr, SocketAddr};

use super::*;
use crate::build::{node, service, slice};
use crate::object::ObjectKey;
use crate::service::Protocol;

const PEER: &str = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN";

fn state_on(node_name: &str) -> RegistryState {
    RegistryState::new(&RegistryConfig { node_name: node_name.into(), ..Default::default() })
}

fn apply(st: &mut RegistryState, obj: Object) -> bool {
    st.apply(SourceEvent::Apply(obj))
}

fn delete(st: &mut RegistryState, kind: ObjectKind, namespace: &str, name: &str) -> bool {
    st.apply(SourceEvent::Delete(ObjectKey { kind, namespace: namespace.into(), name: name.into() }))
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn tcp(snap: &Snapshot, a: &str) -> bool {
    snap.serves_endpoint(addr(a), Protocol::Tcp)
}

#[test]
fn nodes_are_added_changed_and_deleted_with_their_peer_id() {
    let mut st = state_on("n1");
    let n2 = node("n2").peer_id(PEER).address("192.168.1.2").address("203.0.113.2");
    assert!(apply(&mut st, n2.annotation("kubectl.kubernetes.io/last-applied-configuration", "{}").object()));
    let snap = st.take_generation();
    let entry = snap.node("n2").expect("node in the snapshot");
    assert_eq!(entry.peer_id.as_deref(), Some(PEER));
    assert_eq!(entry.addresses, vec!["192.168.1.2".parse::<IpAddr>().unwrap(), "203.0.113.2".parse().unwrap()]);
    assert!(snap.node("n3").is_none());

    // The same node again (other annotations aside) is no change.
    assert!(!apply(&mut st, node("n2").peer_id(PEER).address("192.168.1.2").address("203.0.113.2").object()));

    assert!(apply(&mut st, node("n2").peer_id(PEER).address("192.168.1.9").object()));
    assert!(apply(&mut st, node("n1").object()));
    let next = st.take_generation();
    assert!(next.generation > snap.generation);
    assert_eq!(next.node("n2").unwrap().addresses, vec!["192.168.1.9".parse::<IpAddr>().unwrap()]);
    assert_eq!(next.nodes().map(|n| &*n.name).collect::<Vec<_>>(), vec!["n1", "n2"], "ordered by name");
    assert_eq!(snap.node("n2").unwrap().addresses.len(), 2, "a published snapshot never changes");

    assert!(delete(&mut st, ObjectKind::Node, "", "n2"));
    assert!(!delete(&mut st, ObjectKind::Node, "", "n2"), "deleting twice changes nothing");
    let last = st.take_generation();
    assert!(last.node("n2").is_none());
    assert!(last.node("n1").is_some());
}

#[test]
fn own_pod_cidrs_are_this_nodes_and_follow_its_changes() {
    let cidr = |s: &str| s.parse::<ipnet::IpNet>().unwrap();
    let mut st = state_on("n1");
    assert!(st.take_generation().own_pod_cidrs().is_empty(), "no Node yet");
    assert!(apply(&mut st, node("n2").pod_cidr("10.244.2.0/24").object()));
    assert!(st.take_generation().own_pod_cidrs().is_empty(), "another node's CIDRs are not ours");
    assert!(apply(&mut st, node("n1").pod_cidr("10.244.1.0/24").pod_cidr("fd00:244:1::/64").object()));
    let snap = st.take_generation();
    assert_eq!(snap.own_pod_cidrs(), [cidr("10.244.1.0/24"), cidr("fd00:244:1::/64")]);
    assert_eq!(snap.node("n2").unwrap().pod_cidrs, [cidr("10.244.2.0/24")]);

    assert!(apply(&mut st, node("n1").pod_cidr("10.244.9.0/24").object()), "a CIDR change is a change");
    assert_eq!(st.take_generation().own_pod_cidrs(), [cidr("10.244.9.0/24")]);
    assert!(delete(&mut st, ObjectKind::Node, "", "n1"));
    assert!(st.take_generation().own_pod_cidrs().is_empty());
    assert!(state_on("").take_generation().own_pod_cidrs().is_empty(), "no node name: none");
}

#[test]
fn the_peer_id_annotation_is_trimmed_and_blank_means_none() {
    let mut st = state_on("n1");
    apply(&mut st, node("padded").peer_id(&format!("  {PEER}\n")).object());
    apply(&mut st, node("blank").peer_id(" \t ").object());
    apply(&mut st, node("absent").object());
    let snap = st.take_generation();
    assert_eq!(snap.node("padded").unwrap().peer_id.as_deref(), Some(PEER));
    assert_eq!(snap.node("blank").unwrap().peer_id, None);
    assert_eq!(snap.node("absent").unwrap().peer_id, None);
}

#[test]
fn a_node_change_is_a_generation_with_no_service_change() {
    let mut st = state_on("n1");
    apply(&mut st, service("default", "web").port("", 80, 80).object());
    let before = st.take_generation().generation;
    apply(&mut st, node("n2").peer_id(PEER).object());
    let snap = st.take_generation();
    assert_eq!(snap.generation, before + 1);
    assert_eq!(snap.changes_since(before), Some(vec![]), "consumers of services see nothing to do");
    assert_eq!(snap.len(), 1);
}

#[test]
fn serves_only_ready_backends_on_this_node_with_the_port_protocol() {
    let mut st = state_on("n1");
    apply(&mut st, service("default", "web").port("http", 80, 8080).udp_port("dns", 53, 5353).object());
    apply(
        &mut st,
        slice("default", "web-1", "web")
            .endpoint("10.0.0.1", "n1")
            .endpoint("10.0.0.2", "n2")
            .not_ready("10.0.0.3", "n1")
            .port("http", 8080)
            .udp_port("dns", 5353)
            .object(),
    );
    let snap = st.take_generation();
    assert!(tcp(&snap, "10.0.0.1:8080"));
    assert!(snap.serves_endpoint(addr("10.0.0.1:5353"), Protocol::Udp));
    assert!(!snap.serves_endpoint(addr("10.0.0.1:8080"), Protocol::Udp), "TCP port, UDP asked");
    assert!(!snap.serves_endpoint(addr("10.0.0.1:5353"), Protocol::Tcp), "UDP port, TCP asked");
    assert!(!tcp(&snap, "10.0.0.2:8080"), "another node's endpoint");
    assert!(!tcp(&snap, "10.0.0.3:8080"), "not ready");
    assert!(!tcp(&snap, "10.0.0.1:22"), "not a backend port");
    assert!(!tcp(&snap, "127.0.0.1:8080"));
    assert_eq!(snap.local_backends(), 2, "only this node's backends are indexed");
}

#[test]
fn serves_endpoint_follows_service_updates_and_deletes() {
    let mut st = state_on("n1");
    apply(&mut st, service("default", "web").port("http", 80, 8080).object());
    apply(&mut st, slice("default", "web-1", "web").endpoint("10.0.0.1", "n1").port("http", 8080).object());
    let first = st.take_generation();
    assert!(tcp(&first, "10.0.0.1:8080"));

    // The endpoint's port changes: the old one is no longer served.
    apply(&mut st, slice("default", "web-1", "web").endpoint("10.0.0.1", "n1").port("http", 9090).object());
    let snap = st.take_generation();
    assert!(!tcp(&snap, "10.0.0.1:8080"));
    assert!(tcp(&snap, "10.0.0.1:9090"));
    assert!(tcp(&first, "10.0.0.1:8080"), "an earlier snapshot keeps its answer");

    // The service goes: nothing of it is served; it comes back: served again.
    delete(&mut st, ObjectKind::Service, "default", "web");
    let snap = st.take_generation();
    assert!(!tcp(&snap, "10.0.0.1:9090"));
    assert_eq!(snap.local_backends(), 0);
    apply(&mut st, service("default", "web").port("http", 80, 8080).object());
    assert!(tcp(&st.take_generation(), "10.0.0.1:9090"));

    // The endpoints go.
    delete(&mut st, ObjectKind::EndpointSlice, "default", "web-1");
    assert!(!tcp(&st.take_generation(), "10.0.0.1:9090"));
}

#[test]
fn endpoints_moving_between_nodes_move_in_and_out_of_the_index() {
    let mut st = state_on("n1");
    apply(&mut st, service("default", "web").port("", 80, 8080).object());
    apply(
        &mut st,
        slice("default", "web-1", "web").endpoint("10.0.0.1", "n1").endpoint("10.0.0.2", "n2").port("", 8080).object(),
    );
    let snap = st.take_generation();
    assert!(tcp(&snap, "10.0.0.1:8080") && !tcp(&snap, "10.0.0.2:8080"));
    apply(
        &mut st,
        slice("default", "web-1", "web").endpoint("10.0.0.1", "n2").endpoint("10.0.0.2", "n1").port("", 8080).object(),
    );
    let snap = st.take_generation();
    assert!(!tcp(&snap, "10.0.0.1:8080") && tcp(&snap, "10.0.0.2:8080"));
    assert_eq!(snap.local_backends(), 1);
}

#[test]
fn a_backend_shared_by_two_services_stays_served_until_both_are_gone() {
    let mut st = state_on("n1");
    for name in ["a", "b"] {
        apply(&mut st, service("default", name).port("", 80, 8080).object());
        let slice_name = format!("{name}-1");
        apply(&mut st, slice("default", &slice_name, name).endpoint("10.0.0.1", "n1").port("", 8080).object());
    }
    assert!(tcp(&st.take_generation(), "10.0.0.1:8080"));
    delete(&mut st, ObjectKind::Service, "default", "a");
    assert!(tcp(&st.take_generation(), "10.0.0.1:8080"), "b still has it");
    delete(&mut st, ObjectKind::EndpointSlice, "default", "b-1");
    assert!(!tcp(&st.take_generation(), "10.0.0.1:8080"));
}

#[test]
fn without_a_node_name_nothing_is_served() {
    let mut st = state_on("");
    apply(&mut st, service("default", "web").port("", 80, 8080).object());
    let mut no_node = slice("default", "web-1", "web").port("", 8080);
    no_node.0.subsets[0].endpoints.push(crate::object::EndpointSpec {
        addresses: vec!["10.0.0.1".parse().unwrap()],
        ready: true,
        node_name: Some(String::new()),
        hostname: None,
    });
    apply(&mut st, no_node.object());
    let snap = st.take_generation();
    assert!(!tcp(&snap, "10.0.0.1:8080"));
    assert_eq!(snap.local_backends(), 0);
}

#[test]
fn the_query_ignores_ipv6_flow_labels_and_scopes() {
    let mut st = state_on("n1");
    apply(&mut st, service("default", "web").port("", 80, 8080).object());
    apply(&mut st, slice("default", "web-1", "web").endpoint("fd00::1", "n1").port("", 8080).object());
    let snap = st.take_generation();
    let plain = std::net::SocketAddrV6::new("fd00::1".parse().unwrap(), 8080, 0, 0);
    let labelled = std::net::SocketAddrV6::new("fd00::1".parse().unwrap(), 8080, 7, 3);
    assert!(snap.serves_endpoint(plain.into(), Protocol::Tcp));
    assert!(snap.serves_endpoint(labelled.into(), Protocol::Tcp));
}
