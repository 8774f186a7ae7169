//! Metrics as an operator collects them: two nodes running the real agent
//! with the tunnel, a real client and backend, and a real Prometheus server
//! (Debian's `prometheus`) scraping both agents every second; `promtool
//! check metrics` on what each serves; the Grafana dashboard in
//! `deploy/grafana/` checked against the names the agents serve.
//!
//! ```text
//!  node-a 10.0.0.2 ─┐  curl -> web's VIP -> tunnel -> node-b's nginx;
//!  node-b 10.0.0.3 ─┼─ bridge    datagrams -> echo's VIP -> node-b's UDP echo;
//!                   │            dig -> node-a's DNS (127.0.0.1:15053), which
//!                   │            forwards edge-b.local to node-b's (10.0.0.3:53)
//!  mon    10.0.0.9 ─┘  prometheus (127.0.0.1:9090 in mon) scrapes
//!                      10.0.0.2:15020 and 10.0.0.3:15020
//! ```
//!
//! The end-to-end test needs root (namespaces); the dashboard's own checks
//! do not.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use edgemesh_test_support::scrape::promtool_check;
use support::mesh::{Node, lan_pair, service, wait_for_peer};
use support::metric_names::{
    LIBP2P_PREFIX, OUTSIDE_CONTRACT, Section, contract_section, dashboard, dashboard_queries, metric_names_in,
    served_names,
};
use support::netns::{Netns, NsAgent, NsNginx, UdpEcho, require_root, udp_stream};
use support::prometheus::{Prometheus, require_prometheus};

const A_ADMIN: &str = "10.0.0.2:15020";
const B_ADMIN: &str = "10.0.0.3:15020";
/// node-a's DNS server (the agent's default without interception).
const DNS_SERVER: &str = "dns://127.0.0.1:15053";
/// Connections made through the service, one HTTP request each.
const CONNECTIONS: u64 = 20;
/// node-b's DNS server, node-a's upstream, and its cluster domain (so
/// node-a forwards names in it and node-b answers them).
const B_DNS: &str = "10.0.0.3:53";
const B_DOMAIN: &str = "edge-b.local";
/// DNS queries sent to node-a: proto, type, the service's name in which
/// cluster domain, the zone node-a counts it in (its own, or `.` when
/// forwarded), how many. Forwarded names are asked once each: node-a caches
/// what its upstream answers.
const QUERIES: &[(&str, &str, &str, &str, u64)] = &[
    ("udp", "A", "web.default.svc.cluster.local", "cluster.local.", 5),
    ("udp", "AAAA", "web.default.svc.cluster.local", "cluster.local.", 3),
    ("tcp", "A", "web.default.svc.cluster.local", "cluster.local.", 2),
    ("udp", "A", "web.default.svc.edge-b.local", ".", 1),
    ("udp", "A", "echo.default.svc.edge-b.local", ".", 1),
];
/// Datagrams sent through the UDP service, from one socket (one session).
const DATAGRAMS: u32 = 10;
/// How long counters may take to reach Prometheus (scraped every second).
const SETTLE: Duration = Duration::from_secs(20);

