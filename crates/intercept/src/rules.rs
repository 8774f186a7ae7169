//! What the table holds, as pure functions: the elements of a service, the
//! script that (re)creates the table, and the script of one change.
//!
//! Scripts are nftables' text syntax with one statement per line (nftables
//! 1.0.6 fails to parse some rule sets written on one line), fed to
//! `nft -f -`, which applies a whole script as one atomic transaction.
//!
//! ```text
//! table inet edgemesh {
//!     set tcp4 { type ipv4_addr . inet_service; elements = { 10.96.0.10 . 80, ... } }
//!     set tcp6 { type ipv6_addr . inet_service; ... }
//!     map udp4 { type ipv4_addr . inet_service : ipv4_addr . inet_service;
//!                elements = { 10.96.0.53 . 53 : 9.251.0.7 . 53, ... } }
//!     map udp6 { type ipv6_addr . inet_service : ipv6_addr . inet_service; ... }
//!     set nodeport_tcp { type inet_service; elements = { 30080, ... } }
//!     map nodeport_udp4 { type inet_service : ipv4_addr . inet_service;
//!                         elements = { 30053 : 9.251.0.7 . 53, ... } }
//!     map nodeport_udp6 { type inet_service : ipv6_addr . inet_service; ... }
//!     chain output {       # local processes
//!         type nat hook output priority -100; policy accept;
//!         meta mark 0x454d return                        # the agent's own upstream connections
//!         ip daddr . tcp dport @tcp4 redirect to :15006
//!         ip6 daddr . tcp dport @tcp6 redirect to :15006
//!         dnat ip to ip daddr . udp dport map @udp4      # UDP: cluster IP -> the service's VIP
//!         dnat ip6 to ip6 daddr . udp dport map @udp6
//!         fib daddr type local tcp dport @nodeport_tcp redirect to :15006
//!         fib daddr type local dnat ip to udp dport map @nodeport_udp4
//!         fib daddr type local dnat ip6 to udp dport map @nodeport_udp6
//!     }
//!     chain prerouting {   # containers and pods routed through this node
//!         type nat hook prerouting priority dstnat; policy accept;
//!         (the same rules)
//!     }
//!     chain input {        # the transparent port takes redirected connections only
//!         type filter hook input priority filter; policy accept;
//!         tcp dport 15006 ct status ! dnat drop
//!     }
//! }
//! ```
//!
//! The transparent listener binds every address (connections from pods are
//! redirected to the address of the interface they came in on), so the
//! `input` rule is what keeps it from being reached directly, from another
//! host or by a local process: only connections that a redirect rule
//! brought there (conntrack's DNAT status) pass.
//!
//! Each service address is one element of a hashed set or map, so a packet
//! costs one lookup whatever the number of services, and adding or removing
//! a service adds or deletes only its elements.
//!
//! # UDP: DNAT to the VIP, not TPROXY
//!
//! A UDP datagram to `clusterIP:port` is DNATed to `VIP:port`, where the
//! proxy's UDP listener for that service port already runs (sessions,
//! balancing, idle expiry: `edgemesh-proxy`'s `udp` module). Conntrack
//! reverses the translation on the replies the listener sends from the VIP,
//! so the client sees them come from the `clusterIP:port` it sent to. This
//! was chosen over TPROXY because it needs nothing outside the agent's own
//! table: TPROXY needs a policy-routing rule and route table (`ip rule
//! fwmark ... lookup N`, a `local 0.0.0.0/0` route), and for the `output`
//! hook a re-route mark as well, all of them shared host state the agent
//! would have to own and clean up; and every reply would need a transparent
//! socket bound to the cluster IP. With DNAT the map is the whole state and
//! each change is one map element.
//!
//! Limits that follow: a DNATed packet from a pod (`prerouting`) may only go
//! to a VIP that is not in `127.0.0.0/8` (the kernel drops packets routed
//! in to loopback addresses), so pods need a `vipCidr` outside it, such as
//! `9.251.0.0/16` on the `edge0` device ([`crate::device`]); local processes
//! work with either. NAT cannot change the family: UDP to an IPv6 cluster IP
//! goes to the service's IPv6 VIP (`vipCidr6`), through map `udp6`.
//!
//! # NodePort
//!
//! `fib daddr type local` matches any address of the node (every device,
//! loopback included), so one set keyed by port serves a `NodePort`
//! service on all the node's addresses, including ones added later; the
//! transparent listener finds the service by the port. A UDP node port is
//! DNATed, like a cluster IP, to the service's VIP of the packet's family
//! and the service port (maps `nodeport_udp4`, `nodeport_udp6`), where the
//! UDP listener runs; replies leave from the node address the client used.
//!
//! # Scope
//!
//! In mode `ebpf` the kernel fast path serves cluster IPs and VIPs, and a
//! table of [`TableScope::NodePorts`] holds only the node-port sets and
//! rules (and the mark exclusion and the `input` guard): the same script,
//! with the other kinds of element and their rules left out.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use edgemesh_core::{Protocol, ServiceEntry};

