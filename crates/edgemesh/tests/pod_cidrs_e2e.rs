//! DNS answers this node's pods by its Node's `spec.podCIDRs` (issue #18),
//! as root: the real agent in a node namespace, its Kubernetes API a fake
//! one reached through a relay, and the real `dig` in two client
//! namespaces: a pod in the Node's pod CIDR and a host outside it. With DNS
//! on `0.0.0.0:53` (not node-local), access follows the pod CIDRs; in the
//! shipped deployment (the ConfigMap's config, node mode) pods resolve
//! cluster names and external ones, the latter through a real upstream
//! (dnsmasq in the node, named by the node's resolv.conf).
//!
//! ```text
//!  pod ns 10.244.1.2 ── veth ── 10.244.1.1  node ns (agent)  10.9.0.1 ── veth ── 10.9.0.2 outside ns
//! ```

mod support;

use std::time::Duration;

use edgemesh_fake_apiserver::{FakeApiServer, Resource};
use serde_json::{Value, json};
use support::daemonset::shipped_config;
use support::netns::{Netns, NsAgent, TcpRelay, dnsmasq, link};
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
    // As a pod's: everything beyond its link through the node.
    pod.route("default", "10.244.1.1");
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
/// The fake API with this node (pod CIDR 10.244.1.0/24) and service
/// shop/web, the topology, and the relay from the node to the API.
fn cluster() -> (FakeApiServer, Topology, TcpRelay) {
    let api = FakeApiServer::start();
    api.apply(Resource::Nodes, node_with_pod_cidrs(&["10.244.1.0/24"]));
    api.apply(
        Resource::Services,
        json!({"metadata": {"name": "web", "namespace": "shop"}, "spec": {"ports": [{"name": "web", "port": 80}]}}),
    );
    let t = topology();
    let relay = TcpRelay::start(&t.node, api.addr());
    (api, t, relay)
}

fn ask(ns: &Netns, server: &str) -> (String, Vec<String>) {
    ask_for(ns, server, "web.shop.svc.cluster.local")
}

/// `dig` for `name` from `ns` at `server`: the response's status, or `no
/// answer` when none came, and its A records.
fn ask_for(ns: &Netns, server: &str, name: &str) -> (String, Vec<String>) {
    let out = ns.exec(&["dig", &format!("@{server}"), "+time=2", "+tries=1", name, "A"]);
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
    let (api, t, relay) = cluster();
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

/// The name only the upstream knows, and its address.
const EXTERNAL: &str = "example.edge.test";
const EXTERNAL_ADDRESS: &str = "203.0.113.7";

#[test]
fn pods_resolve_external_and_cluster_names_through_the_shipped_deployments_dns() {
    let config = shipped_config();
    let settings: Value = serde_saphyr::from_str(&config).unwrap();
    // What this test relies on: the node-local address, and no upstreams
    // of its own (the node's resolv.conf, as dnsPolicy: Default gives it).
    let listen = settings["dns"]["listen"].as_str().expect("dns.listen").to_owned();
    let dns = listen.strip_suffix(":53").expect("DNS on port 53, as pods' resolvers are").to_owned();
    assert!(settings["dns"].get("upstreams").is_none(), "the test gives the agent the node's resolv.conf");

    let (_api, t, relay) = cluster();
    // The node's resolver: a real one in the node, on its loopback only.
    let _upstream =
        dnsmasq(&t.node, "127.0.0.1", 53, &[format!("--host-record={EXTERNAL},{EXTERNAL_ADDRESS}")], [EXTERNAL, "A"]);
    t.node.resolv_conf("nameserver 127.0.0.1\n");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.yaml");
    std::fs::write(&file, &config).unwrap();
    // As the DaemonSet runs it (NODE_NAME, --config, --kube-api), in the
    // ConfigMap's node mode, its stateDir (a hostPath) a directory of the test's.
    let mut command = t.node.cmd(env!("CARGO_BIN_EXE_edgemesh"));
    command.env("NODE_NAME", NODE);
    let (config_arg, api_arg) = (format!("--config={}", file.display()), format!("--kube-api={}", relay.url()));
    let state = dir.path().join("state");
    let args = [&config_arg, &api_arg, "--state-dir", state.to_str().unwrap()];
    let agent = NsAgent::start_with(&t.node, command, &args, Duration::from_secs(20));
    assert_eq!(agent.json("/config")["intercept"]["mode"], "nftables", "the ConfigMap's node mode");
    assert_eq!(agent.json("/config")["dns"]["upstreams"], json!(["127.0.0.1:53"]), "from the node's resolv.conf");
    let vip = agent.vip("shop", "web").expect("web has a VIP");

    // The pod asks the node-local address its kubelet gives it: external
    // names are forwarded, cluster names answered.
    assert_eq!(ask_for(&t.pod, &dns, EXTERNAL), ("NOERROR".to_owned(), vec![EXTERNAL_ADDRESS.to_owned()]));
    assert_eq!(ask(&t.pod, &dns), ("NOERROR".to_owned(), vec![vip.clone()]));
    // So does its system resolver, with the search path and ndots of a
    // pod's resolv.conf: the cluster domains answer NXDOMAIN for the
    // external name first, then the name as it is is forwarded.
    t.pod.resolv_conf(&format!(
        "search default.svc.cluster.local svc.cluster.local cluster.local\nnameserver {dns}\noptions ndots:5\n"
    ));
    let hosts = t.pod.ok(&["getent", "ahostsv4", EXTERNAL]);
    assert!(hosts.starts_with(&format!("{EXTERNAL_ADDRESS} ")), "{hosts}");
    let hosts = t.pod.ok(&["getent", "ahostsv4", "web.shop"]);
    assert!(hosts.starts_with(&format!("{vip} ")), "{hosts}");

    // A host outside the node's pod CIDRs asking the node's address finds
    // no resolver there at all: DNS listens on the node-local address only.
    // (Every query that reaches that address is answered, by design: a
    // host on the node's link that routes 169.254.96.16 through the node
    // is answered too; README, "Security defaults", says to drop it in the
    // node's firewall. With a routable listener outsiders get REFUSED: the
    // test above.)
    assert_eq!(ask_for(&t.outside, "10.9.0.1", EXTERNAL), ("no answer".to_owned(), vec![]));
    drop(agent);
}
