//! A node for the fast path's tests: a network namespace with only `lo`
//! (backends on 10.0.1.x addresses of it), a child cgroup of the cgroup v2
//! root that only the test's client processes join, and the programs
//! attached there with their pins in a directory of the test's own. All
//! three are removed on drop, also when the test fails.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use edgemesh_ebpf::{FastPath, Options, support};
use edgemesh_test_support::netns::Netns;

static NEXT: AtomicU32 = AtomicU32::new(0);

fn unique(role: &str) -> String {
    format!("em-ebpf-{}-{}-{role}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A child cgroup of the cgroup v2 root, removed on drop (what is still
/// in it is moved back to the root first).
pub struct TestCgroup {
    pub path: PathBuf,
    root: PathBuf,
}

impl TestCgroup {
    pub fn new(role: &str) -> TestCgroup {
        let root = support::cgroup2_root().expect("cgroup v2 is mounted");
        let path = root.join(unique(role));
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("creating cgroup {}: {e}", path.display()));
        TestCgroup { path, root }
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        if let Ok(procs) = std::fs::read_to_string(self.path.join("cgroup.procs")) {
            for pid in procs.lines() {
                let _ = std::fs::write(self.root.join("cgroup.procs"), pid);
            }
        }
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// A pin directory of the test's own under /sys/fs/bpf, removed on drop
/// (whatever is left in it: unpinning a link detaches its program).
pub struct PinDir(pub PathBuf);

impl PinDir {
    pub fn new(role: &str) -> PinDir {
        PinDir(Path::new("/sys/fs/bpf").join(unique(role)))
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The namespace, the cgroup and the fast path attached to it.
pub struct Node {
    pub fast: Option<FastPath>,
    // Dropped in this order: pins (detaching), then the cgroup, then the namespace.
    pub pins: PinDir,
    pub cgroup: TestCgroup,
    pub ns: Netns,
}

impl Node {
    /// A namespace with `lo` up and `backends` (`10.0.1.1`, `fd00::1`, ...) on it.
    pub fn new(role: &str, backends: &[&str]) -> Node {
        let ns = Netns::new(role);
        for b in backends {
            ns.addr("lo", &format!("{b}/{}", if b.contains(':') { 128 } else { 32 }));
        }
        let cgroup = TestCgroup::new(role);
        let pins = PinDir::new(role);
        let mut node = Node { fast: None, pins, cgroup, ns };
        let fast = FastPath::start(node.options()).unwrap_or_else(|e| panic!("{e}"));
        assert!(!fast.adopted(), "a fresh pin directory has nothing to adopt");
        node.fast = Some(fast);
        node
    }

    /// The loader's options for this node (also for a restart): its
    /// cgroup and pins, and its namespace standing in for the host's (its
    /// clients may get host-only, loopback, backends).
    pub fn options(&self) -> Options {
        Options {
            host_netns: Some(PathBuf::from("/run/netns").join(&self.ns.name)),
            ..options(&self.cgroup, &self.pins)
        }
    }

    /// How many entries the pinned map `name` holds (`bpftool map dump`).
    pub fn entries(&self, name: &str) -> usize {
        let path = self.pins.0.join("maps").join(name);
        let out = Command::new("bpftool").args(["-j", "map", "dump", "pinned"]).arg(&path).output().unwrap();
        assert!(out.status.success(), "bpftool map dump {}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        json.as_array().map_or(0, Vec::len)
    }

    pub fn fast(&mut self) -> &mut FastPath {
        self.fast.as_mut().expect("the fast path is running")
    }

    /// Runs `args` in the namespace from a shell that first joins the
    /// test's cgroup, so its sockets go through the programs.
    pub fn in_cgroup(&self, args: &[&str]) -> Output {
        self.command_in(&self.ns, args).output().unwrap()
    }

    /// `args` in the namespace `ns` (the node's or a pod's), started from
    /// a shell that first joins the test's cgroup.
    pub fn command_in(&self, ns: &Netns, args: &[&str]) -> Command {
        let procs = self.cgroup.path.join("cgroup.procs");
        let mut command = Command::new("sh");
        command
            .args(["-c", "echo $$ > \"$0\" && exec \"$@\"", procs.to_str().unwrap(), "ip", "netns", "exec", &ns.name])
            .args(args);
        command
    }

    /// A python3 socket client (`tests/support/client.py`) in the cgroup;
    /// its output lines, or a panic with its stderr.
    pub fn client(&self, args: &[&str]) -> Vec<String> {
        self.client_in(&self.ns, args)
    }

    /// The same client in the namespace `ns` (e.g. a pod's).
    pub fn client_in(&self, ns: &Netns, args: &[&str]) -> Vec<String> {
        let out = self.command_in(ns, &client_args(args)).output().unwrap();
        assert!(out.status.success(), "client {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
    }

    /// `curl http://<to>/` `times` times from one shell in the cgroup: the
    /// bodies (a failed request gives `failed`).
    pub fn curl_times(&self, to: &str, times: usize) -> Vec<String> {
        let script = format!("for i in $(seq {times}); do curl -sg --max-time 5 http://{to}/ || echo failed; done");
        let out = self.in_cgroup(&["sh", "-c", &script]);
        String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
    }
}

/// The command line of `tests/support/client.py` with `args`.
pub fn client_args<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut full = vec!["python3", concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/client.py")];
    full.extend_from_slice(args);
    full
}

/// The bodies of `tcp` client lines (`<peer> <port> <body>`).
pub fn bodies(lines: &[String]) -> Vec<String> {
    lines.iter().map(|l| l.rsplit(' ').next().unwrap_or_default().to_owned()).collect()
}

pub fn options(cgroup: &TestCgroup, pins: &PinDir) -> Options {
    Options { cgroup: Some(cgroup.path.clone()), pin_dir: pins.0.clone(), host_netns: None }
}

/// The programs attached to `cgroup` (`bpftool cgroup show`), as
/// (attach type, program name) pairs.
pub fn attached(cgroup: &Path) -> Vec<(String, String)> {
    let out =
        Command::new("bpftool").args(["-j", "cgroup", "show"]).arg(cgroup).output().expect("bpftool is installed");
    assert!(out.status.success(), "bpftool cgroup show: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() {
        return Vec::new();
    }
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json.as_array()
        .unwrap()
        .iter()
        .map(|p| (p["attach_type"].as_str().unwrap_or("").to_owned(), p["name"].as_str().unwrap_or("").to_owned()))
        .collect()
}
