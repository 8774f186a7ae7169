//! The agent image, built and run as it ships (issue #21), as root:
//! `deploy/build-image.sh` builds it with buildah FROM scratch around this
//! test's own agent binary (the script the release build uses, so no
//! release build is needed; `IMAGE_E2E_BINARY` names another binary, e.g.
//! the release build), and podman runs it the way the standard
//! DaemonSet (deploy/kubernetes/30-daemonset.yaml) says: its args, user,
//! capabilities, read-only root and volumes, in the network namespace of a
//! test node (host networking), with the shipped ConfigMap's config. Its
//! API is the fake API server, reached where the DaemonSet looks for
//! KubeEdge's metaServer (127.0.0.1:10550 in the node). The container must
//! intercept a Service's cluster IP (clients on the node and in a pod reach
//! nginx in a pod through it), answer DNS on 169.254.96.16, and remove its
//! nftables table and edge0 at `podman stop`. The image's config is also
//! compared with the root Dockerfile's final stage, which cannot be built
//! here (no Docker engine).
//!
//! Podman on this machine: its default runtime, crun 1.8, refuses the
//! hybrid cgroup layout here ("cgroups in hybrid mode not supported, drop
//! all controllers from cgroupv2": the cgroup2 mount at
//! /sys/fs/cgroup/unified has the hugetlb controller), so the test runs
//! runc (Debian's `runc`), which handles cgroup v1. And podman's default
//! limits for a container (nofile and nproc 1048576) cannot be set without
//! CAP_SYS_RESOURCE, which root lacks here ("setrlimit `RLIMIT_NOFILE`:
//! Operation not permitted"): the test passes limits within its own.
//!
//! ```text
//!  client ns 10.244.2.2 ── node ns (container: agent, nft table, edge0; metaServer relay) ── pod ns 10.244.1.2 (nginx)
//! ```

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use edgemesh_fake_apiserver::{FakeApiServer, Resource};
use serde_json::{Value, json};
use support::daemonset::{added_capabilities, agent_args, agent_container, pod_spec, shipped_config};
use support::netns::{TcpRelay, require_root};
use support::node::{DNS, Topology, device_addresses, dig_a};

/// The DaemonSet the container is run as.
const DAEMON_SET: &str = "30-daemonset.yaml";
/// The node's name (the DaemonSet passes spec.nodeName as NODE_NAME).
const NODE: &str = "edge-1";
const CLUSTER_IP: &str = "10.96.0.10";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `podman <args>` with runc (see the module docs).
fn podman(args: &[&str]) -> Output {
    Command::new("podman").args(["--runtime", "runc"]).args(args).output().expect("podman (apt-get install podman)")
}

fn podman_ok(args: &[&str]) -> String {
    let out = podman(args);
    assert!(out.status.success(), "podman {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A name no other test run uses: `<prefix>-<pid>-<n>`.
fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// An image built by `deploy/build-image.sh`, removed on drop.
struct Image {
    name: String,
}

impl Image {
    fn build(binary: &Path) -> Image {
        let image = Image { name: format!("localhost/{}:test", unique("edgemesh-e2e")) };
        let out = Command::new(repo().join("deploy/build-image.sh"))
            .args(["--tag", &image.name])
            .arg(binary)
            .output()
            .expect("deploy/build-image.sh");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "build-image.sh: {stdout}{}", String::from_utf8_lossy(&out.stderr));
        // It ends with the image's name and size.
        assert!(stdout.trim_end().lines().last().is_some_and(|l| l.starts_with(&image.name)), "{stdout}");
        image
    }

    fn config(&self) -> Value {
        let inspect: Value = serde_json::from_str(&podman_ok(&["image", "inspect", &self.name])).unwrap();
        inspect[0]["Config"].clone()
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = podman(&["rmi", "--force", &self.name]);
    }
}

/// A container, removed (killed first if it runs) on drop; its log is
/// printed when the test fails.
struct Container {
    name: String,
}

impl Container {
    fn logs(&self) -> String {
        let out = podman(&["logs", &self.name]);
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    }

    fn state(&self, field: &str) -> String {
        podman_ok(&["inspect", "--format", &format!("{{{{.State.{field}}}}}"), &self.name])
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- container log ---\n{}", self.logs());
        }
        let _ = podman(&["rm", "--force", "--time", "0", &self.name]);
    }
}

/// The hard limit of `what` ("Max open files") of this process.
fn hard_limit(what: &str) -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits.lines().find(|l| l.starts_with(what)).unwrap_or_else(|| panic!("no {what}: {limits}"));
    let hard = line[what.len()..].split_whitespace().nth(1).unwrap();
    hard.parse().unwrap_or(u64::MAX)
}

/// Capability numbers (linux/capability.h) of the names manifests use.
fn capability_bit(name: &str) -> u32 {
    match name {
        "NET_BIND_SERVICE" => 10,
        "NET_ADMIN" => 12,
        "NET_RAW" => 13,
        "SYS_ADMIN" => 21,
        "PERFMON" => 38,
        "BPF" => 39,
        other => panic!("add capability {other} to this table"),
    }
}

