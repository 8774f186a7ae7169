//! The Kubernetes manifests in `deploy/kubernetes` (recursively): every
//! document parses as the k8s-openapi type of its `kind` with no field the
//! type does not know (a typo would be silently dropped by the API server),
//! the objects refer to each other correctly, the DaemonSets keep to the
//! privileges they need, and each ClusterRole grants exactly what the real
//! code requests from an API server: the node agent's read-only access to
//! what its source watches, and the gateway's (gateway/) the same plus the
//! routing objects, TLS Secrets and the status it writes.
//!
//! The agent config inside the ConfigMap is checked by the real binary in
//! `crates/edgemesh/tests/deploy.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use edgemesh_fake_apiserver::FakeApiServer;
use edgemesh_kube::{ApiEndpoint, KubeSource, KubeSourceConfig};
use edgemesh_test_support::registry::{RunningRegistry, start_registry};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::serde::Serialize;
use k8s_openapi::serde::de::DeserializeOwned;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const NAMESPACE: &str = "edgemesh";
const READ_ONLY_VERBS: [&str; 3] = ["get", "list", "watch"];
/// What the gateway may do to a `status` subresource: read it, merge-patch it.
const STATUS_VERBS: [&str; 2] = ["get", "patch"];
const AGENT: &str = "edgemesh";
const GATEWAY: &str = "edgemesh-gateway";

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/kubernetes")
}

/// One YAML document: where it is and its content.
struct Doc {
    place: String,
    value: Value,
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

fn documents() -> Vec<Doc> {
    let mut files = Vec::new();
    yaml_files(&deploy_dir(), &mut files);
    assert!(!files.is_empty(), "no manifests under {}", deploy_dir().display());
    let mut docs = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let name = file.strip_prefix(deploy_dir()).unwrap().display().to_string();
        let values: Vec<Value> =
            serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{name} is not valid YAML: {e}"));
        for (i, value) in values.into_iter().enumerate() {
            if value.is_null() {
                continue;
            }
            docs.push(Doc { place: format!("{name} (document {})", i + 1), value });
        }
    }
    docs
}

/// The objects of the deployment, typed.
#[derive(Default)]
struct Objects {
    namespaces: Vec<Namespace>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    bindings: Vec<ClusterRoleBinding>,
    config_maps: Vec<ConfigMap>,
    daemon_sets: Vec<(String, DaemonSet)>,
}

/// Parses `doc` as `T`, and fails if the value does not survive the round
/// trip through `T`: a field `T` does not know (a misspelt or misplaced key)
/// would be dropped.
fn typed<T: k8s_openapi::Resource + DeserializeOwned + Serialize>(doc: &Doc) -> T {
    let object: T = serde_json::from_value(doc.value.clone())
        .unwrap_or_else(|e| panic!("{}: not a valid {}: {e}", doc.place, T::KIND));
    let back = serde_json::to_value(&object).unwrap();
    let mut lost = Vec::new();
    differences("", &doc.value, &back, &mut lost);
    assert!(lost.is_empty(), "{}: fields that {} does not have or keep: {lost:?}", doc.place, T::KIND);
    object
}

fn differences(path: &str, original: &Value, back: &Value, out: &mut Vec<String>) {
    match (original, back) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                match b.get(k) {
                    Some(w) => differences(&format!("{path}.{k}"), v, w, out),
                    None => out.push(format!("{path}.{k}")),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (v, w)) in a.iter().zip(b).enumerate() {
                differences(&format!("{path}[{i}]"), v, w, out);
            }
        }
        (a, b) if a == b => {}
        (a, b) => out.push(format!("{path}: {a} became {b}")),
    }
}

