//! DNS answers this node's pods by its Node's `spec.podCIDRs` (issue #18),
//! as root: the real agent in a node namespace, its Kubernetes API a fake
//! one reached through a relay, DNS on `0.0.0.0:53` (not node-local), and
//! the real `dig` in two client namespaces: a pod in the Node's pod CIDR
//! and a host outside it.
//!
//! ```text
//!  pod ns 10.244.1.2 ── veth ── 10.244.1.1  node ns (agent)  10.9.0.1 ── veth ── 10.9.0.2 outside ns
//! ```

mod support;

use std::time::Duration;

use edgemesh_fake_apiserver::{FakeApiServer, Resource};
use serde_json::{Value, json};
use support::netns::{Netns, NsAgent, TcpRelay, link};
use support::*;

const NODE: &str = "edge-1";
const POD: &str = "10.244.1.2";
const OUTSIDE: &str = "10.9.0.2";

fn node_with_pod_cidrs(cidrs: &[&str]) -> Value {
    json!({"metadata": {"name": NODE}, "spec": {"podCIDR": cidrs[0], "podCIDRs": cidrs}})
}

struct Topology {
    node: Netns,
    pod: Netns,
    outside: Netns,
}

fn topology() -> Topology {
    let (node, pod, outside) = (Netns::new("cidrnode"), Netns::new("cidrpod"), Netns::new("cidrout"));
    link(&node, "eth-pod", &pod, "eth0");
    node.addr("eth-pod", "10.244.1.1/24");
    pod.addr("eth0", &format!("{POD}/24"));
    link(&node, "eth-out", &outside, "eth0");
    node.addr("eth-out", "10.9.0.1/24");
    outside.addr("eth0", &format!("{OUTSIDE}/24"));
    Topology { node, pod, outside }
}

/// The agent on `edge-1`, reading the API through `relay`, its cache in `state`.
fn start_agent(t: &Topology, relay: &TcpRelay, state: &std::path::Path) -> NsAgent {
    let args = [
        "--node-name",
        NODE,
        "--kube-api",
        &relay.url(),
        "--dns-listen",
        "0.0.0.0:53",
        "--dns-upstream",
        "127.0.0.1:9",
        "--state-dir",
        state.to_str().unwrap(),
    ];
    NsAgent::start(&t.node, &args, Duration::from_secs(15))
}

/// `dig` for the service from `ns` at `server`: the response's status
/// (`NOERROR`, `REFUSED`, ...) and its A records.
fn ask(ns: &Netns, server: &str) -> (String, Vec<String>) {
    let out = ns.exec(&["dig", &format!("@{server}"), "+time=2", "+tries=1", "web.shop.svc.cluster.local", "A"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = text.split("status: ").nth(1).and_then(|s| s.split(',').next()).unwrap_or("no answer").to_owned();
    let answers = text
        .lines()
        .filter(|l| !l.starts_with(';') && l.contains("\tA\t"))
        .filter_map(|l| l.split_whitespace().last().map(str::to_owned))
        .collect();
    (status, answers)
}

/// Waits until the pod and the outside host get `pod` and `outside` (each
/// `NOERROR` with the VIP, or `REFUSED`).
fn wait_for(t: &Topology, vip: &str, pod: &str, outside: &str, what: &str) {
    let expect = |status: &str| {
        if status == "NOERROR" { (status.to_owned(), vec![vip.to_owned()]) } else { (status.to_owned(), vec![]) }
    };
    eventually(Duration::from_secs(5), what, || {
        let got = (ask(&t.pod, "10.244.1.1"), ask(&t.outside, "10.9.0.1"));
        (got == (expect(pod), expect(outside))).then_some(())
    });
}

#[test]
fn dns_answers_the_nodes_pod_cidrs_follows_their_changes_and_keeps_them_offline() {
    let api = FakeApiServer::start();
    api.apply(Resource::Nodes, node_with_pod_cidrs(&["10.244.1.0/24"]));
    api.apply(
        Resource::Services,
        json!({"metadata": {"name": "web", "namespace": "shop"}, "spec": {"ports": [{"name": "web", "port": 80}]}}),
    );
    let t = topology();
    let relay = TcpRelay::start(&t.node, api.addr());
    let state = tempfile::tempdir().unwrap();
    let agent = start_agent(&t, &relay, state.path());
    let vip = agent.vip("shop", "web").expect("web has a VIP");
    assert_eq!(agent.json("/nodes")["nodes"][0]["podCidrs"], json!(["10.244.1.0/24"]));

    // The pod (in the Node's pod CIDR, neither loopback nor the node's
    // address) is answered; the host outside it is refused.
    assert_eq!(ask(&t.pod, "10.244.1.1"), ("NOERROR".to_owned(), vec![vip.clone()]));
    assert_eq!(ask(&t.outside, "10.9.0.1"), ("REFUSED".to_owned(), vec![]));

    // The Node's pod CIDR moves: access follows, without a restart.
    api.apply(Resource::Nodes, node_with_pod_cidrs(&["10.9.0.0/24"]));
    wait_for(&t, &vip, "REFUSED", "NOERROR", "access follows the Node's new pod CIDR");

    // Killed and restarted while the API is down: the pod CIDR comes from the cache.
    agent.kill9();
    api.stop();
    let agent = start_agent(&t, &relay, state.path());
    assert_eq!(agent.json("/services")["state"]["origin"], "cache");
    assert_eq!(ask(&t.outside, "10.9.0.1"), ("NOERROR".to_owned(), vec![vip.clone()]));
    assert_eq!(ask(&t.pod, "10.244.1.1"), ("REFUSED".to_owned(), vec![]));
    drop(agent);
}
