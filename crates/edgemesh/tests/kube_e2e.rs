//! The agent with `--kube-api` against a fake API server that speaks the
//! Kubernetes list/watch protocol: the real binary, queried with `dig`,
//! reached with `curl`, serving real nginx backends; and its persistent
//! cache across a `kill -9` while the API is down.

mod support;

use std::time::{Duration, Instant};

use edgemesh_fake_apiserver::{FakeApiServer, Resource};
use serde_json::{Value, json};
use support::*;

fn service(ns: &str, name: &str) -> Value {
    json!({
        "metadata": {"name": name, "namespace": ns},
        "spec": {"ports": [{"name": "web", "port": 80, "targetPort": "web"}]},
    })
}

fn slice(ns: &str, svc: &str, ports: &[u16]) -> Value {
    // Every backend is on 127.0.0.1 with its own port, and a slice has one
    // port list: one slice per backend.
    json!({
        "metadata": {"name": format!("{svc}-{}", ports[0]), "namespace": ns,
                     "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4",
        "ports": [{"name": "web", "port": ports[0]}],
        "endpoints": [{"addresses": ["127.0.0.1"], "nodeName": "test-node"}],
    })
}

fn kube_agent(api: &FakeApiServer, state_dir: Option<std::path::PathBuf>) -> Agent {
    let empty = tempfile::tempdir().unwrap();
    let opts = AgentOptions { extra: vec!["--kube-api".into(), api.url()], state_dir, ..Default::default() };
    Agent::start_with(empty.path(), opts)
}

fn backend_count(agent: &Agent, ns: &str, name: &str) -> Option<usize> {
    let dump = agent.services();
    let svc = dump["services"].as_array()?.iter().find(|s| s["namespace"] == ns && s["name"] == name)?.clone();
    Some(svc["ports"][0]["backends"].as_array().map_or(0, Vec::len))
}

/// A plain-HTTP API (metaServer) needs no CA certificates: the image is
/// built FROM scratch without any. `SSL_CERT_FILE` and `SSL_CERT_DIR` point
/// the system's roots at nothing here (before the fix the agent stopped with
/// "No CA certificates were loaded from the system").
#[test]
fn a_plain_http_api_needs_no_ca_certificates_on_the_system() {
    let api = FakeApiServer::start();
    api.apply(Resource::Services, service("shop", "web"));
    let empty = tempfile::tempdir().unwrap();
    let no_roots = ["env", "SSL_CERT_FILE=/dev/null", "SSL_CERT_DIR=/nonexistent"];
    let opts = AgentOptions {
        extra: vec!["--kube-api".into(), api.url()],
        wrapper: no_roots.map(String::from).to_vec(),
        ..Default::default()
    };
    let agent = Agent::start_with(empty.path(), opts);
    assert!(agent.vip("shop", "web").is_some(), "{}", agent.log());
}

#[test]
fn services_from_the_api_reach_dns_and_the_proxy_within_a_second() {
    let nginx = Nginx::start(2);
    let api = FakeApiServer::start();
    api.apply(Resource::Services, service("shop", "web"));
    api.apply(Resource::EndpointSlices, slice("shop", "web", &[nginx.ports[0]]));
    let agent = kube_agent(&api, None);

    let vip = agent.vip("shop", "web").expect("web has a VIP");
    assert_eq!(agent.dig(&["+short", "web.shop.svc.cluster.local"]).trim(), vip);
    assert_eq!(curl(&format!("http://{vip}/")).as_deref(), Some("backend-0\n"));
    let (_, ready) = agent.try_get("/readyz").unwrap();
    assert!(ready.contains("live"), "{ready}");

    // A second endpoint: within a second the proxy uses both.
    api.apply(Resource::EndpointSlices, slice("shop", "web", &[nginx.ports[1]]));
    eventually(Duration::from_secs(1), "the new endpoint", || {
        (backend_count(&agent, "shop", "web") == Some(2)).then_some(())
    });
    let mut seen: Vec<String> = (0..4).filter_map(|_| curl(&format!("http://{vip}/"))).collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen, ["backend-0\n", "backend-1\n"]);

    // A new service answers in DNS within a second; a deleted one is gone.
    api.apply(Resource::Services, service("shop", "cart"));
    eventually(Duration::from_secs(1), "cart in DNS", || {
        let a = agent.dig(&["+short", "cart.shop.svc.cluster.local"]);
        (!a.trim().is_empty()).then_some(())
    });
    api.delete(Resource::Services, "shop", "web");
    eventually(Duration::from_secs(1), "web gone from DNS", || {
        agent.dig(&["web.shop.svc.cluster.local"]).contains("status: NXDOMAIN").then_some(())
    });
    assert!(curl(&format!("http://{vip}/")).is_none(), "the VIP no longer proxies");
}

