//! The shipped objects as shipped (issue #21): on two edge nodes, the
//! DaemonSet's `edgemesh` container (its arguments, its `NODE_NAME`, exactly
//! the capabilities it adds, a read-only root but for its volumes) runs the
//! ConfigMap's config, both read from deploy/kubernetes, never copied. The
//! API is edgecore's metaServer address the DaemonSet names
//! (`--kube-api=http://127.0.0.1:10550` inside each node), served by the
//! fake API server. Pods sit in namespaces of their own behind a veth, as a
//! CNI puts them, and reach a Service by its cluster IP and by its name at
//! the node-local DNS address, on the same node and across the tunnel.
//!
//! ```text
//!  pod-a 10.244.1.2 ── node-a 10.0.0.2 ──┐ LAN ┌── node-b 10.0.0.3 ── pod-b 10.244.2.2 (nginx)
//!                      (agent)            └─────┘   (agent)
//! ```
//!
//! The volumes map as a container runtime maps them: an argument under a
//! volume's `mountPath` names the test's directory for that volume, and the
//! config's `stateDir` (the state volume's `mountPath`) becomes the test's
//! state directory. Running the image itself is `image_e2e.rs`'s part.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use edgemesh_fake_apiserver::{FakeApiServer, Resource};
use serde_json::{Value, json};
use support::daemonset::{EdgeNode, agent_args, shipped_config};
use support::eventually;
use support::netns::{Lan, Netns, NsNginx, TcpRelay};

const DAEMONSET: &str = "30-daemonset.yaml";
const CLUSTER_IP: &str = "10.96.0.10";

/// The address `--kube-api` names (edgecore's metaServer on the node).
fn meta_server() -> SocketAddr {
    let url = agent_args(DAEMONSET)
        .into_iter()
        .find_map(|a| a.strip_prefix("--kube-api=http://").map(str::to_owned))
        .expect("the edge DaemonSet names the metaServer");
    url.trim_end_matches('/').parse().expect("an ip:port")
}

fn curl(ns: &Netns, url: &str) -> Option<String> {
    ns.curl_with(&["--max-time", "3"], url)
}

fn dig(ns: &Netns, server: &str, name: &str) -> Vec<String> {
    let out = ns.exec(&["dig", &format!("@{server}"), "+short", "+time=2", "+tries=1", name, "A"]);
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
}

#[test]
fn the_shipped_daemon_set_and_config_intercept_cluster_ips_answer_dns_and_cross_nodes() {
    let config = shipped_config();
    let settings: Value = serde_saphyr::from_str(&config).unwrap();
    assert_eq!(settings["intercept"]["mode"], "nftables", "node mode is on in the shipped config");

    let lan = Lan::new("shiplan");
    let (one, two) = (EdgeNode::new(&lan, 1, &config, DAEMONSET), EdgeNode::new(&lan, 2, &config, DAEMONSET));
    // The backend: nginx in node two's pod.
    let _nginx = NsNginx::start(&two.pod, &["10.244.2.2:8080"], "pod on edge-2");

    let api = FakeApiServer::start();
    api.apply(Resource::Nodes, one.object(1));
    api.apply(Resource::Nodes, two.object(2));
    api.apply(
        Resource::Services,
        json!({"metadata": {"name": "web", "namespace": "shop"},
               "spec": {"clusterIP": CLUSTER_IP, "clusterIPs": [CLUSTER_IP],
                        "ports": [{"name": "web", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}}),
    );
    api.apply(
        Resource::EndpointSlices,
        json!({"metadata": {"name": "web-1", "namespace": "shop", "labels": {"kubernetes.io/service-name": "web"}},
               "addressType": "IPv4", "ports": [{"name": "web", "port": 8080, "protocol": "TCP"}],
               "endpoints": [{"addresses": ["10.244.2.2"], "nodeName": "edge-2", "conditions": {"ready": true}}]}),
    );
    // edgecore's metaServer, where the DaemonSet says it is, on each node.
    let _relays = [&one, &two].map(|node| TcpRelay::start_at(&node.ns, meta_server(), api.addr()));

    let (agent_one, agent_two) = (one.start(&config, &[]), two.start(&config, &[]));
    for (node, agent) in [(&one, &agent_one), (&two, &agent_two)] {
        assert_eq!(agent.json("/services")["state"]["origin"], "live", "{}: from the metaServer", node.name);
    }

    // The cluster IP, from the pod on the backend's own node (intercepted,
    // proxied locally) and from the pod on the other node (through the tunnel).
    let url = format!("http://{CLUSTER_IP}/");
    let from_two = eventually(Duration::from_secs(10), "edge-2's pod reaches the cluster IP", || curl(&two.pod, &url));
    assert_eq!(from_two.trim(), "pod on edge-2");
    let from_one = eventually(Duration::from_secs(30), "edge-1's pod reaches the cluster IP across the tunnel", || {
        curl(&one.pod, &url)
    });
    assert_eq!(from_one.trim(), "pod on edge-2", "{}", agent_one.log());
    let peers = agent_one.json("/peers");
    assert!(peers.to_string().contains(&two.peer_id), "edge-1 knows edge-2's agent: {peers}");

    // DNS at the node-local address, from both pods: the cluster IP.
    let listen = agent_one.json("/config")["dns"]["listen"].as_str().expect("dns.listen").to_owned();
    let dns = listen.strip_suffix(":53").expect("DNS on port 53, as pods' resolvers ask");
    assert_eq!(dns, "169.254.96.16", "the address EdgeMesh users' clusterDNS names");
    for node in [&one, &two] {
        let answers = eventually(Duration::from_secs(5), "the node-local DNS answers", || {
            Some(dig(&node.pod, dns, "web.shop.svc.cluster.local")).filter(|a| !a.is_empty())
        });
        assert_eq!(answers, [CLUSTER_IP], "{}'s pod", node.name);
    }

    // Stopped as the kubelet stops it: nothing of node mode is left behind.
    for (node, agent) in [(&one, agent_one), (&two, agent_two)] {
        assert!(agent.terminate().success(), "{}: a clean stop", node.name);
        let tables = node.ns.tables();
        assert!(!tables.contains("edgemesh"), "{}: the nft tables are gone: {tables}", node.name);
        let links = node.ns.links();
        assert!(!links.contains("edge0"), "{}: the edge0 device is gone: {links}", node.name);
    }
}
