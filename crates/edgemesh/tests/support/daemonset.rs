//! The shipped DaemonSets (deploy/kubernetes) as a container runtime would
//! run them: what a container of theirs adds to its capabilities, and the
//! agent started with exactly those on a read-only root. Used by
//! `daemonset_e2e.rs`, `shipped_e2e.rs` and `image_e2e.rs`.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use super::netns::Netns;

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