fn load() -> Objects {
    let mut objects = Objects::default();
    for doc in documents() {
        let api_version = doc.value["apiVersion"].as_str().unwrap_or_default();
        let kind = doc.value["kind"].as_str().unwrap_or_default();
        let is = |api: &str, k: &str| api_version == api && kind == k;
        use k8s_openapi::Resource as R;
        if is(Namespace::API_VERSION, Namespace::KIND) {
            objects.namespaces.push(typed(&doc));
        } else if is(ServiceAccount::API_VERSION, ServiceAccount::KIND) {
            objects.service_accounts.push(typed(&doc));
        } else if is(ClusterRole::API_VERSION, ClusterRole::KIND) {
            objects.cluster_roles.push(typed(&doc));
        } else if is(ClusterRoleBinding::API_VERSION, ClusterRoleBinding::KIND) {
            objects.bindings.push(typed(&doc));
        } else if is(ConfigMap::API_VERSION, ConfigMap::KIND) {
            objects.config_maps.push(typed(&doc));
        } else if is(DaemonSet::API_VERSION, DaemonSet::KIND) {
            objects.daemon_sets.push((doc.place.clone(), typed(&doc)));
        } else {
            panic!("{}: unexpected object {api_version:?} {kind:?}; add its type to this test", doc.place);
        }
    }
    objects
}

fn name<T: k8s_openapi::Metadata<Ty = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>>(o: &T) -> &str {
    o.metadata().name.as_deref().unwrap_or_default()
}

fn namespace<T: k8s_openapi::Metadata<Ty = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>>(o: &T) -> &str {
    o.metadata().namespace.as_deref().unwrap_or_default()
}

#[test]
fn every_manifest_is_a_known_kubernetes_object_without_unknown_fields() {
    let o = load();
    assert_eq!(o.namespaces.iter().map(name).collect::<Vec<_>>(), [NAMESPACE]);
    // The node agent's, and the gateway's (gateway/).
    let both = BTreeSet::from([AGENT, GATEWAY]);
    assert_eq!(o.service_accounts.iter().map(name).collect::<BTreeSet<_>>(), both, "service accounts");
    assert_eq!(o.cluster_roles.iter().map(name).collect::<BTreeSet<_>>(), both, "cluster roles");
    assert_eq!(o.bindings.iter().map(name).collect::<BTreeSet<_>>(), both, "cluster role bindings");
    assert_eq!(o.config_maps.len(), 1, "one config map, shared by every DaemonSet");
    assert!(!o.daemon_sets.is_empty(), "a DaemonSet");
    for ns in o.service_accounts.iter().map(namespace).chain(o.config_maps.iter().map(namespace)) {
        assert_eq!(ns, NAMESPACE);
    }
    for (place, ds) in &o.daemon_sets {
        assert_eq!(namespace(ds), NAMESPACE, "{place}");
    }
    let data = o.config_maps[0].data.as_ref().expect("config map data");
    assert!(data.contains_key("config.yaml"), "the agent config is the config map's config.yaml");
}

#[test]
fn each_binding_gives_its_role_to_its_service_account_only() {
    let o = load();
    for binding in &o.bindings {
        let place = name(binding);
        assert_eq!(binding.role_ref.kind, "ClusterRole", "{place}");
        assert_eq!(binding.role_ref.api_group, "rbac.authorization.k8s.io", "{place}");
        // The account and the role of one variant share its name.
        assert_eq!(binding.role_ref.name, place, "{place}");
        assert!(o.cluster_roles.iter().any(|r| name(r) == place), "{place}: no role {place}");
        let subjects = binding.subjects.as_deref().unwrap_or_default();
        assert_eq!(subjects.len(), 1, "{place}: one service account");
        assert_eq!(subjects[0].kind, "ServiceAccount", "{place}");
        assert_eq!(subjects[0].name, place, "{place}");
        assert_eq!(subjects[0].namespace.as_deref(), Some(NAMESPACE), "{place}");
    }
}

fn role<'a>(o: &'a Objects, role: &str) -> &'a ClusterRole {
    o.cluster_roles.iter().find(|r| name(*r) == role).unwrap_or_else(|| panic!("no ClusterRole {role}"))
}

/// `(api group, resource)` -> verbs.
type Grants = BTreeMap<(String, String), BTreeSet<String>>;

