//! HTTP-aware proxying through the real agent binary on loopback: a
//! service port named `http` is proxied per request, so one keep-alive
//! connection's requests reach every endpoint.

mod support;

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use support::*;

/// A Service whose port is named `http`, with one EndpointSlice of
/// `backends` on 127.0.0.1 (`name` must not be `web`, the helper's port name).
fn http_service(ns: &str, name: &str, port: u16, backends: &[u16]) -> String {
    service_yaml(ns, name, port, backends, "").replace("name: web\n", "name: http\n")
}

/// The backends (nginx's `backend-<i>` lines) twenty curl requests on one
/// keep-alive connection reach, counted, and the connections curl opened.
fn twenty_on_one_connection(url: &str) -> (HashMap<String, usize>, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--http1.1", "-w", "connects=%{num_connects}\n"])
        .args(std::iter::repeat_n(url, 20))
        .output()
        .expect("curl is installed");
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for line in out.lines().filter(|l| l.starts_with("backend-")) {
        *counts.entry(line.to_owned()).or_default() += 1;
    }
    assert_eq!(counts.values().sum::<usize>(), 20, "every request answered: {out}");
    assert_eq!(out.matches("connects=1").count(), 1, "one connection, kept alive: {out}");
    assert_eq!(out.matches("connects=0").count(), 19, "{out}");
    (counts, out)
}

#[test]
fn one_keep_alive_connection_reaches_both_endpoints_of_an_http_port() {
    let nginx = Nginx::start(2);
    let dir = tempfile::tempdir().unwrap();
    write_manifest(dir.path(), "api.yaml", &http_service("shop", "api", 80, &nginx.ports));
    let agent = Agent::start(dir.path());
    let vip = agent.vip("shop", "api").expect("api has a VIP");

    let (counts, _) = twenty_on_one_connection(&format!("http://{vip}/"));
    assert_eq!(counts.len(), 2, "both endpoints reached over one connection: {counts:?}\n{}", agent.log());
    assert!(counts.values().all(|&c| c == 10), "round robin per request: {counts:?}");

    let (status, metrics) = agent.try_get("/metrics").expect("the admin endpoint answers");
    assert_eq!(status, 200);
    let twos = edgemesh_test_support::scrape::sample(
        &metrics,
        "edgemesh_http_requests_total{service=\"shop/api\",port=\"80\",code=\"2xx\"}",
    );
    assert_eq!(twos, Some(20.0), "{metrics}");

    // The service goes: so do its series.
    std::fs::remove_file(dir.path().join("api.yaml")).unwrap();
    eventually(Duration::from_secs(10), "shop/api's HTTP series removed", || {
        let (_, metrics) = agent.try_get("/metrics")?;
        (!metrics.contains("edgemesh_http_requests_total{service=\"shop/api\"")).then_some(())
    });
    assert_eq!(agent.terminate().code(), Some(0), "SIGTERM stops the agent cleanly");
}

#[test]
fn with_http_disabled_an_http_port_is_proxied_per_connection() {
    let nginx = Nginx::start(2);
    let (dir, manifests) = manifest_dir();
    write_manifest(&manifests, "api.yaml", &http_service("shop", "api", 80, &nginx.ports));
    let config = dir.path().join("edgemesh.yaml");
    std::fs::write(&config, "http:\n  enabled: false\n").unwrap();
    let extra = vec!["--config".to_owned(), config.to_str().unwrap().to_owned()];
    let agent = Agent::start_with(&manifests, AgentOptions { extra, ..AgentOptions::default() });
    let vip = agent.vip("shop", "api").expect("api has a VIP");

    let (counts, out) = twenty_on_one_connection(&format!("http://{vip}/"));
    assert_eq!(counts.len(), 1, "one connection, one endpoint: {counts:?} {out}");
    let (_, metrics) = agent.try_get("/metrics").expect("the admin endpoint answers");
    assert!(!metrics.contains("edgemesh_http_requests_total{"), "no HTTP layer: {metrics}");
}
