//! Tunnel topologies: nodes (a namespace, an identity, manifests, the real
//! agent), Services on them, NAT routers, and the agents' `/peers` view.
//! Used by `tunnel_e2e.rs`, `tunnel_faults_e2e.rs`, `tunnel_churn_e2e.rs` and
//! `tunnel_metrics_e2e.rs`.
//!
//! Every node's manifests hold the same Services, EndpointSlices (endpoint
//! `nodeName` the node the backend runs on) and Node objects binding node
//! names to peer IDs (`edgemesh.io/peer-id`, from `edgemesh id`).

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use super::netns::{Lan, Netns, NsAgent, link};
use super::{eventually_every, peer_id, write_manifest};

/// The tunnel port of agents started without `--tunnel-listen`: the default.
pub const TUNNEL_PORT: u16 = edgemesh_tunnel::DEFAULT_PORT;

/// Bound on what the tunnel does on its own (discovery, relay, hole punching).
pub const LIMIT: Duration = Duration::from_secs(30);

/// The tunnel transport a test runs on: QUIC when the agent is built with
/// the `quic` feature (`cargo test -p edgemesh --features quic`), else TCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Quic,
}

impl Transport {
    pub fn of_this_build() -> Transport {
        if cfg!(feature = "quic") { Transport::Quic } else { Transport::Tcp }
    }

    pub fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Quic => "quic",
        }
    }

    /// What every address on this transport holds (`/tcp/`, `/quic-v1`).
    pub fn marker(self) -> &'static str {
        match self {
            Transport::Tcp => "/tcp/",
            Transport::Quic => "/quic-v1",
        }
    }

    /// Agent flags `args`, plus those that make it listen on this
    /// transport only.
    pub fn with_listen(self, args: &[&str]) -> Vec<String> {
        let listen = match self {
            Transport::Tcp => format!("/ip4/0.0.0.0/tcp/{TUNNEL_PORT}"),
            Transport::Quic => format!("/ip4/0.0.0.0/udp/{TUNNEL_PORT}/quic-v1"),
        };
        args.iter().map(|a| a.to_string()).chain(["--tunnel-listen".to_owned(), listen]).collect()
    }
}

/// A node: a namespace, its state directory (identity) and its manifests.
pub struct Node {
    pub name: String,
    pub ns: Netns,
    pub peer_id: String,
    dir: tempfile::TempDir,
}

