//! `kind: Node` in manifests: parsed with its peer-ID annotation,
//! dialable addresses and pod CIDRs, rejected with a line and a reason when invalid, and
//! followed by the watcher into the registry's snapshot.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use edgemesh_core::build::node;
use edgemesh_core::{ObjectKind, PEER_ID_ANNOTATION, RegistryConfig};
use edgemesh_manifests::{ManifestSource, parse_manifest};
use edgemesh_test_support::registry::{RunningRegistry, start_registry_with};
use tokio_util::sync::CancellationToken;

const PEER: &str = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN";

fn node_yaml(name: &str, peer: &str, addresses: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  annotations:\n    {PEER_ID_ANNOTATION}: \"{peer}\"\n\
         status:\n  addresses:\n{addresses}"
    )
}

const ADDRESSES: &str = "  - type: Hostname\n    address: edge-1\n  - type: InternalIP\n    address: 192.168.1.10\n  \
                         - type: ExternalIP\n    address: 2001:db8::10\n  - type: InternalDNS\n    address: edge-1.lan\n";

#[test]
fn a_node_keeps_its_name_annotations_and_dialable_addresses() {
    let got = parse_manifest(&node_yaml("edge-1", PEER, ADDRESSES)).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].line, 1);
    let expected = node("edge-1").peer_id(PEER).address("192.168.1.10").address("2001:db8::10").object();
    assert_eq!(got[0].object, expected);
    assert_eq!(got[0].object.key().kind, ObjectKind::Node);
    assert_eq!(got[0].object.key().namespace, "", "nodes are cluster-scoped");
    assert_eq!(got[0].object.service_key(), None);
}

#[test]
fn a_node_without_status_or_with_a_namespace_is_fine() {
    let text = "apiVersion: v1\nkind: Node\nmetadata:\n  name: edge-2\n  namespace: ignored\n";
    let got = parse_manifest(text).unwrap();
    assert_eq!(got[0].object, node("edge-2").object());
    // Another API group's Node is someone else's.
    assert!(parse_manifest("apiVersion: example.com/v1\nkind: Node\nmetadata:\n  name: x\n").unwrap().is_empty());
}

#[test]
fn invalid_nodes_are_reported_with_the_line_and_the_field() {
    let cases = [
        (node_yaml("Edge_1", PEER, ADDRESSES), 4, "Node Edge_1: metadata.name \"Edge_1\" is not a valid name"),
        (
            node_yaml("edge-1", PEER, "  - type: InternalIP\n    address: 192.168.1.300\n"),
            10,
            "Node edge-1: status.addresses[0].address \"192.168.1.300\" is not a valid IP address",
        ),
        (
            node_yaml("edge-1", PEER, "  - type: InternalIP\n    address: 10.0.0.1\n  - address: 10.0.0.2\n"),
            11,
            "Node edge-1: status.addresses[1].type is required",
        ),
        (
            node_yaml("edge-1", PEER, "  - type: ExternalIP\n"),
            9,
            "Node edge-1: status.addresses[0].address is required",
        ),
        ("apiVersion: v1\nkind: Node\nmetadata: {}\n".to_owned(), 1, "`metadata.name` is missing"),
    ];
    for (text, line, needle) in cases {
        let err = parse_manifest(&text).expect_err(needle);
        assert_eq!(err.line(), line, "{err}");
        assert!(err.to_string().contains(needle), "{err} does not contain {needle:?}");
    }
}

#[test]
fn nodes_in_a_list_and_next_to_services() {
    let text = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  ports:\n  - port: 80\n---\n\
         apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Node\n  metadata:\n    name: edge-3\n  \
         status:\n    addresses:\n    - {type: InternalIP, address: 10.1.0.3}\n";
    let got = parse_manifest(text).unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].line, 12);
    assert_eq!(got[1].object, node("edge-3").address("10.1.0.3").object());
}

