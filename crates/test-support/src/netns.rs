//! Network namespaces as nodes, for end-to-end tests that run as root.
//!
//! Each [`Netns`] has a unique name (`em-<pid>-<n>-<role>`) and is removed
//! on drop, also when the test panics, with its per-namespace resolver file
//! (`/etc/netns/<name>/`). Topologies are built from:
//!
//! - [`link`]: a veth pair between two namespaces;
//! - [`Lan`]: a bridge in a namespace of its own, one veth per attached
//!   node;
//! - [`Netns::router`] and [`Netns::masquerade`]: a NAT router (forwarding
//!   on, nftables masquerade out of its WAN link, new connections from the
//!   WAN dropped); [`Netns::black_hole`]: a path that drops packets;
//! - [`Netns::resolv_conf`]: the resolver that `ip netns exec` programs
//!   (getent, curl) use inside the namespace;
//! - [`in_netns`]: run a closure on a thread inside a namespace (its
//!   sockets stay there);
//! - `servers` (re-exported here): [`NsNginx`], [`UdpEcho`], [`TcpEcho`],
//!   [`NsProcess`] (any program, e.g. iperf3) inside a namespace,
//!   [`dnsmasq`] (an upstream resolver with records of the test's own), and
//!   clients that load them from one ([`udp_stream`], [`udp_window`],
//!   [`tcp_echo_many`]);
//! - `relay` (re-exported): [`TcpRelay`], a port inside a namespace that
//!   leads to an address of the test's own (a fake API server).
//!
//! Give test nodes ordinary private addresses (10.x), not link-local ones.

mod relay;
mod servers;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

pub use relay::TcpRelay;
pub use servers::*;

/// Panics with the reason unless the test runs as root.
pub fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test creates network namespaces and nftables tables: run it as root (CI does)"
    );
}

