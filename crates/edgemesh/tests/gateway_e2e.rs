//! The edge gateway as its clients and operators see it (issue #17): the
//! real agent run as `edgemesh gateway`'s flag (`--gateway`) on node-a, the
//! site's uplink; Services with endpoints on node-a and on node-b (reached
//! through the tunnel); a client in a namespace of its own on the LAN,
//! using curl with `--resolve` as a client outside the mesh would (and a
//! WebSocket client).
//!
//! ```text
//!  client 10.0.0.9 ──LAN── node-a 10.0.0.2: gateway :18080 ─┬─ local endpoints 10.0.0.2:808x
//!                                                          └─ tunnel ── node-b 10.0.0.3: endpoint :8080
//! ```
//!
//! The objects come from the manifests directory (the Kubernetes source
//! carries the same objects: `crates/kube-source/tests`). As root.

mod support;

use std::time::{Duration, Instant};

use edgemesh_test_support::scrape::{promtool_check, sample};
use support::eventually;
use support::http::{ANSWER, HttpBackend, block_on_in, spec, tally};
use support::mesh::{Node, lan_pair, wait_for_peer};
use support::netns::{Lan, Netns, NsAgent};
use support::tls::{ca_and_certificates, self_signed};
use support::write_manifest;

const PORT: u16 = 18080;

/// The gateway's node, the other node, and a client on their LAN.
struct Site {
    _lan: Lan,
    a: Node,
    b: Node,
    client: Netns,
}

impl Site {
    fn new() -> Site {
        let (lan, a, b) = lan_pair();
        let client = Netns::new("client");
        lan.attach(&client, "eth0", &["10.0.0.9/24"]);
        Site { _lan: lan, a, b, client }
    }

    /// `services` on both nodes (with the Node objects), and `routing` as
    /// node-a's `gateway.yaml`.
    fn manifests(&self, services: &[String], routing: &str) {
        let mut cluster = vec![self.a.object("10.0.0.2"), self.b.object("10.0.0.3")];
        cluster.extend_from_slice(services);
        self.a.manifests(&cluster);
        self.b.manifests(&cluster);
        self.routing(routing);
    }

    fn routing(&self, objects: &str) {
        write_manifest(&self.a.path("manifests"), "gateway.yaml", objects);
    }

    /// node-b's agent, then node-a's with the gateway on, once they are peers.
    fn start(&self) -> (NsAgent, NsAgent) {
        let agent_b = self.b.start(&[]);
        let agent_a = self.a.start(&["--gateway"]);
        wait_for_peer(&agent_a, "node-b", "node-a to find node-b", |_| true);
        (agent_a, agent_b)
    }

