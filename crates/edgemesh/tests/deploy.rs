//! The agent configs shipped in `deploy/` go through the real binary
//! (`edgemesh agent --print-config`) with the arguments each deployment
//! really passes, and agree with the deployment around them: the
//! ConfigMap's `config.yaml` with each DaemonSet's args (probes, mounts, the
//! interception mode and the capabilities it needs, the init container's
//! addresses where there is one), and `deploy/systemd/config.yaml` with the
//! systemd unit's `ExecStart` (state directory, capabilities).
//!
//! That the manifests are well-formed Kubernetes objects is checked with
//! k8s-openapi in `crates/kube-source/tests/deploy.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// Flags that deployments already pass but arrive with a later issue; until
/// the binary knows them they are left out of the check (and nothing else).
const FUTURE_FLAGS: [&str; 1] = [
    // The relay variant; arrives with the tunnel (issue #4).
    "--relay-server",
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

/// Every document under deploy/kubernetes, with its file name.
fn kubernetes_documents() -> Vec<(String, Value)> {
    let dir = repo().join("deploy/kubernetes");
    let mut files = Vec::new();
    yaml_files(&dir, &mut files);
    let mut docs = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let values: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
        let name = file.strip_prefix(&dir).unwrap().display().to_string();
        docs.extend(values.into_iter().filter(|v| !v.is_null()).map(|v| (name.clone(), v)));
    }
    docs
}

