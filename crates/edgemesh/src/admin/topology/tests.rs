//! The join of Node objects and tunnel peers, table by table.

use std::sync::Arc;

use edgemesh_core::NodeEntry;
use edgemesh_tunnel::{ConnectionType, PeerStatus};
use serde_json::json;

use super::{LinkKind, Relay, Topology, TunnelView, relay_of};

const RELAY: &str = "12D3KooWRelay";

fn node(name: &str, peer_id: Option<&str>, address: &str) -> NodeEntry {
    NodeEntry {
        name: Arc::from(name),
        peer_id: peer_id.map(Arc::from),
        addresses: vec![address.parse().unwrap()],
        pod_cidrs: Vec::new(),
    }
}

fn peer(node: Option<&str>, peer_id: &str, connection: ConnectionType, addresses: &[&str]) -> PeerStatus {
    PeerStatus {
        node: node.map(str::to_owned),
        peer_id: peer_id.to_owned(),
        addresses: addresses.iter().map(|a| (*a).to_owned()).collect(),
        connection,
        rtt_ms: Some(1.5),
        path_changed_seconds_ago: 4.0,
        connections: Vec::new(),
        open_streams: 2,
        trusted: node.is_some(),
        relay_reserved: false,
    }
}

fn circuit(target: &str) -> String {
    format!("/ip4/198.18.0.1/tcp/20006/p2p/{RELAY}/p2p-circuit/p2p/{target}")
}

/// node-a (this one), node-b direct, node-c relayed, node-d known but not
/// connected, node-e without a peer ID; the relay connected, no Node object.
fn mesh() -> Topology {
    let nodes = [
        node("node-a", Some("A"), "10.2.0.2"),
        node("node-b", Some("B"), "198.18.0.5"),
        node("node-c", Some("C"), "10.1.0.2"),
        node("node-d", Some("D"), "198.18.0.6"),
        node("node-e", None, "198.18.0.7"),
    ];
    let peers = vec![
        peer(Some("node-b"), "B", ConnectionType::Direct, &["/ip4/198.18.0.5/tcp/20006"]),
        peer(Some("node-c"), "C", ConnectionType::Relayed, &[&circuit("C")]),
        PeerStatus {
            relay_reserved: true,
            ..peer(None, RELAY, ConnectionType::Direct, &["/ip4/198.18.0.1/tcp/20006"])
        },
    ];
    Topology::build("node-a", 7, &nodes, Some(TunnelView { peer_id: "A".into(), peers }))
}

fn kinds(topology: &Topology) -> Vec<(&str, LinkKind)> {
    topology.nodes.iter().map(|n| (n.name.as_str(), n.link.kind)).collect()
}

#[test]
fn each_known_node_gets_this_nodes_link_to_it() {
    let topology = mesh();
    assert_eq!(
        kinds(&topology),
        [
            ("node-a", LinkKind::Local),
            ("node-b", LinkKind::Direct),
            ("node-c", LinkKind::Relayed),
            ("node-d", LinkKind::Down),
            ("node-e", LinkKind::Down),
        ]
    );
    let reasons: Vec<_> = topology.nodes.iter().map(|n| n.link.reason).collect();
    assert_eq!(reasons[3], Some("no tunnel connection"));
    assert_eq!(reasons[4], Some("its Node object has no edgemesh.io/peer-id annotation"));
    let b = &topology.nodes[1].link;
    assert_eq!((b.rtt_ms, b.open_streams, b.since_seconds), (Some(1.5), 2, Some(4.0)));
    assert_eq!((topology.generation, topology.tunnel, topology.peer_id.as_deref()), (7, true, Some("A")));
}

#[test]
fn a_relayed_link_names_its_relay_and_the_relay_is_listed_apart() {
    let topology = mesh();
    let via = topology.nodes[2].link.via.clone().expect("node-c's relay");
    assert_eq!(via, Relay { peer_id: RELAY.into(), node: None, address: Some("/ip4/198.18.0.1/tcp/20006".into()) });
    assert_eq!(topology.others.len(), 1, "{:?}", topology.others);
    let relay = &topology.others[0];
    assert_eq!((relay.peer_id.as_str(), relay.connection), (RELAY, LinkKind::Direct));
    assert!(relay.relay_reserved && relay.relays_links);
    assert!(topology.nodes[1].link.via.is_none(), "a direct link has no relay");
}