    /// `curl` from the client to `host`:`port` (resolved to node-a): the
    /// status and body of each of `count` requests on one connection.
    fn get(&self, host: &str, port: u16, path: &str, count: usize) -> Vec<String> {
        let resolve = format!("{host}:{port}:10.0.0.2");
        let url = format!("http://{host}:{port}{path}");
        let mut args = vec!["curl", "-sS", "--max-time", "60", "--http1.1", "--resolve", &resolve];
        args.extend(["-w", "\n%{http_code}\n"]);
        let urls = vec![url.as_str(); count];
        args.extend(urls);
        let out = self.client.exec(&args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let lines: Vec<&str> = text.lines().collect();
        // Each answer: the body's lines, then its status on a line of its own.
        let mut answers = Vec::new();
        let mut body: Vec<&str> = Vec::new();
        for line in lines {
            if line.len() == 3 && line.chars().all(|c| c.is_ascii_digit()) {
                answers.push(format!("{line} {}", body.join(" ").trim()));
                body.clear();
            } else {
                body.push(line);
            }
        }
        answers
    }

    /// One request: `status body`.
    fn get_one(&self, host: &str, path: &str) -> String {
        self.get(host, PORT, path, 1).pop().unwrap_or_default()
    }
}

const GATEWAY: &str = "\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: site
  namespace: default
spec:
  gatewayClassName: edgemesh
  listeners:
  - name: web
    port: 18080
    protocol: HTTP
";

fn route(name: &str, hostname: &str, backends: &[(&str, u32)]) -> String {
    let refs: String = backends
        .iter()
        .map(|(service, weight)| format!("    - name: {service}\n      port: 80\n      weight: {weight}\n"))
        .collect();
    format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: {name}\n  namespace: default\n\
         spec:\n  parentRefs:\n  - name: site\n  hostnames: [\"{hostname}\"]\n  rules:\n  - backendRefs:\n{refs}"
    )
}

/// Services `web` (its endpoint on node-b), `api`, `v1` and `v2` (on node-a), each port `http` 80.
fn services() -> Vec<String> {
    vec![
        spec("web", "http", 80, &["10.0.0.3"], 8080).node("node-b").yaml(),
        spec("api", "http", 80, &["10.0.0.2"], 8081).node("node-a").yaml(),
        spec("v1", "http", 80, &["10.0.0.2"], 8082).node("node-a").yaml(),
        spec("v2", "http", 80, &["10.0.0.2"], 8083).node("node-a").yaml(),
    ]
}

fn backends(site: &Site) -> Vec<HttpBackend> {
    vec![
        HttpBackend::start(&site.b.ns, "10.0.0.3:8080", "web-on-b", ANSWER),
        HttpBackend::start(&site.a.ns, "10.0.0.2:8081", "api-on-a", ANSWER),
        HttpBackend::start(&site.a.ns, "10.0.0.2:8082", "v1", ANSWER),
        HttpBackend::start(&site.a.ns, "10.0.0.2:8083", "v2", ANSWER),
    ]
}

#[test]
fn hosts_route_to_services_on_both_nodes_weights_split_and_a_missing_service_is_reported() {
    let site = Site::new();
    let _backends = backends(&site);
    let routing = [
        GATEWAY.to_owned(),
        route("shop", "shop.example", &[("web", 1)]),
        route("edge", "*.edge.example", &[("api", 1)]),
        route("split", "split.example", &[("v1", 90), ("v2", 10)]),
        route("broken", "broken.example", &[("missing", 1)]),
    ]
    .concat();
    site.manifests(&services(), &routing);
    let (agent, _agent_b) = site.start();
    eventually(Duration::from_secs(10), "the gateway's listener", || {
        (site.get_one("shop.example", "/") == "200 web-on-b").then_some(())
    });

    // Host routing: exact (to node-b through the tunnel) and wildcard (local).
    assert_eq!(site.get("shop.example", PORT, "/cart", 10), vec!["200 web-on-b".to_owned(); 10]);
    assert_eq!(site.get_one("cam-1.edge.example", "/"), "200 api-on-a");
    assert_eq!(site.get_one("a.b.edge.example", "/"), "200 api-on-a", "a wildcard matches any depth of labels");
    assert!(site.get_one("edge.example", "/").starts_with("404"), "the wildcard needs a label before it");
    assert!(site.get_one("nobody.example", "/").starts_with("404"));

    // A WebSocket (an upgraded connection) to node-b's endpoint through the tunnel.
    block_on_in(&site.client, || async {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = "ws://10.0.0.2:18080/chat".into_client_request().unwrap();
        request.headers_mut().insert("host", "shop.example:18080".parse().unwrap());
        let (mut ws, response) = tokio_tungstenite::connect_async(request).await.expect("the WebSocket handshake");
        assert_eq!(response.status(), 101);
        for text in ["hello", "through the gateway", &"x".repeat(100_000)] {
            ws.send(Message::text(text)).await.unwrap();
            let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("echo in time");
            assert_eq!(echoed.unwrap().unwrap(), Message::text(text));
        }
        ws.close(None).await.unwrap();
    });

    // 90/10 over 2,000 requests on one connection.
    let answers = site.get("split.example", PORT, "/", 2000);
    assert_eq!(answers.len(), 2000);
    let bodies: Vec<String> = answers.iter().map(|a| a.trim_start_matches("200 ").to_owned()).collect();
    let counts = tally(&bodies, &["v1", "v2"]);
    assert_eq!(counts[0] + counts[1], 2000, "every request answered by v1 or v2: {:?}", &answers[..5]);
    assert!((1740..=1860).contains(&counts[0]), "v1 took {} of 2000 (90% ± 3%)", counts[0]);

    // A backend that does not exist: that route answers 500, the rest works,
    // and the status says why.
    assert!(site.get_one("broken.example", "/").starts_with("500"));
    let status = agent.json("/gateway");
    let broken = status["routes"].as_array().unwrap().iter().find(|r| r["name"] == "broken").expect("broken's status");
    let resolved = broken["parents"][0]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "ResolvedRefs");
    assert_eq!(resolved.map(|c| c["status"].clone()), Some("False".into()), "{broken}");
    assert_eq!(resolved.map(|c| c["reason"].clone()), Some("BackendNotFound".into()), "{broken}");
    let shop = status["routes"].as_array().unwrap().iter().find(|r| r["name"] == "shop").expect("shop's status");
    assert!(shop["parents"][0]["conditions"].as_array().unwrap().iter().all(|c| c["status"] == "True"), "{shop}");
    assert_eq!(status["ports"][0]["port"], PORT);
    assert_eq!(status["ports"][0]["listening"], format!("0.0.0.0:{PORT}"));

