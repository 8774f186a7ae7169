//! `edgemesh status` and `edgemesh check-config`, the real binary: status
//! against a real agent (on loopback with nginx and a closed port as
//! endpoints; and, for peers, two tunnel nodes in network namespaces),
//! check-config on files with real mistakes.

mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use support::mesh::{Node, lan_pair, service, wait_for_peer};
use support::netns::{NsNginx, require_root};
use support::{Agent, Nginx, curl, eventually_every, free_port, manifest_dir, service_yaml, write_manifest};

fn edgemesh(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edgemesh")).args(args).output().expect("run edgemesh")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `edgemesh status <args>` against `agent`, which must succeed: stdout.
fn status(agent: &Agent, args: &[&str]) -> String {
    let admin = agent.admin.to_string();
    let out = edgemesh(&[&["status", "--admin", &admin], args].concat());
    assert!(out.status.success(), "edgemesh status {args:?}: {}{}", stdout(&out), stderr(&out));
    stdout(&out)
}

/// The table line starting with `first` (its first column).
fn line<'a>(table: &'a str, first: &str) -> Option<&'a str> {
    table.lines().find(|l| l.split_whitespace().next() == Some(first))
}

/// The entry of `list` whose `key` is `value`.
fn find<'a>(list: &'a Value, key: &str, value: &str) -> &'a Value {
    list.as_array().and_then(|a| a.iter().find(|v| v[key] == value)).unwrap_or_else(|| panic!("{value} in {list}"))
}