/// Whether `edgemesh agent` accepts `flag`.
fn binary_knows(flag: &str) -> bool {
    let out = Command::new(env!("CARGO_BIN_EXE_edgemesh")).args(["agent", "--help"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).contains(flag)
}

/// Runs `edgemesh <args> --print-config` and returns the effective config;
/// panics with the agent's message when it refuses the config.
fn effective_config(what: &str, args: &[String]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_edgemesh"))
        .args(args)
        .arg("--print-config")
        .env("NODE_NAME", "test-node")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{what}: the agent refuses its config ({args:?}):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_saphyr::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap()
}

/// Replaces the value of `--config` (as `--config=F` or `--config F`) by
/// `file`; panics if there is none. Returns the original path.
fn swap_config(args: &mut [String], file: &Path) -> String {
    for i in 0..args.len() {
        if let Some(orig) = args[i].strip_prefix("--config=").map(str::to_owned) {
            args[i] = format!("--config={}", file.display());
            return orig;
        }
        if args[i] == "--config" || args[i] == "-c" {
            let orig = std::mem::replace(&mut args[i + 1], file.display().to_string());
            return orig;
        }
    }
    panic!("no --config in {args:?}");
}

fn str_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[test]
fn the_config_map_config_is_accepted_by_the_agent_with_each_daemon_sets_args() {
    let docs = kubernetes_documents();
    let config_map =
        docs.iter().map(|(_, v)| v).find(|v| v["kind"] == "ConfigMap").expect("a ConfigMap in deploy/kubernetes");
    let config_map_name = str_of(&config_map["metadata"]["name"]);
    let text = config_map["data"]["config.yaml"].as_str().expect("data.config.yaml");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.yaml");
    std::fs::write(&file, text).unwrap();

    let daemon_sets: Vec<_> = docs.iter().filter(|(_, v)| v["kind"] == "DaemonSet").collect();
    assert!(daemon_sets.iter().any(|(place, _)| place == "30-daemonset.yaml"), "the standard DaemonSet");
    for (place, ds) in daemon_sets {
        let pod = &ds["spec"]["template"]["spec"];
        let containers = pod["containers"].as_array().unwrap();
        let agent = containers.iter().find(|c| c["name"] == "edgemesh").expect("the edgemesh container");
        let mut args: Vec<String> = agent["args"].as_array().expect("args").iter().map(str_of).collect();
        args.retain(|a| {
            let flag = a.split('=').next().unwrap();
            !FUTURE_FLAGS.contains(&flag) || binary_knows(flag)
        });
        let config_path = swap_config(&mut args, &file);
        let c = effective_config(place, &args);

        assert_eq!(c["source"], "kube", "{place}");
        // The gateway variant: the agent with its gateway on, serving the
        // class its README names.
        let gateway = args.first().map(String::as_str) == Some("gateway");
        assert_eq!(c["gateway"]["enabled"], gateway, "{place}: gateway.enabled");
        if gateway {
            assert_eq!(c["gateway"]["className"], "edgemesh", "{place}");
        }
        assert_eq!(c["nodeName"], "test-node", "{place}: NODE_NAME (the DaemonSet sets it from spec.nodeName)");

        // --config names the ConfigMap's key where the volume is mounted.
        let volumes = pod["volumes"].as_array().unwrap();
        let mount_of = |volume: &Value| {
            let name = &volume["name"];
            let mount = agent["volumeMounts"].as_array().unwrap().iter().find(|m| m["name"] == *name);
            str_of(&mount.unwrap_or_else(|| panic!("{place}: volume {name} is not mounted"))["mountPath"])
        };
        let config_volume =
            volumes.iter().find(|v| v["configMap"]["name"] == config_map_name.as_str()).expect("config volume");
        assert_eq!(config_path, format!("{}/config.yaml", mount_of(config_volume)), "{place}");

        // The cache is on the host, where the config says.
        let state_volume = volumes.iter().find(|v| v["hostPath"].is_object()).expect("hostPath volume");
        assert_eq!(c["stateDir"], mount_of(state_volume).as_str(), "{place}: stateDir is the hostPath mount");

        // The probes reach the admin endpoint.
        let admin: std::net::SocketAddr = str_of(&c["admin"]["listen"]).parse().unwrap();
        for probe in ["livenessProbe", "readinessProbe"] {
            let get = &agent[probe]["httpGet"];
            let port = match &get["port"] {
                Value::Number(n) => n.as_u64().unwrap(),
                Value::String(name) => {
                    let ports = agent["ports"].as_array().unwrap();
                    ports.iter().find(|p| p["name"] == name.as_str()).unwrap()["containerPort"].as_u64().unwrap()
                }
                other => panic!("{place}: {probe} port {other}"),
            };
            assert_eq!(port, u64::from(admin.port()), "{place}: {probe} port");
            // With host networking the kubelet probes the node's address
            // unless told otherwise; a loopback admin needs host: 127.0.0.1.
            let host = get["host"].as_str().unwrap_or("<pod IP>");
            assert!(
                admin.ip().is_unspecified() || host == admin.ip().to_string(),
                "{place}: {probe} host {host} cannot reach the admin endpoint on {admin}"
            );
        }

        let dns: std::net::SocketAddr = str_of(&c["dns"]["listen"]).parse().unwrap();
        assert_eq!(dns, "169.254.96.16:53".parse().unwrap(), "{place}: the KubeEdge node-local DNS address");
        let caps = &agent["securityContext"]["capabilities"];
        assert_eq!(caps["drop"], serde_json::json!(["ALL"]), "{place}");
        match c["intercept"]["mode"].as_str().unwrap() {
            "ebpf" => fast_path_variant(place, pod, &c, caps, &mount_of),
            "nftables" => node_mode(place, pod, &c, caps),
            "none" => without_interception(place, pod, &c, caps),
            other => panic!("{place}: intercept.mode {other}"),
        }
        // The standard DaemonSet intercepts: what `kubectl apply -f
        // deploy/kubernetes/` installs is node mode.
        if place == "30-daemonset.yaml" {
            assert_eq!(c["intercept"]["mode"], "nftables", "{place}: node mode by default");
        }

        // Edge nodes read metaServer; the others the service account.
        let kube_api = c["kube"]["api"].as_str();
        if args.iter().any(|a| a.starts_with("--kube-api")) {
            assert_eq!(kube_api, Some("http://127.0.0.1:10550"), "{place}");
            assert_eq!(pod["automountServiceAccountToken"], false, "{place}: metaServer needs no token");
        } else {
            assert_eq!(kube_api, None, "{place}: in-cluster service account");
            assert_eq!(c["kube"]["kubeconfig"], Value::Null, "{place}");
        }
    }
}

/// Whether a DaemonSet's pods go on a node with these labels: its
/// nodeSelector and its required node affinity's `In`, `Exists` and
/// `DoesNotExist` expressions (the only operators the manifests use).
fn schedules_on(ds: &Value, labels: &BTreeMap<&str, &str>) -> bool {
    let pod = &ds["spec"]["template"]["spec"];
    let selector = pod["nodeSelector"].as_object().into_iter().flatten();
    let selected = selector.into_iter().all(|(k, v)| labels.get(k.as_str()) == v.as_str().as_ref());
    let terms = &pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"];
    let Some(terms) = terms.as_array() else { return selected };
    selected
        && terms.iter().any(|term| {
            term["matchExpressions"].as_array().into_iter().flatten().all(|e| {
                let value = labels.get(e["key"].as_str().unwrap());
                match e["operator"].as_str().unwrap() {
                    "Exists" => value.is_some(),
                    "DoesNotExist" => value.is_none(),
                    "In" => e["values"].as_array().unwrap().iter().any(|v| v.as_str() == value.copied()),
                    other => panic!("operator {other} is not evaluated here"),
                }
            })
        })
}

/// Two agents on one node would fight over port 53, the tunnel port and
/// the nftables table: every edge node, whatever its relay and gateway
/// labels, runs exactly one of the variants (the eBPF DaemonSet replaces
/// the standard one: same name).
#[test]
fn every_edge_node_runs_exactly_one_agent_whatever_its_labels() {
    let docs = kubernetes_documents();
    let daemon_sets: Vec<_> = docs.iter().filter(|(_, v)| v["kind"] == "DaemonSet").collect();
    for relay in [false, true] {
        for gateway in [false, true] {
            let mut labels = BTreeMap::from([("node-role.kubernetes.io/edge", "")]);
            if relay {
                labels.insert("edgemesh.io/relay", "true");
            }
            if gateway {
                labels.insert("edgemesh.io/gateway", "true");
            }
            let running: BTreeSet<String> = daemon_sets
                .iter()
                .filter(|(_, ds)| schedules_on(ds, &labels))
                .map(|(_, ds)| str_of(&ds["metadata"]["name"]))
                .collect();
            assert_eq!(running.len(), 1, "a node labelled {labels:?} runs {running:?}");
            let expected = if relay {
                "edgemesh-relay"
            } else if gateway {
                "edgemesh-gateway"
            } else {
                "edgemesh"
            };
            assert!(running.contains(expected), "{labels:?}: {running:?}");
        }
    }
}

/// Node mode: the agent makes the DNS address and the VIPs local on its own
/// device, so no init container; exactly NET_ADMIN (table, device, mark)
/// and NET_BIND_SERVICE (port 53).
fn node_mode(place: &str, pod: &Value, c: &Value, caps: &Value) {
    assert!(pod["initContainers"].is_null(), "{place}: the agent puts the addresses on edge0 itself");
    assert_eq!(caps["add"], serde_json::json!(["NET_ADMIN", "NET_BIND_SERVICE"]), "{place}");
    assert_eq!(c["intercept"]["vipDevice"], "edge0", "{place}");
    assert_eq!(c["intercept"]["table"], "edgemesh", "{place}");
    assert_eq!(c["vipCidr"], "9.251.0.0/16", "{place}: EdgeMesh's pool, on edge0");
}

/// Without interception: only port 53; the init container makes exactly
/// the configured addresses local to the node.
fn without_interception(place: &str, pod: &Value, c: &Value, caps: &Value) {
    assert_eq!(caps["add"], serde_json::json!(["NET_BIND_SERVICE"]), "{place}");
    let dns: std::net::SocketAddr = str_of(&c["dns"]["listen"]).parse().unwrap();
    let init = pod["initContainers"].as_array().unwrap_or_else(|| panic!("{place}: no init container"));
    let setup = init.iter().find(|c| c["name"] == "node-addresses").expect("node-addresses init container");
    let env = |name: &str| {
        let e = setup["env"].as_array().unwrap().iter().find(|e| e["name"] == name);
        str_of(&e.unwrap_or_else(|| panic!("{place}: no {name}"))["value"])
    };
    assert_eq!(env("DNS_ADDRESS"), dns.ip().to_string(), "{place}");
    assert_eq!(env("VIP_CIDR"), str_of(&c["vipCidr"]), "{place}");
}

/// Every container of every DaemonSet: all capabilities dropped, each one
/// added back named in a comment of its manifest (the reason), no privilege
/// escalation, a read-only root, and only the agent's state (and, for the
/// fast path, the host's bpffs) mounted writable.
#[test]
fn every_container_runs_read_only_with_only_the_capabilities_its_manifest_explains() {
    let dir = repo().join("deploy/kubernetes");
    let mut checked = 0;
    for (place, ds) in kubernetes_documents().iter().filter(|(_, v)| v["kind"] == "DaemonSet") {
        let text = std::fs::read_to_string(dir.join(place)).unwrap();
        let comments: Vec<&str> = text.lines().filter_map(|l| l.split_once('#').map(|(_, c)| c)).collect();
        let pod = &ds["spec"]["template"]["spec"];
        assert!(pod["hostPID"].is_null() && pod["hostIPC"].is_null(), "{place}: no host PID or IPC namespace");
        let init = pod["initContainers"].as_array().cloned().unwrap_or_default();
        for container in pod["containers"].as_array().unwrap().iter().chain(&init) {
            let name = str_of(&container["name"]);
            let security = &container["securityContext"];
            assert_eq!(security["readOnlyRootFilesystem"], true, "{place} {name}");
            assert_eq!(security["allowPrivilegeEscalation"], false, "{place} {name}");
            assert!(security["privileged"].is_null(), "{place} {name}: never privileged");
            assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]), "{place} {name}");
            for cap in security["capabilities"]["add"].as_array().into_iter().flatten().map(str_of) {
                assert!(cap != "SYS_ADMIN", "{place} {name}: SYS_ADMIN");
                assert!(
                    comments.iter().any(|c| c.contains(&format!("{cap}:"))),
                    "{place} {name}: no comment says why it needs {cap} (\"# {cap}: <reason>\")"
                );
            }
            for mount in container["volumeMounts"].as_array().into_iter().flatten() {
                let path = str_of(&mount["mountPath"]);
                let writable_ok = name == "edgemesh" && (path == "/var/lib/edgemesh" || path == "/sys/fs/bpf");
                assert!(mount["readOnly"] == true || writable_ok, "{place} {name}: {path} is mounted writable");
            }
            checked += 1;
        }
    }
    assert!(checked >= 4, "only {checked} containers checked");
}