    // `edgemesh status gateway` prints the same.
    let out = site.a.ns.exec(&[env!("CARGO_BIN_EXE_edgemesh"), "status", "gateway"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let broken_row = text.lines().find(|l| l.starts_with("HTTPRoute default/broken")).unwrap_or_default();
    assert!(broken_row.contains("False") && broken_row.contains("BackendNotFound"), "{text}");
    assert!(text.lines().any(|l| l.starts_with("18080") && l.contains("default/site")), "{text}");
}

#[test]
fn a_route_added_while_running_is_live_within_a_second_without_touching_open_connections() {
    let site = Site::new();
    let _backends = backends(&site);
    site.manifests(&services(), &[GATEWAY.to_owned(), route("shop", "shop.example", &[("web", 1)])].concat());
    let (agent, _agent_b) = site.start();
    eventually(Duration::from_secs(10), "the gateway's listener", || {
        (site.get_one("shop.example", "/") == "200 web-on-b").then_some(())
    });
    assert!(site.get_one("new.example", "/").starts_with("404"));

    // A client holding a connection open across the change.
    let held = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &site.client.name,
            "curl",
            "-sS",
            "--http1.1",
            "--resolve",
            "shop.example:18080:10.0.0.2",
        ])
        .args(["--limit-rate", "2", "-o", "/dev/null", "-w", "%{http_code}", "http://shop.example:18080/slow"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();

    let added = Instant::now();
    site.routing(
        &[GATEWAY.to_owned(), route("shop", "shop.example", &[("web", 1)]), route("new", "new.example", &[("api", 1)])]
            .concat(),
    );
    let live = eventually(Duration::from_secs(5), "the new route", || {
        (site.get_one("new.example", "/") == "200 api-on-a").then(|| added.elapsed())
    });
    assert!(live < Duration::from_secs(1), "the new route took {live:?}");
    assert_eq!(site.get_one("shop.example", "/"), "200 web-on-b", "the other route is unchanged");
    let held = held.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&held.stdout), "200", "the connection open across the change completed");
    assert!(agent.log().matches("gateway listener serving").count() == 1, "the listener was not restarted");
}