/// The `podman run` options that make a container what the DaemonSet's
/// agent container and pod ask for. Settings this does not know fail the
/// test, so the run cannot silently drift from the manifest.
fn run_options(node_netns: &str, config_dir: &Path, state_dir: &Path) -> Vec<String> {
    let pod = pod_spec(DAEMON_SET);
    let agent = agent_container(DAEMON_SET);
    assert_eq!(pod["hostNetwork"], true, "the node's network: the node's namespace");
    assert!(pod["initContainers"].is_null(), "no init container to run first");
    let mut options = vec![format!("--network=ns:/run/netns/{node_netns}")];

    let security = &agent["securityContext"];
    for (key, value) in security.as_object().unwrap() {
        match key.as_str() {
            "runAsUser" => options.push(format!("--user={value}:0")),
            "allowPrivilegeEscalation" if value == false => options.push("--security-opt=no-new-privileges".into()),
            // Kubernetes mounts no tmpfs of its own on a read-only root.
            "readOnlyRootFilesystem" if value == true => {
                options.extend(["--read-only", "--read-only-tmpfs=false"].map(String::from))
            }
            "capabilities" => {
                assert_eq!(value["drop"], json!(["ALL"]));
                options.push("--cap-drop=all".into());
                for cap in value["add"].as_array().into_iter().flatten() {
                    options.push(format!("--cap-add={}", cap.as_str().unwrap()));
                }
            }
            other => panic!("securityContext.{other} = {value}: map it to a podman option"),
        }
    }
    // seccompProfile RuntimeDefault: podman's default profile.
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");

    for env in agent["env"].as_array().into_iter().flatten() {
        let from = &env["valueFrom"]["fieldRef"]["fieldPath"];
        assert_eq!(*from, "spec.nodeName", "env {env}");
        options.push(format!("--env={}={NODE}", env["name"].as_str().unwrap()));
    }

    // The volumes where the DaemonSet mounts them: the ConfigMap read-only,
    // the state hostPath writable.
    for mount in agent["volumeMounts"].as_array().unwrap() {
        let volume = pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == mount["name"]).unwrap();
        let source = if volume["configMap"].is_object() {
            config_dir
        } else if volume["hostPath"]["path"] == "/var/lib/edgemesh" {
            state_dir
        } else {
            panic!("volume {volume}: map it to a directory of the test's")
        };
        let read_only = if mount["readOnly"] == true { ":ro" } else { "" };
        options.push(format!("--volume={}:{}{read_only}", source.display(), mount["mountPath"].as_str().unwrap()));
    }

    // Limits within this process's own (see the module docs). podman
    // lowers its own nproc limit to 32768; the agent needs a few dozen threads.
    let nofile = hard_limit("Max open files");
    options.push(format!("--ulimit=nofile={nofile}:{nofile}"));
    options.push("--ulimit=nproc=4096:4096".into());
    options
}

/// The fake API with this node, and Service default/web (cluster IP
/// 10.96.0.10, port 80) whose endpoint is the pod's nginx.
fn api() -> FakeApiServer {
    let api = FakeApiServer::start();
    api.apply(Resource::Nodes, json!({"metadata": {"name": NODE}, "spec": {"podCIDR": "10.244.1.0/24"}}));
    api.apply(
        Resource::Services,
        json!({"metadata": {"name": "web", "namespace": "default"},
               "spec": {"clusterIP": CLUSTER_IP, "clusterIPs": [CLUSTER_IP],
                        "ports": [{"name": "web", "port": 80, "targetPort": 80}]}}),
    );
    api.apply(
        Resource::EndpointSlices,
        json!({"metadata": {"name": "web-1", "namespace": "default",
                            "labels": {"kubernetes.io/service-name": "web"}},
               "addressType": "IPv4",
               "ports": [{"name": "web", "port": 80}],
               "endpoints": [{"addresses": ["10.244.1.2"], "nodeName": NODE}]}),
    );
    api
}

/// The Dockerfile's final stage: its instructions (keyword and the rest).
fn dockerfile_final_stage() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty() && !l.starts_with('#')).collect();
    let last_from = lines.iter().rposition(|l| l.starts_with("FROM ")).expect("a FROM");
    lines[last_from..]
        .iter()
        .map(|l| l.split_once(' ').map(|(k, v)| (k.to_owned(), v.trim().to_owned())).unwrap())
        .collect()
}