#[test]
fn killed_and_restarted_while_the_api_is_down_serves_from_the_cache() {
    let nginx = Nginx::start(1);
    let api = FakeApiServer::start();
    api.apply(Resource::Services, service("shop", "web"));
    api.apply(Resource::EndpointSlices, slice("shop", "web", &[nginx.ports[0]]));
    let state = tempfile::tempdir().unwrap();
    let agent = kube_agent(&api, Some(state.path().to_owned()));
    assert!(agent.vip("shop", "web").is_some());
    agent.kill9();

    api.stop();
    let started = Instant::now();
    let agent = kube_agent(&api, Some(state.path().to_owned()));
    let ready_after = started.elapsed();
    assert!(ready_after < Duration::from_secs(1), "ready from the cache after {ready_after:?}");
    let (status, ready) = agent.try_get("/readyz").unwrap();
    assert_eq!(status, 200);
    assert!(ready.contains("from cache"), "{ready}");
    assert_eq!(agent.services()["state"]["origin"], "cache");

    let vip = agent.vip("shop", "web").expect("web from the cache");
    assert_eq!(agent.dig(&["+short", "web.shop.svc.cluster.local"]).trim(), vip);
    assert_eq!(curl(&format!("http://{vip}/")).as_deref(), Some("backend-0\n"));

    // The API comes back without `web`: the agent goes live and drops it.
    api.delete(Resource::Services, "shop", "web");
    api.apply(Resource::Services, service("shop", "cart"));
    api.restart();
    eventually(Duration::from_secs(5), "live state from the API", || {
        let dump = agent.services();
        (dump["state"]["origin"] == "live" && agent.vip("shop", "web").is_none() && agent.vip("shop", "cart").is_some())
            .then_some(())
    });
}

#[test]
fn a_truncated_cache_file_is_survived() {
    let api = FakeApiServer::start();
    api.apply(Resource::Services, service("shop", "web"));
    let state = tempfile::tempdir().unwrap();
    let agent = kube_agent(&api, Some(state.path().to_owned()));
    assert!(agent.vip("shop", "web").is_some());
    agent.kill9();
    let file = state.path().join("cache.redb");
    let len = std::fs::metadata(&file).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&file).unwrap().set_len(len / 2).unwrap();

    let agent = kube_agent(&api, Some(state.path().to_owned()));
    assert!(agent.vip("shop", "web").is_some(), "served from the API");
    let problem = agent.services()["state"]["cacheProblem"].as_str().unwrap_or_default().to_owned();
    assert!(problem.contains("moved it to"), "reported: {problem:?}");
    assert!(agent.log().contains("cache file was unusable"), "logged");
}

#[test]
fn an_api_outage_after_sync_is_reported_stale_and_live_again_after() {
    let api = FakeApiServer::start();
    api.apply(Resource::Services, service("shop", "web"));
    let agent = kube_agent(&api, None);
    eventually(Duration::from_secs(5), "live and connected", || {
        let (status, body) = agent.try_get("/readyz")?;
        (status == 200 && body == "ready (live)\n").then_some(())
    });
    let state = agent.services()["state"].clone();
    assert_eq!((&state["stale"], &state["source"]["connection"]), (&json!(false), &json!("connected")), "{state}");

    // The API goes away: still ready (autonomy), but the state is stale.
    api.stop();
    let ready = eventually(Duration::from_secs(5), "/readyz to say stale", || {
        let (status, body) = agent.try_get("/readyz")?;
        assert_eq!(status, 200, "serving stale state is still ready: {body}");
        body.starts_with("ready (stale: source disconnected for ").then_some(body)
    });
    assert!(ready.contains(&api.url()) && ready.contains("; serving state last updated "), "{ready}");
    let state = agent.services()["state"].clone();
    assert_eq!(state["origin"], "live", "{state}");
    assert_eq!(state["stale"], true, "{state}");
    assert_eq!(state["source"]["connection"], "disconnected", "{state}");
    assert!(state["source"]["disconnectedSeconds"].is_u64(), "{state}");
    assert!(state["source"]["lastError"].as_str().is_some_and(|e| e.contains(&api.url())), "{state}");
    assert!(agent.vip("shop", "web").is_some(), "the last known state is still served");

    // Back: live again, and the outage was logged once each way.
    api.restart();
    eventually(Duration::from_secs(20), "live again", || {
        let (status, body) = agent.try_get("/readyz")?;
        (status == 200 && body == "ready (live)\n").then_some(())
    });
    let state = agent.services()["state"].clone();
    assert_eq!((&state["stale"], &state["source"]["connection"]), (&json!(false), &json!("connected")), "{state}");
    assert!(state["source"].get("lastError").is_none(), "{state}");
    let log = agent.log();
    assert_eq!(log.matches("lost the Kubernetes API").count(), 1, "one warning:\n{log}");
    assert_eq!(log.matches("the Kubernetes API answers again").count(), 1, "one recovery:\n{log}");
}

