//! The shipped DaemonSets (deploy/kubernetes) as a container runtime would
//! run them: what a container of theirs adds to its capabilities, and the
//! agent started with exactly those on a read-only root. Used by
//! `daemonset_e2e.rs`, `shipped_e2e.rs` and `image_e2e.rs`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use super::netns::{Lan, Netns, NsAgent, link};
use super::peer_id;

/// deploy/kubernetes/`file`.
pub fn deploy_file(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/kubernetes").join(file)
}

/// Every YAML document of deploy/kubernetes/`file`.
pub fn documents(file: &str) -> Vec<Value> {
    let path = deploy_file(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The pod spec of the DaemonSet in deploy/kubernetes/`file`.
pub fn pod_spec(file: &str) -> Value {
    let docs = documents(file);
    let ds = docs.iter().find(|d| d["kind"] == "DaemonSet").unwrap_or_else(|| panic!("a DaemonSet in {file}"));
    ds["spec"]["template"]["spec"].clone()
}

/// The `edgemesh` container of the DaemonSet in deploy/kubernetes/`file`.
pub fn agent_container(file: &str) -> Value {
    let pod = pod_spec(file);
    let containers = pod["containers"].as_array().unwrap();
    containers.iter().find(|c| c["name"] == "edgemesh").expect("the edgemesh container").clone()
}

/// The args of the `edgemesh` container of the DaemonSet in `file`.
pub fn agent_args(file: &str) -> Vec<String> {
    let agent = agent_container(file);
    agent["args"].as_array().expect("args").iter().map(|a| a.as_str().expect("a string").to_owned()).collect()
}

/// The capabilities the `edgemesh` container of the DaemonSet in `file`
/// adds, after dropping ALL (and checks it runs on a read-only root).
pub fn added_capabilities(file: &str) -> Vec<String> {
    let agent = agent_container(file);
    let security = &agent["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"], true, "{file}");
    assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]), "{file}");
    let added = security["capabilities"]["add"].as_array().map(Vec::as_slice).unwrap_or_default();
    added.iter().map(|c| c.as_str().unwrap().to_owned()).collect()
}

/// `program` (`edgemesh`, its arguments appended by
/// [`super::netns::NsAgent::start_with`]) in `ns`'s network, in a mount
/// namespace of its own whose root is read-only but for `writable`, as uid
/// 0 with only `caps` (Kubernetes names, e.g. `NET_ADMIN`) and no way to
/// gain more.
pub fn contained(ns: &Netns, caps: &[String], writable: &Path, program: &Path) -> Command {
    let bounding: String = caps.iter().map(|c| format!(",+{}", c.to_lowercase())).collect();
    let mut command = Command::new("nsenter");
    command
        .arg(format!("--net=/run/netns/{}", ns.name))
        .args(["--", "unshare", "--mount", "--propagation", "private", "--", "sh", "-c"])
        // The writable volume is bound onto itself first, so the read-only
        // remount of / leaves it writable, as a volume mount is.
        .arg("mount --bind \"$0\" \"$0\" && mount -o remount,bind,ro / && exec \"$@\"")
        .arg(writable)
        .args(["setpriv", "--no-new-privs", "--inh-caps=-all", &format!("--bounding-set=-all{bounding}"), "--"])
        .arg(program);
    command
}

/// The agent binary of this build.
pub fn edgemesh() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_edgemesh"))
}

/// The `config.yaml` of the shipped ConfigMap (deploy/kubernetes).
pub fn shipped_config() -> String {
    let docs = documents("20-configmap.yaml");
    let config_map = docs.iter().find(|d| d["kind"] == "ConfigMap").expect("a ConfigMap");
    config_map["data"]["config.yaml"].as_str().expect("data.config.yaml").to_owned()
}

/// An edge node: its namespace, a pod behind a veth, its volumes.
pub struct EdgeNode {
    pub name: String,
    pub ns: Netns,
    pub pod: Netns,
    pub peer_id: String,
    /// The manifest whose DaemonSet runs here (under deploy/kubernetes).
    file: &'static str,
    /// One directory per volume of the container, by mountPath.
    volumes: Vec<(String, PathBuf)>,
    state: PathBuf,
    _dir: tempfile::TempDir,
}

