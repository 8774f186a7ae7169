//! The DaemonSets' security contexts hold in practice: the real agent,
//! started as a container would be with exactly the capabilities its
//! manifest adds (`setpriv`: uid 0 with that bounding set, no new
//! privileges) on a read-only root where only the volumes the manifest
//! mounts writable are writable (a mount namespace of its own), serves:
//! node mode with the shipped ConfigMap's config for the standard DaemonSet
//! (cluster IPs intercepted, DNS on 169.254.96.16:53, the table and edge0
//! removed at SIGTERM), and the kernel fast path for the eBPF one.
//! (`deploy.rs` checks the manifests themselves; `image_e2e.rs` runs the
//! image with podman.)

mod support;

#[path = "../../ebpf/tests/support/mod.rs"]
mod ebpf_support;

// (ebpf_e2e.rs uses the rest of it.)
#[allow(dead_code)]
#[path = "ebpf_e2e/fast.rs"]
mod fast;

use std::path::Path;
use std::time::Duration;

use fast::{FastNode, NODE, service};
use support::daemonset::{added_capabilities, contained, edgemesh, shipped_config};
use support::netns::{NsAgent, NsNginx};
use support::node::{DNS, Topology, device_addresses, dig_a};

#[test]
fn the_standard_daemon_sets_capabilities_and_read_only_root_run_node_mode() {
    let caps = added_capabilities("30-daemonset.yaml");
    assert_eq!(caps, ["NET_ADMIN", "NET_BIND_SERVICE"]);
    let t = Topology::new();
    let dir = tempfile::tempdir().unwrap();
    let (manifests, state) = (dir.path().join("manifests"), dir.path().join("state"));
    std::fs::create_dir_all(&state).unwrap();
    std::fs::create_dir_all(&manifests).unwrap();
    // The container as set up: only the volume is writable.
    let touch = |path: &Path| contained(&t.node, &caps, &state, Path::new("touch")).arg(path).output().unwrap();
    let outside = touch(&dir.path().join("probe"));
    assert!(String::from_utf8_lossy(&outside.stderr).contains("Read-only file system"), "{outside:?}");
    assert!(touch(&state.join("probe")).status.success());
    // The shipped ConfigMap's config (node mode, DNS on 169.254.96.16:53),
    // its services from manifests instead of metaServer.
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, shipped_config()).unwrap();
    support::write_manifest(&manifests, "web.yaml", &support::node::service("web", &["10.96.0.10"], 80));
    let config_arg = format!("--config={}", config.display());
    let args = [
        &config_arg,
        "--node-name",
        "test-node",
        "--source",
        "manifests",
        "--manifest-dir",
        manifests.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
        "--dns-upstream",
        "127.0.0.1:9",
    ];
    let agent =
        NsAgent::start_with(&t.node, contained(&t.node, &caps, &state, edgemesh()), &args, Duration::from_secs(20));
    assert_eq!(agent.json("/config")["intercept"]["mode"], "nftables", "the ConfigMap's node mode");

    // NET_ADMIN: the table intercepts the cluster IP, from the node itself
    // and from a pod routed through it.
    assert_eq!(t.node.curl("http://10.96.0.10/").as_deref(), Some("pod-nginx\n"), "{}", agent.log());
    assert_eq!(t.client.curl("http://10.96.0.10/").as_deref(), Some("pod-nginx\n"), "{}", agent.log());
    // NET_ADMIN and NET_BIND_SERVICE: DNS on port 53 of edge0's address.
    assert!(device_addresses(&t.node, "edge0").unwrap_or_default().contains(&DNS.to_owned()));
    assert_eq!(dig_a(&t.client, "web.default.svc.cluster.local"), ["10.96.0.10"], "{}", agent.log());
    // The root is read-only: the agent wrote where the manifest gives it a volume.
    support::eventually(Duration::from_secs(10), "the cache is written to the state volume", || {
        state.join("cache.redb").exists().then_some(())
    });
    assert!(!agent.log().contains("Read-only file system"), "{}", agent.log());

    // A clean stop (a rolling update's SIGTERM) removes the table and the
    // device with the same capabilities.
    let log = agent.log();
    let status = agent.terminate();
    assert!(status.success(), "{status}: {log}");
    assert!(!t.node.tables().contains("inet edgemesh"), "{}", t.node.tables());
    assert_eq!(device_addresses(&t.node, "edge0"), None, "edge0 removed");
}

#[test]
fn the_ebpf_daemon_sets_capabilities_and_read_only_root_run_the_kernel_fast_path() {
    let caps = added_capabilities("ebpf/daemonset-ebpf.yaml");
    let node = FastNode::new("dsebpf", &["10.0.1.1"]);
    // The node prerequisite the manifest names: the host's bpffs at
    // /sys/fs/bpf (systemd mounts it; a fresh machine without it mounts it
    // once). The container, without SYS_ADMIN, cannot.
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    if !mounts.lines().any(|l| l.split(' ').nth(1) == Some("/sys/fs/bpf") && l.split(' ').nth(2) == Some("bpf")) {
        support::netns::ok(&["mount", "-t", "bpf", "bpf", "/sys/fs/bpf"]);
    }
    let _nginx = NsNginx::start(&node.ns, &["10.0.1.1:8080"], "one");
    node.manifests(&[service("web", "10.96.0.10", "TCP", 80, 8080, &[("10.0.1.1", NODE)])]);
    let state = node.path("state");
    std::fs::create_dir_all(&state).unwrap();
    let args = node.args(false, &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent =
        NsAgent::start_with(&node.ns, contained(&node.ns, &caps, &state, edgemesh()), &args, Duration::from_secs(20));
    fast::wait_applied(&agent, "web", 1);
    assert_eq!(node.curl_times("10.96.0.10", 4), ["one"; 4], "{}", agent.log());
    let metrics = agent.get("/metrics").unwrap();
    let proxied: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("edgemesh_tcp_connections_opened_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(proxied, 0.0, "the kernel connected them, not the proxy");
    assert!(!node.pinned_services().is_empty(), "pinned in the (writable) bpffs");
}