/// The edge gateway with the Kubernetes source (issue #17): its objects
/// come from the API, requests are routed to a real nginx, and each
/// Gateway's and HTTPRoute's status is written back (conditions with
/// `observedGeneration` and `lastTransitionTime`, listeners with their
/// attached routes), another controller's entry in a route's `parents`
/// kept, and a missing backend reported while the rest works.
#[test]
fn the_gateway_routes_api_objects_and_writes_their_status_back() {
    let nginx = Nginx::start(1);
    let api = FakeApiServer::start();
    api.apply(Resource::Services, service("shop", "web"));
    api.apply(Resource::EndpointSlices, slice("shop", "web", &nginx.ports));
    let (port, raw_port) = (free_port(), free_port());
    api.apply(
        Resource::Gateways,
        json!({"metadata": {"name": "site", "namespace": "shop", "generation": 4},
               "spec": {"gatewayClassName": "edgemesh",
                        "listeners": [{"name": "web", "port": port, "protocol": "HTTP"},
                                      {"name": "raw", "port": raw_port, "protocol": "TCP"}]}}),
    );
    api.apply(
        Resource::TcpRoutes,
        json!({"metadata": {"name": "raw", "namespace": "shop"},
               "spec": {"parentRefs": [{"name": "site", "sectionName": "raw"}],
                        "rules": [{"backendRefs": [{"name": "web", "port": 80}]}]}}),
    );
    let route = |name: &str, host: &str, service: &str| {
        json!({"metadata": {"name": name, "namespace": "shop", "generation": 2},
               "spec": {"parentRefs": [{"name": "site"}], "hostnames": [host],
                        "rules": [{"backendRefs": [{"name": service, "port": 80}]}]}})
    };
    let mut front = route("front", "shop.example", "web");
    let foreign = json!({"parentRef": {"name": "elsewhere"}, "controllerName": "example.com/other", "conditions": []});
    front["status"] = json!({"parents": [foreign.clone()]});
    api.apply(Resource::HttpRoutes, front);
    api.apply(Resource::HttpRoutes, route("broken", "broken.example", "missing"));

    let empty = tempfile::tempdir().unwrap();
    let extra = ["--kube-api", &api.url(), "--gateway", "--gateway-listen", "127.0.0.1"].map(String::from).to_vec();
    let agent = Agent::start_with(empty.path(), AgentOptions { extra, ..Default::default() });
    let get = |host: &str| {
        let resolve = format!("{host}:{port}:127.0.0.1");
        let out = std::process::Command::new("curl")
            .args(["-sS", "--max-time", "5", "--resolve", &resolve, "-w", " %{http_code}"])
            .arg(format!("http://{host}:{port}/"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    eventually(Duration::from_secs(10), "the route to nginx", || {
        (get("shop.example") == "backend-0\n 200").then_some(())
    });
    assert!(get("broken.example").ends_with(" 500"));

    let condition = |status: &Value, kind: &str| -> Option<Value> {
        status["conditions"].as_array()?.iter().find(|c| c["type"] == kind).cloned()
    };
    let gateway = eventually(Duration::from_secs(10), "the Gateway's status", || {
        let status = api.object(Resource::Gateways, "shop", "site")?["status"].clone();
        condition(&status, "Programmed").filter(|c| c["status"] == "True").map(|_| status)
    });
    let accepted = condition(&gateway, "Accepted").expect("Accepted");
    assert_eq!((accepted["status"].clone(), accepted["observedGeneration"].clone()), (json!("True"), json!(4)));
    assert!(accepted["lastTransitionTime"].as_str().is_some_and(|t| t.ends_with('Z')), "{accepted}");
    assert_eq!(gateway["listeners"][0]["name"], "web");
    assert_eq!(gateway["listeners"][0]["attachedRoutes"], 2, "{gateway}");

    let parents = eventually(Duration::from_secs(10), "the route's status", || {
        let parents = api.object(Resource::HttpRoutes, "shop", "front")?["status"]["parents"].as_array()?.clone();
        (parents.len() == 2).then_some(parents)
    });
    assert_eq!(parents[0], foreign, "another controller's entry is kept");
    assert_eq!(parents[1]["controllerName"], "edgemesh.io/gateway-controller");
    assert!(parents[1]["conditions"].as_array().unwrap().iter().all(|c| c["status"] == "True"), "{parents:?}");
    let broken = eventually(Duration::from_secs(10), "the broken route's status", || {
        api.object(Resource::HttpRoutes, "shop", "broken")?["status"]["parents"].as_array()?.first().cloned()
    });
    let resolved = condition(&broken, "ResolvedRefs").expect("ResolvedRefs");
    assert_eq!((resolved["status"].clone(), resolved["reason"].clone()), (json!("False"), json!("BackendNotFound")));

    // A TCPRoute's status too, and its connections reach nginx at L4.
    let raw = eventually(Duration::from_secs(10), "the TCPRoute's status", || {
        api.object(Resource::TcpRoutes, "shop", "raw")?["status"]["parents"].as_array()?.first().cloned()
    });
    assert_eq!(raw["parentRef"]["sectionName"], "raw", "{raw}");
    assert!(raw["conditions"].as_array().unwrap().iter().all(|c| c["status"] == "True"), "{raw}");
    assert_eq!(curl(&format!("http://127.0.0.1:{raw_port}/")).as_deref(), Some("backend-0\n"));

    // Written once: nothing changes, so nothing more is patched.
    let patches = || api.request_log().iter().filter(|r| r.starts_with("PATCH")).count();
    let written = patches();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(patches(), written, "{:?}", api.request_log());
    drop(agent);
}

/// A `kubernetes.io/tls` Secret as the API serves it (data base64).
fn tls_secret(ns: &str, name: &str, crt: &[u8], key: &[u8]) -> Value {
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    json!({"metadata": {"name": name, "namespace": ns}, "type": "kubernetes.io/tls",
           "data": {"tls.crt": b64(crt), "tls.key": b64(key)}})
}

/// A self-signed certificate and key for `host`, PEM.
fn self_signed(host: &str) -> (Vec<u8>, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    support::tls::self_signed(dir.path(), "cert", host);
    (std::fs::read(dir.path().join("cert.crt")).unwrap(), std::fs::read(dir.path().join("cert.key")).unwrap())
}

/// HTTPS with the certificate of a `kubernetes.io/tls` Secret from the API:
/// served once the Secret is there (the listener says why not before), and
/// a Secret changed in the API is served to new handshakes.
#[test]
fn the_gateway_serves_https_with_a_tls_secret_from_the_api_and_follows_its_changes() {
    let nginx = Nginx::start(1);
    let api = FakeApiServer::start();
    api.apply(Resource::Services, service("shop", "web"));
    api.apply(Resource::EndpointSlices, slice("shop", "web", &nginx.ports));
    let port = free_port();
    api.apply(
        Resource::Gateways,
        json!({"metadata": {"name": "site", "namespace": "shop"},
               "spec": {"gatewayClassName": "edgemesh", "listeners": [{"name": "tls", "port": port, "protocol": "HTTPS",
                        "tls": {"certificateRefs": [{"name": "shop-tls"}]}}]}}),
    );
    api.apply(
        Resource::HttpRoutes,
        json!({"metadata": {"name": "front", "namespace": "shop"},
               "spec": {"parentRefs": [{"name": "site"}], "rules": [{"backendRefs": [{"name": "web", "port": 80}]}]}}),
    );
    let empty = tempfile::tempdir().unwrap();
    let extra = ["--kube-api", &api.url(), "--gateway", "--gateway-listen", "127.0.0.1"].map(String::from).to_vec();
    let agent = Agent::start_with(empty.path(), AgentOptions { extra, ..Default::default() });
    let listener_problem = || {
        let status = api.object(Resource::Gateways, "shop", "site")?["status"]["listeners"][0]["conditions"].clone();
        status.as_array()?.iter().find(|c| c["type"] == "ResolvedRefs" && c["status"] == "False").cloned()
    };
    let problem = eventually(Duration::from_secs(10), "the missing Secret reported", listener_problem);
    assert_eq!(problem["reason"], "InvalidCertificateRef", "{problem}");

    let dir = tempfile::tempdir().unwrap();
    let https = |crt: &[u8]| {
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, crt).unwrap();
        let resolve = format!("shop.example:{port}:127.0.0.1");
        let out = std::process::Command::new("curl")
            .args(["-sS", "--max-time", "5", "--cacert", ca.to_str().unwrap(), "--resolve", &resolve])
            .arg(format!("https://shop.example:{port}/"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let (first_crt, first_key) = self_signed("shop.example");
    api.apply(Resource::Secrets, tls_secret("shop", "shop-tls", &first_crt, &first_key));
    eventually(Duration::from_secs(10), "HTTPS with the Secret's certificate", || {
        (https(&first_crt) == "backend-0\n").then_some(())
    });

    let (second_crt, second_key) = self_signed("shop.example");
    api.apply(Resource::Secrets, tls_secret("shop", "shop-tls", &second_crt, &second_key));
    eventually(Duration::from_secs(10), "HTTPS with the changed Secret's certificate", || {
        (https(&second_crt) == "backend-0\n").then_some(())
    });
    assert_eq!(https(&first_crt), "", "the old certificate is no longer served");
    assert!(listener_problem().is_none(), "the listener's ResolvedRefs is True again");
    drop(agent);
}
