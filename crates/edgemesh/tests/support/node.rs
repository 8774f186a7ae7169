//! A node in node mode, for the interception tests: a node namespace with
//! a pod (nginx) and a client pod routed through it, the real agent with
//! `--intercept nftables` inside, manifests for services whose endpoints
//! are the pod, and readers for what the agent put in the kernel (its
//! nftables sets and maps, the `edge0` device).
//!
//! ```text
//!  client ns                          node ns (agent, nft table, edge0)          pod ns (nginx, UDP echo)
//!  10.244.2.2     ── veth ── 10.244.2.1     │ 10.244.1.1     ── veth ── 10.244.1.2
//!  fd00:244:2::2             fd00:244:2::1  │ fd00:244:1::1             fd00:244:1::2
//! ```
//!
//! Cluster IPs exist nowhere: the node's default routes point into the pod,
//! so only interception brings them to the agent.

use std::path::Path;
use std::time::Duration;

use super::eventually;
use super::netns::{Netns, NsAgent, NsNginx, link};

/// The agent's DNS address in node mode (its default).
pub const DNS: &str = "169.254.96.16";

/// node, a pod with nginx on 10.244.1.2 and fd00:244:1::2 (port 80,
/// answering `pod-nginx`), a client pod on 10.244.2.2 and fd00:244:2::2
/// routed through the node.
pub struct Topology {
    pub node: Netns,
    pub pod: Netns,
    pub client: Netns,
    _nginx: NsNginx,
}

impl Topology {
    pub fn new() -> Topology {
        let (node, pod, client) = (Netns::new("node"), Netns::new("pod"), Netns::new("client"));
        link(&node, "eth-pod", &pod, "eth0");
        node.addr("eth-pod", "10.244.1.1/24");
        node.addr("eth-pod", "fd00:244:1::1/64");
        pod.addr("eth0", "10.244.1.2/24");
        pod.addr("eth0", "fd00:244:1::2/64");
        pod.route("default", "10.244.1.1");
        pod.route("default", "fd00:244:1::1");
        // The node's way out (and so to the cluster IP ranges, which exist
        // nowhere) is the pod link, as a default route would be.
        node.route("default", "10.244.1.2");
        node.route("default", "fd00:244:1::2");
        link(&node, "eth-client", &client, "eth0");
        node.addr("eth-client", "10.244.2.1/24");
        node.addr("eth-client", "fd00:244:2::1/64");
        client.addr("eth0", "10.244.2.2/24");
        client.addr("eth0", "fd00:244:2::2/64");
        client.route("default", "10.244.2.1");
        client.route("default", "fd00:244:2::1");
        let nginx = NsNginx::start(&pod, &["10.244.1.2:80", "[fd00:244:1::2]:80"], "pod-nginx");
        assert_eq!(node.curl("http://10.244.1.2/").as_deref(), Some("pod-nginx\n"), "the pod is reachable directly");
        Topology { node, pod, client, _nginx: nginx }
    }
}

/// The agent in nftables mode inside `ns`, serving `manifests`.
pub fn start_agent(ns: &Netns, manifests: &Path, state: &Path, extra: &[&str]) -> NsAgent {
    start_agent_within(ns, manifests, state, extra, Duration::from_secs(15))
}

pub fn start_agent_within(ns: &Netns, manifests: &Path, state: &Path, extra: &[&str], limit: Duration) -> NsAgent {
    let mut args = vec!["--node-name", "test-node", "--intercept", "nftables", "--dns-upstream", "127.0.0.1:9"];
    args.extend(["--manifest-dir", manifests.to_str().unwrap(), "--state-dir", state.to_str().unwrap()]);
    args.extend_from_slice(extra);
    NsAgent::start(ns, &args, limit)
}

/// Runs the agent in nftables mode in `ns`, which must fail to start (exit
/// status 1); its error output.
pub fn failed_start(ns: &Netns, manifests: &Path, state: &Path) -> String {
    let out = ns
        .cmd(env!("CARGO_BIN_EXE_edgemesh"))
        .args(["agent", "--intercept", "nftables", "--dns-upstream", "127.0.0.1:9"])
        .arg("--manifest-dir")
        .arg(manifests)
        .arg("--state-dir")
        .arg(state)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    stderr
}