/// One intercepted service address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Element {
    pub protocol: L4,
    /// The address to intercept (for a node port, only the port counts).
    pub addr: SocketAddr,
    /// Where a UDP datagram to `addr` is DNATed (the service's VIP and
    /// port); `None` for redirected TCP.
    pub to: Option<SocketAddr>,
}

/// The kinds of element, each with sets or maps of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum L4 {
    /// TCP to an address and port: redirected to the transparent listener.
    Tcp,
    /// UDP to a cluster IP and port: DNATed to the VIP and port.
    Udp,
    /// TCP to any local address on a node port: redirected.
    NodePortTcp,
    /// UDP to any local address of one family on a node port: DNATed to
    /// the VIP and service port.
    NodePortUdp,
}

impl Element {
    pub fn tcp(addr: SocketAddr) -> Self {
        Self { protocol: L4::Tcp, addr, to: None }
    }

    /// UDP to `addr`, DNATed to `to`.
    pub fn udp(addr: SocketAddr, to: SocketAddr) -> Self {
        Self { protocol: L4::Udp, addr, to: Some(to) }
    }

    /// TCP to node port `port` on any address of the node.
    pub fn node_port_tcp(port: u16) -> Self {
        Self { protocol: L4::NodePortTcp, addr: SocketAddr::from(([0, 0, 0, 0], port)), to: None }
    }

    /// UDP to node port `port` on any address of the node of `to`'s
    /// family, DNATed to `to`.
    pub fn node_port_udp(port: u16, to: SocketAddr) -> Self {
        let any: IpAddr = if to.is_ipv4() { Ipv4Addr::UNSPECIFIED.into() } else { Ipv6Addr::UNSPECIFIED.into() };
        Self { protocol: L4::NodePortUdp, addr: SocketAddr::new(any, port), to: Some(to) }
    }

    /// The set (or map) this element belongs to.
    pub fn set(&self) -> &'static str {
        match (self.protocol, self.addr.is_ipv4()) {
            (L4::Tcp, true) => "tcp4",
            (L4::Tcp, false) => "tcp6",
            (L4::Udp, true) => "udp4",
            (L4::Udp, false) => "udp6",
            (L4::NodePortTcp, _) => "nodeport_tcp",
            (L4::NodePortUdp, true) => "nodeport_udp4",
            (L4::NodePortUdp, false) => "nodeport_udp6",
        }
    }

    /// The element as nftables writes it: `10.96.0.10 . 80`,
    /// `10.96.0.53 . 53 : 9.251.0.7 . 53`, `30080` or `30053 : 9.251.0.7 . 53`.
    fn literal(&self) -> String {
        match (self.protocol, self.to) {
            (L4::NodePortTcp, _) => self.addr.port().to_string(),
            (L4::NodePortUdp, Some(to)) => format!("{} : {} . {}", self.addr.port(), to.ip(), to.port()),
            (_, Some(to)) => format!("{} . {} : {} . {}", self.addr.ip(), self.addr.port(), to.ip(), to.port()),
            (_, None) => format!("{} . {}", self.addr.ip(), self.addr.port()),
        }
    }
}

