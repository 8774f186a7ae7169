//! No open doors (issue #18), as root: the real agent with its default
//! settings in a node namespace that also has routable addresses (IPv4 and
//! IPv6 on a link to a second namespace). Every TCP and UDP socket listening
//! in the node namespace (`ss -ltnu` there) is on loopback and at an address
//! the agent's effective config (`/config`) names: DNS, the admin endpoint,
//! the service VIPs. Nothing listens on a wildcard or a routable address, and
//! from the other end of the link the admin endpoint and DNS do not answer.
//!
//! ```text
//!  node ns (agent)  10.77.0.1, fd00:77::1 ── veth ── 10.77.0.2, fd00:77::2  peer ns
//! ```

mod support;

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use serde_json::Value;
use support::netns::{Netns, NsAgent, in_netns, link};
use support::*;

const PEER: &str = "10.77.0.2";

/// A TCP service `web` (port 80) and a UDP service `dns` (port 53), their
/// endpoints in the peer namespace, on no server: the agent listens on
/// their VIPs all the same.
const MANIFESTS: &str = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: default\nspec:\n  ports:\n  \
     - name: web\n    port: 80\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-0\n  \
     namespace: default\n  labels:\n    kubernetes.io/service-name: web\naddressType: IPv4\nports:\n- name: web\n  \
     port: 8080\nendpoints:\n- addresses: [10.77.0.2]\n  nodeName: n1\n---\napiVersion: v1\nkind: Service\nmetadata:\n  \
     name: dns\n  namespace: default\nspec:\n  ports:\n  - name: dns\n    protocol: UDP\n    port: 53\n---\n\
     apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: dns-0\n  namespace: default\n  labels:\n    \
     kubernetes.io/service-name: dns\naddressType: IPv4\nports:\n- name: dns\n  protocol: UDP\n  port: 5353\n\
     endpoints:\n- addresses: [10.77.0.2]\n  nodeName: n1\n";

/// One listening socket: `tcp` or `udp`, its local address, and the rest
/// of `ss`'s line (the process) for messages.
#[derive(Debug)]
struct Listener {
    proto: String,
    addr: SocketAddr,
    line: String,
}

/// The TCP and UDP sockets listening in `ns` (`ss -ltnupH`: UDP sockets
/// that are not connected count as listening; a session's or an upstream
/// query's connected socket takes datagrams from its peer only).
fn listeners(ns: &Netns) -> Vec<Listener> {
    ns.ok(&["ss", "-ltnupH"]).lines().map(parse).collect()
}

/// `udp UNCONN 0 0 127.0.0.1%lo:15053 0.0.0.0:* users:...`; `*` is the
/// IPv6 wildcard (which takes IPv4 too).
fn parse(line: &str) -> Listener {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (proto, local) = (fields[0], fields[4]);
    let (host, port) = local.rsplit_once(':').unwrap_or_else(|| panic!("no port in {line}"));
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host = host.split_once('%').map_or(host, |(h, _)| h);
    let ip = if host == "*" { IpAddr::V6(Ipv6Addr::UNSPECIFIED) } else { host.parse().expect(line) };
    Listener { proto: proto.to_owned(), addr: SocketAddr::new(ip, port.parse().expect(line)), line: line.to_owned() }
}

/// Whether the effective `config` asks for a `proto` listener at `addr`.
fn named_by(config: &Value, proto: &str, addr: SocketAddr) -> bool {
    let at = |key: &Value| key.as_str().and_then(|s| s.parse::<SocketAddr>().ok()) == Some(addr);
    let in_range =
        |key: &Value| key.as_str().and_then(|s| s.parse::<IpNet>().ok()).is_some_and(|n| n.contains(&addr.ip()));
    let enabled = |section: &str| config[section]["enabled"].as_bool() == Some(true);
    at(&config["dns"]["listen"])
        || (proto == "tcp" && at(&config["admin"]["listen"]))
        || in_range(&config["vipCidr"])
        || in_range(&config["vipCidr6"])
        || (enabled("socks") && proto == "tcp" && at(&config["socks"]["listen"]))
        || (enabled("tunnel")
            && config["tunnel"]["listen"].as_array().is_some_and(|l| l.iter().any(|m| on_multiaddr(m, proto, addr))))
}