/// The Dockerfile builds what build-image.sh builds: the same rootfs.sh
/// into /rootfs in its build stage, all of it copied FROM scratch, and the
/// same entrypoint, command, user, PATH and port as the image built here.
fn assert_dockerfile_builds_the_same_image(config: &Value) {
    let text = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    assert!(text.contains("deploy/image/rootfs.sh target/release/edgemesh /rootfs"), "the Dockerfile runs rootfs.sh");
    let stage = dockerfile_final_stage();
    let get =
        |keyword: &str| -> Vec<&str> { stage.iter().filter(|(k, _)| k == keyword).map(|(_, v)| v.as_str()).collect() };
    assert_eq!(get("FROM"), ["scratch"]);
    assert_eq!(get("COPY")[0], "--from=build /rootfs/ /", "the whole root filesystem first");
    for copy in &get("COPY")[1..] {
        assert!(copy.contains(" /rootfs/"), "only from /rootfs: {copy}");
    }
    let array = |v: &Value| serde_json::to_string(v).unwrap();
    assert_eq!(get("ENTRYPOINT"), [array(&config["Entrypoint"]).as_str()]);
    assert_eq!(get("CMD"), [array(&config["Cmd"]).as_str()]);
    assert_eq!(get("USER"), [config["User"].as_str().unwrap()]);
    let path = config["Env"].as_array().unwrap().iter().filter_map(Value::as_str).find(|e| e.starts_with("PATH="));
    assert_eq!(get("ENV"), [path.expect("PATH in the image")]);
    let ports: Vec<&str> = config["ExposedPorts"].as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(get("EXPOSE"), [ports.join(" ").as_str()]);
}

#[test]
fn the_image_runs_as_the_daemon_set_says_intercepts_answers_dns_and_cleans_up_on_stop() {
    require_root();
    // This test's own agent binary, or another one to check (e.g. the
    // release build: IMAGE_E2E_BINARY=target/release/edgemesh).
    let binary =
        std::env::var_os("IMAGE_E2E_BINARY").map_or(PathBuf::from(env!("CARGO_BIN_EXE_edgemesh")), PathBuf::from);
    let image = Image::build(&binary);
    assert_dockerfile_builds_the_same_image(&image.config());

    let t = Topology::new();
    let api = api();
    // metaServer where the DaemonSet's --kube-api looks for it.
    let kube_api = agent_args(DAEMON_SET).iter().find_map(|a| a.strip_prefix("--kube-api=").map(str::to_owned));
    let kube_api = kube_api.expect("the DaemonSet's --kube-api");
    let listen = kube_api.strip_prefix("http://").expect("plain HTTP metaServer").parse().unwrap();
    let _meta_server = TcpRelay::start_at(&t.node, listen, api.addr());

    let dir = tempfile::tempdir().unwrap();
    let (config_dir, state_dir) = (dir.path().join("config"), dir.path().join("state"));
    std::fs::create_dir_all(&config_dir).unwrap();
    std::fs::create_dir_all(&state_dir).unwrap();
    std::fs::write(config_dir.join("config.yaml"), shipped_config()).unwrap();

    let container = Container { name: unique("edgemesh-e2e") };
    let mut run = vec!["run".to_owned(), "--detach".into(), format!("--name={}", container.name)];
    run.extend(run_options(&t.node.name, &config_dir, &state_dir));
    run.push(image.name.clone());
    run.extend(agent_args(DAEMON_SET));
    let run: Vec<&str> = run.iter().map(String::as_str).collect();
    podman_ok(&run);

    // Ready: the admin endpoint on the node's loopback (host networking).
    support::eventually(Duration::from_secs(30), "the container's agent is ready", || {
        assert_eq!(container.state("Running"), "true", "the container stopped:\n{}", container.logs());
        let ready = t.node.curl("http://127.0.0.1:15020/readyz");
        ready.is_some_and(|r| r.starts_with("ready")).then_some(())
    });
    // It runs with exactly the DaemonSet's capabilities.
    let pid = container.state("Pid");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let effective = status.lines().find_map(|l| l.strip_prefix("CapEff:")).unwrap().trim();
    let expected: u64 = added_capabilities(DAEMON_SET).iter().map(|c| 1u64 << capability_bit(c)).sum();
    assert_eq!(u64::from_str_radix(effective, 16).unwrap(), expected, "CapEff");

    // The cluster IP exists nowhere but in the agent's table: reached from
    // the node and from a pod routed through it.
    assert_eq!(t.node.curl(&format!("http://{CLUSTER_IP}/")).as_deref(), Some("pod-nginx\n"), "from the node");
    assert_eq!(t.client.curl(&format!("http://{CLUSTER_IP}/")).as_deref(), Some("pod-nginx\n"), "from a pod");
    // DNS on the node-local address, which the agent put on edge0.
    assert!(device_addresses(&t.node, "edge0").unwrap_or_default().contains(&DNS.to_owned()));
    assert_eq!(dig_a(&t.node, "web.default.svc.cluster.local"), [CLUSTER_IP]);
    assert_eq!(dig_a(&t.client, "web.default.svc.cluster.local"), [CLUSTER_IP]);
    assert!(t.node.tables().contains("table inet edgemesh"), "{}", t.node.tables());
    // The state volume holds the cache.
    assert!(state_dir.join("cache.redb").exists());

    // `podman stop`: SIGTERM, and the agent removes its table and device.
    podman_ok(&["stop", "--time", "10", &container.name]);
    assert_eq!(container.state("ExitCode"), "0", "{}", container.logs());
    assert!(!t.node.tables().contains("inet edgemesh"), "{}", t.node.tables());
    assert_eq!(device_addresses(&t.node, "edge0"), None, "edge0 removed");
}
