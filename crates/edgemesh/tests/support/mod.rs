//! Helpers for end-to-end tests: the real `edgemesh` binary, real backends
//! (nginx), real clients (dig, curl), all on loopback; [`netns`]: the same
//! inside network namespaces made for the test (as root); [`chromium`]:
//! headless Chromium in a namespace (a page's DOM, screenshots); [`node`]: a node
//! in node mode (interception) built from them; [`mesh`]: tunnel nodes,
//! NAT routers and the agents' `/peers` view; [`probe`]: traffic that
//! counts its failures through a fault; [`prometheus`]: a real Prometheus
//! server scraping agents, and `promtool`; [`metric_names`]: the metric
//! names contract and the Grafana dashboard's names; [`http`]: HTTP, WebSocket
//! and gRPC endpoints and clients for the HTTP path; [`daemonset`]: the
//! shipped DaemonSets' containers as a runtime would run them; [`tls`]: test
//! certificates made with openssl.
#![allow(dead_code)]

pub mod chromium;
pub mod daemonset;
pub mod http;
pub mod mesh;
pub mod metric_names;
pub mod netns;
pub mod node;
pub mod probe;
pub mod prometheus;
pub mod tls;

// (Test binaries that use only one of them would warn.)
#[allow(unused_imports)]
pub use edgemesh_test_support::blocking::{eventually, eventually_every};

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

/// A TCP+UDP port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    loop {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A VIP range of its own for each agent in this test process.
pub fn unique_vip_cidr() -> String {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    // Spread test binaries apart by pid so parallel test binaries differ too.
    let second = u16::try_from(std::process::id() % 100).expect("below 100") + 100 + n;
    format!("127.{}.0.0/16", second % 250 + 2)
}

/// A temporary directory holding an empty `manifests` directory (the
/// agent's state can go beside it); removed when the test drops it.
pub fn manifest_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    (dir, manifests)
}

/// Writes a manifest file atomically (the agent never reads half a file).
pub fn write_manifest(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

/// A running agent; killed on drop. Its log is kept for failure messages.
pub struct Agent {
    child: Child,
    pub dns_port: u16,
    pub admin: SocketAddr,
    pub manifests: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

pub struct AgentOptions {
    pub upstreams: Vec<SocketAddr>,
    pub extra: Vec<String>,
    /// `--state-dir`; default: a directory of the agent's own, so parallel
    /// agents never share a cache.
    pub state_dir: Option<PathBuf>,
    /// A command the agent runs under (e.g. `nsenter` into a mount namespace).
    pub wrapper: Vec<String>,
    /// `RUST_LOG` for the agent (it wins over `--log-level`); `None`: unset.
    pub rust_log: Option<String>,
}

impl Default for AgentOptions {
    fn default() -> Self {
        // A closed port: nothing is forwarded unless a test asks for it.
        let upstreams = vec![SocketAddr::from(([127, 0, 0, 1], free_port()))];
        let rust_log = Some("info,edgemesh=debug".to_owned());
        Self { upstreams, extra: Vec::new(), state_dir: None, wrapper: Vec::new(), rust_log }
    }
}

impl Agent {
    pub fn start(manifests: &Path) -> Agent {
        Self::start_with(manifests, AgentOptions::default())
    }

    pub fn start_with(manifests: &Path, opts: AgentOptions) -> Agent {
        let agent = Self::spawn_with(manifests, opts);
        agent.wait_ready();
        agent
    }

    /// Starts the agent without waiting for it to be ready.
    pub fn spawn_with(manifests: &Path, opts: AgentOptions) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("agent.log");
        let dns_port = free_port();
        // Both ports are free only when picked: the kernel may hand the same one out twice.
        let admin_port = std::iter::repeat_with(free_port).find(|p| *p != dns_port).expect("a second free port");
        let admin = SocketAddr::from(([127, 0, 0, 1], admin_port));
        let mut cmd = match opts.wrapper.split_first() {
            Some((wrapper, args)) => {
                let mut cmd = Command::new(wrapper);
                cmd.args(args).arg(env!("CARGO_BIN_EXE_edgemesh"));
                cmd
            }
            None => Command::new(env!("CARGO_BIN_EXE_edgemesh")),
        };
        cmd.arg("agent")
            .args(["--node-name", "test-node"])
            .arg("--manifest-dir")
            .arg(manifests)
            .args(["--dns-listen", &format!("127.0.0.1:{dns_port}")])
            .args(["--admin-listen", &admin.to_string()])
            .args(["--vip-cidr", &unique_vip_cidr()])
            .arg("--state-dir")
            .arg(opts.state_dir.clone().unwrap_or_else(|| dir.path().join("state")));
        for u in &opts.upstreams {
            cmd.args(["--dns-upstream", &u.to_string()]);
        }
        match &opts.rust_log {
            Some(filter) => cmd.env("RUST_LOG", filter),
            None => cmd.env_remove("RUST_LOG"),
        };
        cmd.args(&opts.extra)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("stdout")).unwrap())
            .stderr(std::fs::File::create(&log).unwrap());
        let child = cmd.spawn().expect("start edgemesh");
        Agent { child, dns_port, admin, manifests: manifests.to_owned(), log, _dir: dir }
    }

    /// The agent's process ID (for `/proc/<pid>`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn wait_ready(&self) {
        let start = Instant::now();
        loop {
            if let Some((200, _)) = self.try_get("/readyz") {
                return;
            }
            if start.elapsed() > Duration::from_secs(15) {
                panic!("agent not ready after 15 s; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// GET on the admin endpoint: (status, body), or None if unreachable.
    pub fn try_get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.admin, path)
    }

    pub fn services(&self) -> serde_json::Value {
        let (status, body) = self.try_get("/services").expect("admin endpoint answers");
        assert_eq!(status, 200);
        serde_json::from_str(&body).unwrap()
    }

    /// The VIP of `ns/name` from `/services`, if the service exists.
    pub fn vip(&self, ns: &str, name: &str) -> Option<String> {
        self.services()["services"]
            .as_array()?
            .iter()
            .find(|s| s["namespace"] == ns && s["name"] == name)
            .and_then(|s| s["vip"].as_str().map(str::to_owned))
    }

    pub fn dig(&self, args: &[&str]) -> String {
        dig(self.dns_port, args)
    }

    /// Kills the agent with SIGKILL (no chance to clean up) and waits for it.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        self.wait_exit(Duration::from_secs(10))
    }

    /// Sends the signal `name` (`TERM`, `HUP`, ...).
    pub fn signal(&self, name: &str) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args([&format!("-{name}"), &pid]).status().unwrap().success(), "kill -{name}");
    }

    /// Waits up to `limit` for the agent to exit; its exit status.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(start.elapsed() < limit, "agent still running after {limit:?}; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- agent log ---\n{}", self.log());
        }
    }
}

