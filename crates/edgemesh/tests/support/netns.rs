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
//!   WAN dropped);
//! - [`Netns::resolv_conf`]: the resolver that `ip netns exec` programs
//!   (getent, curl) use inside the namespace;
//! - [`in_netns`]: run a closure on a thread inside a namespace (its
//!   sockets stay there);
//! - [`NsNginx`], [`UdpEcho`], [`NsAgent`]: real servers and the real
//!   agent inside a namespace.
//!
//! Give test nodes ordinary private addresses (10.x), not link-local ones.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::eventually;

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
    /// dropped, as a home router does. Use with [`Netns::router`].
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
             }}\n"
        ));
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

/// nginx inside a namespace, answering `body` on each `listen` address
/// (`10.0.0.2:80`, `[fd00::2]:80`); stopped on drop.
pub struct NsNginx {
    child: Child,
    _dir: tempfile::TempDir,
}

impl NsNginx {
    pub fn start(ns: &Netns, listen: &[&str], body: &str) -> NsNginx {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().display().to_string();
        let listens: String = listen.iter().map(|l| format!("listen {l}; ")).collect();
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {p}/nginx.pid;\nerror_log {p}/error.log;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {p}/cb;\n  proxy_temp_path {p}/px;\n  \
             fastcgi_temp_path {p}/fc;\n  uwsgi_temp_path {p}/uw;\n  scgi_temp_path {p}/sc;\n  \
             server {{ {listens} location / {{ return 200 \"{body}\\n\"; }} }}\n}}\n"
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
        let nginx = ["/usr/sbin/nginx", "nginx"].into_iter().find(|c| Path::new(c).exists()).unwrap_or("nginx");
        let child = ns
            .cmd(nginx)
            .args(["-p", &p, "-c", &format!("{p}/nginx.conf")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx is installed (apt-get install nginx)");
        let n = NsNginx { child, _dir: dir };
        let first = format!("http://{}/", listen[0]);
        eventually(Duration::from_secs(10), "nginx in its namespace", || {
            ns.exec(&["curl", "-sg", "-o", "/dev/null", &first]).status.success().then_some(())
        });
        n
    }
}

impl Drop for NsNginx {
    fn drop(&mut self) {
        // `ip netns exec` execs nginx: this is nginx's pid.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A UDP echo server in a namespace answering `echo:<datagram>`; stops on
/// drop.
pub struct UdpEcho {
    stop: Arc<AtomicBool>,
    /// Datagrams answered so far.
    pub served: Arc<AtomicU32>,
}

impl UdpEcho {
    pub fn start(ns: &Netns, addr: &str) -> UdpEcho {
        let socket = {
            let addr = addr.to_owned();
            in_netns(&ns.name, move || std::net::UdpSocket::bind(addr).expect("bind the echo server"))
        };
        socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU32::new(0));
        let (s, n) = (stop.clone(), served.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::Relaxed) {
                if let Ok((len, from)) = socket.recv_from(&mut buf) {
                    let mut reply = b"echo:".to_vec();
                    reply.extend_from_slice(&buf[..len]);
                    let _ = socket.send_to(&reply, from);
                    n.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        UdpEcho { stop, served }
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Sends `count` datagrams to `to` from one socket inside `ns`, one at a
/// time, each answered (by a [`UdpEcho`] behind `to`) before the next;
/// checks that every answer comes from `to` itself. The count, or the
/// first problem.
pub fn udp_stream(ns: &Netns, to: &str, count: u32) -> Result<u32, String> {
    let to: std::net::SocketAddr = to.parse().unwrap();
    in_netns(&ns.name, move || {
        let local = if to.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" };
        let socket = std::net::UdpSocket::bind(local).unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 2048];
        for i in 0..count {
            let msg = format!("datagram {i} {}", "x".repeat((i % 700) as usize));
            socket.send_to(msg.as_bytes(), to).map_err(|e| format!("send {i}: {e}"))?;
            let (n, from) = socket.recv_from(&mut buf).map_err(|e| format!("no answer to datagram {i}: {e}"))?;
            if from != to {
                return Err(format!("answer {i} came from {from}, not {to}"));
            }
            if buf[..n] != *format!("echo:{msg}").as_bytes() {
                return Err(format!("answer {i} is wrong: {:?}", String::from_utf8_lossy(&buf[..n.min(40)])));
            }
        }
        Ok(count)
    })
}

/// The real agent (`edgemesh agent <args>`) inside a namespace; killed on
/// drop, its log printed when the test fails.
pub struct NsAgent {
    child: Option<Child>,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl NsAgent {
    /// Starts the agent and waits (up to `limit`) until its admin endpoint
    /// (`--admin-listen`, default 127.0.0.1:15020, inside `ns`) says ready.
    pub fn start(ns: &Netns, args: &[&str], limit: Duration) -> NsAgent {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("agent.log");
        let child = ns
            .cmd(env!("CARGO_BIN_EXE_edgemesh"))
            .arg("agent")
            .args(args)
            .env("RUST_LOG", "info,edgemesh=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start edgemesh");
        let admin = args.windows(2).find(|w| w[0] == "--admin-listen").map_or("127.0.0.1:15020", |w| w[1]);
        let readyz = format!("http://{admin}/readyz");
        let mut agent = NsAgent { child: Some(child), log, _dir: dir };
        let start = Instant::now();
        loop {
            let out = ns.exec(&["curl", "-sg", "--max-time", "1", &readyz]);
            if out.status.success() && out.stdout.starts_with(b"ready") {
                return agent;
            }
            if let Some(status) = agent.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("agent exited with {status}; log:\n{}", agent.log());
            }
            assert!(start.elapsed() < limit, "agent not ready after {limit:?}; log:\n{}", agent.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits (up to 10 s) for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        ok(&["kill", "-TERM", &child.id().to_string()]);
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "agent ignored SIGTERM; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: the agent gets no chance to clean up.
    pub fn kill9(mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for NsAgent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- agent log ---\n{}", self.log());
        }
    }
}