/// What the ClusterRole grants; read-only verbs only (and with
/// `status_writes`, get and patch of `status` subresources), no wildcards,
/// no non-resource URLs, no names.
fn granted(role: &ClusterRole, status_writes: bool) -> Grants {
    assert!(role.aggregation_rule.is_none(), "no aggregation");
    let mut grants = Grants::new();
    for rule in role.rules.as_deref().unwrap_or_default() {
        assert!(rule.non_resource_urls.is_none(), "no non-resource URLs: {rule:?}");
        assert!(rule.resource_names.is_none(), "the agent watches all objects, not named ones: {rule:?}");
        let status = rule.resources.iter().flatten().all(|r| r.ends_with("/status"));
        for verb in &rule.verbs {
            let allowed = if status && status_writes { &STATUS_VERBS[..] } else { &READ_ONLY_VERBS[..] };
            assert!(allowed.contains(&verb.as_str()), "verb {verb:?} is not allowed in {rule:?}");
        }
        for group in rule.api_groups.as_deref().unwrap_or_default() {
            assert_ne!(group, "*", "no wildcard API group");
            for resource in rule.resources.as_deref().unwrap_or_default() {
                assert!(!resource.contains('*'), "no wildcard resource: {resource}");
                grants.entry((group.clone(), resource.clone())).or_default().extend(rule.verbs.iter().cloned());
            }
        }
    }
    grants
}

/// `/api/v1/services?watch=true&...` -> `(("", "services"), "watch")`;
/// a named object is a `get`; `PATCH .../gateways/a/status` is
/// `(("gateway.networking.k8s.io", "gateways/status"), "patch")`.
fn access(request: &str) -> ((String, String), String) {
    let (patch, request) = match request.strip_prefix("PATCH ") {
        Some(rest) => (true, rest),
        None => (false, request),
    };
    let (path, query) = request.split_once('?').unwrap_or((request, ""));
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match segments.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => panic!("unexpected request {request}"),
    };
    let rest = match rest {
        ["namespaces", _ns, rest @ ..] if !rest.is_empty() => rest,
        rest => rest,
    };
    let watch = query.split('&').any(|p| p == "watch=true" || p == "watch=1");
    let verb = match (rest.len(), watch, patch) {
        (1, true, false) => "watch",
        (1, false, false) => "list",
        (2, _, false) | (3, _, false) => "get",
        (3, _, true) => "patch",
        _ => panic!("unexpected request {request}"),
    };
    let resource = match rest {
        [plural, _name, sub] => format!("{plural}/{sub}"),
        [plural, ..] => plural.to_string(),
        [] => panic!("unexpected request {request}"),
    };
    ((group.to_string(), resource), verb.to_string())
}

/// Everything the real source asks of an API server until it watches every
/// resource it needs.
async fn requests_of_the_source(api: &FakeApiServer, resources: &[&str]) -> Grants {
    let RunningRegistry { sink, .. } = start_registry("127.240.0.0/16");
    let source = KubeSource::new(KubeSourceConfig::new(ApiEndpoint::Url(api.url()))).await.expect("client");
    let shutdown = CancellationToken::new();
    tokio::spawn(source.run(sink, shutdown.clone()));
    used_until_watched(api, resources, shutdown).await
}

