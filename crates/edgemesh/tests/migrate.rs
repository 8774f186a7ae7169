//! `edgemesh migrate --from-edgemesh` (issue #21) through the real binary:
//! EdgeMesh v1.17's own default agent config (fixtures/, taken from its
//! repository) converts key by key, every EdgeMesh key of a full config is
//! either translated or reported with its line, bad input fails naming
//! file:line, and the output starts an agent (as root: in node mode, in a
//! network namespace, reading a fake API) that answers DNS on EdgeMesh's
//! node-local address and takes a service's strategy from a DestinationRule.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use edgemesh_fake_apiserver::{FakeApiServer, Resource};
use serde_json::{Value, json};
use support::netns::{Netns, NsAgent, TcpRelay, require_root};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

const DEFAULT: &str = "edgemesh-v1.17.0-agent-configmap.yaml";
const HELM: &str = "edgemesh-v1.17.0-helm-agent-configmap.yaml";

fn migrate(file: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edgemesh"))
        .args(["migrate", "--from-edgemesh"])
        .arg(file)
        .args(extra)
        .output()
        .expect("run edgemesh migrate")
}

/// stdout and stderr of a successful run.
fn migrated(file: &Path, extra: &[&str]) -> (String, String) {
    let out = migrate(file, extra);
    let (stdout, stderr) = (String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap());
    assert!(out.status.success(), "migrate failed: {stderr}");
    (stdout, stderr)
}

/// The output line that sets `leaf` (indented under its section), with its comment.
fn line_of<'a>(yaml: &'a str, leaf: &str) -> &'a str {
    yaml.lines()
        .find(|l| l.trim_start().starts_with(&format!("{leaf}: ")))
        .unwrap_or_else(|| panic!("no {leaf} in:\n{yaml}"))
}

