//! The DaemonSets' security contexts hold in practice: the real agent,
//! started as a container would be with exactly the capabilities its
//! manifest adds (`setpriv`: uid 0 with that bounding set, no new
//! privileges) on a read-only root where only the volumes the manifest
//! mounts writable are writable (a mount namespace of its own), serves:
//! DNS on port 53 for the standard DaemonSet, and the kernel fast path for
//! the eBPF one. (`deploy.rs` checks the manifests themselves.)

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
use support::daemonset::{added_capabilities, contained, edgemesh};
use support::netns::{Netns, NsAgent, NsNginx, require_root};

#[test]
fn the_standard_daemon_sets_capabilities_and_read_only_root_serve_dns_on_port_53() {
    require_root();
    let caps = added_capabilities("30-daemonset.yaml");
    assert_eq!(caps, ["NET_BIND_SERVICE"]);
    let ns = Netns::new("dscaps");
    let dir = tempfile::tempdir().unwrap();
    let (manifests, state) = (dir.path().join("manifests"), dir.path().join("state"));
    std::fs::create_dir_all(&state).unwrap();
    std::fs::create_dir_all(&manifests).unwrap();
    // The container as set up: only the volume is writable.
    let touch = |path: &Path| contained(&ns, &caps, &state, Path::new("touch")).arg(path).output().unwrap();
    let outside = touch(&dir.path().join("probe"));
    assert!(String::from_utf8_lossy(&outside.stderr).contains("Read-only file system"), "{outside:?}");
    assert!(touch(&state.join("probe")).status.success());
    support::write_manifest(&manifests, "web.yaml", &support::service_yaml("default", "web", 80, &[8080], ""));
    let args = [
        "--node-name",
        "test-node",
        "--manifest-dir",
        manifests.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
        "--dns-listen",
        "127.0.0.1:53",
        "--dns-upstream",
        "127.0.0.1:9",
    ];
    let agent = NsAgent::start_with(&ns, contained(&ns, &caps, &state, edgemesh()), &args, Duration::from_secs(20));
    let vip = agent.vip("default", "web").expect("a VIP for default/web");
    let out =
        ns.exec(&["dig", "@127.0.0.1", "-p", "53", "+short", "+time=2", "+tries=1", "web.default.svc.cluster.local"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), vip, "DNS on port 53: {}", agent.log());
    // The root is read-only: the agent wrote where the manifest gives it a volume.
    support::eventually(Duration::from_secs(10), "the cache is written to the state volume", || {
        state.join("cache.redb").exists().then_some(())
    });
    assert!(!agent.log().contains("Read-only file system"), "{}", agent.log());
}

#[test]
fn the_ebpf_daemon_sets_capabilities_and_read_only_root_run_the_kernel_fast_path() {
    let caps = added_capabilities("ebpf/daemonset-ebpf.yaml");
    let node = FastNode::new("dsebpf", &["10.0.1.1"]);
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