pub fn run(args: &[&str]) -> Output {
    Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

/// Runs a command that must succeed; returns its stdout.
pub fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace of this test's own, removed on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// A new namespace with `lo` up; `role` ends its name (keep it short).
    pub fn new(role: &str) -> Netns {
        require_root();
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!("em-{}-{}-{role}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        ok(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// A namespace that forwards IPv4 and IPv6 between its links.
    pub fn router(role: &str) -> Netns {
        let ns = Netns::new(role);
        ns.ok(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        ns.ok(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
        ns
    }

    /// `ip -n NS args...`, which must succeed.
    pub fn ip(&self, args: &[&str]) {
        let mut full = vec!["ip", "-n", &self.name];
        full.extend_from_slice(args);
        ok(&full);
    }

    /// Adds `cidr` (IPv4 or IPv6, no duplicate address detection) to `dev`.
    pub fn addr(&self, dev: &str, cidr: &str) {
        if cidr.contains(':') {
            self.ip(&["-6", "addr", "add", cidr, "dev", dev, "nodad"]);
        } else {
            self.ip(&["addr", "add", cidr, "dev", dev]);
        }
    }

    /// `ip route add <to> via <via>` (either family).
    pub fn route(&self, to: &str, via: &str) {
        let family = if via.contains(':') { "-6" } else { "-4" };
        self.ip(&[family, "route", "add", to, "via", via]);
    }

    /// A command inside the namespace.
    pub fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    pub fn exec(&self, args: &[&str]) -> Output {
        self.cmd(args[0]).args(&args[1..]).output().unwrap()
    }

    /// Runs a command inside the namespace that must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.exec(args);
        assert!(out.status.success(), "{args:?} in {} failed: {}", self.name, String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `curl` inside the namespace: the body, or None.
    pub fn curl(&self, url: &str) -> Option<String> {
        self.curl_with(&[], url)
    }

    /// `curl <args> <url>` inside the namespace: the body, or None.
    pub fn curl_with(&self, args: &[&str], url: &str) -> Option<String> {
        let mut full = vec!["curl", "-sS", "-g", "--max-time", "5", "--connect-timeout", "2"];
        full.extend_from_slice(args);
        full.push(url);
        let out = self.exec(&full);
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn nft(&self, args: &[&str]) -> Output {
        let mut full = vec!["nft"];
        full.extend_from_slice(args);
        self.exec(&full)
    }

    /// Loads an nftables file (one statement per line: nftables 1.0.6
    /// fails to parse some rule sets written on one line).
    pub fn nft_file(&self, rules: &str) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rules.nft");
        std::fs::write(&file, rules).unwrap();
        self.ok(&["nft", "-f", file.to_str().unwrap()]);
    }

    /// Makes this namespace a NAT router: what leaves through `wan_if` is
    /// masqueraded (IPv4), and connections opened from the WAN side are
    /// dropped, as a home router does: those routed to the LAN and those
    /// to the router itself. (Were the router's own stack to answer them,
    /// with a reset, the connection it tracks for that would take the
    /// port the router would otherwise keep for a LAN host's later
    /// outgoing connection to the same peer, as hole punching needs.)
    /// Use with [`Netns::router`].
    pub fn masquerade(&self, wan_if: &str) {
        // (No chain may be called `fwd`: a keyword in nftables 1.0.6.)
        self.nft_file(&format!(
            "table ip em_nat {{\n\
             \tchain postrouting {{\n\
             \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\toifname \"{wan_if}\" masquerade\n\
             \t}}\n\
             }}\n\
             table ip em_filter {{\n\
             \tchain forward {{\n\
             \t\ttype filter hook forward priority filter; policy accept;\n\
             \t\tiifname \"{wan_if}\" ct state new drop\n\
             \t}}\n\
             \tchain input {{\n\
             \t\ttype filter hook input priority filter; policy accept;\n\
             \t\tiifname \"{wan_if}\" ct state new drop\n\
             \t}}\n\
             }}\n"
        ));
    }

    /// Black-holes all traffic this router forwards to or from `address`
    /// (packets silently dropped, no reset), until [`Netns::restore`].
    pub fn black_hole(&self, address: &str) {
        self.nft_file(&format!(
            "table ip em_black_hole {{\n\
             \tchain forward {{\n\
             \t\ttype filter hook forward priority filter - 10; policy accept;\n\
             \t\tip daddr {address} drop\n\
             \t\tip saddr {address} drop\n\
             \t}}\n\
             }}\n"
        ));
    }

    /// Removes what [`Netns::black_hole`] added.
    pub fn restore(&self) {
        self.ok(&["nft", "delete", "table", "ip", "em_black_hole"]);
    }

    /// Writes `/etc/netns/<name>/resolv.conf`, which `ip netns exec` mounts
    /// over `/etc/resolv.conf` for programs in the namespace (getent,
    /// curl); removed with the namespace.
    pub fn resolv_conf(&self, text: &str) {
        let dir = self.etc_dir();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("resolv.conf"), text).unwrap();
    }

    fn etc_dir(&self) -> PathBuf {
        Path::new("/etc/netns").join(&self.name)
    }

    /// `nft list tables` inside the namespace.
    pub fn tables(&self) -> String {
        String::from_utf8_lossy(&self.nft(&["list", "tables"]).stdout).into_owned()
    }

    /// `ip -o link show` inside the namespace.
    pub fn links(&self) -> String {
        String::from_utf8_lossy(&self.exec(&["ip", "-o", "link", "show"]).stdout).into_owned()
    }

    /// The elements of `set` in table `inet table`, as `addr . port`
    /// strings (or the bare value of a one-field set), sorted; None if the
    /// set does not exist.
    pub fn set_elements(&self, table: &str, set: &str) -> Option<Vec<String>> {
        let out = self.nft(&["-j", "list", "set", "inet", table, set]);
        if !out.status.success() {
            return None;
        }
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let mut elements: Vec<String> = json["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|o| o["set"]["elem"].as_array())
            .flatten()
            .map(|e| match e["concat"].as_array() {
                Some(c) => format!("{} . {}", c[0].as_str().unwrap(), c[1]),
                None => e.to_string(),
            })
            .collect();
        elements.sort();
        Some(elements)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.etc_dir());
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// A veth pair between two namespaces, both ends up.
pub fn link(a: &Netns, a_if: &str, b: &Netns, b_if: &str) {
    ok(&["ip", "-n", &a.name, "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", &b.name]);
    a.ip(&["link", "set", a_if, "up"]);
    b.ip(&["link", "set", b_if, "up"]);
}

/// A LAN: a bridge (`br0`) in a namespace of its own; each attached node
/// gets a veth whose other end is a port of the bridge.
pub struct Lan {
    pub ns: Netns,
    ports: AtomicU32,
}

impl Lan {
    pub fn new(role: &str) -> Lan {
        let ns = Netns::new(role);
        ns.ip(&["link", "add", "br0", "type", "bridge"]);
        ns.ip(&["link", "set", "br0", "up"]);
        Lan { ns, ports: AtomicU32::new(0) }
    }

    /// Connects `node` to the LAN through its device `ifname`, with these
    /// addresses (`10.0.0.2/24`, `fd00::2/64`).
    pub fn attach(&self, node: &Netns, ifname: &str, addrs: &[&str]) {
        let port = format!("p{}", self.ports.fetch_add(1, Ordering::Relaxed));
        link(node, ifname, &self.ns, &port);
        self.ns.ip(&["link", "set", &port, "master", "br0"]);
        for a in addrs {
            node.addr(ifname, a);
        }
    }
}

/// Runs `f` on a thread inside namespace `ns` (sockets it makes belong to
/// that namespace for good) and returns what it returns.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        rustix::thread::move_into_link_name_space(
            std::os::fd::AsFd::as_fd(&file),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .expect("setns into the test namespace");
        f()
    })
    .join()
    .expect("namespace thread")
}