/// The elements of `entry`: every VIP and cluster IP with every TCP port
/// (redirected); every cluster IP with every UDP port, DNATed to the VIP of
/// its family, where the UDP listener of that port runs (nothing without
/// one); every TCP node port; every UDP node port, DNATed to each VIP.
pub fn service_elements(entry: &ServiceEntry) -> Vec<Element> {
    let ips: Vec<IpAddr> = entry.ips().collect();
    let mut out = Vec::with_capacity(ips.len() * entry.ports.len());
    let mut push = |e: Element| {
        if !out.contains(&e) {
            out.push(e);
        }
    };
    for port in &entry.ports {
        match port.protocol {
            Protocol::Tcp => {
                for ip in &ips {
                    push(Element::tcp(SocketAddr::new(*ip, port.port)));
                }
                if let Some(node_port) = port.node_port {
                    push(Element::node_port_tcp(node_port));
                }
            }
            Protocol::Udp => {
                for ip in &entry.cluster_ips {
                    let Some(vip) = entry.vip_of_family(*ip).filter(|vip| vip != ip) else { continue };
                    push(Element::udp(SocketAddr::new(*ip, port.port), SocketAddr::new(vip, port.port)));
                }
                if let Some(node_port) = port.node_port {
                    for vip in entry.vips() {
                        push(Element::node_port_udp(node_port, SocketAddr::new(vip, port.port)));
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// Which service addresses a table intercepts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TableScope {
    /// Cluster IPs, VIPs and node ports (mode `nftables`).
    #[default]
    Every,
    /// Node ports only (mode `ebpf`: the programs serve the rest).
    NodePorts,
}

impl TableScope {
    /// Whether a table of this scope stays in the kernel with no element.
    /// A node-port table is made with its first element and deleted with
    /// its last: any nat table turns connection tracking on for the whole
    /// namespace, which every connection of the node's pods then pays for
    /// (the fast path's new connections/s: 0.88x direct with an empty
    /// node-port table, 0.97x without). A table of every service address
    /// is there for as long as node mode runs.
    pub fn kept_empty(self) -> bool {
        self == TableScope::Every
    }

    /// Whether a table of this scope holds elements of kind `kind`.
    pub fn covers(self, kind: L4) -> bool {
        match self {
            TableScope::Every => true,
            TableScope::NodePorts => matches!(kind, L4::NodePortTcp | L4::NodePortUdp),
        }
    }
}

/// Table settings the scripts need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableSpec {
    /// Table name (family `inet`).
    pub name: String,
    /// Where intercepted connections are redirected (the agent's
    /// transparent listener).
    pub port: u16,
    /// Packets with this mark (the agent's own upstream connections) are
    /// never redirected.
    pub mark: u32,
    /// What the table intercepts.
    pub scope: TableScope,
}

/// Elements per `add element` line, so that a very large table is not one
/// enormous line.
const ELEMENTS_PER_LINE: usize = 512;

/// Sets and maps, with the kind of element they hold and their nftables
/// type.
const SETS: [(L4, &str, &str, &str); 7] = [
    (L4::Tcp, "tcp4", "set", "ipv4_addr . inet_service"),
    (L4::Tcp, "tcp6", "set", "ipv6_addr . inet_service"),
    (L4::Udp, "udp4", "map", "ipv4_addr . inet_service : ipv4_addr . inet_service"),
    (L4::Udp, "udp6", "map", "ipv6_addr . inet_service : ipv6_addr . inet_service"),
    (L4::NodePortTcp, "nodeport_tcp", "set", "inet_service"),
    (L4::NodePortUdp, "nodeport_udp4", "map", "inet_service : ipv4_addr . inet_service"),
    (L4::NodePortUdp, "nodeport_udp6", "map", "inet_service : ipv6_addr . inet_service"),
];

impl TableSpec {
    /// Replaces the table atomically with one holding `elements`: a table
    /// left behind by an earlier run (crash) is deleted in the same
    /// transaction (`add` first, so deleting never fails).
    pub fn replace_script<'a>(&self, elements: impl IntoIterator<Item = &'a Element>) -> String {
        let t = &self.name;
        let mut s = Self::delete_if_present_script(t);
        let _ = writeln!(s, "add table inet {t}");
        for (_, set, kind, key_type) in SETS.iter().filter(|(l4, ..)| self.scope.covers(*l4)) {
            let _ = writeln!(s, "add {kind} inet {t} {set} {{ type {key_type}; }}");
        }
        let _ = writeln!(s, "add chain inet {t} output {{ type nat hook output priority -100; policy accept; }}");
        let _ =
            writeln!(s, "add chain inet {t} prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}");
        let _ = writeln!(s, "add rule inet {t} output meta mark {:#x} return", self.mark);
        let port = self.port;
        let rules = [
            (L4::Tcp, format!("ip daddr . tcp dport @tcp4 redirect to :{port}")),
            (L4::Tcp, format!("ip6 daddr . tcp dport @tcp6 redirect to :{port}")),
            (L4::Udp, "dnat ip to ip daddr . udp dport map @udp4".to_owned()),
            (L4::Udp, "dnat ip6 to ip6 daddr . udp dport map @udp6".to_owned()),
            (L4::NodePortTcp, format!("fib daddr type local tcp dport @nodeport_tcp redirect to :{port}")),
            (L4::NodePortUdp, "fib daddr type local dnat ip to udp dport map @nodeport_udp4".to_owned()),
            (L4::NodePortUdp, "fib daddr type local dnat ip6 to udp dport map @nodeport_udp6".to_owned()),
        ];
        for chain in ["output", "prerouting"] {
            for (_, rule) in rules.iter().filter(|(l4, _)| self.scope.covers(*l4)) {
                let _ = writeln!(s, "add rule inet {t} {chain} {rule}");
            }
        }
        let _ = writeln!(s, "add chain inet {t} input {{ type filter hook input priority filter; policy accept; }}");
        let _ = writeln!(s, "add rule inet {t} input tcp dport {port} ct status ! dnat drop");
        self.element_lines(&mut s, "add", elements);
        s
    }

    /// The elements of `entry` this table holds ([`service_elements`],
    /// those of its scope).
    pub fn elements(&self, entry: &ServiceEntry) -> Vec<Element> {
        let mut elements = service_elements(entry);
        elements.retain(|e| self.scope.covers(e.protocol));
        elements
    }

    /// Deletes table `name` if it is there (`add` first, so deleting never
    /// fails).
    pub fn delete_if_present_script(name: &str) -> String {
        format!("add table inet {name}\ndelete table inet {name}\n")
    }

    /// Deletes the table (clean stop). Fails if there is none.
    pub fn delete_script(&self) -> String {
        format!("delete table inet {}\n", self.name)
    }

    /// One transaction: delete `removed`, then add `added`. Empty when
    /// there is nothing to do.
    pub fn change_script<'a>(
        &self,
        removed: impl IntoIterator<Item = &'a Element>,
        added: impl IntoIterator<Item = &'a Element>,
    ) -> String {
        let mut s = String::new();
        self.element_lines(&mut s, "delete", removed);
        self.element_lines(&mut s, "add", added);
        s
    }

    /// `verb element` lines, grouped by set. A map key given twice with
    /// different targets (two services claiming one cluster IP and port,
    /// an invalid state) is written once, the first target winning, so
    /// that a rebuild always succeeds.
    fn element_lines<'a>(&self, out: &mut String, verb: &str, elements: impl IntoIterator<Item = &'a Element>) {
        let mut by_set: Vec<(&str, Vec<String>)> = Vec::new();
        let mut keys: HashSet<(L4, SocketAddr)> = HashSet::new();
        for e in elements {
            if e.to.is_some() && !keys.insert((e.protocol, e.addr)) {
                continue;
            }
            let set = e.set();
            match by_set.iter_mut().find(|(s, _)| *s == set) {
                Some((_, list)) => list.push(e.literal()),
                None => by_set.push((set, vec![e.literal()])),
            }
        }
        for (set, list) in by_set {
            for chunk in list.chunks(ELEMENTS_PER_LINE) {
                let _ = writeln!(out, "{verb} element inet {} {set} {{ {} }}", self.name, chunk.join(", "));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TableSpec {
        TableSpec { name: "edgemesh".into(), port: 15006, mark: 0x454d, scope: TableScope::Every }
    }

    #[test]
    fn replace_script_deletes_a_leftover_and_redirects_both_hooks() {
        let e = [Element::tcp("10.96.0.10:80".parse().unwrap()), Element::tcp("[fd00::a]:443".parse().unwrap())];
        let s = spec().replace_script(&e);
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines[..3], ["add table inet edgemesh", "delete table inet edgemesh", "add table inet edgemesh"]);
        assert!(s.contains("add rule inet edgemesh output meta mark 0x454d return\n"), "{s}");
        assert!(s.contains("add rule inet edgemesh prerouting ip daddr . tcp dport @tcp4 redirect to :15006\n"), "{s}");
        assert!(s.contains("add element inet edgemesh tcp4 { 10.96.0.10 . 80 }\n"), "{s}");
        assert!(s.contains("add element inet edgemesh tcp6 { fd00::a . 443 }\n"), "{s}");
        assert!(
            s.contains("add map inet edgemesh udp4 { type ipv4_addr . inet_service : ipv4_addr . inet_service; }\n")
        );
        assert!(s.contains("add rule inet edgemesh prerouting dnat ip to ip daddr . udp dport map @udp4\n"), "{s}");
        assert!(s.contains("output fib daddr type local tcp dport @nodeport_tcp redirect to :15006\n"), "{s}");
        assert!(s.contains("add rule inet edgemesh input tcp dport 15006 ct status ! dnat drop\n"), "{s}");
        // The mark exclusion comes before any redirect of the output chain.
        let mark = s.find("meta mark").unwrap();
        assert!(s.find("output ip daddr").unwrap() > mark);
    }

    #[test]
    fn change_script_touches_only_the_given_elements() {
        let gone = [Element::tcp("10.96.0.11:53".parse().unwrap())];
        let new = [Element::tcp("10.96.0.12:80".parse().unwrap()), Element::tcp("10.96.0.12:81".parse().unwrap())];
        assert_eq!(
            spec().change_script(&gone, &new),
            "delete element inet edgemesh tcp4 { 10.96.0.11 . 53 }\n\
             add element inet edgemesh tcp4 { 10.96.0.12 . 80, 10.96.0.12 . 81 }\n"
        );
        assert_eq!(spec().change_script(&[], &[]), "");
    }

    #[test]
    fn udp_and_node_port_elements() {
        let e = [
            Element::udp("10.96.0.53:53".parse().unwrap(), "9.251.0.7:53".parse().unwrap()),
            Element::node_port_tcp(30080),
        ];
        assert_eq!(
            spec().change_script(&[], &e),
            "add element inet edgemesh udp4 { 10.96.0.53 . 53 : 9.251.0.7 . 53 }\n\
             add element inet edgemesh nodeport_tcp { 30080 }\n"
        );
    }

    #[test]
    fn ipv6_udp_and_udp_node_ports_are_maps_of_their_family() {
        let e = [
            Element::udp("[fd00:96::53]:53".parse().unwrap(), "[fd00:9:251::7]:53".parse().unwrap()),
            Element::node_port_udp(30053, "9.251.0.7:53".parse().unwrap()),
            Element::node_port_udp(30053, "[fd00:9:251::7]:53".parse().unwrap()),
        ];
        assert_eq!(
            spec().change_script(&[], &e),
            "add element inet edgemesh udp6 { fd00:96::53 . 53 : fd00:9:251::7 . 53 }\n\
             add element inet edgemesh nodeport_udp4 { 30053 : 9.251.0.7 . 53 }\n\
             add element inet edgemesh nodeport_udp6 { 30053 : fd00:9:251::7 . 53 }\n"
        );
        let s = spec().replace_script(&[]);
        assert!(s.contains("add rule inet edgemesh prerouting dnat ip6 to ip6 daddr . udp dport map @udp6\n"), "{s}");
        assert!(s.contains("output fib daddr type local dnat ip6 to udp dport map @nodeport_udp6\n"), "{s}");
    }

    #[test]
    fn a_node_port_table_has_only_the_node_port_sets_and_rules() {
        let node_ports = TableSpec { name: "edgemesh_nodeports".into(), scope: TableScope::NodePorts, ..spec() };
        let s = node_ports.replace_script(&[]);
        let t = "inet edgemesh_nodeports";
        for set in ["nodeport_tcp", "nodeport_udp4", "nodeport_udp6"] {
            assert!(s.contains(&format!(" {t} {set} {{ type ")), "{set}: {s}");
        }
        for chain in ["output", "prerouting"] {
            assert!(
                s.contains(&format!("{t} {chain} fib daddr type local tcp dport @nodeport_tcp redirect to :15006\n"))
            );
            assert!(
                s.contains(&format!("{t} {chain} fib daddr type local dnat ip6 to udp dport map @nodeport_udp6\n"))
            );
        }
        assert!(s.contains(&format!("add rule {t} output meta mark 0x454d return\n")), "{s}");
        assert!(s.contains(&format!("add rule {t} input tcp dport 15006 ct status ! dnat drop\n")), "{s}");
        for other in ["tcp4", "tcp6", "udp4", "udp6"] {
            assert!(!s.contains(&format!(" {other} ")) && !s.contains(&format!("@{other} ")), "no {other}: {s}");
        }
        assert_eq!(s.lines().filter(|l| l.starts_with("add rule")).count(), 1 + 2 * 3 + 1, "{s}");
        // The full table has every rule of the node-port one.
        let every = spec().replace_script(&[]).replace("inet edgemesh ", "inet edgemesh_nodeports ");
        assert!(s.lines().skip(3).all(|l| every.contains(l)), "a filter of one generator");
        assert!(TableScope::NodePorts.covers(L4::NodePortUdp) && !TableScope::NodePorts.covers(L4::Tcp));
    }

    #[test]
    fn many_elements_are_split_over_lines() {
        let e: Vec<Element> = (0..1200u16).map(|p| Element::tcp(SocketAddr::from(([10, 96, 0, 1], p + 1)))).collect();
        let s = spec().change_script(&[], &e);
        assert_eq!(s.lines().count(), 3);
        assert_eq!(s.matches(" . ").count(), 1200);
    }
}