impl Node {
    /// A node called `name` whose identity exists already (its peer ID is
    /// known before the agent starts, as an operator would annotate it).
    pub fn new(name: &str) -> Node {
        let ns = Netns::new(name.trim_start_matches("node-"));
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("manifests")).unwrap();
        let peer_id = peer_id(&dir.path().join("state"));
        Node { name: name.to_owned(), ns, peer_id, dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Replaces the node's manifests with `objects`.
    pub fn manifests(&self, objects: &[String]) {
        write_manifest(&self.path("manifests"), "cluster.yaml", &objects.join("---\n"));
    }

    /// The agent on this node, with the tunnel on and `extra` flags.
    pub fn start(&self, extra: &[&str]) -> NsAgent {
        let (manifests, state) = (self.path("manifests"), self.path("state"));
        let mut args = vec!["--node-name", &self.name, "--tunnel", "--dns-upstream", "127.0.0.1:9"];
        args.extend(["--vip-cidr", "127.90.0.0/16"]);
        args.extend(["--manifest-dir", manifests.to_str().unwrap(), "--state-dir", state.to_str().unwrap()]);
        args.extend_from_slice(extra);
        NsAgent::start(&self.ns, &args, Duration::from_secs(20))
    }

    /// [`Node::start`] with owned flags (e.g. from [`Transport::with_listen`]).
    pub fn start_with(&self, extra: &[String]) -> NsAgent {
        self.start(&extra.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// The Node object binding this node's name to its peer ID.
    pub fn object(&self, address: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: {}\n  annotations:\n    edgemesh.io/peer-id: \"{}\"\n\
             status:\n  addresses:\n  - type: InternalIP\n    address: {address}\n",
            self.name, self.peer_id
        )
    }

    /// This node's TCP tunnel address, `/ip4/<address>/tcp/<TUNNEL_PORT>/p2p/<id>`.
    pub fn tunnel_addr(&self, address: &str) -> String {
        self.tunnel_addr_on(address, Transport::Tcp)
    }

    /// This node's tunnel address on `transport`.
    pub fn tunnel_addr_on(&self, address: &str, transport: Transport) -> String {
        match transport {
            Transport::Tcp => format!("/ip4/{address}/tcp/{TUNNEL_PORT}/p2p/{}", self.peer_id),
            Transport::Quic => format!("/ip4/{address}/udp/{TUNNEL_PORT}/quic-v1/p2p/{}", self.peer_id),
        }
    }
}

/// A Service `name` (protocol TCP or UDP, `port`) whose one endpoint is
/// `address:port` on node `node`.
pub fn service(name: &str, protocol: &str, port: u16, node: &str, address: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  ports:\n  \
         - name: p\n    protocol: {protocol}\n    port: {port}\n    targetPort: {port}\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  \
         namespace: default\n  labels:\n    kubernetes.io/service-name: {name}\naddressType: IPv4\nports:\n\
         - name: p\n  protocol: {protocol}\n  port: {port}\nendpoints:\n- addresses: [\"{address}\"]\n  \
         nodeName: {node}\n"
    )
}

/// The peers in `/peers`.
pub fn peers(agent: &NsAgent) -> Vec<Value> {
    agent.json("/peers")["peers"].as_array().cloned().unwrap_or_default()
}

/// Waits until `/peers` lists node `node` (its name claim accepted) and
/// `check` holds for its entry; that entry.
pub fn wait_for_peer(agent: &NsAgent, node: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    wait_for_peer_within(agent, node, LIMIT, what, check)
}

/// [`wait_for_peer`] with a bound of its own.
pub fn wait_for_peer_within(
    agent: &NsAgent,
    node: &str,
    limit: Duration,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    eventually_every(Duration::from_millis(200), limit, what, || {
        peers(agent).into_iter().find(|p| p["node"] == node && p["trusted"] == true && check(p))
    })
}

/// Addresses of a `/peers` entry, joined for messages and searches.
pub fn addresses(peer: &Value) -> String {
    peer["addresses"]
        .as_array()
        .map(|a| a.iter().map(|a| a.as_str().unwrap_or("?")).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Puts `node` behind a stealth NAT router on `wan` (see
/// [`Netns::masquerade`]): the router's WAN address is `wan_address`, the
/// node is `10.<lan>.0.2` behind `10.<lan>.0.1`.
pub fn behind_nat(wan: &Lan, node: &Node, wan_address: &str, lan: u8) -> Netns {
    let router = Netns::router("rtr");
    wan.attach(&router, "wan0", &[&format!("{wan_address}/24")]);
    link(&router, "lan0", &node.ns, "eth0");
    router.addr("lan0", &format!("10.{lan}.0.1/24"));
    node.ns.addr("eth0", &format!("10.{lan}.0.2/24"));
    node.ns.route("default", &format!("10.{lan}.0.1"));
    router.masquerade("wan0");
    router
}

/// The agents of a relay at 198.18.0.1 on the WAN (a relay server, no
/// node of the cluster) and of two nodes that use it (no mDNS; over this
/// build's transport): the relay's, then `first`'s once it holds its relay
/// reservation, then `second`'s. In that order.
pub fn start_relayed(relay: &Node, first: &Node, second: &Node) -> (NsAgent, NsAgent, NsAgent) {
    let transport = Transport::of_this_build();
    let relay_addr = relay.tunnel_addr_on("198.18.0.1", transport);
    let node_args = transport.with_listen(&["--relay", &relay_addr, "--no-mdns"]);
    let agent_relay = relay.start_with(&transport.with_listen(&["--relay-server", "--no-mdns"]));
    let agent_first = first.start_with(&node_args);
    eventually_every(Duration::from_millis(200), LIMIT, "the first node's relay reservation", || {
        peers(&agent_first).into_iter().find(|p| p["peerId"] == relay.peer_id && p["relayReserved"] == true)
    });
    let agent_second = second.start_with(&node_args);
    (agent_relay, agent_first, agent_second)
}

/// node-a and node-b on one bridged LAN.
pub fn lan_pair() -> (Lan, Node, Node) {
    let lan = Lan::new("lan");
    let (a, b) = (Node::new("node-a"), Node::new("node-b"));
    lan.attach(&a.ns, "eth0", &["10.0.0.2/24"]);
    lan.attach(&b.ns, "eth0", &["10.0.0.3/24"]);
    (lan, a, b)
}

/// Puts `node` on `wan` at `address` (a /24) with a default route to the
/// WAN's upstream, `.254` of it (which nobody answers: nothing leaves).
pub fn on_wan(wan: &Lan, node: &Node, address: &str) {
    wan.attach(&node.ns, "eth0", &[&format!("{address}/24")]);
    let upstream = address.rsplit_once('.').map(|(net, _)| format!("{net}.254")).expect("an IPv4 address");
    node.ns.route("default", &upstream);
}

/// Makes a NAT router from [`behind_nat`] answer connections from the WAN
/// with a TCP reset (other packets opening a connection still drop),
/// as many routers do, instead of dropping them.
pub fn reset_unsolicited(router: &Netns) {
    router.ok(&["nft", "delete", "table", "ip", "em_filter"]);
    router.nft_file(
        "table ip em_filter {\n\
         \tchain forward {\n\
         \t\ttype filter hook forward priority filter; policy accept;\n\
         \t\tiifname \"wan0\" ct state new meta l4proto tcp reject with tcp reset\n\
         \t\tiifname \"wan0\" ct state new drop\n\
         \t}\n\
         \tchain input {\n\
         \t\ttype filter hook input priority filter; policy accept;\n\
         \t\tiifname \"wan0\" ct state new meta l4proto tcp reject with tcp reset\n\
         \t\tiifname \"wan0\" ct state new drop\n\
         \t}\n\
         }\n",
    );
}

/// iperf3 from `ns` to `server` for `seconds`: the bits per second the
/// server received, or None if it failed.
pub fn iperf3(ns: &Netns, server: &str, seconds: u32) -> Option<f64> {
    let out = ns.exec(&["iperf3", "-c", server, "-p", "5201", "-t", &seconds.to_string(), "-J"]);
    let report: Value = serde_json::from_slice(&out.stdout).ok()?;
    if !out.status.success() || report.get("error").is_some() {
        eprintln!("iperf3 to {server}: {}", report.get("error").unwrap_or(&Value::Null));
        return None;
    }
    report["end"]["sum_received"]["bits_per_second"].as_f64()
}
