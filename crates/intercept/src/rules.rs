//! What the table holds, as pure functions: the set elements of a service,
//! the script that (re)creates the table, and the script of one change.
//!
//! Scripts are nftables' text syntax with one statement per line (nftables
//! 1.0.6 fails to parse some rule sets written on one line), fed to
//! `nft -f -`, which applies a whole script as one atomic transaction.
//!
//! ```text
//! table inet edgemesh {
//!     set tcp4 { type ipv4_addr . inet_service; elements = { 10.96.0.10 . 80, ... } }
//!     set tcp6 { type ipv6_addr . inet_service; ... }
//!     chain output {       # local processes
//!         type nat hook output priority -100; policy accept;
//!         meta mark 0x454d return                        # the agent's own upstream connections
//!         ip daddr . tcp dport @tcp4 redirect to :15006
//!         ip6 daddr . tcp dport @tcp6 redirect to :15006
//!     }
//!     chain prerouting {   # containers and pods routed through this node
//!         type nat hook prerouting priority dstnat; policy accept;
//!         ip daddr . tcp dport @tcp4 redirect to :15006
//!         ip6 daddr . tcp dport @tcp6 redirect to :15006
//!     }
//! }
//! ```
//!
//! Each service address is one element of a hashed set, so a packet costs
//! one lookup whatever the number of services, and adding or removing a
//! service adds or deletes only its elements.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use edgemesh_core::{Protocol, ServiceEntry};

/// One intercepted service address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Element {
    pub protocol: L4,
    pub addr: SocketAddr,
}

/// The protocols with sets of their own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum L4 {
    Tcp,
}

impl Element {
    pub fn tcp(addr: SocketAddr) -> Self {
        Self { protocol: L4::Tcp, addr }
    }

    /// The set this element belongs to.
    pub fn set(&self) -> &'static str {
        match (self.protocol, self.addr.is_ipv4()) {
            (L4::Tcp, true) => "tcp4",
            (L4::Tcp, false) => "tcp6",
        }
    }

    /// The element as nftables writes it: `10.96.0.10 . 80`.
    fn literal(&self) -> String {
        format!("{} . {}", self.addr.ip(), self.addr.port())
    }
}

/// The addresses of `entry` to intercept: every VIP and cluster IP with
/// every TCP port (UDP service ports are served on their VIP listeners).
pub fn service_elements(entry: &ServiceEntry) -> Vec<Element> {
    let ips: Vec<IpAddr> = entry.ips().collect();
    let mut out = Vec::with_capacity(ips.len() * entry.ports.len());
    for port in entry.ports.iter().filter(|p| p.protocol == Protocol::Tcp) {
        for ip in &ips {
            let e = Element::tcp(SocketAddr::new(*ip, port.port));
            if !out.contains(&e) {
                out.push(e);
            }
        }
    }
    out
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
}

/// Elements per `add element` line, so that a very large table is not one
/// enormous line.
const ELEMENTS_PER_LINE: usize = 512;

const SETS: [(&str, &str); 2] = [("tcp4", "ipv4_addr"), ("tcp6", "ipv6_addr")];

impl TableSpec {
    /// Replaces the table atomically with one holding `elements`: a table
    /// left behind by an earlier run (crash) is deleted in the same
    /// transaction (`add` first, so deleting never fails).
    pub fn replace_script<'a>(&self, elements: impl IntoIterator<Item = &'a Element>) -> String {
        let t = &self.name;
        let mut s = String::new();
        let _ = writeln!(s, "add table inet {t}");
        let _ = writeln!(s, "delete table inet {t}");
        let _ = writeln!(s, "add table inet {t}");
        for (set, addr_type) in SETS {
            let _ = writeln!(s, "add set inet {t} {set} {{ type {addr_type} . inet_service; }}");
        }
        let _ = writeln!(s, "add chain inet {t} output {{ type nat hook output priority -100; policy accept; }}");
        let _ =
            writeln!(s, "add chain inet {t} prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}");
        let _ = writeln!(s, "add rule inet {t} output meta mark {:#x} return", self.mark);
        for chain in ["output", "prerouting"] {
            let _ = writeln!(s, "add rule inet {t} {chain} ip daddr . tcp dport @tcp4 redirect to :{}", self.port);
            let _ = writeln!(s, "add rule inet {t} {chain} ip6 daddr . tcp dport @tcp6 redirect to :{}", self.port);
        }
        self.element_lines(&mut s, "add", elements);
        s
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

    fn element_lines<'a>(&self, out: &mut String, verb: &str, elements: impl IntoIterator<Item = &'a Element>) {
        let mut by_set: Vec<(&str, Vec<String>)> = Vec::new();
        for e in elements {
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
        TableSpec { name: "edgemesh".into(), port: 15006, mark: 0x454d }
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
    fn many_elements_are_split_over_lines() {
        let e: Vec<Element> = (0..1200u16).map(|p| Element::tcp(SocketAddr::from(([10, 96, 0, 1], p + 1)))).collect();
        let s = spec().change_script(&[], &e);
        assert_eq!(s.lines().count(), 3);
        assert_eq!(s.matches(" . ").count(), 1200);
    }
}