impl EdgeNode {
    /// Node `index` (1 or 2): `10.0.0.<index + 1>` on `lan`, its pod CIDR
    /// `10.244.<index>.0/24`, its pod at `.2`.
    pub fn new(lan: &Lan, index: u8, config: &str, file: &'static str) -> EdgeNode {
        let name = format!("edge-{index}");
        let (ns, pod) = (Netns::new(&format!("ship{index}")), Netns::new(&format!("shippod{index}")));
        lan.attach(&ns, "eth0", &[&format!("10.0.0.{}/24", index + 1)]);
        // A node has a default route (to an upstream nobody answers here).
        ns.route("default", "10.0.0.254");
        link(&ns, "veth-pod", &pod, "eth0");
        ns.addr("veth-pod", &format!("10.244.{index}.1/24"));
        pod.addr("eth0", &format!("10.244.{index}.2/24"));
        pod.route("default", &format!("10.244.{index}.1"));

        let dir = tempfile::tempdir().unwrap();
        let container = agent_container(file);
        let mut volumes = Vec::new();
        for mount in container["volumeMounts"].as_array().expect("volumeMounts") {
            let (volume, path) = (mount["name"].as_str().unwrap(), mount["mountPath"].as_str().unwrap());
            let local = dir.path().join(volume);
            std::fs::create_dir_all(&local).unwrap();
            volumes.push((path.to_owned(), local));
        }
        // The config volume holds the ConfigMap's key as its file.
        let settings: Value = serde_saphyr::from_str(config).unwrap();
        let state_dir = settings["stateDir"].as_str().expect("the ConfigMap sets stateDir");
        let state = volumes.iter().find(|(path, _)| path == state_dir).expect("stateDir is a volume").1.clone();
        let peer_id = peer_id(&state);
        EdgeNode { name, ns, pod, peer_id, file, volumes, state, _dir: dir }
    }

    /// Writes the ConfigMap's `config.yaml` into the volume mounted where
    /// the container's `--config` points.
    fn mount_config(&self, config: &str, args: &[String]) {
        let path = args.iter().find_map(|a| a.strip_prefix("--config=")).expect("the DaemonSet passes --config=");
        std::fs::write(self.local(path), config).unwrap();
    }

    /// `path` inside the container, as a path of the test's.
    fn local(&self, path: &str) -> PathBuf {
        self.volumes
            .iter()
            .find_map(|(mount, local)| Some(local.join(Path::new(path).strip_prefix(mount).ok()?)))
            .unwrap_or_else(|| PathBuf::from(path))
    }

    /// The Node object: its pod CIDR and the peer ID its agent has.
    pub fn object(&self, index: u8) -> Value {
        json!({"metadata": {"name": self.name, "annotations": {"edgemesh.io/peer-id": self.peer_id}},
               "spec": {"podCIDR": format!("10.244.{index}.0/24"), "podCIDRs": [format!("10.244.{index}.0/24")]},
               "status": {"addresses": [{"type": "InternalIP", "address": format!("10.0.0.{}", index + 1)}]}})
    }

    /// The DaemonSet's container on this node, with `extra` arguments.
    pub fn start(&self, config: &str, extra: &[&str]) -> NsAgent {
        let container = agent_container(self.file);
        let args = agent_args(self.file);
        self.mount_config(config, &args);
        // The subcommand (agent, gateway), then its flags; arguments that
        // name files inside a volume name the test's copy.
        let subcommand = args[0].clone();
        assert!(["agent", "gateway"].contains(&subcommand.as_str()), "the container runs the agent: {args:?}");
        let mut args: Vec<String> = args[1..]
            .iter()
            .map(|a| match a.split_once('=') {
                Some((flag, value)) if value.starts_with('/') => format!("{flag}={}", self.local(value).display()),
                _ => a.clone(),
            })
            .collect();
        args.extend(["--state-dir".to_owned(), self.state.display().to_string()]);
        args.extend(extra.iter().map(|a| a.to_string()));
        let caps = added_capabilities(self.file);
        let mut command = contained(&self.ns, &caps, &self.state, edgemesh());
        let env = container["env"].as_array().expect("env");
        assert!(env.iter().any(|e| e["name"] == "NODE_NAME"), "the DaemonSet passes NODE_NAME");
        command.env("NODE_NAME", &self.name);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        NsAgent::start_subcommand(&self.ns, command, &subcommand, &args, Duration::from_secs(30))
    }
}