#[test]
fn a_node_keeps_its_pod_cidrs_and_only_the_valid_ones() {
    let text = "apiVersion: v1\nkind: Node\nmetadata:\n  name: edge-1\nspec:\n  podCIDR: 10.244.1.0/24\n  \
                podCIDRs:\n  - 10.244.1.0/24\n  - fd00:244:1::/64\n";
    let got = parse_manifest(text).unwrap();
    assert_eq!(got[0].object, node("edge-1").pod_cidr("10.244.1.0/24").pod_cidr("fd00:244:1::/64").object());
    // Only the older single field; a bad entry is skipped (and warned), not the node.
    let old = "apiVersion: v1\nkind: Node\nmetadata:\n  name: edge-1\nspec:\n  podCIDR: 10.244.7.0/24\n";
    assert_eq!(parse_manifest(old).unwrap()[0].object, node("edge-1").pod_cidr("10.244.7.0/24").object());
    let bad =
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: edge-1\nspec:\n  podCIDRs: [10.244.1.0/99, 10.244.2.0/24]\n";
    assert_eq!(parse_manifest(bad).unwrap()[0].object, node("edge-1").pod_cidr("10.244.2.0/24").object());
}

/// Writes atomically, as tools should.
fn write(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

#[tokio::test]
async fn the_watcher_brings_nodes_into_the_snapshot_and_keeps_the_last_good_one() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "nodes.yaml", &node_yaml("edge-1", PEER, ADDRESSES));
    let RunningRegistry { sink, mut snapshots, .. } =
        start_registry_with(RegistryConfig { node_name: "edge-1".into(), ..Default::default() });
    let shutdown = CancellationToken::new();
    let source = tokio::spawn(ManifestSource::new(dir.path(), Duration::from_millis(25)).run(sink, shutdown.clone()));
    let wait = Duration::from_secs(5);

    let snap = tokio::time::timeout(wait, snapshots.wait_for(|s| s.synced)).await.unwrap().unwrap().clone();
    let entry = snap.node("edge-1").expect("the node is in the first synced snapshot");
    assert_eq!(entry.peer_id.as_deref(), Some(PEER));
    let addrs: Vec<IpAddr> = vec!["192.168.1.10".parse().unwrap(), "2001:db8::10".parse().unwrap()];
    assert_eq!(entry.addresses, addrs);

    // A broken edit keeps the last good node; a good one replaces it.
    write(dir.path(), "nodes.yaml", &node_yaml("edge-1", PEER, "  - type: InternalIP\n    address: nope\n"));
    write(dir.path(), "other.yaml", &node_yaml("edge-2", "", ""));
    let snap = tokio::time::timeout(wait, snapshots.wait_for(|s| s.node("edge-2").is_some())).await.unwrap().unwrap();
    assert_eq!(snap.node("edge-1").unwrap().addresses, addrs, "the last good version stays");
    assert_eq!(snap.node("edge-2").unwrap().peer_id, None);
    drop(snap);

    // This node's pod CIDRs follow its manifest.
    let with_cidr = format!("{}spec:\n  podCIDRs: [10.244.1.0/24]\n", node_yaml("edge-1", PEER, ADDRESSES));
    write(dir.path(), "nodes.yaml", &with_cidr);
    let snap =
        tokio::time::timeout(wait, snapshots.wait_for(|s| !s.own_pod_cidrs().is_empty())).await.unwrap().unwrap();
    let cidrs: Vec<String> = snap.own_pod_cidrs().iter().map(ToString::to_string).collect();
    assert_eq!(cidrs, ["10.244.1.0/24"]);
    drop(snap);

    std::fs::remove_file(dir.path().join("nodes.yaml")).unwrap();
    tokio::time::timeout(wait, snapshots.wait_for(|s| s.node("edge-1").is_none())).await.unwrap().unwrap();
    shutdown.cancel();
    source.await.unwrap();
}