/// Whether `multiaddr` (`/ip4/0.0.0.0/tcp/20006`, `/ip6/::/udp/20006/quic-v1`)
/// is a `proto` listener at `addr` (any port for port 0).
fn on_multiaddr(multiaddr: &Value, proto: &str, addr: SocketAddr) -> bool {
    let parts: Vec<&str> = multiaddr.as_str().unwrap_or_default().split('/').collect();
    let [_, _, ip, transport, port, ..] = parts[..] else { return false };
    let port: u16 = port.parse().unwrap_or(u16::MAX);
    transport == proto && ip.parse() == Ok(addr.ip()) && (port == 0 || port == addr.port())
}

#[test]
fn with_default_settings_the_agent_listens_on_loopback_only() {
    let (node, peer) = (Netns::new("lsnode"), Netns::new("lspeer"));
    link(&node, "eth0", &peer, "eth0");
    node.addr("eth0", "10.77.0.1/24");
    node.addr("eth0", "fd00:77::1/64");
    peer.addr("eth0", &format!("{PEER}/24"));
    peer.addr("eth0", "fd00:77::2/64");
    let (dir, manifests) = manifest_dir();
    write_manifest(&manifests, "services.yaml", MANIFESTS);
    let state = dir.path().join("state");
    // Defaults, but for the node name and the directories, and an upstream in
    // the peer namespace (the host's resolvers are not the test's to query).
    let args = [
        "--node-name",
        "n1",
        "--manifest-dir",
        manifests.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
        "--dns-upstream",
        &format!("{PEER}:53"),
    ];
    let agent = NsAgent::start(&node, &args, Duration::from_secs(15));
    let config = agent.json("/config");
    let vip = |name: &str| -> IpAddr {
        eventually(Duration::from_secs(10), "the service's VIP", || agent.vip("default", name)).parse().expect("a VIP")
    };
    let (web, dns) = (vip("web"), vip("dns"));

    let expected = [
        ("tcp", SocketAddr::from(([127, 0, 0, 1], 15020))),
        ("tcp", SocketAddr::from(([127, 0, 0, 1], 15053))),
        ("udp", SocketAddr::from(([127, 0, 0, 1], 15053))),
        ("tcp", SocketAddr::new(web, 80)),
        ("udp", SocketAddr::new(dns, 53)),
    ];
    let all_there = |found: &[Listener]| {
        expected.iter().all(|(proto, addr)| found.iter().any(|l| l.proto == *proto && l.addr == *addr))
    };
    // The VIP listeners follow the services; DNS and admin are up once ready.
    let vips = |found: &[Listener]| found.iter().filter(|l| [web, dns].contains(&l.addr.ip())).count() >= 2;
    eventually(Duration::from_secs(10), "the VIP listeners", || vips(&listeners(&node)).then_some(()));

    // Sockets the agent opens only when used: a UDP session (connected to
    // its endpoint) and a forwarded query (connected to the upstream).
    in_netns(&node.name, move || {
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        client.send_to(b"session", (dns, 53)).unwrap();
    });
    node.exec(&["dig", "@127.0.0.1", "-p", "15053", "+time=1", "+tries=1", "example.org"]);

    let found = listeners(&node);
    for l in &found {
        assert!(
            l.addr.ip().is_loopback() && named_by(&config, &l.proto, l.addr),
            "a listener off loopback, or where the config names none: {}\nall:\n{found:#?}\nconfig: {config}",
            l.line
        );
    }
    assert!(all_there(&found), "expected {expected:?}, found {found:#?}");

    // From the other end of the link, over both families: nothing answers.
    for host in ["10.77.0.1", "[fd00:77::1]"] {
        assert_eq!(peer.curl(&format!("http://{host}:15020/healthz")), None, "admin endpoint reached at {host}");
    }
    let out = peer.exec(&["dig", "@10.77.0.1", "-p", "15053", "+time=1", "+tries=1", "web.default.svc.cluster.local"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("status:"), "DNS answered from outside the node:\n{text}");
}