/// This node's tunnel peer ID from `edgemesh id --state-dir DIR`, which
/// creates the identity key there on first use.
pub fn peer_id(state_dir: &Path) -> String {
    let out =
        Command::new(env!("CARGO_BIN_EXE_edgemesh")).arg("id").arg("--state-dir").arg(state_dir).output().unwrap();
    assert!(out.status.success(), "edgemesh id: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A minimal HTTP/1.0 GET with a short timeout, for the admin endpoint.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let status = resp.split_whitespace().nth(1)?.parse().ok()?;
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Some((status, body))
}

/// Runs the real `dig` against 127.0.0.1:`port`.
pub fn dig(port: u16, args: &[&str]) -> String {
    let out = Command::new("dig")
        .args(["@127.0.0.1", "-p", &port.to_string(), "+tries=1", "+time=3"])
        .args(args)
        .output()
        .expect("dig is installed (apt-get install dnsutils)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs the real `curl`; returns the body, or None if the request failed.
pub fn curl(url: &str) -> Option<String> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", "--connect-timeout", "2", url])
        .output()
        .expect("curl is installed");
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Real nginx serving one tiny page per port, each naming its backend.
pub struct Nginx {
    child: Child,
    pub ports: Vec<u16>,
    _dir: tempfile::TempDir,
}

impl Nginx {
    pub fn start(backends: usize) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().display().to_string();
        let ports: Vec<u16> = (0..backends).map(|_| free_port()).collect();
        let mut servers = String::new();
        for (i, port) in ports.iter().enumerate() {
            servers += &format!(
                "  server {{ listen 127.0.0.1:{port}; location / {{ return 200 \"backend-{i}\\n\"; }} \
                 location /big {{ alias {p}/big; }} }}\n"
            );
        }
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {p}/nginx.pid;\nerror_log {p}/error.log;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {p}/cb;\n  proxy_temp_path {p}/px;\n  \
             fastcgi_temp_path {p}/fc;\n  uwsgi_temp_path {p}/uw;\n  scgi_temp_path {p}/sc;\n  keepalive_timeout 5;\n{servers}}}\n"
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
        let nginx = ["/usr/sbin/nginx", "nginx"].into_iter().find(|c| Path::new(c).exists()).unwrap_or("nginx");
        let child = Command::new(nginx)
            .args(["-p", &p, "-c", &format!("{p}/nginx.conf")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx is installed (apt-get install nginx)");
        let n = Nginx { child, ports, _dir: dir };
        for port in &n.ports {
            eventually(Duration::from_secs(10), "nginx to listen", || TcpStream::connect(("127.0.0.1", *port)).ok());
        }
        n
    }

    /// Writes a file served at `/big` by every backend.
    pub fn serve_file(&self, bytes: &[u8]) {
        std::fs::write(self._dir.path().join("big"), bytes).unwrap();
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Service plus one EndpointSlice with these backends on 127.0.0.1; its
/// port is named `web`, so it is proxied per connection (L4) whatever the
/// backends speak.
pub fn service_yaml(ns: &str, name: &str, port: u16, backends: &[u16], annotations: &str) -> String {
    let mut y = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {ns}\n{annotations}spec:\n  ports:\n  \
         - name: web\n    port: {port}\n    targetPort: web\n"
    );
    for (i, b) in backends.iter().enumerate() {
        y += &format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-{i}\n  \
             namespace: {ns}\n  labels:\n    kubernetes.io/service-name: {name}\naddressType: IPv4\nports:\n- \
             name: web\n  port: {b}\nendpoints:\n- addresses: [127.0.0.1]\n  nodeName: test-node\n"
        );
    }
    y
}