/// `clusterIP`, `clusterIPs`, `ipFamilies` and `ipFamilyPolicy` lines for
/// these cluster IPs (nothing for none).
fn cluster_ip_lines(cluster_ips: &[&str]) -> String {
    if cluster_ips.is_empty() {
        return String::new();
    }
    let families: Vec<&str> = cluster_ips.iter().map(|ip| if ip.contains(':') { "IPv6" } else { "IPv4" }).collect();
    format!(
        "  clusterIP: {}\n  clusterIPs: [{}]\n  ipFamilies: [{}]\n  ipFamilyPolicy: {}\n",
        cluster_ips[0],
        cluster_ips.join(", "),
        families.join(", "),
        if cluster_ips.len() > 1 { "RequireDualStack" } else { "SingleStack" },
    )
}

/// An EndpointSlice per address of the pod (`10.244.1.2`, `fd00:244:1::2`)
/// for service `name`, port `port_name` (`protocol`) on `target`.
fn pod_slices(name: &str, pod_addresses: &[&str], port_name: &str, protocol: &str, target: u16) -> String {
    let mut y = String::new();
    for addr in pod_addresses {
        let family = if addr.contains(':') { "IPv6" } else { "IPv4" };
        y += &format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-{}\n  \
             namespace: default\n  labels:\n    kubernetes.io/service-name: {name}\naddressType: {family}\n\
             ports:\n- name: {port_name}\n  protocol: {protocol}\n  port: {target}\nendpoints:\n\
             - addresses: [\"{addr}\"]\n  nodeName: test-node\n",
            family.to_lowercase()
        );
    }
    y
}

/// A TCP Service with these cluster IPs (none: no `clusterIP`) on `port`,
/// served by the pod's nginx over IPv4 and IPv6.
pub fn service(name: &str, cluster_ips: &[&str], port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n{}  \
         ports:\n  - name: web\n    port: {port}\n    targetPort: 80\n",
        cluster_ip_lines(cluster_ips)
    ) + &pod_slices(name, &["10.244.1.2", "fd00:244:1::2"], "web", "TCP", 80)
}

/// A TCP Service with no cluster IP that asks for IPv6 only, served by the
/// pod's nginx.
pub fn ipv6_only_service(name: &str, port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  \
         ipFamilies: [IPv6]\n  ipFamilyPolicy: SingleStack\n  ports:\n  - name: web\n    port: {port}\n    \
         targetPort: 80\n"
    ) + &pod_slices(name, &["fd00:244:1::2"], "web", "TCP", 80)
}

/// A UDP Service on `port` with these cluster IPs, and a `nodePort` when
/// given (type NodePort), whose endpoints are the pod's UDP echo servers
/// on port 7007, one per family of the cluster IPs.
pub fn udp_service(name: &str, cluster_ips: &[&str], port: u16, node_port: Option<u16>) -> String {
    let kind = if node_port.is_some() { "NodePort" } else { "ClusterIP" };
    let node_port = node_port.map(|p| format!("    nodePort: {p}\n")).unwrap_or_default();
    let pods = pods_of_families(cluster_ips);
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  type: {kind}\n{}  \
         ports:\n  - name: echo\n    protocol: UDP\n    port: {port}\n    targetPort: 7007\n{node_port}",
        cluster_ip_lines(cluster_ips)
    ) + &pod_slices(name, &pods, "echo", "UDP", 7007)
}

/// A NodePort Service `name` with these cluster IPs and `port` (nodePort
/// `node_port`) served by the pod's nginx, at its address of each family of
/// the cluster IPs.
pub fn node_port_service(name: &str, cluster_ips: &[&str], port: u16, node_port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  \
         type: NodePort\n{}  ports:\n  - name: web\n    port: {port}\n    targetPort: 80\n    \
         nodePort: {node_port}\n",
        cluster_ip_lines(cluster_ips)
    ) + &pod_slices(name, &pods_of_families(cluster_ips), "web", "TCP", 80)
}

