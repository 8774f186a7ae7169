//! A node for the agent's fast path tests: a namespace with only `lo`
//! (endpoints on 10.0.1.x addresses of it) or the test's own links, a
//! child cgroup of the cgroup v2 root that only the test's clients join,
//! a pin directory of the test's own (the cgroup and pins from
//! `crates/ebpf/tests/support`, removed on drop even when the test fails),
//! and the real agent with `--intercept ebpf` attached to that cgroup.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use super::ebpf_support::{PinDir, TestCgroup};
use super::support::netns::{Netns, NsAgent};

/// This node's name in every manifest.
pub const NODE: &str = "test-node";

pub struct FastNode {
    pub pins: PinDir,
    pub cgroup: TestCgroup,
    pub ns: Netns,
    dir: tempfile::TempDir,
}

impl FastNode {
    /// A namespace with `lo` up and `addresses` on it.
    pub fn new(role: &str, addresses: &[&str]) -> FastNode {
        super::support::netns::require_root();
        let ns = Netns::new(role);
        for a in addresses {
            ns.addr("lo", &format!("{a}/32"));
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("manifests")).unwrap();
        FastNode { pins: PinDir::new(role), cgroup: TestCgroup::new(role), ns, dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Replaces the node's manifests with `objects`.
    pub fn manifests(&self, objects: &[String]) {
        super::support::write_manifest(&self.path("manifests"), "cluster.yaml", &objects.join("---\n"));
    }

    /// The agent arguments: ebpf mode attached to the test's cgroup, pins
    /// in the test's directory, `keepOnExit` as given.
    pub fn args(&self, keep_on_exit: bool, extra: &[&str]) -> Vec<String> {
        let config = self.path("config.yaml");
        let yaml = format!("intercept:\n  bpfPinPath: {}\n  keepOnExit: {keep_on_exit}\n", self.pins.0.display());
        std::fs::write(&config, yaml).unwrap();
        let (manifests, state) = (self.path("manifests"), self.path("state"));
        let mut args: Vec<String> = ["--config", config.to_str().unwrap(), "--node-name", NODE, "--intercept", "ebpf"]
            .into_iter()
            .map(str::to_owned)
            .collect();
        args.extend(["--cgroup-path".into(), self.cgroup.path.display().to_string()]);
        args.extend(["--dns-upstream", "127.0.0.1:9", "--manifest-dir"].map(str::to_owned));
        args.extend([manifests.display().to_string(), "--state-dir".into(), state.display().to_string()]);
        args.extend(extra.iter().map(|a| a.to_string()));
        args
    }

    /// The agent in ebpf mode, ready (the maps hold the current services).
    pub fn start(&self, keep_on_exit: bool, extra: &[&str]) -> NsAgent {
        start_agent(&self.ns, &self.args(keep_on_exit, extra))
    }

    pub fn in_cgroup_cmd(&self, args: &[&str]) -> Command {
        in_cgroup_cmd(&self.cgroup, &self.ns, args)
    }

    pub fn in_cgroup(&self, args: &[&str]) -> Output {
        self.in_cgroup_cmd(args).output().unwrap()
    }

    pub fn curl_times(&self, to: &str, times: usize) -> Vec<String> {
        curl_times(&self.cgroup, &self.ns, to, times)
    }

    /// The socket client of the fast path's own tests
    /// (`crates/ebpf/tests/support/client.py`) in the cgroup: its output
    /// lines, or a panic with its stderr.
    pub fn client(&self, args: &[&str]) -> Vec<String> {
        let mut full = vec!["python3", CLIENT];
        full.extend_from_slice(args);
        let out = self.in_cgroup(&full);
        assert!(out.status.success(), "client {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
    }

    /// That client started in the background (its output piped).
    pub fn spawn_client(&self, args: &[&str]) -> Child {
        let mut full = vec!["python3", CLIENT];
        full.extend_from_slice(args);
        self.in_cgroup_cmd(&full).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap()
    }

    /// The (service address, port) keys of the pinned services map.
    pub fn pinned_services(&self) -> Vec<String> {
        pinned_keys(&self.pins.0.join("maps/em_services"))
    }
}

/// The real agent with `args` in `ns`, ready. It enters only the network
/// namespace (`nsenter --net`): `ip netns exec` would give it a /sys of
/// its own, without the cgroup v2 hierarchy and bpffs.
pub fn start_agent(ns: &Netns, args: &[String]) -> NsAgent {
    let mut command = Command::new("nsenter");
    command.arg(format!("--net=/run/netns/{}", ns.name)).arg("--").arg(env!("CARGO_BIN_EXE_edgemesh"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    NsAgent::start_with(ns, command, &args, Duration::from_secs(20))
}

/// A command that runs `args` in `ns` from a shell that first joins
/// `cgroup`, so its sockets go through the programs.
pub fn in_cgroup_cmd(cgroup: &TestCgroup, ns: &Netns, args: &[&str]) -> Command {
    let procs = cgroup.path.join("cgroup.procs");
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "echo $$ > \"$0\" && exec \"$@\"", procs.to_str().unwrap(), "ip", "netns", "exec"])
        .arg(&ns.name)
        .args(args);
    cmd
}

/// `curl http://<to>/` `times` times from one shell in `cgroup` and `ns`:
/// the bodies (a failed request gives `failed`).
pub fn curl_times(cgroup: &TestCgroup, ns: &Netns, to: &str, times: usize) -> Vec<String> {
    let script = format!("for i in $(seq {times}); do curl -sg --max-time 5 http://{to}/ || echo failed; done");
    let out = in_cgroup_cmd(cgroup, ns, &["sh", "-c", &script]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
}

const CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../ebpf/tests/support/client.py");

/// The keys of a pinned BPF hash map (`bpftool map dump pinned`), as
/// their hex bytes, one string per entry; empty when it is not there.
pub fn pinned_keys(map: &Path) -> Vec<String> {
    let out = Command::new("bpftool").args(["-j", "map", "dump", "pinned"]).arg(map).output().expect("bpftool");
    if !out.status.success() {
        return Vec::new();
    }
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let entries = json.as_array().cloned().unwrap_or_default();
    let mut keys: Vec<String> = entries.iter().map(|e| e["key"].to_string()).collect();
    keys.sort();
    keys
}

/// A Service with one cluster IP, port `port` (`TCP` or `UDP`) to
/// `target`, and an EndpointSlice with `endpoints` (address, node).
pub fn service(
    name: &str,
    cluster_ip: &str,
    protocol: &str,
    port: u16,
    target: u16,
    endpoints: &[(&str, &str)],
) -> String {
    let endpoints: String =
        endpoints.iter().map(|(a, node)| format!("- addresses: [\"{a}\"]\n  nodeName: {node}\n")).collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  \
         clusterIP: {cluster_ip}\n  ports:\n  - name: p\n    protocol: {protocol}\n    port: {port}\n    \
         targetPort: {target}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  \
         name: {name}-1\n  namespace: default\n  labels:\n    kubernetes.io/service-name: {name}\n\
         addressType: IPv4\nports:\n- name: p\n  protocol: {protocol}\n  port: {target}\nendpoints:\n{endpoints}"
    )
}

/// Waits until the agent serves `count` endpoints of service `name` and
/// the maps hold that generation (`/readyz`: the fast path has applied it).
pub fn wait_applied(agent: &NsAgent, name: &str, count: usize) {
    super::support::eventually(Duration::from_secs(10), "the agent applies the change", || {
        let services = agent.json("/services");
        let service = services["services"].as_array()?.iter().find(|s| s["name"] == name)?.clone();
        let ready = service["endpoints"].as_array()?.iter().filter(|e| e["ready"] == true).count();
        (ready == count && agent.get("/readyz").is_some_and(|r| r.starts_with("ready"))).then_some(())
    });
}