/// Waits until `api` saw a watch of each of `resources`, stops the source,
/// and sorts what was asked into grants.
async fn used_until_watched(api: &FakeApiServer, resources: &[&str], shutdown: CancellationToken) -> Grants {
    for resource in resources {
        let path = format!("/{resource}?");
        let found = tokio::task::block_in_place(|| {
            api.wait_request(0, Duration::from_secs(10), |r| r.contains(&path) && r.contains("watch=true"))
        });
        assert!(found.is_some(), "the source watches {resource}: {:?}", api.request_log());
    }
    shutdown.cancel();
    let mut used = Grants::new();
    for request in api.request_log() {
        let (resource, verb) = access(&request);
        used.entry(resource).or_default().insert(verb);
    }
    used
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_role_grants_read_access_to_exactly_what_the_source_uses() {
    let o = load();
    let grants = granted(role(&o, AGENT), false);

    let mut used =
        requests_of_the_source(&FakeApiServer::start(), &["services", "endpointslices", "nodes", "destinationrules"])
            .await;
    let legacy = FakeApiServer::start();
    legacy.without_endpoint_slices();
    for (resource, verbs) in
        requests_of_the_source(&legacy, &["services", "endpoints", "nodes", "destinationrules"]).await
    {
        used.entry(resource).or_default().extend(verbs);
    }
    // The source must have been seen using both kinds of endpoints, and
    // Istio's DestinationRules (EdgeMesh's per-service load balancing).
    for resource in ["services", "endpointslices", "endpoints", "nodes", "destinationrules"] {
        assert!(used.keys().any(|(_, r)| r == resource), "the source was not seen using {resource}: {used:?}");
    }

    let granted_resources: BTreeSet<_> = grants.keys().collect();
    let used_resources: BTreeSet<_> = used.keys().collect();
    assert_eq!(granted_resources, used_resources, "the ClusterRole covers exactly the resources the source uses");
    for (resource, verbs) in &used {
        let missing: Vec<_> = verbs.difference(&grants[resource]).collect();
        assert!(missing.is_empty(), "{resource:?}: the source needs {missing:?}");
    }
}

/// The interception mode a DaemonSet's agent runs in: its `--intercept=`
/// flag, else the ConfigMap's `intercept.mode` (`none` when it has none).
fn intercept_mode(agent: &Container, config_map: &ConfigMap) -> String {
    if let Some(mode) = agent.args.iter().flatten().find_map(|a| a.strip_prefix("--intercept=")) {
        return mode.to_owned();
    }
    let text = config_map.data.as_ref().and_then(|d| d.get("config.yaml")).expect("the ConfigMap's config.yaml");
    let config: Value = serde_saphyr::from_str(text).expect("config.yaml is YAML");
    config["intercept"]["mode"].as_str().unwrap_or("none").to_owned()
}

/// Capabilities each container may add in interception mode `mode`, and
/// why (see the DaemonSet comments).
fn allowed_capabilities(container: &str, mode: &str) -> &'static [&'static str] {
    match (container, mode) {
        // The kernel fast path: loading BPF programs (BPF; PERFMON, or the
        // verifier's Spectre guard refuses them), attaching them to the
        // cgroup and the VIP device (NET_ADMIN), and port 53.
        ("edgemesh", "ebpf") => &["BPF", "PERFMON", "NET_ADMIN", "NET_BIND_SERVICE"],
        // Node mode: the nftables table, the edge0 device, the socket
        // mark (NET_ADMIN), and port 53.
        ("edgemesh", "nftables") => &["NET_ADMIN", "NET_BIND_SERVICE"],
        // Port 53 for DNS.
        ("edgemesh", "none") => &["NET_BIND_SERVICE"],
        // The DNS address and the VIP route on the host, for an agent
        // without interception only.
        ("node-addresses", "none") => &["NET_ADMIN"],
        other => panic!("unexpected container and mode {other:?}"),
    }
}

fn check_container(place: &str, c: &Container, mode: &str) {
    let sc = c.security_context.as_ref().unwrap_or_else(|| panic!("{place}: {} has no securityContext", c.name));
    assert_ne!(sc.privileged, Some(true), "{place}: {} is privileged", c.name);
    assert_eq!(sc.allow_privilege_escalation, Some(false), "{place}: {}", c.name);
    assert_eq!(sc.read_only_root_filesystem, Some(true), "{place}: {}", c.name);
    let caps = sc.capabilities.as_ref().unwrap_or_else(|| panic!("{place}: {} has no capabilities", c.name));
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]), "{place}: {} drops all capabilities", c.name);
    for cap in caps.add.as_deref().unwrap_or_default() {
        assert!(allowed_capabilities(&c.name, mode).contains(&cap.as_str()), "{place}: {} adds {cap} ({mode})", c.name);
    }
    let resources = c.resources.as_ref().unwrap_or_else(|| panic!("{place}: {} has no resources", c.name));
    for (what, list) in [("requests", &resources.requests), ("limits", &resources.limits)] {
        let list = list.as_ref().unwrap_or_else(|| panic!("{place}: {} has no {what}", c.name));
        assert!(list.contains_key("cpu") && list.contains_key("memory"), "{place}: {} {what}", c.name);
    }
}