/// One of EdgeMesh's example manifests (`fixture`, unchanged) on both
/// nodes (node-b serves its endpoint to the tunnel only for a Service it
/// knows; only node-a runs the gateway); the example's Deployment becomes
/// two endpoints of `hostname-lb-svc`, one per node, answering their names.
fn edgemesh_example(site: &Site, fixture: &str) -> [HttpBackend; 2] {
    let endpoints = [
        HttpBackend::start(&site.a.ns, "10.0.0.2:9376", "hostname-a", ANSWER),
        HttpBackend::start(&site.b.ns, "10.0.0.3:9376", "hostname-b", ANSWER),
    ];
    let slice = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: hostname-lb-svc-1\n  \
                 namespace: default\n  labels:\n    kubernetes.io/service-name: hostname-lb-svc\naddressType: IPv4\n\
                 endpoints:\n- addresses: [\"10.0.0.2\"]\n  nodeName: node-a\n- addresses: [\"10.0.0.3\"]\n  nodeName: node-b\n\
                 ports:\n- name: http-0\n  port: 9376\n  protocol: TCP\n"
        .to_owned();
    site.manifests(&[fixture.to_owned(), slice], "");
    endpoints
}

#[test]
fn edgemesh_s_own_gateway_example_works_unchanged() {
    let site = Site::new();
    let _endpoints = edgemesh_example(&site, include_str!("fixtures/edgemesh-v1.17.0-hostname-lb-random-gateway.yaml"));
    let (agent, _agent_b) = site.start();
    let first = eventually(Duration::from_secs(10), "the Istio gateway's listener", || {
        let answer = site.get("any.host", 23333, "/", 1).pop()?;
        answer.starts_with("200").then_some(answer)
    });
    assert!(first.ends_with("hostname-a") || first.ends_with("hostname-b"), "{first}");
    let answers = site.get("any.host", 23333, "/", 40);
    let bodies: Vec<String> = answers.iter().map(|a| a.trim_start_matches("200 ").to_owned()).collect();
    let counts = tally(&bodies, &["hostname-a", "hostname-b"]);
    assert_eq!(counts[0] + counts[1], 40, "{answers:?}");
    assert!(counts[0] > 0 && counts[1] > 0, "both nodes' endpoints answer, per request: {counts:?}");
    let status = agent.json("/gateway");
    assert_eq!(status["gateways"][0]["name"], "edgemesh-gateway", "{status}");
    assert_eq!(status["refused"], serde_json::json!([]), "{status}");
}

/// HTTPS (a certificate from `gateway.certificates`, rotated by rewriting
/// its files) and a TCPRoute to a Service on the other node, through the
/// real agent.
#[test]
fn https_with_a_rotated_certificate_and_a_tcp_route_across_the_tunnel() {
    let site = Site::new();
    let _backends = backends(&site);
    let tls = tempfile::tempdir().unwrap();
    self_signed(tls.path(), "first", "shop.example");
    self_signed(tls.path(), "second", "shop.example");
    std::fs::copy(tls.path().join("first.crt"), tls.path().join("shop.crt")).unwrap();
    std::fs::copy(tls.path().join("first.key"), tls.path().join("shop.key")).unwrap();
    let config = tls.path().join("config.yaml");
    let (crt, key) = (tls.path().join("shop.crt"), tls.path().join("shop.key"));
    std::fs::write(
        &config,
        format!(
            "gateway:\n  certificates:\n  - {{name: shop-tls, certFile: {}, keyFile: {}}}\n",
            crt.display(),
            key.display()
        ),
    )
    .unwrap();
    let gateway = "\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: site
  namespace: default
spec:
  gatewayClassName: edgemesh
  listeners:
  - name: tls
    port: 18443
    protocol: HTTPS
    hostname: shop.example
    tls:
      certificateRefs:
      - name: shop-tls
  - name: raw
    port: 18090
    protocol: TCP
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata:
  name: raw
  namespace: default
spec:
  parentRefs:
  - name: site
    sectionName: raw
  rules:
  - backendRefs:
    - name: web
      port: 80
";
    site.manifests(&services(), &[gateway.to_owned(), route("shop", "shop.example", &[("web", 1)])].concat());
    let agent_b = site.b.start(&[]);
    let agent_a = site.a.start(&["--gateway", "-c", config.to_str().unwrap()]);
    wait_for_peer(&agent_a, "node-b", "node-a to find node-b", |_| true);
    let https = |ca: &str| {
        let out = site.client.exec(&[
            "curl",
            "-sS",
            "--max-time",
            "5",
            "--cacert",
            tls.path().join(ca).to_str().unwrap(),
            "--resolve",
            "shop.example:18443:10.0.0.2",
            "https://shop.example:18443/",
        ]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    eventually(Duration::from_secs(10), "HTTPS with the first certificate", || {
        (https("first.crt") == "web-on-b\n").then_some(())
    });
    assert_eq!(https("second.crt"), "", "the second certificate is not served yet");

    // TCPRoute: the bytes of an HTTP request reach node-b's endpoint at L4.
    let raw = site.client.curl_with(&["--max-time", "5"], "http://10.0.0.2:18090/").unwrap_or_default();
    assert_eq!(raw, "web-on-b\n");

    // Rotation: the files rewritten; new handshakes get the new certificate.
    write_file_atomically(&key, &std::fs::read(tls.path().join("second.key")).unwrap());
    write_file_atomically(&crt, &std::fs::read(tls.path().join("second.crt")).unwrap());
    eventually(Duration::from_secs(5), "HTTPS with the second certificate", || {
        (https("second.crt") == "web-on-b\n").then_some(())
    });
    assert_eq!(https("first.crt"), "", "the first certificate is no longer served");

    // The admin endpoint's /metrics counts handshakes by how they ended:
    // a good one, a name no listener has a certificate for, plain HTTP to
    // the HTTPS port; and times the completed ones.
    let before = |result| handshakes(&agent_a, "default/site:18443", result);
    let (ok, no_certificate, protocol) = (before("ok"), before("no_certificate"), before("protocol"));
    let seconds = handshake_seconds_count(&agent_a, "default/site:18443");
    assert_eq!(https("second.crt"), "web-on-b\n");
    let wrong_name = site.client.exec(&[
        "curl",
        "-sS",
        "--max-time",
        "5",
        "-k",
        "--resolve",
        "other.example:18443:10.0.0.2",
        "https://other.example:18443/",
    ]);
    assert!(!wrong_name.status.success(), "no certificate for other.example");
    assert!(
        site.client.curl_with(&["--max-time", "5"], "http://10.0.0.2:18443/").is_none(),
        "plain HTTP is not served"
    );
    eventually(Duration::from_secs(5), "the handshakes counted", || {
        let now = |result| handshakes(&agent_a, "default/site:18443", result);
        (now("ok") == ok + 1.0 && now("no_certificate") == no_certificate + 1.0 && now("protocol") == protocol + 1.0)
            .then_some(())
    });
    assert_eq!(handshake_seconds_count(&agent_a, "default/site:18443"), seconds + 1.0);
    promtool_check(&scrape(&agent_a));
    let status = agent_a.json("/gateway");
    assert!(status["ports"].as_array().unwrap().iter().all(|p| p["listening"].is_string()), "{status}");
    drop(agent_b);
}

/// `edgemesh_gateway_tls_handshakes_total{listener,result}` in the agent's
/// `/metrics` (0 when not served yet).
fn handshakes(agent: &NsAgent, listener: &str, result: &str) -> f64 {
    let series = format!("edgemesh_gateway_tls_handshakes_total{{listener=\"{listener}\",result=\"{result}\"}}");
    sample(&scrape(agent), &series).unwrap_or(0.0)
}

/// How many completed handshakes `edgemesh_gateway_tls_handshake_seconds` observed.
fn handshake_seconds_count(agent: &NsAgent, listener: &str) -> f64 {
    let series = format!("edgemesh_gateway_tls_handshake_seconds_count{{listener=\"{listener}\"}}");
    sample(&scrape(agent), &series).unwrap_or(0.0)
}

fn scrape(agent: &NsAgent) -> String {
    agent.get("/metrics").expect("the admin endpoint serves /metrics")
}

fn write_file_atomically(path: &std::path::Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// EdgeMesh's TLS gateway example, unchanged: `tls.mode: MUTUAL` with
/// `credentialName: gw-secret` on port 23333. The Secret (standalone: its
/// files in `gateway.certificates`) holds the server certificate and the
/// CA client certificates must chain to, as EdgeMesh reads it. A client with
/// such a certificate is answered by both nodes' endpoints; one without is
/// refused; the cipher suites and TLS bounds the example sets are noted.
#[test]
fn edgemesh_s_own_tls_gateway_example_works_unchanged_with_client_certificates() {
    let site = Site::new();
    let fixture = include_str!("fixtures/edgemesh-v1.17.0-hostname-lb-random-gateway-tls.yaml");
    let _endpoints = edgemesh_example(&site, fixture);
    let tls = tempfile::tempdir().unwrap();
    ca_and_certificates(tls.path(), &["any.host", "client"]);
    let file = |name: &str| tls.path().join(name).to_str().unwrap().to_owned();
    let config = tls.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "gateway:\n  certificates:\n  - {{name: gw-secret, certFile: {}, keyFile: {}, caFile: {}}}\n",
            file("any.host.crt"),
            file("any.host.key"),
            file("ca.crt")
        ),
    )
    .unwrap();
    let _agent_b = site.b.start(&[]);
    let agent = site.a.start(&["--gateway", "-c", config.to_str().unwrap()]);
    wait_for_peer(&agent, "node-b", "node-a to find node-b", |_| true);
    let (ca, crt, key) = (file("ca.crt"), file("client.crt"), file("client.key"));
    let https = |client_certificate: bool| {
        let mut args = vec!["curl", "-sS", "--max-time", "5", "--cacert", &ca, "--resolve", "any.host:23333:10.0.0.2"];
        if client_certificate {
            args.extend(["--cert", &crt, "--key", &key]);
        }
        args.push("https://any.host:23333/");
        let out = site.client.exec(&args);
        (out.status.success(), String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    eventually(Duration::from_secs(10), "the TLS gateway", || https(true).0.then_some(()));
    let answers: Vec<String> = (0..20).map(|_| https(true).1).collect();
    let counts = tally(&answers, &["hostname-a", "hostname-b"]);
    assert_eq!(counts[0] + counts[1], 20, "{answers:?}");
    assert!(counts[0] > 0 && counts[1] > 0, "both nodes' endpoints answer: {counts:?}");
    let (ok, body) = https(false);
    assert!(!ok && body.is_empty(), "no client certificate, no answer: {body}");
    // Counted in /metrics as a client certificate refused.
    eventually(Duration::from_secs(5), "the refused handshake counted", || {
        (handshakes(&agent, "default/edgemesh-gateway:23333", "client_certificate") == 1.0).then_some(())
    });
    assert!(handshakes(&agent, "default/edgemesh-gateway:23333", "ok") >= 20.0);

    let status = agent.json("/gateway");
    assert_eq!(status["refused"], serde_json::json!([]), "{status}");
    let notes = status["notes"].to_string();
    assert!(notes.contains("cipherSuites") && notes.contains("ProtocolVersion"), "{status}");
}

/// A process holding a port in a namespace (until dropped).
struct PortHolder(std::process::Child);

impl PortHolder {
    fn hold(ns: &Netns, port: u16) -> PortHolder {
        let script = format!(
            "import socket,sys,time\ns=socket.socket()\ns.bind(('0.0.0.0',{port}))\ns.listen()\nprint('held',flush=True)\ntime.sleep(600)"
        );
        let mut child = std::process::Command::new("ip")
            .args(["netns", "exec", &ns.name, "python3", "-c", &script])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.as_mut().unwrap()), &mut line).unwrap();
        assert_eq!(line.trim(), "held", "the port {port} is held");
        PortHolder(child)
    }
}

impl Drop for PortHolder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The listener's `Programmed` condition in the agent's `/gateway`.
fn listener_programmed(agent: &NsAgent) -> Option<serde_json::Value> {
    let report = agent.json("/gateway");
    let listener = report["gateways"].as_array()?.first()?["listeners"].as_array()?.first()?.clone();
    listener["conditions"].as_array()?.iter().find(|c| c["type"] == "Programmed").cloned()
}

#[test]
fn a_listener_whose_port_is_taken_is_pending_and_served_once_the_port_is_free() {
    let site = Site::new();
    let _backends = backends(&site);
    site.manifests(&services(), &[GATEWAY.to_owned(), route("shop", "shop.example", &[("web", 1)])].concat());
    let holder = PortHolder::hold(&site.a.ns, PORT);
    let (agent, _agent_b) = site.start();

    let pending = eventually(Duration::from_secs(10), "the listener reported not programmed", || {
        listener_programmed(&agent).filter(|c| c["status"] == "False")
    });
    assert_eq!(pending["reason"], "Pending", "{pending}");
    let message = pending["message"].as_str().unwrap();
    assert!(message.contains("in use") || message.contains("Address already"), "{message}");
    let gateway = &agent.json("/gateway")["gateways"][0]["conditions"];
    let programmed = gateway.as_array().unwrap().iter().find(|c| c["type"] == "Programmed").unwrap();
    assert_eq!(programmed["status"], "False", "no listener of the Gateway is served: {programmed}");

    // The port freed: bound at the next retry, with no object changed.
    drop(holder);
    let freed = Instant::now();
    let answer = eventually(Duration::from_secs(15), "the gateway serving once the port is free", || {
        Some(site.get_one("shop.example", "/")).filter(|a| a.starts_with("200"))
    });
    assert_eq!(answer, "200 web-on-b");
    assert!(freed.elapsed() < Duration::from_secs(10), "bound {:?} after the port was freed", freed.elapsed());
    let programmed = listener_programmed(&agent).expect("Programmed");
    assert_eq!(programmed["status"], "True", "{programmed}");
    assert_eq!(agent.log().matches("gateway listener cannot bind").count(), 1, "warned once, not at every retry");
}

/// A Gateway with one TCP listener, port 18502.
const PLC_LISTENER: &str = "\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: site
  namespace: default
spec:
  gatewayClassName: edgemesh
  listeners:
  - name: plc
    port: 18502
    protocol: TCP
";

/// Its TCPRoute to Service `plc` port 502.
const PLC_ROUTE: &str = "\
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata:
  name: plc
  namespace: default
spec:
  parentRefs:
  - name: site
  rules:
  - backendRefs:
    - name: plc
      port: 502
";

/// The TCP listener and route to Service `plc`, whose endpoint is an echo
/// server on node-b (reached through the tunnel); both agents started,
/// node-a's with the gateway and `args`.
fn plc_site(args: &[&str]) -> (Site, support::netns::TcpEcho, NsAgent, NsAgent) {
    let site = Site::new();
    let echo = support::netns::TcpEcho::start(&site.b.ns, "10.0.0.3:9000");
    let plc = spec("plc", "modbus", 502, &["10.0.0.3"], 9000).node("node-b").yaml();
    site.manifests(&[plc], &format!("{PLC_LISTENER}{PLC_ROUTE}"));
    let agent_b = site.b.start(&[]);
    let agent_a = site.a.start(&[&["--gateway"][..], args].concat());
    wait_for_peer(&agent_a, "node-b", "node-a to find node-b", |_| true);
    (site, echo, agent_a, agent_b)
}

/// A connection from the client to the TCP listener.
fn plc_connect(site: &Site) -> std::io::Result<std::net::TcpStream> {
    support::netns::in_netns(&site.client.name, || std::net::TcpStream::connect("10.0.0.2:18502"))
}

/// One round trip on `stream`: whether the echo came back within a second.
fn echoes(stream: &mut std::net::TcpStream) -> bool {
    use std::io::{Read, Write};
    stream.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut back = [0u8; 11];
    stream.write_all(b"read coils\n").is_ok() && stream.read_exact(&mut back).is_ok() && &back == b"read coils\n"
}

/// A stream through the listener, once it echoes (the route is live).
fn plc_stream(site: &Site) -> std::net::TcpStream {
    eventually(Duration::from_secs(10), "the TCPRoute to node-b", || {
        let mut stream = plc_connect(site).ok()?;
        echoes(&mut stream).then_some(stream)
    })
}

/// L4 drain through the agent (`--drain-timeout 3s`): a long-lived TCP
/// stream through a TCPRoute to node-b's endpoint (through the tunnel)
/// keeps working after the route is deleted, until the grace, then is
/// closed; new connections are refused as soon as the change applies.
#[test]
fn a_tcp_stream_goes_on_for_drain_timeout_after_its_route_is_deleted() {
    use std::io::Read;
    let (site, _echo, agent_a, agent_b) = plc_site(&["--drain-timeout", "3s"]);
    let mut stream = plc_stream(&site);

    let deleted = Instant::now();
    site.routing(PLC_LISTENER);
    // New connections are refused once the change applies; the stream
    // still works meanwhile and until the grace is nearly over.
    eventually(Duration::from_secs(2), "new connections refused", || {
        plc_connect(&site).map_or(true, |mut s| !echoes(&mut s)).then_some(())
    });
    let mut trips = 0;
    while deleted.elapsed() < Duration::from_millis(2500) {
        assert!(echoes(&mut stream), "the stream works within the grace ({:?})", deleted.elapsed());
        trips += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(trips >= 10, "{trips}");
    // Closed at the grace's end (the change applied within a second or so).
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let end = stream.read(&mut [0u8; 16]);
    let after = deleted.elapsed();
    assert!(
        matches!(end, Ok(0)) || end.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "{end:?}"
    );
    assert!(
        after >= Duration::from_secs(3) && after < Duration::from_millis(5500),
        "closed {after:?} after the change"
    );
    assert!(agent_a.log().contains("drain grace is over"), "the log says so");
    drop(agent_b);
}

/// SIGTERM drains the gateway with the proxy: its listeners close at once
/// (a new connection is refused), an open TCP stream through it goes on,
/// and the agent waits for it: it exits once the client ends the stream,
/// well before `drainTimeout` (10 s).
#[test]
fn sigterm_closes_the_gateway_listeners_and_waits_for_their_connections() {
    let (site, _echo, agent_a, agent_b) = plc_site(&["--drain-timeout", "10s"]);
    let mut stream = plc_stream(&site);
    let log = agent_a.log_path();
    let terminated = Instant::now();
    let exit = std::thread::spawn(move || (agent_a.terminate(), terminated.elapsed()));
    eventually(Duration::from_secs(2), "the drain to start", || {
        std::fs::read_to_string(&log).unwrap_or_default().contains("gateway draining").then_some(())
    });
    let refused = plc_connect(&site);
    assert!(refused.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused), "{refused:?}");
    while terminated.elapsed() < Duration::from_millis(1500) {
        assert!(echoes(&mut stream), "the stream goes on during the drain ({:?})", terminated.elapsed());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!exit.is_finished(), "the agent waits for the gateway's connection");
    drop(stream);
    let (status, took) = exit.join().unwrap();
    assert!(status.success(), "{status}");
    assert!(took >= Duration::from_millis(1500) && took < Duration::from_secs(5), "exited {took:?} after SIGTERM");
    drop(agent_b);
}