/// What the test sent through node-a, as the client saw it.
#[derive(Debug, Default)]
struct Traffic {
    connections: u64,
    /// UDP sessions (client sockets) through the echo service.
    udp_sessions: u64,
    /// Bytes client -> endpoint (curl's request sizes).
    sent: u64,
    /// Bytes endpoint -> client (response headers and bodies).
    received: u64,
    /// DNS queries by (proto, type, zone).
    queries: BTreeMap<(&'static str, &'static str, &'static str), u64>,
}

#[test]
fn a_real_prometheus_scrapes_every_agent_and_counts_the_traffic() {
    require_root();
    require_prometheus();
    let (lan, a, b) = lan_pair();
    let mon = Netns::new("mon");
    lan.attach(&mon, "eth0", &["10.0.0.9/24"]);
    // A body of a size that makes the byte counts worth checking.
    let body = format!("node-b {}", "x".repeat(2000));
    let _nginx = NsNginx::start(&b.ns, &["10.0.0.3:80"], &body);
    let _echo = UdpEcho::start(&b.ns, "10.0.0.3:5300");
    let cluster = [
        a.object("10.0.0.2"),
        b.object("10.0.0.3"),
        service("web", "TCP", 80, "node-b", "10.0.0.3"),
        service("echo", "UDP", 5300, "node-b", "10.0.0.3"),
    ];
    a.manifests(&cluster);
    b.manifests(&cluster);
    // node-b's DNS on its LAN address answers node-a (its upstream) only.
    let agent_b = b.start(&[
        "--admin-listen",
        B_ADMIN,
        "--dns-listen",
        B_DNS,
        "--cluster-domain",
        B_DOMAIN,
        "--dns-allowed-client",
        "10.0.0.2/32",
    ]);
    let agent_a = start_node_a(&a);
    let prometheus = Prometheus::start(&mon, &[A_ADMIN, B_ADMIN]);
    wait_for_peer(&agent_a, "node-b", "node-a to reach node-b", |p| p["connection"] == "direct");

    let traffic = send_traffic(&a.ns, &agent_a, body.len() as u64 + 1);

    // What each agent serves passes promtool (the classic text format).
    let expositions: Vec<String> = [&agent_a, &agent_b].iter().map(|agent| metrics(agent)).collect();
    for text in &expositions {
        promtool_check(text);
    }

    // Prometheus (which asks for OpenMetrics) scrapes both agents.
    let instances = [A_ADMIN, B_ADMIN];
    support::eventually_every(Duration::from_millis(500), Duration::from_secs(60), "up == 1 for both agents", || {
        let up = prometheus.query(r#"up{job="edgemesh"}"#);
        instances.iter().all(|i| up.iter().any(|s| s.label("instance") == *i && s.value == 1.0)).then_some(())
    });
    for sample in prometheus.query(r#"process_resident_memory_bytes{job="edgemesh"}"#) {
        let mib = sample.value / (1024.0 * 1024.0);
        assert!((1.0..1024.0).contains(&mib), "{}: resident memory {mib:.1} MiB", sample.label("instance"));
    }
    let build_info = prometheus.query(r#"edgemesh_build_info{job="edgemesh"}"#);
    for instance in instances {
        let info = build_info.iter().find(|s| s.label("instance") == instance);
        let info = info.unwrap_or_else(|| panic!("no edgemesh_build_info from {instance}: {build_info:?}"));
        assert_eq!((info.label("version"), info.value), (env!("CARGO_PKG_VERSION"), 1.0), "{info:?}");
    }
    // Every edgemesh_ series an agent serves reaches Prometheus.
    for (admin, agent) in [(A_ADMIN, &agent_a), (B_ADMIN, &agent_b)] {
        let query = format!(r#"count({{__name__=~"edgemesh_.*",instance="{admin}"}})"#);
        let (mut stored, mut served) = (None, 0);
        let start = Instant::now();
        while stored != Some(served as f64) && start.elapsed() < SETTLE {
            std::thread::sleep(Duration::from_millis(500));
            served = metrics(agent).lines().filter(|l| l.starts_with("edgemesh_")).count();
            stored = prometheus.value(&query);
        }
        assert!(served >= 1, "{admin} serves no edgemesh_ series");
        assert_eq!(stored, Some(served as f64), "{query}: Prometheus against the agent's own /metrics");
    }

    counters_match_the_traffic_sent(&prometheus, &traffic);
    dashboard_names_are_served(&expositions);
}

/// node-a's agent as [`Node::start`] starts one, but forwarding DNS to
/// node-b's server (instead of a closed port).
fn start_node_a(a: &Node) -> NsAgent {
    let (manifests, state) = (a.path("manifests"), a.path("state"));
    let args = [
        ["--node-name", &a.name, "--tunnel", "--vip-cidr", "127.90.0.0/16"].as_slice(),
        &["--manifest-dir", manifests.to_str().unwrap(), "--state-dir", state.to_str().unwrap()],
        &["--dns-upstream", B_DNS, "--admin-listen", A_ADMIN],
    ]
    .concat();
    NsAgent::start(&a.ns, &args, Duration::from_secs(20))
}

/// `/metrics` of an agent, in the classic text format (what curl gets).
fn metrics(agent: &NsAgent) -> String {
    agent.get("/metrics").expect("the admin endpoint serves /metrics")
}

/// CONNECTIONS requests with curl from node-a through web's VIP (one
/// connection each), DATAGRAMS through echo's VIP, then QUERIES with dig to
/// node-a's DNS server.
fn send_traffic(ns: &Netns, agent: &NsAgent, body_len: u64) -> Traffic {
    let vip = agent.vip("default", "web").expect("web has a VIP on node-a");
    let url = format!("http://{vip}/");
    let mut traffic = Traffic::default();
    let write_out = "%{http_code} %{size_request} %{size_header} %{size_download}";
    for _ in 0..CONNECTIONS {
        let out = ns.ok(&["curl", "-sS", "-g", "--max-time", "5", "-o", "/dev/null", "-w", write_out, &url]);
        let sizes: Vec<u64> = out.split_whitespace().map(|n| n.parse().unwrap()).collect();
        let [code, request, header, download] = sizes[..] else { panic!("curl -w: {out}") };
        assert_eq!((code, download), (200, body_len), "curl {url}: {out}");
        traffic.connections += 1;
        traffic.sent += request;
        traffic.received += header + download;
    }
    let echo = agent.vip("default", "echo").expect("echo has a VIP on node-a");
    assert_eq!(udp_stream(ns, &format!("{echo}:5300"), DATAGRAMS), Ok(DATAGRAMS), "datagrams through echo");
    traffic.udp_sessions += 1;
    let dns_port = DNS_SERVER.rsplit(':').next().unwrap();
    for &(proto, qtype, name, zone, count) in QUERIES {
        for _ in 0..count {
            let mut dig = vec!["dig", "@127.0.0.1", "-p", dns_port, "+tries=1", "+time=3"];
            if proto == "tcp" {
                dig.push("+tcp");
            }
            dig.extend([name, qtype]);
            let answer = ns.ok(&dig);
            assert!(answer.contains("status: NOERROR"), "{dig:?}: {answer}");
            *traffic.queries.entry((proto, qtype, zone)).or_default() += 1;
        }
    }
    traffic
}

/// node-a's proxy and DNS counters, through Prometheus, against what the
/// test sent: connections and DNS queries exactly, bytes within 1%.
fn counters_match_the_traffic_sent(prometheus: &Prometheus, traffic: &Traffic) {
    let on_a = format!(r#"job="edgemesh",instance="{A_ADMIN}""#);
    // The proxy's.
    {
        let web = format!(r#"{on_a},service="default/web",port="80""#);
        let query = format!("sum(edgemesh_tcp_connections_opened_total{{{web}}})");
        let want = traffic.connections as f64;
        let got = settle(prometheus, &query, |v| v == want);
        assert_eq!(got, Some(want), "{query}: connections opened");
        for (family, want) in [("sent", traffic.sent), ("received", traffic.received)] {
            let query = format!("sum(edgemesh_tcp_{family}_bytes_total{{{web}}})");
            let within = |v: f64| (v - want as f64).abs() <= want as f64 * 0.01;
            let got = settle(prometheus, &query, within);
            assert!(got.is_some_and(within), "{query} = {got:?}, sent {want} (±1%)");
        }
        let echo = format!(r#"{on_a},service="default/echo",port="5300""#);
        let query = format!("sum(edgemesh_udp_sessions_opened_total{{{echo}}})");
        let want = traffic.udp_sessions as f64;
        assert_eq!(settle(prometheus, &query, |v| v == want), Some(want), "{query}: UDP sessions");
    }
    // The DNS server's.
    {
        let on_server = format!(r#"{on_a},server="{DNS_SERVER}""#);
        for (&(proto, qtype, zone), &want) in &traffic.queries {
            let labels = format!(r#"{on_server},zone="{zone}",proto="{proto}",family="1",type="{qtype}""#);
            let query = format!("sum(edgemesh_dns_requests_total{{{labels}}})");
            let got = settle(prometheus, &query, |v| v == want as f64);
            assert_eq!(got, Some(want as f64), "{query}: queries sent");
        }
        // Nothing else was counted, and each query got one response.
        let total = traffic.queries.values().sum::<u64>() as f64;
        for family in ["requests", "responses"] {
            let query = format!("sum(edgemesh_dns_{family}_total{{{on_a}}})");
            assert_eq!(settle(prometheus, &query, |v| v == total), Some(total), "{query}");
        }
        // The forwarded ones went to node-b, which answered each (NOERROR).
        let forwarded = traffic.queries.iter().filter(|((_, _, zone), _)| *zone == ".").map(|(_, n)| n).sum::<u64>();
        let to_b = format!(r#"{on_a},to="{B_DNS}""#);
        for (family, labels) in [("requests", to_b.clone()), ("responses", format!(r#"{to_b},rcode="NOERROR""#))] {
            let query = format!("sum(edgemesh_dns_forward_{family}_total{{{labels}}})");
            let want = forwarded as f64;
            assert_eq!(settle(prometheus, &query, |v| v == want), Some(want), "{query}");
        }
    }
}

/// The value of `query` once `ok` holds for it (polled for SETTLE), else
/// its last value.
fn settle(prometheus: &Prometheus, query: &str, ok: impl Fn(f64) -> bool) -> Option<f64> {
    let start = Instant::now();
    loop {
        let value = prometheus.value(query);
        if value.is_some_and(&ok) || start.elapsed() > SETTLE {
            return value;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Dashboard names whose series this test's traffic cannot bring about,
/// and why (tunnel_metrics_e2e's NAT and relay topologies do).
const NOT_EXERCISED: &[(&str, &str)] = &[
    ("edgemesh_tunnel_holepunch_attempts_total", "no NAT between the nodes: nothing to punch"),
    ("edgemesh_tunnel_holepunch_successes_total", "no NAT between the nodes: nothing to punch"),
    ("edgemesh_tunnel_relay_reservations", "no relay"),
    ("edgemesh_tunnel_relay_circuits", "no relay"),
];

/// The names the agents serve against the contract and the dashboard (a
/// renamed metric fails here, on either side):
/// - every `edgemesh_` name served is in the contract (or libp2p's, or the
///   label caps');
/// - every name the dashboard asks for is in the contract or served;
/// - every name the dashboard asks for is served, but for NOT_EXERCISED.
fn dashboard_names_are_served(expositions: &[String]) {
    let served: BTreeSet<String> = expositions.iter().flat_map(|e| served_names(e)).collect();
    let stray: Vec<&String> = served
        .iter()
        .filter(|n| n.starts_with("edgemesh_") && !n.starts_with(LIBP2P_PREFIX))
        .filter(|n| !OUTSIDE_CONTRACT.contains(&n.as_str()) && contract_section(n).is_none())
        .collect();
    assert!(stray.is_empty(), "the agents serve names outside the contract (renamed?): {stray:?}");

    let used: BTreeSet<String> = dashboard_queries(&dashboard()).iter().flat_map(|q| metric_names_in(q)).collect();
    let unknown: Vec<&String> = used.iter().filter(|n| contract_section(n).is_none() && !served.contains(*n)).collect();
    assert!(unknown.is_empty(), "the dashboard asks for metrics nobody serves or promised: {unknown:?}");
    let missing: Vec<&String> = used
        .iter()
        .filter(|n| !served.contains(*n) && !NOT_EXERCISED.iter().any(|(name, _)| *name == n.as_str()))
        .collect();
    assert!(missing.is_empty(), "the dashboard asks for names the agents do not serve (renamed?): {missing:?}");
}

#[test]
fn the_grafana_dashboard_is_importable_and_asks_for_contract_names() {
    let dashboard = dashboard();
    let inputs = dashboard["__inputs"].as_array().expect("__inputs: the datasource asked for on import");
    assert!(
        inputs
            .iter()
            .any(|i| i["name"] == "DS_PROMETHEUS" && i["type"] == "datasource" && i["pluginId"] == "prometheus"),
        "{inputs:?}"
    );
    assert!(dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 36), "schemaVersion");
    assert!(dashboard["uid"].is_string() && dashboard["title"].is_string());
    let variables = dashboard["templating"]["list"].as_array().expect("templating.list");
    let instance = variables.iter().find(|v| v["name"] == "instance").expect("an instance variable");
    assert_eq!(instance["type"], "query");

    let panels = dashboard["panels"].as_array().expect("panels");
    let rows: Vec<&str> = panels.iter().filter(|p| p["type"] == "row").filter_map(|p| p["title"].as_str()).collect();
    assert_eq!(rows, ["Services", "DNS", "Tunnel", "Source", "Process"]);
    let mut ids = BTreeSet::new();
    for panel in panels {
        assert!(ids.insert(panel["id"].as_u64().expect("a panel id")), "duplicate id: {panel}");
        assert!(panel["gridPos"]["w"].is_u64() && panel["gridPos"]["y"].is_u64(), "gridPos: {panel}");
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], "${DS_PROMETHEUS}", "{}", panel["title"]);
        let targets = panel["targets"].as_array().filter(|t| !t.is_empty()).expect("targets");
        for target in targets {
            let expr = target["expr"].as_str().unwrap_or("");
            // Every panel follows the instance picker.
            assert!(expr.contains(r#"instance=~"$instance""#), "{}: {expr}", panel["title"]);
        }
    }

    let used: BTreeSet<String> = dashboard_queries(&dashboard).iter().flat_map(|q| metric_names_in(q)).collect();
    let unknown: Vec<&String> = used.iter().filter(|n| contract_section(n).is_none()).collect();
    assert!(unknown.is_empty(), "not in the contract: {unknown:?}");
    // Each section of the contract has panels, but the gateway's (no
    // gateway row in the dashboard yet).
    let sections: BTreeSet<Section> = used.iter().filter_map(|n| contract_section(n)).collect();
    assert_eq!(sections.len(), 5, "{sections:?}");
    assert!(!sections.contains(&Section::Gateway));
}

#[test]
fn metric_names_are_read_from_promql_outside_label_values() {
    let promql = r#"histogram_quantile(0.99, sum by (le) (rate(edgemesh_tcp_connect_duration_seconds_bucket{service=~"edgemesh_x"}[5m]))) / on() process_open_fds"#;
    let names: Vec<String> = metric_names_in(promql).into_iter().collect();
    assert_eq!(names, ["edgemesh_tcp_connect_duration_seconds_bucket", "process_open_fds"]);
    assert_eq!(contract_section("edgemesh_tcp_connect_duration_seconds_bucket"), Some(Section::Proxy));
    assert_eq!(contract_section("edgemesh_tcp_connections_opened"), None, "a counter is served with _total");
    let served = served_names(
        "# TYPE edgemesh_dns_request_duration_seconds histogram\n# TYPE process_open_fds gauge\nprocess_open_fds 7\n",
    );
    assert!(served.contains("edgemesh_dns_request_duration_seconds_bucket") && served.contains("process_open_fds"));
}