fn parsed(yaml: &str) -> Value {
    serde_saphyr::from_str(yaml).unwrap_or_else(|e| panic!("output is not YAML ({e}):\n{yaml}"))
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn edgemesh_v1_17_default_config_converts_key_by_key() {
    let (yaml, stderr) = migrated(&fixture(DEFAULT), &[]);
    let v = parsed(&yaml);
    // Exactly these keys: EdgeMesh's defaults, nothing invented.
    assert_eq!(
        v,
        json!({
            "source": "kube",
            "dns": {"listen": "169.254.96.16:53"},
            "intercept": {"mode": "nftables"},
            "tunnel": {"enabled": true, "mdns": true},
        }),
        "{yaml}"
    );
    let from = |leaf: &str, origin: &str| {
        let line = line_of(&yaml, leaf);
        assert!(line.contains(origin), "{leaf} should say {origin:?}: {line}");
    };
    from("source", "from kubeAPIConfig");
    from(
        "listen",
        "from commonConfig.bridgeDeviceIP (EdgeMesh default) and from modules.edgeDNS.listenPort (EdgeMesh default)",
    );
    from("listen", "169.254.96.17:53");
    from("mode", "from modules.edgeProxy.enable:");
    from("enabled", "from modules.edgeTunnel.enable");
    assert!(!line_of(&yaml, "enabled").contains("EdgeMesh default"), "edgeTunnel.enable is written in the fixture");
    from("mdns", "from modules.edgeTunnel");
    // EdgeMesh's PSK is on by default: ours needs a key of its own, so the
    // key is there, commented out, saying why.
    let psk = yaml.lines().find(|l| l.trim_start().starts_with("# pskFile: ")).expect("a commented pskFile");
    assert!(
        psk.contains("from modules.edgeTunnel.psk.enable (EdgeMesh default)") && psk.contains("not reused"),
        "{psk}"
    );
    // Not carried over, at the end of the output and on stderr.
    let notes = yaml.split("# Not carried over").nth(1).expect("the list of what did not carry over");
    for (key, why) in [
        ("modules.edgeTunnel.listenPort (EdgeMesh default)", "ours listens on 20007"),
        ("commonConfig.bridgeDeviceName (EdgeMesh default)", "ours is edge0"),
    ] {
        assert!(notes.lines().any(|l| l.contains(key) && l.contains(why)), "{key}: {why} missing from:\n{notes}");
        let key = key.split(' ').next().unwrap();
        assert!(stderr.lines().any(|l| l.contains(key) && l.contains(why)), "{key} missing from stderr:\n{stderr}");
    }
    assert_eq!(notes.lines().filter(|l| l.starts_with("# - ")).count(), 2, "{notes}");
    assert!(stderr.contains("translated 5 setting(s)"), "{stderr}");

    // With the PSK's new path given, it is set.
    let (yaml, _) = migrated(&fixture(DEFAULT), &["--psk-file", "/etc/edgemesh/psk/swarm.key"]);
    assert_eq!(parsed(&yaml)["tunnel"]["pskFile"], "/etc/edgemesh/psk/swarm.key");
}

#[test]
fn the_helm_charts_config_converts_alike_and_reports_edge_cni_with_its_line() {
    let (default, _) = migrated(&fixture(DEFAULT), &[]);
    let (helm, stderr) = migrated(&fixture(HELM), &[]);
    assert_eq!(parsed(&helm), parsed(&default));
    let file = fixture(HELM);
    let text = std::fs::read_to_string(&file).unwrap();
    let cni_line = text.lines().position(|l| l.trim() == "edgeCNI:").unwrap() + 1;
    let expected = format!("{}:{cni_line}: modules.edgeCNI: off here; EdgeCNI has no counterpart", file.display());
    assert!(stderr.contains(&expected), "{expected} missing from:\n{stderr}");
    assert!(helm.contains(&format!("# - modules.edgeCNI (line {cni_line}): ")), "{helm}");
}

/// Every EdgeMesh agent key written out (a bare config, not a ConfigMap).
const FULL: &str = "\
apiVersion: agent.edgemesh.config.kubeedge.io/v1alpha1
kind: EdgeMeshAgent
kubeAPIConfig:
  master: https://10.0.0.1:6443
  kubeConfig: /root/.kube/config
  qps: 100
  burst: 200
  metaServer:
    server: http://127.0.0.1:10551
    security:
      requireAuthorization: true
commonConfig:
  bridgeDeviceName: edgemesh1
  bridgeDeviceIP: 169.254.96.20
modules:
  edgeDNS:
    enable: true
    listenPort: 5300
    cacheDNS:
      enable: true
      upstreamServers: [10.96.0.10, \"10.96.0.11:5353\"]
      cacheTTL: 60
  edgeProxy:
    enable: true
    serviceFilterMode: FilterIfLabelDoesNotExists
    socks5Proxy:
      enable: true
      listenPort: 10801
    loadBalancer:
      consistentHash:
        partitionCount: 200
  edgeTunnel:
    enable: true
    listenPort: 30006
    transport: quic
    rendezvous: MY_MESH
    relayNodes:
    - nodeName: relay-1
      advertiseAddress: [203.0.113.7, \"2001:db8::7\"]
    enableIpfsLog: true
    psk:
      enable: true
      path: /etc/edgemesh/mypsk
    tunnelLimitConfig:
      tunnelBaseStreamIn: 5000
      tunnelPeerBaseStreamIn: 500
      tunnelPeerBaseStreamOut: 600
      tunnelBaseStreamOut: 9000
    lisenPort: 20009
    metricConfig:
      enable: true
  edgeGateway:
    enable: false
";

#[test]
fn every_key_of_a_full_config_is_translated_or_reported_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "edgemesh-agent.yaml", FULL);
    let (yaml, stderr) = migrated(&file, &["--psk-file", "/etc/edgemesh/psk/swarm.key"]);
    let v = parsed(&yaml);
    assert_eq!(v["kube"], json!({"api": "https://10.0.0.1:6443", "kubeconfig": "/root/.kube/config"}));
    assert_eq!(v["dns"]["listen"], "169.254.96.20:5300");
    assert_eq!(v["dns"]["upstreams"], json!(["10.96.0.10:53", "10.96.0.11:5353"]));
    assert_eq!(v["intercept"]["mode"], "nftables");
    assert_eq!(v["socks"], json!({"enabled": true, "listen": "169.254.96.20:10801"}));
    assert_eq!(v["logLevel"], "info,libp2p=debug");
    assert_eq!(
        v["tunnel"],
        json!({"enabled": true, "mdns": true, "pskFile": "/etc/edgemesh/psk/swarm.key", "maxInboundStreams": 5000,
               "maxInboundStreamsPerPeer": 500, "maxStreamsPerConnection": 600})
    );
    let relays = yaml.lines().find(|l| l.contains("# relays: ")).expect("the relays, commented out");
    assert!(
        relays.contains("/ip4/203.0.113.7/tcp/20007/p2p/<peer ID of relay-1>")
            && relays.contains("/ip6/2001:db8::7/tcp/20007/p2p/<peer ID of relay-1>"),
        "{relays}"
    );
    // Each EdgeMesh key without a counterpart, at its own line.
    let line = |needle: &str| FULL.lines().position(|l| l.trim_start().starts_with(needle)).unwrap() + 1;
    for (key, at, why) in [
        ("kubeAPIConfig.qps", line("qps:"), "no client-side rate limit"),
        ("kubeAPIConfig.metaServer.server", line("server:"), "--kube-api http://127.0.0.1:10551"),
        ("kubeAPIConfig.metaServer.security.requireAuthorization", line("requireAuthorization:"), "kube.kubeconfig"),
        ("commonConfig.bridgeDeviceName", line("bridgeDeviceName:"), "edgemesh1 stays EdgeMesh's"),
        ("modules.edgeDNS.cacheDNS.cacheTTL", line("cacheTTL:"), "keep their own TTLs"),
        ("modules.edgeProxy.serviceFilterMode", line("serviceFilterMode:"), "no counterpart"),
        ("modules.edgeProxy.loadBalancer.consistentHash.partitionCount", line("partitionCount:"), "160 virtual nodes"),
        ("modules.edgeTunnel.listenPort", line("listenPort: 30006"), "/ip4/0.0.0.0/tcp/30006"),
        ("modules.edgeTunnel.transport", line("transport:"), "--features quic"),
        ("modules.edgeTunnel.rendezvous", line("rendezvous:"), "edgemesh.io/peer-id"),
        (
            "modules.edgeTunnel.tunnelLimitConfig.tunnelBaseStreamOut",
            line("tunnelBaseStreamOut:"),
            "proxy.maxConnections",
        ),
        ("modules.edgeTunnel.lisenPort", line("lisenPort:"), "not an EdgeMesh v1.17 agent key"),
        ("modules.edgeTunnel.metricConfig", line("metricConfig:"), "/metrics"),
        ("modules.edgeGateway.enable", line("enable: false"), "not an EdgeMesh v1.17 agent key"),
    ] {
        let expected = format!("{}:{at}: {key}: ", file.display());
        assert!(
            stderr.lines().any(|l| l.starts_with(&expected) && l.contains(why)),
            "{expected}...{why} missing from:\n{stderr}"
        );
        assert!(yaml.contains(&format!("# - {key} (line {at}): ")), "{key} missing from the output:\n{yaml}");
    }
}

#[test]
fn bad_input_fails_naming_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let fails = |name: &str, text: &str, expected: &str| {
        let file = write(dir.path(), name, text);
        let out = migrate(&file, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name} was accepted");
        let expected = format!("{}:{expected}", file.display());
        assert!(stderr.contains(&expected), "{expected} missing from:\n{stderr}");
        assert!(out.stdout.is_empty(), "nothing is printed for bad input");
    };
    // A wrong type in the bare config: the key's line.
    fails(
        "type.yaml",
        "modules:\n  edgeTunnel:\n    enable: true\n    listenPort: twenty\n",
        "4: modules.edgeTunnel.listenPort: expected a number",
    );
    // Broken YAML inside the ConfigMap's block scalar: the line in the file.
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: edgemesh-agent-cfg\n  namespace: kubeedge\ndata:\n  \
              edgemesh-agent.yaml: |\n    modules:\n      edgeProxy:\n        enable: [true\n";
    fails("inner.yaml", cm, "10: data[\"edgemesh-agent.yaml\"]: ");
    // A ConfigMap without the config: the ConfigMap's line.
    fails(
        "nokey.yaml",
        "# c\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: other}\ndata: {psk: x}\n",
        "3: no ConfigMap here has data[\"edgemesh-agent.yaml\"]",
    );
    // A bad address.
    fails("ip.yaml", "commonConfig:\n  bridgeDeviceIP: 169.254.96\n", "2: commonConfig.bridgeDeviceIP: ");
    // Not YAML at all.
    fails("syntax.yaml", "modules: [\n", "1: ");
}

/// The converted default config, as a DaemonSet would run it: node mode in
/// a node's namespace, the API (a fake one, through a relay) on the command
/// line. It becomes ready and answers the service's cluster IP on
/// EdgeMesh's node-local address.
#[test]
fn the_converted_default_config_starts_an_agent_that_serves_dns_on_edgemeshs_address() {
    require_root();
    let (yaml, _) = migrated(&fixture(DEFAULT), &[]);
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), "config.yaml", &yaml);
    let api = FakeApiServer::start();
    api.apply(
        Resource::Services,
        json!({"metadata": {"name": "web", "namespace": "shop"},
               "spec": {"clusterIP": "10.96.7.7", "clusterIPs": ["10.96.7.7"], "ports": [{"name": "http", "port": 80}]}}),
    );
    let node = Netns::new("migrate");
    let relay = TcpRelay::start(&node, api.addr());
    let state = dir.path().join("state");
    let agent = NsAgent::start(
        &node,
        &[
            "--config",
            config.to_str().unwrap(),
            "--node-name",
            "edge-1",
            "--kube-api",
            &relay.url(),
            "--state-dir",
            state.to_str().unwrap(),
            "--dns-upstream",
            "127.0.0.1:9",
        ],
        Duration::from_secs(20),
    );
    let effective = agent.json("/config");
    assert_eq!(effective["intercept"]["mode"], "nftables", "{effective}");
    assert_eq!(effective["tunnel"]["enabled"], true);
    let out = node.exec(&["dig", "@169.254.96.16", "+short", "+time=2", "+tries=2", "web.shop.svc.cluster.local"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "10.96.7.7", "{}", agent.log());
    assert!(node.links().contains("edge0"), "{}", node.links());

    // EdgeMesh's DestinationRules keep working: one for web sets its
    // strategy in the running agent.
    api.apply(
        Resource::DestinationRules,
        json!({"metadata": {"name": "web", "namespace": "shop"},
               "spec": {"host": "web", "trafficPolicy": {"loadBalancer": {"consistentHash": {"httpHeaderName": "X-User"}}}}}),
    );
    let web = || {
        agent.json("/services")["services"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["namespace"] == "shop" && s["name"] == "web").cloned())
            .unwrap_or_default()
    };
    let web = support::eventually(Duration::from_secs(10), "the rule's strategy", || {
        Some(web()).filter(|w| w["strategy"] == "ConsistentHash")
    });
    assert_eq!(web["hashKey"], "header:X-User", "{web}");
}
