//! The agent as a user runs it: the real binary on a manifests directory,
//! queried with `dig`, reached with `curl`, serving real nginx backends.

mod support;

use std::collections::HashMap;
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use support::*;

/// Writes a manifest atomically (a dotfile then a rename), as editors and
/// ConfigMap updates do, so the agent never reads half a file.
fn hits(url: &str, n: usize) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        let body = curl(url).unwrap_or_else(|| panic!("curl {url} failed"));
        *counts.entry(body.trim().to_owned()).or_default() += 1;
    }
    counts
}

#[test]
fn dns_and_round_robin_proxy_to_real_backends() {
    let nginx = Nginx::start(3);
    let dir = tempfile::tempdir().unwrap();
    write_manifest(dir.path(), "web.yaml", &service_yaml("shop", "web", 80, &nginx.ports, ""));
    let agent = Agent::start(dir.path());

    let vip = agent.vip("shop", "web").expect("web has a VIP");
    let answer = agent.dig(&["+short", "web.shop.svc.cluster.local"]);
    assert_eq!(answer.trim(), vip, "A record is the VIP");
    // Case does not matter in DNS.
    assert_eq!(agent.dig(&["+short", "WEB.Shop.svc.cluster.local"]).trim(), vip);

    let srv = agent.dig(&["+short", "SRV", "_web._tcp.web.shop.svc.cluster.local"]);
    assert!(srv.contains(" 80 web.shop.svc.cluster.local."), "SRV names the port and the service: {srv}");
    let ptr = agent.dig(&["+short", "-x", &vip]);
    assert_eq!(ptr.trim(), "web.shop.svc.cluster.local.");

    let nx = agent.dig(&["nosuch.shop.svc.cluster.local"]);
    assert!(nx.contains("status: NXDOMAIN"), "{nx}");
    assert!(nx.contains("SOA"), "NXDOMAIN carries an SOA: {nx}");

    let counts = hits(&format!("http://{vip}/"), 30);
    assert_eq!(counts.len(), 3, "every backend is used: {counts:?}");
    assert!(counts.values().all(|&c| c == 10), "round robin spreads evenly: {counts:?}");

    let dump = agent.services();
    let web = &dump["services"][0];
    assert_eq!(web["strategy"], "RoundRobin");
    assert_eq!(web["ports"][0]["backends"].as_array().unwrap().len(), 3);
    assert_eq!(agent.terminate().code(), Some(0), "SIGTERM stops the agent cleanly");
}

#[test]
fn random_strategy_spreads_roughly_evenly() {
    let nginx = Nginx::start(3);
    let dir = tempfile::tempdir().unwrap();
    let annotations = "  annotations:\n    edgemesh.io/lb-strategy: Random\n";
    write_manifest(dir.path(), "web.yaml", &service_yaml("default", "web", 8080, &nginx.ports, annotations));
    let agent = Agent::start(dir.path());
    let vip = agent.vip("default", "web").unwrap();
    let counts = hits(&format!("http://{vip}:8080/"), 90);
    assert_eq!(counts.len(), 3, "{counts:?}");
    // Expected 30 each; 12 is more than four standard deviations below.
    assert!(counts.values().all(|&c| c >= 12), "roughly even: {counts:?}");
    assert_eq!(agent.services()["services"][0]["strategy"], "Random");
}