/// A dual-stack Service `name` (cluster IPs `cluster_ips`, one `protocol`
/// port `port`) whose endpoints are the pod at both its addresses on port
/// `target`: what listens there, in which family, is up to the test.
pub fn dual_stack_service(name: &str, cluster_ips: &[&str], protocol: &str, port: u16, target: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n{}  \
         ports:\n  - name: p\n    protocol: {protocol}\n    port: {port}\n    targetPort: {target}\n",
        cluster_ip_lines(cluster_ips)
    ) + &pod_slices(name, &["10.244.1.2", "fd00:244:1::2"], "p", protocol, target)
}

/// The pod's address in each family of `cluster_ips`.
fn pods_of_families(cluster_ips: &[&str]) -> Vec<&'static str> {
    cluster_ips.iter().map(|ip| if ip.contains(':') { "fd00:244:1::2" } else { "10.244.1.2" }).collect()
}

/// The VIPs of service `default/name` (IPv4 first), from the agent's admin
/// endpoint in `ns`; empty if it has none (or does not exist).
pub fn vips_of(ns: &Netns, name: &str) -> Vec<String> {
    let Some(body) = ns.curl("http://127.0.0.1:15020/services") else { return Vec::new() };
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    let Some(service) = json["services"].as_array().and_then(|s| s.iter().find(|s| s["name"] == name)) else {
        return Vec::new();
    };
    ["vip", "vip6"].iter().filter_map(|k| service[*k].as_str().map(str::to_owned)).collect()
}

/// The IPv4 VIP of service `default/name`, if it has one.
pub fn vip_of(ns: &Netns, name: &str) -> Option<String> {
    vips_of(ns, name).into_iter().find(|v| !v.contains(':'))
}

/// The addresses on device `dev` in `ns` (the kernel's IPv6 link-local
/// one left out), sorted; None if there is no such device.
pub fn device_addresses(ns: &Netns, dev: &str) -> Option<Vec<String>> {
    let out = ns.exec(&["ip", "-j", "addr", "show", "dev", dev]);
    if !out.status.success() {
        return None;
    }
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut addrs: Vec<String> = json[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["local"].as_str().unwrap().to_owned())
        .filter(|a| !a.starts_with("fe80:"))
        .collect();
    addrs.sort();
    Some(addrs)
}

/// The agent's log lines about table transactions.
pub fn updates_logged(agent: &NsAgent) -> Vec<String> {
    agent.log().lines().filter(|l| l.contains("nftables elements updated")).map(str::to_owned).collect()
}

/// [`updates_logged`] once it has more than `before` lines: the agent logs
/// a transaction just after nft applied it, so a test that saw the
/// elements may read the log a moment before the line is there.
pub fn updates_logged_beyond(agent: &NsAgent, before: usize) -> Vec<String> {
    eventually(Duration::from_secs(5), "the transaction's log line", || {
        let all = updates_logged(agent);
        (all.len() > before).then_some(all)
    })
}

/// The entries of map `map` of the agent's table (`inet edgemesh`), as
/// `key : value` strings (`10.96.0.53 . 53 : 9.251.0.7 . 53`), sorted.
pub fn map_entries(ns: &Netns, map: &str) -> Vec<String> {
    let out = ns.nft(&["-j", "list", "map", "inet", "edgemesh", map]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let text = |v: &serde_json::Value| match v["concat"].as_array() {
        Some(c) => format!("{} . {}", c[0].as_str().unwrap(), c[1]),
        None => v.to_string(),
    };
    let mut entries: Vec<String> = json["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o["map"]["elem"].as_array())
        .flatten()
        .map(|e| format!("{} : {}", text(&e[0]), text(&e[1])))
        .collect();
    entries.sort();
    entries
}

/// `dig` against the agent's DNS (its node-mode address) from `ns`: the
/// records of type `rtype` (`A`, `AAAA`) of `name`.
pub fn dig(ns: &Netns, name: &str, rtype: &str) -> Vec<String> {
    let out = ns.exec(&["dig", &format!("@{DNS}"), "+short", "+time=2", "+tries=1", name, rtype]);
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
}

/// The A records of `name`, from the agent's DNS.
pub fn dig_a(ns: &Netns, name: &str) -> Vec<String> {
    dig(ns, name, "A")
}