#[test]
fn daemon_sets_run_on_the_host_network_with_the_least_privileges() {
    let o = load();
    let config_map = name(&o.config_maps[0]).to_string();
    for (place, ds) in &o.daemon_sets {
        let spec = ds.spec.as_ref().unwrap();
        let labels = spec.template.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default();
        for (k, v) in spec.selector.match_labels.as_ref().expect("selector") {
            assert_eq!(labels.get(k), Some(v), "{place}: the selector matches the pod template");
        }
        let pod = spec.template.spec.as_ref().unwrap();
        assert_eq!(pod.host_network, Some(true), "{place}");
        // The agent must not be its own upstream resolver (see the manifest).
        assert_eq!(pod.dns_policy.as_deref(), Some("Default"), "{place}");
        // The gateway variant has an account of its own (it reads Secrets
        // and writes status); every other variant the agent's read-only one.
        let agent = pod.containers.iter().find(|c| c.name == "edgemesh").expect("the edgemesh container");
        let command = agent.args.as_ref().and_then(|a| a.first()).map(String::as_str).unwrap_or_default();
        let account = if command == "gateway" { GATEWAY } else { AGENT };
        assert_eq!(pod.service_account_name.as_deref(), Some(account), "{place}");
        assert!(pod.host_pid.is_none() && pod.host_ipc.is_none(), "{place}");
        assert!(pod.tolerations.as_ref().is_some_and(|t| !t.is_empty()), "{place}: tolerations for edge nodes");

        // The eBPF variant (`--intercept=ebpf`) also needs the host's bpffs
        // and cgroup hierarchy.
        let mode = intercept_mode(agent, &o.config_maps[0]);
        let fast_path = mode == "ebpf";
        let host_paths: &[&str] =
            if fast_path { &["/var/lib/edgemesh", "/sys/fs/bpf", "/sys/fs/cgroup"] } else { &["/var/lib/edgemesh"] };
        let volumes = pod.volumes.as_deref().unwrap_or_default();
        for v in volumes {
            if let Some(cm) = &v.config_map {
                assert_eq!(cm.name, config_map, "{place}: volume {}", v.name);
            }
            if let Some(host) = &v.host_path {
                assert!(
                    host_paths.contains(&host.path.as_str()),
                    "{place}: host path {} (only {host_paths:?})",
                    host.path
                );
            }
        }

        for c in pod.init_containers.iter().flatten().chain(&pod.containers) {
            check_container(place, c, &mode);
        }
        // An agent that intercepts puts the DNS address and the VIPs on its
        // own device; only one without needs the init container for them.
        assert_eq!(pod.init_containers.is_some(), mode == "none", "{place}: init container in mode {mode}");
        assert_eq!(pod.containers.len(), 1, "{place}: one container");
        assert!(["agent", "gateway"].contains(&command), "{place}: runs {command:?}");
        let node_name = agent.env.iter().flatten().find(|e| e.name == "NODE_NAME").expect("NODE_NAME");
        let field = node_name.value_from.as_ref().and_then(|v| v.field_ref.as_ref()).expect("from the downward API");
        assert_eq!(field.field_path, "spec.nodeName", "{place}");
        for (probe, path) in [(&agent.liveness_probe, "/healthz"), (&agent.readiness_probe, "/readyz")] {
            let get = probe.as_ref().and_then(|p| p.http_get.as_ref()).unwrap_or_else(|| panic!("{place}: {path}"));
            assert_eq!(get.path.as_deref(), Some(path), "{place}");
        }
        let mounts = agent.volume_mounts.as_deref().unwrap_or_default();
        for v in volumes {
            assert!(mounts.iter().any(|m| m.name == v.name), "{place}: volume {} is mounted", v.name);
        }
    }
}