#[test]
fn manifest_changes_apply_live() {
    let nginx = Nginx::start(4);
    let dir = tempfile::tempdir().unwrap();
    write_manifest(dir.path(), "web.yaml", &service_yaml("default", "web", 80, &nginx.ports[..3], ""));
    write_manifest(dir.path(), "api.yaml", &service_yaml("default", "api", 81, &nginx.ports[..1], ""));
    let agent = Agent::start(dir.path());
    let vip = agent.vip("default", "web").unwrap();
    let url = format!("http://{vip}/");

    // A fourth endpoint gets traffic within two seconds.
    write_manifest(dir.path(), "web.yaml", &service_yaml("default", "web", 80, &nginx.ports, ""));
    eventually(Duration::from_secs(2), "the fourth backend to get traffic", || {
        (hits(&url, 4).get("backend-3").copied().unwrap_or(0) > 0).then_some(())
    });

    // A broken file keeps its last good state and hurts nobody else.
    write_manifest(dir.path(), "web.yaml", "apiVersion: v1\nkind: Service\nmetadata: [broken\n");
    write_manifest(dir.path(), "extra.yaml", &service_yaml("default", "extra", 82, &nginx.ports[..1], ""));
    eventually(Duration::from_secs(2), "the new service next to the broken file", || agent.vip("default", "extra"));
    assert_eq!(agent.vip("default", "web").as_deref(), Some(vip.as_str()), "broken file keeps its services");
    assert_eq!(hits(&url, 4).len(), 4, "and their endpoints");
    assert!(agent.log().contains("web.yaml"), "the error names the file");

    // Deleting a service removes its name and closes its port.
    std::fs::remove_file(dir.path().join("web.yaml")).unwrap();
    eventually(Duration::from_secs(2), "web to leave DNS", || {
        agent.dig(&["web.default.svc.cluster.local"]).contains("NXDOMAIN").then_some(())
    });
    eventually(Duration::from_secs(2), "web's VIP to refuse connections", || {
        TcpStream::connect_timeout(&format!("{vip}:80").parse().unwrap(), Duration::from_millis(300))
            .is_err()
            .then_some(())
    });
    assert!(agent.vip("default", "api").is_some(), "other services stay");
}

#[test]
fn headless_service_answers_with_ready_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = "apiVersion: v1\nkind: Service\nmetadata:\n  name: db\n  namespace: data\nspec:\n  clusterIP: None\n  ports:\n  - name: redis\n    port: 6379\n---\n\
        apiVersion: v1\nkind: Endpoints\nmetadata:\n  name: db\n  namespace: data\nsubsets:\n- addresses:\n  - ip: 10.1.0.1\n    hostname: db-0\n  - ip: 10.1.0.2\n    hostname: db-1\n  notReadyAddresses:\n  - ip: 10.1.0.3\n  ports:\n  - name: redis\n    port: 6379\n";
    write_manifest(dir.path(), "db.yaml", manifest);
    let agent = Agent::start(dir.path());
    let mut addrs: Vec<String> =
        agent.dig(&["+short", "db.data.svc.cluster.local"]).lines().map(str::to_owned).collect();
    addrs.sort();
    assert_eq!(addrs, ["10.1.0.1", "10.1.0.2"], "ready endpoints only");
    assert_eq!(agent.dig(&["+short", "db-1.db.data.svc.cluster.local"]).trim(), "10.1.0.2");
    let srv = agent.dig(&["+short", "SRV", "_redis._tcp.db.data.svc.cluster.local"]);
    assert_eq!(srv.lines().count(), 2, "one SRV per ready endpoint: {srv}");
    assert!(agent.vip("data", "db").is_none(), "headless services have no VIP");
}