#[test]
fn a_relay_that_is_a_known_node_is_named() {
    let nodes = [
        node("node-a", None, "10.0.0.1"),
        node("node-c", Some("C"), "10.1.0.2"),
        node("hub", Some(RELAY), "198.18.0.1"),
    ];
    let peers = vec![
        peer(Some("node-c"), "C", ConnectionType::Relayed, &[&circuit("C")]),
        peer(Some("hub"), RELAY, ConnectionType::Direct, &["/ip4/198.18.0.1/tcp/20006"]),
    ];
    let topology = Topology::build("node-a", 1, &nodes, Some(TunnelView { peer_id: "A".into(), peers }));
    assert_eq!(topology.nodes[2].name, "node-c");
    assert_eq!(topology.nodes[2].link.via.as_ref().and_then(|v| v.node.as_deref()), Some("hub"));
    assert_eq!(topology.nodes[0].link.kind, LinkKind::Direct, "hub is a node of its own");
    assert!(topology.others.is_empty(), "{:?}", topology.others);
}

#[test]
fn a_peer_is_matched_by_annotation_before_its_name_is_accepted() {
    let nodes = [node("node-a", None, "10.0.0.1"), node("node-b", Some("B"), "10.0.0.2")];
    let peers = vec![peer(None, "B", ConnectionType::Direct, &["/ip4/10.0.0.2/tcp/20006"])];
    let topology = Topology::build("node-a", 1, &nodes, Some(TunnelView { peer_id: "A".into(), peers }));
    assert_eq!(kinds(&topology), [("node-a", LinkKind::Local), ("node-b", LinkKind::Direct)]);
    assert!(topology.others.is_empty());
}

#[test]
fn an_agent_without_a_node_object_is_another_peer() {
    let nodes = [node("node-a", None, "10.0.0.1")];
    let peers = vec![peer(Some("node-x"), "X", ConnectionType::Direct, &["/ip4/10.0.0.9/tcp/20006"])];
    let topology = Topology::build("node-a", 1, &nodes, Some(TunnelView { peer_id: "A".into(), peers }));
    assert_eq!(topology.others[0].node.as_deref(), Some("node-x"));
    assert!(!topology.others[0].relays_links);
}

#[test]
fn with_the_tunnel_off_other_links_are_unknown_and_this_node_is_always_listed() {
    let nodes = [node("node-b", Some("B"), "10.0.0.2")];
    let topology = Topology::build("node-a", 3, &nodes, None);
    assert_eq!(kinds(&topology), [("node-a", LinkKind::Local), ("node-b", LinkKind::Unknown)]);
    assert!(!topology.tunnel && topology.peer_id.is_none() && topology.others.is_empty());
}

#[test]
fn json_keys_are_camel_case_and_kinds_lowercase() {
    let json = serde_json::to_value(mesh()).unwrap();
    assert_eq!(json["peerId"], "A");
    let c = &json["nodes"][2];
    assert_eq!(c["link"]["kind"], "relayed");
    assert_eq!(c["link"]["via"], json!({"peerId": RELAY, "address": "/ip4/198.18.0.1/tcp/20006"}));
    assert_eq!(c["link"]["openStreams"], 2);
    assert_eq!(json["nodes"][3]["link"]["kind"], "down");
    assert_eq!(json["others"][0]["relayReserved"], true);
}

#[test]
fn relay_of_reads_circuit_addresses_only() {
    assert_eq!(relay_of(&circuit("C")).map(|r| r.peer_id), Some(RELAY.to_owned()));
    assert_eq!(
        relay_of(&format!("/p2p/{RELAY}/p2p-circuit")).map(|r| (r.peer_id, r.address)),
        Some((RELAY.to_owned(), None))
    );
    for not_a_circuit in
        ["/ip4/10.0.0.2/tcp/20006", "/ip4/10.0.0.2/tcp/20006/p2p/B", "/p2p-circuit", "/p2p//p2p-circuit"]
    {
        assert_eq!(relay_of(not_a_circuit), None, "{not_a_circuit}");
    }
}