#[test]
fn status_shows_services_endpoint_health_and_source() {
    let nginx = Nginx::start(1);
    let closed = free_port();
    let (dir, manifests) = manifest_dir();
    // Two endpoints: nginx on 127.0.0.1, and a port nothing listens on at
    // 127.0.0.2 (refused).
    let second = service_yaml("default", "web", 80, &[closed], "")
        .split_once("---\n")
        .map(|(_, slice)| slice.replace("web-0", "web-1").replace("127.0.0.1", "127.0.0.2"))
        .unwrap();
    let web = service_yaml("default", "web", 80, &[nginx.ports[0]], "") + "---\n" + &second;
    write_manifest(&manifests, "web.yaml", &web);
    // A service whose one endpoint is on another node.
    let api =
        service_yaml("shop", "api", 8080, &[nginx.ports[0]], "").replace("nodeName: test-node", "nodeName: node-b");
    write_manifest(&manifests, "api.yaml", &api);
    let agent = Agent::start(&manifests);
    let vip = support::eventually(Duration::from_secs(10), "web's VIP", || agent.vip("default", "web"));

    // The tables.
    let table = status(&agent, &[]);
    let web = line(&table, "default/web").unwrap_or_else(|| panic!("default/web in\n{table}"));
    let cells: Vec<&str> = web.split_whitespace().collect();
    assert_eq!(cells, ["default/web", &vip, "80/TCP", "RoundRobin", "2/2", "2/0"], "{table}");
    let api_line = line(&table, "shop/api").unwrap_or_else(|| panic!("shop/api in\n{table}"));
    assert!(api_line.ends_with("1/1     0/1"), "one endpoint, remote: {table}");
    assert!(table.contains("NAMESPACE/NAME   ADDRESSES"), "aligned upper-case headers: {table}");
    assert!(table.contains("Peers: the tunnel is off"), "{table}");
    let source = table.lines().skip_while(|l| !l.starts_with("READY")).nth(1).unwrap_or_default();
    assert!(source.starts_with("yes     live     no      connected"), "{table}");
    assert!(table.contains("REQUESTS   RESPONSES   CACHE HITS   CACHE MISSES   FORWARDED"), "{table}");

    // The same as JSON and as YAML.
    let json: Value = serde_json::from_str(&status(&agent, &["-o", "json"])).expect("status -o json is JSON");
    let yaml: Value = serde_saphyr::from_str(&status(&agent, &["-o", "yaml"])).expect("status -o yaml is YAML");
    for doc in [&json, &yaml] {
        let web = find(&doc["services"], "name", "web");
        assert_eq!((web["ready"].as_u64(), web["total"].as_u64(), web["local"].as_u64()), (Some(2), Some(2), Some(2)));
        assert_eq!(web["addresses"][0], vip.as_str());
        assert_eq!(find(&doc["services"], "name", "api")["remote"], 1);
        assert_eq!(doc["node"], "test-node");
        assert_eq!((&doc["source"]["ready"], &doc["source"]["origin"]), (&Value::Bool(true), &Value::from("live")));
        assert!(doc["peers"].is_null(), "the tunnel is off: {doc}");
        assert!(doc["dns"].is_object(), "{doc}");
    }
    // DNS counters are what /metrics has (none of a metric the agent does
    // not export): a query the agent answered is counted.
    agent.dig(&["web.default.svc.cluster.local", "A"]);
    let metrics = agent.try_get("/metrics").expect("/metrics").1;
    let dns: Value = serde_json::from_str::<Value>(&status(&agent, &["-o", "json"])).unwrap()["dns"].clone();
    if metrics.contains("edgemesh_dns_requests_total") {
        assert!(dns["requests"].as_u64() >= Some(1), "{dns}");
    } else {
        assert!(dns["requests"].is_null(), "{dns}");
    }

    // Connections through the VIP reach the closed port now and then
    // (round robin): it is ejected, the nginx endpoint stays healthy.
    let closed_addr = format!("127.0.0.2:{closed}");
    let healthy_addr = format!("127.0.0.1:{}", nginx.ports[0]);
    let detail = eventually_every(Duration::from_millis(100), Duration::from_secs(15), "an ejected endpoint", || {
        for _ in 0..2 {
            assert_eq!(curl(&format!("http://{vip}/")).as_deref(), Some("backend-0\n"), "the proxy retries the next");
        }
        let table = status(&agent, &["service", "default/web"]);
        line(&table, &closed_addr).is_some_and(|l| l.contains("ejected for")).then_some(table)
    });
    let row = line(&detail, &closed_addr).unwrap();
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[..5], [closed_addr.as_str(), "80/TCP", "test-node", "yes", "local"], "{detail}");
    assert!(row.contains("failure"), "{detail}");
    assert!(line(&detail, &healthy_addr).is_some_and(|l| l.ends_with("healthy")), "{detail}");
    assert!(line(&detail, "default/web").is_some(), "the service's own row heads it: {detail}");

    let json = eventually_every(Duration::from_millis(100), Duration::from_secs(15), "ejected in JSON", || {
        curl(&format!("http://{vip}/"));
        let doc: Value = serde_json::from_str(&status(&agent, &["service", "default/web", "-o", "json"])).unwrap();
        (find(&doc["endpoints"], "address", &closed_addr)["health"] == "ejected").then_some(doc)
    });
    let ejected = find(&json["endpoints"], "address", &closed_addr);
    assert!(ejected["consecutiveFailures"].as_u64() >= Some(1), "{json}");
    assert!(ejected["ejectedForSeconds"].as_f64().is_some_and(|s| s > 0.0 && s <= 30.0), "{json}");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!(ejected["ejectedUntil"].as_f64().is_some_and(|t| t > now - 1.0 && t <= now + 30.0), "{json}");
    assert_eq!(find(&json["endpoints"], "address", &healthy_addr)["health"], "healthy");
    assert_eq!(json["service"]["name"], "web");

    // The admin route behind it.
    let (code, body) = agent.try_get("/services/default/web").expect("the admin endpoint answers");
    let route: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (code, &route["nodeName"], &route["service"]["name"]),
        (200, &Value::from("test-node"), &Value::from("web"))
    );
    assert_eq!(route["ports"][0]["endpoints"].as_array().map(Vec::len), Some(2), "{route}");
    assert_eq!(
        agent.try_get("/services/default/nope").map(|(c, b)| (c, b.trim().to_owned())),
        Some((404, "no service default/nope".into()))
    );
    assert_eq!(agent.try_get("/services/default").map(|(c, _)| c), Some(400));

    // The admin address from the agent's config file.
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, format!("admin:\n  listen: {}\n", agent.admin)).unwrap();
    let out = edgemesh(&["status", "--config", config.to_str().unwrap(), "service", "shop/api"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("node-b"), "{}", stdout(&out));

    // Errors: an unknown service, a bad name, no agent.
    let admin = agent.admin.to_string();
    let out = edgemesh(&["status", "--admin", &admin, "service", "default/nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no service default/nope; `edgemesh status` lists them"), "{}", stderr(&out));
    let out = edgemesh(&["status", "--admin", &admin, "service", "web"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("NAMESPACE/NAME"), "{}", stderr(&out));
    let admin = agent.admin;
    agent.kill9();
    let out = edgemesh(&["status", "--admin", &admin.to_string()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains(&format!("at {admin}")) && err.contains("--admin ADDR sets the address"), "{err}");
    assert!(stdout(&out).is_empty(), "{}", stdout(&out));
}

#[test]
fn check_config_reports_every_problem_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    write_manifest(&manifests, "web.yaml", &service_yaml("default", "web", 80, &[8080], ""));
    let good = dir.path().join("good.yaml");
    std::fs::write(&good, "nodeName: n1\nmanifests:\n  dir: manifests\ndns:\n  upstreams: [127.0.0.1:53]\n").unwrap();
    let out = edgemesh(&["check-config", good.to_str().unwrap()]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).ends_with("(1 manifest file, 2 objects): no problems\n"), "{}", stdout(&out));

    // A misspelt key, a value validation refuses, and two broken manifests.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "nodeName: n1\nmanifests:\n  dir: manifests\nproxy:\n  conectTimeout: 2s\n").unwrap();
    write_manifest(
        &manifests,
        "broken-port.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: x\n  namespace: default\nspec:\n  ports:\n  - port: 99999\n",
    );
    write_manifest(&manifests, "broken-yaml.yml", "apiVersion: v1\nkind: Service\nmetadata:\n  name: [oops\n");
    let out = edgemesh(&["check-config", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    let at = |file: &Path, line: &str| format!("{}:{line}: ", file.display());
    assert_eq!(lines.len(), 4, "three problems and a summary:\n{text}");
    assert!(lines[0].starts_with(&at(&bad, "5:3")) && lines[0].contains("unknown field `conectTimeout`"), "{text}");
    assert!(
        lines[1].starts_with(&at(&manifests.join("broken-port.yaml"), "8")) && lines[1].contains("99999"),
        "{text}"
    );
    assert!(lines[2].starts_with(&at(&manifests.join("broken-yaml.yml"), "4")), "{text}");
    assert!(lines[3].ends_with("(3 manifest files, 2 objects): 3 problems"), "{text}");

    // Validation problems are all reported, each at its key's line.
    let invalid = dir.path().join("invalid.yaml");
    std::fs::write(
        &invalid,
        "nodeName: n1\nmanifests:\n  dir: missing\nproxy:\n  connectTimeout: 0s\ndns:\n  upstreamTimeout: 0s\n",
    )
    .unwrap();
    let out = edgemesh(&["check-config", invalid.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(text.contains(&format!("{}proxy.connectTimeout must be greater than zero", at(&invalid, "5:3"))), "{text}");
    assert!(text.contains(&format!("{}dns.upstreamTimeout must be greater than zero", at(&invalid, "7:3"))), "{text}");
    assert!(text.contains(&format!("{}manifests.dir ", at(&invalid, "3:3"))), "the missing directory: {text}");
    let out = edgemesh(&["check-config", dir.path().join("none.yaml").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("cannot read the config file"), "{}", stdout(&out));
}

/// Two tunnel nodes on a LAN: node-a's `edgemesh status` (on the default
/// admin address inside its namespace) lists node-b as a direct peer, and
/// node-b's service as remote.
#[test]
fn status_shows_tunnel_peers() {
    require_root();
    let (_lan, a, b): (_, Node, Node) = lan_pair();
    let _nginx = NsNginx::start(&b.ns, &["10.0.0.3:80"], "node-b");
    let cluster = [a.object("10.0.0.2"), b.object("10.0.0.3"), service("web", "TCP", 80, "node-b", "10.0.0.3")];
    a.manifests(&cluster);
    b.manifests(&cluster);
    let _agent_b = b.start(&[]);
    let agent_a = a.start(&[]);
    wait_for_peer(&agent_a, "node-b", "node-a to find node-b", |p| p["connection"] == "direct");

    let status = |args: &[&str]| {
        let out = a.ns.cmd(env!("CARGO_BIN_EXE_edgemesh")).arg("status").args(args).output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out)
    };
    let table = status(&[]);
    assert!(table.contains("Peers (1)\nNODE     PATH     RTT"), "{table}");
    let peer: Vec<&str> =
        line(&table, "node-b").unwrap_or_else(|| panic!("node-b in\n{table}")).split_whitespace().collect();
    assert_eq!(peer[1], "direct", "{table}");
    assert!(peer[2].ends_with("ms") || peer[2] == "-", "{table}");
    assert!(line(&table, "default/web").is_some_and(|l| l.ends_with("1/1     0/1")), "{table}");
    let json: Value = serde_json::from_str(&status(&["-o", "json"])).unwrap();
    let peer = find(&json["peers"], "node", "node-b");
    assert_eq!(peer["path"], "direct");
    assert_eq!(peer["peerId"], b.peer_id.as_str());
    assert_eq!(json["node"], "node-a");
}