#[test]
fn outside_names_are_forwarded_to_the_upstream() {
    // The upstream is a second agent, authoritative for its own domain.
    let up_dir = tempfile::tempdir().unwrap();
    write_manifest(up_dir.path(), "svc.yaml", &service_yaml("remote", "api", 80, &[9], ""));
    let upstream = Agent::start_with(
        up_dir.path(),
        AgentOptions { extra: vec!["--cluster-domain".into(), "upstream.test".into()], ..Default::default() },
    );
    let up_vip = upstream.vip("remote", "api").unwrap();

    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start_with(
        dir.path(),
        AgentOptions {
            upstreams: vec![format!("127.0.0.1:{}", upstream.dns_port).parse().unwrap()],
            ..Default::default()
        },
    );
    assert_eq!(agent.dig(&["+short", "api.remote.svc.upstream.test"]).trim(), up_vip);
    let nx = agent.dig(&["nothing.remote.svc.upstream.test"]);
    assert!(nx.contains("NXDOMAIN"), "upstream NXDOMAIN is passed on: {nx}");

    // With the upstream gone, the answer comes from the cache while its TTL lasts...
    drop(upstream);
    assert_eq!(agent.dig(&["+short", "api.remote.svc.upstream.test"]).trim(), up_vip);
    // ...and an uncached name fails fast with SERVFAIL instead of hanging.
    let started = std::time::Instant::now();
    let fail = agent.dig(&["other.remote.svc.upstream.test"]);
    assert!(fail.contains("SERVFAIL"), "{fail}");
    assert!(started.elapsed() < Duration::from_secs(3), "SERVFAIL took {:?}", started.elapsed());
}

#[test]
fn starts_without_a_manifest_directory_and_waits_for_it() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("later");
    let agent = Agent::spawn_with(&dir, AgentOptions::default());
    // A missing directory is no answer (nothing cached either): not ready, and why.
    let (status, body) = eventually(Duration::from_secs(10), "/readyz to say why", || {
        agent.try_get("/readyz").filter(|(_, body)| body.contains("does not exist"))
    });
    assert_eq!(status, 503, "{body}");
    assert!(body.contains(&dir.display().to_string()), "names the directory: {body}");
    assert_eq!(agent.services()["count"], 0);
    assert_eq!(agent.try_get("/healthz").map(|r| r.0), Some(200));
    std::fs::create_dir(&dir).unwrap();
    write_manifest(&dir, "web.yaml", &service_yaml("default", "web", 80, &[9], ""));
    agent.wait_ready();
    eventually(Duration::from_secs(2), "the service from the new directory", || agent.vip("default", "web"));
    assert_eq!(agent.try_get("/readyz").map(|r| r.1).as_deref(), Some("ready (live)\n"));
}

#[test]
fn config_errors_name_the_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("edgemesh.yaml");
    std::fs::write(&cfg, "nodeName: n1\ndns:\n  listen: 127.0.0.1:1053\n  upstream: 127.0.0.1:53\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_edgemesh"))
        .args(["agent", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 4") && err.contains("upstream"), "{err}");
}

#[test]
fn bundled_example_config_is_valid() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/config.yaml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_edgemesh"))
        .args(["agent", "--print-config", "--config", example.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("nodeName: example-node"), "{printed}");
}

#[test]
fn nodes_from_manifests_are_listed_with_their_peer_ids() {
    let dir = tempfile::tempdir().unwrap();
    let node = "apiVersion: v1\nkind: Node\nmetadata:\n  name: edge-2\n  annotations:\n    edgemesh.io/peer-id: \" 12D3KooWPeerTwo \"\n\
                spec:\n  podCIDRs: [10.244.7.0/24]\n\
                status:\n  addresses:\n  - {type: Hostname, address: edge-2}\n  - {type: InternalIP, address: 192.168.7.2}\n";
    write_manifest(dir.path(), "nodes.yaml", node);
    let agent = Agent::start(dir.path());
    let (status, body) = agent.try_get("/nodes").expect("admin endpoint answers");
    assert_eq!(status, 200, "{body}");
    let dump: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        dump["nodes"],
        serde_json::json!([{"name": "edge-2", "peerId": "12D3KooWPeerTwo", "addresses": ["192.168.7.2"], "podCidrs": ["10.244.7.0/24"]}])
    );

    write_manifest(dir.path(), "nodes.yaml", "");
    eventually(Duration::from_secs(2), "the deleted node to leave /nodes", || {
        let (_, body) = agent.try_get("/nodes")?;
        let dump: serde_json::Value = serde_json::from_str(&body).ok()?;
        dump["nodes"].as_array()?.is_empty().then_some(())
    });
}