/// The eBPF variant: exactly the capabilities the fast path needs, the
/// host's bpffs where the pins go, and the host's cgroup hierarchy where
/// the programs attach.
fn fast_path_variant(place: &str, pod: &Value, c: &Value, caps: &Value, mount_of: &dyn Fn(&Value) -> String) {
    assert!(pod["initContainers"].is_null(), "{place}: the agent puts the addresses on edge0 itself");
    assert_eq!(caps["add"], serde_json::json!(["BPF", "PERFMON", "NET_ADMIN", "NET_BIND_SERVICE"]), "{place}");
    let volumes = pod["volumes"].as_array().unwrap();
    let host_mount = |host: &str| {
        let volume = volumes.iter().find(|v| v["hostPath"]["path"] == host);
        mount_of(volume.unwrap_or_else(|| panic!("{place}: no hostPath {host}")))
    };
    assert_eq!(host_mount("/sys/fs/bpf"), "/sys/fs/bpf", "{place}: the agent mounts no bpffs without SYS_ADMIN");
    assert!(str_of(&c["intercept"]["bpfPinPath"]).starts_with("/sys/fs/bpf/"), "{place}");
    let cgroup = str_of(&c["intercept"]["cgroupPath"]);
    assert_eq!(cgroup, host_mount("/sys/fs/cgroup"), "{place}: attached to the host's hierarchy, not the pod's");
}