/// The gateway's source: the agent's resources plus the routing objects,
/// the TLS Secrets it watches, and the status it reads and patches (each
/// kind whose status it writes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_role_grants_exactly_what_the_gateway_uses() {
    use edgemesh_core::RoutingKind;
    use edgemesh_fake_apiserver::Resource;
    let o = load();
    let grants = granted(role(&o, GATEWAY), true);

    let api = FakeApiServer::start();
    let written = [
        (Resource::Gateways, RoutingKind::Gateway, "gateway.networking.k8s.io/v1", "Gateway"),
        (Resource::HttpRoutes, RoutingKind::HttpRoute, "gateway.networking.k8s.io/v1", "HTTPRoute"),
        (Resource::GrpcRoutes, RoutingKind::GrpcRoute, "gateway.networking.k8s.io/v1", "GRPCRoute"),
        (Resource::TlsRoutes, RoutingKind::TlsRoute, "gateway.networking.k8s.io/v1alpha2", "TLSRoute"),
        (Resource::TcpRoutes, RoutingKind::TcpRoute, "gateway.networking.k8s.io/v1alpha2", "TCPRoute"),
    ];
    for (resource, _, api_version, kind) in written {
        api.apply(
            resource,
            serde_json::json!({"apiVersion": api_version, "kind": kind,
            "metadata": {"name": "a", "namespace": "web"}, "spec": {}}),
        );
    }
    let RunningRegistry { sink, .. } = start_registry("127.241.0.0/16");
    let mut config = KubeSourceConfig::new(ApiEndpoint::Url(api.url()));
    config.routing = true;
    let source = KubeSource::new(config).await.expect("client");
    let shutdown = CancellationToken::new();
    let (_secrets, secrets_task) = source.tls_secrets(shutdown.clone());
    tokio::spawn(secrets_task);
    let writer = source.status_writer();
    for (_, kind, _, _) in written {
        let desired = serde_json::json!({"conditions": [{"type": "Accepted", "status": "True"}]});
        writer.write(kind, "web", "a", &desired, |_, d, _| d.clone()).await.expect("status written");
    }
    tokio::spawn(source.run(sink, shutdown.clone()));
    let watched = [
        "services",
        "endpointslices",
        "nodes",
        "destinationrules",
        "secrets",
        "gateways",
        "httproutes",
        "grpcroutes",
        "tlsroutes",
        "tcproutes",
        "referencegrants",
        "virtualservices",
    ];
    let used = used_until_watched(&api, &watched, shutdown).await;
    for plural in ["gateways", "httproutes", "grpcroutes", "tlsroutes", "tcproutes"] {
        let status = ("gateway.networking.k8s.io".to_string(), format!("{plural}/status"));
        assert_eq!(used.get(&status), Some(&STATUS_VERBS.iter().map(|v| v.to_string()).collect()), "{status:?}");
    }
    assert!(used.contains_key(&("networking.istio.io".to_string(), "gateways".to_string())), "{used:?}");

    // The legacy Endpoints are the agent's fallback, the gateway's too.
    let mut needed = used;
    needed.entry(("".to_string(), "endpoints".to_string())).or_default().extend(["list".into(), "watch".into()]);
    let granted_resources: BTreeSet<_> = grants.keys().collect();
    let used_resources: BTreeSet<_> = needed.keys().collect();
    assert_eq!(granted_resources, used_resources, "the gateway's ClusterRole covers exactly what it uses");
    for (resource, verbs) in &needed {
        let missing: Vec<_> = verbs.difference(&grants[resource]).collect();
        assert!(missing.is_empty(), "{resource:?}: the gateway needs {missing:?}");
    }
}
