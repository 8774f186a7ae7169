//! Network namespaces as nodes (`edgemesh_test_support::netns`, re-exported
//! here), and [`NsAgent`]: the real agent inside a namespace, and its admin
//! endpoint there.

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

// (Test binaries that use no namespace helpers would warn.)
#[allow(unused_imports)]
pub use edgemesh_test_support::netns::*;

/// The real agent (`edgemesh agent <args>`) inside a namespace; killed on
/// drop, its log printed when the test fails.
pub struct NsAgent {
    child: Option<Child>,
    log: PathBuf,
    /// The namespace it runs in, and its admin address there.
    ns: String,
    admin: String,
    _dir: tempfile::TempDir,
}

impl NsAgent {
    /// Starts the agent and waits (up to `limit`) until its admin endpoint
    /// (`--admin-listen`, default 127.0.0.1:15020, inside `ns`) says ready.
    pub fn start(ns: &Netns, args: &[&str], limit: Duration) -> NsAgent {
        NsAgent::start_with(ns, ns.cmd(env!("CARGO_BIN_EXE_edgemesh")), args, limit)
    }

    /// [`NsAgent::start`] from `command`, the binary run in `ns` some other
    /// way (e.g. keeping the host's mounts: `ip netns exec` mounts a /sys of
    /// its own, without the cgroup v2 and bpffs mounts under it).
    pub fn start_with(ns: &Netns, command: std::process::Command, args: &[&str], limit: Duration) -> NsAgent {
        NsAgent::start_subcommand(ns, command, "agent", args, limit)
    }

    /// [`NsAgent::start_with`] for another subcommand that runs the agent
    /// (`gateway`).
    pub fn start_subcommand(
        ns: &Netns,
        mut command: std::process::Command,
        subcommand: &str,
        args: &[&str],
        limit: Duration,
    ) -> NsAgent {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("agent.log");
        let child = command
            .arg(subcommand)
            .args(args)
            .env("RUST_LOG", "info,edgemesh=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start edgemesh");
        let admin = args.windows(2).find(|w| w[0] == "--admin-listen").map_or("127.0.0.1:15020", |w| w[1]);
        let mut agent = NsAgent { child: Some(child), log, ns: ns.name.clone(), admin: admin.to_owned(), _dir: dir };
        let start = Instant::now();
        loop {
            if agent.get("/readyz").is_some_and(|body| body.starts_with("ready")) {
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

    /// Where its log is written (readable while [`NsAgent::terminate`] runs elsewhere).
    pub fn log_path(&self) -> PathBuf {
        self.log.clone()
    }

    /// GET `path` on the admin endpoint (from inside the namespace): the
    /// body of a 2xx answer, or None.
    pub fn get(&self, path: &str) -> Option<String> {
        let url = format!("http://{}{path}", self.admin);
        let out = run(&["ip", "netns", "exec", &self.ns, "curl", "-sfg", "--max-time", "2", &url]);
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// GET `path` on the admin endpoint, as JSON.
    pub fn json(&self, path: &str) -> serde_json::Value {
        let body = self.get(path).unwrap_or_else(|| panic!("the admin endpoint answers {path}"));
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
    }

    /// The VIP of service `namespace/name` from `/services`, if it exists.
    pub fn vip(&self, namespace: &str, name: &str) -> Option<String> {
        self.json("/services")["services"]
            .as_array()?
            .iter()
            .find(|s| s["namespace"] == namespace && s["name"] == name)
            .and_then(|s| s["vip"].as_str().map(str::to_owned))
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