/// `Key=Value` lines of a systemd unit (all values of repeated keys).
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|l| l.trim().split_once('='))
        .filter(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim().to_string())
        .collect()
}

#[test]
fn the_systemd_example_config_is_accepted_by_the_agent_with_the_units_command_line() {
    let dir = repo().join("deploy/systemd");
    let unit = std::fs::read_to_string(dir.join("edgemesh.service")).unwrap();
    let one = |key: &str| {
        let v = unit_values(&unit, key);
        assert_eq!(v.len(), 1, "edgemesh.service: one {key}= ({v:?})");
        v[0].clone()
    };
    let exec = one("ExecStart");
    let mut words = exec.split_whitespace();
    assert_eq!(words.next(), Some("/usr/local/bin/edgemesh"));
    let mut args: Vec<String> = words.map(str::to_owned).collect();
    let config_path = swap_config(&mut args, &dir.join("config.yaml"));
    assert_eq!(config_path, "/etc/edgemesh/config.yaml", "the example is installed there");
    let c = effective_config("deploy/systemd/config.yaml", &args);

    assert_eq!(c["source"], "manifests");
    assert_eq!(c["stateDir"], format!("/var/lib/{}", one("StateDirectory")).as_str(), "stateDir is the unit's");
    let manifests = str_of(&c["manifests"]["dir"]);
    assert!(manifests.starts_with(&format!("/etc/{}/", one("ConfigurationDirectory"))), "{manifests}");

    // Exactly the capabilities the config needs: port 53 for DNS.
    let dns: std::net::SocketAddr = str_of(&c["dns"]["listen"]).parse().unwrap();
    let admin: std::net::SocketAddr = str_of(&c["admin"]["listen"]).parse().unwrap();
    let privileged_port = dns.port() < 1024 || admin.port() < 1024;
    let caps = one("AmbientCapabilities");
    let needed = if privileged_port { "CAP_NET_BIND_SERVICE" } else { "" };
    assert_eq!(caps, needed, "AmbientCapabilities for DNS on {dns} and admin on {admin}");
    assert_eq!(one("CapabilityBoundingSet"), caps);
    assert!(admin.ip().is_loopback(), "the admin endpoint stays on the box");

    for (key, value) in [
        ("Restart", "on-failure"),
        ("DynamicUser", "yes"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
    ] {
        assert_eq!(one(key), value, "edgemesh.service: {key}");
    }
    assert!(one("LimitNOFILE").parse::<u64>().unwrap() >= 4096, "room for proxied connections");
}
