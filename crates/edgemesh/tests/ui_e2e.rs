//! The topology page (`/ui`) as an operator opens it: headless Chromium
//! loads it from a real agent in a mesh of network namespaces and the test
//! reads what the page shows from the rendered DOM; then it watches the page
//! while the agent dies. Screenshots of both are kept in
//! `<target dir>/test-artifacts/` (`ui-topology.png`, `ui-agent-down.png`).
//!
//! ```text
//!  relay  198.18.0.1 ─┐
//!  node-a 198.18.0.2 ─┤ "public" WAN bridge      (node-a: the page's agent)
//!  node-b 198.18.0.5 ─┤
//!  router 198.18.0.3 ─┘ (NAT; drops all to and from node-a) ── 10.1.0.1 │ node-c 10.1.0.2
//!
//!  node-d: a Node object (and a namespace), but no agent
//! ```
//!
//! node-a reaches node-b directly (its bootstrap peer), node-c only through
//! the relay (a firewall between the two sites stops every direct path),
//! and node-d not at all.
//!
//! As root (namespaces, nftables); CI runs as root.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::chromium::{self, Browser, Png, elements_with};
use support::eventually_every;
use support::mesh::{LIMIT, Node, behind_nat, on_wan, peers, service, wait_for_peer};
use support::netns::{Lan, Netns, NsAgent, NsNginx, require_root};

const PAGE: &str = "http://127.0.0.1:15020/ui";
/// The page's own time in Chromium: its first reading and two refreshes.
const BUDGET: Duration = Duration::from_secs(5);

/// The mesh of the module's drawing, its agents started.
struct Mesh {
    a: Node,
    relay: Node,
    agent_a: NsAgent,
    /// What must live as long as the mesh.
    _rest: (Lan, Node, Node, Node, Netns, NsNginx, NsNginx, NsAgent, NsAgent, NsAgent),
}

impl Mesh {
    fn new() -> Mesh {
        let wan = Lan::new("wan");
        let (relay, a, b, c, d) =
            (Node::new("relay"), Node::new("node-a"), Node::new("node-b"), Node::new("node-c"), Node::new("node-d"));
        on_wan(&wan, &relay, "198.18.0.1");
        on_wan(&wan, &a, "198.18.0.2");
        on_wan(&wan, &b, "198.18.0.5");
        let router_c = behind_nat(&wan, &c, "198.18.0.3", 1);
        router_c.nft_file(
            "table ip em_split {\n\
             \tchain forward {\n\
             \t\ttype filter hook forward priority filter; policy accept;\n\
             \t\tip saddr 198.18.0.2 drop\n\
             \t\tip daddr 198.18.0.2 drop\n\
             \t}\n\
             \tchain input {\n\
             \t\ttype filter hook input priority filter; policy accept;\n\
             \t\tip saddr 198.18.0.2 drop\n\
             \t}\n\
             }\n",
        );
        let nginx_b = NsNginx::start(&b.ns, &["198.18.0.5:80"], "node-b");
        let nginx_c = NsNginx::start(&c.ns, &["10.1.0.2:80"], "node-c");
        // The relay is infrastructure, not a node of the cluster: no Node object.
        let cluster = [
            a.object("198.18.0.2"),
            b.object("198.18.0.5"),
            c.object("10.1.0.2"),
            d.object("198.18.0.6"),
            service("web-b", "TCP", 80, "node-b", "198.18.0.5"),
            service("web-c", "TCP", 80, "node-c", "10.1.0.2"),
        ];
        for n in [&relay, &a, &b, &c] {
            n.manifests(&cluster);
        }
        let relay_addr = relay.tunnel_addr("198.18.0.1");
        let agent_relay = relay.start(&["--relay-server", "--no-mdns"]);
        let agent_b = b.start(&["--no-mdns"]);
        let agent_c = c.start(&["--no-mdns", "--relay", &relay_addr]);
        eventually_every(Duration::from_millis(200), LIMIT, "node-c's relay reservation", || {
            peers(&agent_c).into_iter().find(|p| p["peerId"] == relay.peer_id && p["relayReserved"] == true)
        });
        let agent_a = a.start(&["--no-mdns", "--relay", &relay_addr, "--bootstrap", &b.tunnel_addr("198.18.0.5")]);
        Mesh { a, relay, agent_a, _rest: (wan, b, c, d, router_c, nginx_b, nginx_c, agent_relay, agent_b, agent_c) }
    }

    /// `times` requests to service `web-<node>` from node-a, each answered by that node.
    fn requests(&self, node: &str, times: usize) {
        let vip = self.agent_a.vip("default", &format!("web-{node}")).expect("the service has a VIP on node-a");
        for _ in 0..times {
            let answer = self.a.ns.curl_with(&["--max-time", "15"], &format!("http://{vip}/"));
            assert_eq!(answer.as_deref(), Some(format!("node-{node}\n").as_str()));
        }
    }
}

#[test]
fn the_topology_page_shows_each_node_with_its_link_kind_and_the_traffic() {
    require_root();
    let mesh = Mesh::new();
    // Traffic through both services: 3 connections to node-b, 2 to node-c.
    mesh.requests("b", 3);
    mesh.requests("c", 2);
    wait_for_peer(&mesh.agent_a, "node-b", "node-a's direct link to node-b", |p| p["connection"] == "direct");
    wait_for_peer(&mesh.agent_a, "node-c", "node-a's relayed link to node-c", |p| p["connection"] == "relayed");
    // Whether this agent exports the proxy's TCP counters (issue #14's
    // contract; the page shows an empty traffic table without them).
    let counted =
        mesh.agent_a.get("/metrics").expect("/metrics answers").contains("edgemesh_tcp_connections_opened_total{");
    the_rendered_page_shows(&mesh, counted);
    the_open_page_follows_the_agent(mesh, counted);
}

/// What Chromium renders of the page after a few refreshes, from its DOM,
/// and its screenshot.
fn the_rendered_page_shows(mesh: &Mesh, counted: bool) {
    let relay = &mesh.relay;
    let dom = chromium::dom(&mesh.a.ns, PAGE, BUDGET);
    let body = &elements_with(&dom, "data-state")[0];
    assert_eq!((body.tag.as_str(), body.attr("data-state")), ("body", "ok"), "the page read the agent: {body:?}");
    assert!(!body.attr("data-updated").is_empty(), "the page says when it last read: {body:?}");

    // Every node, on the map (<g>) and in the links table (<tr>), with this
    // node's link to it.
    let nodes = elements_with(&dom, "data-node");
    let shown = |tag: &str| {
        let mut shown: Vec<(&str, &str)> =
            nodes.iter().filter(|e| e.tag == tag).map(|e| (e.attr("data-node"), e.attr("data-link-kind"))).collect();
        shown.sort();
        shown
    };
    let links = [("node-b", "direct"), ("node-c", "relayed"), ("node-d", "down")];
    assert_eq!(shown("g"), [&[("node-a", "local")], &links[..]].concat(), "the map");
    assert_eq!(shown("tr"), links, "the links table");
    // node-c's link names its relay, which is drawn as one.
    let c_via = nodes.iter().find(|e| e.tag == "g" && e.attr("data-node") == "node-c").unwrap().attr("data-via");
    assert!(
        c_via.starts_with(&relay.peer_id[..8]) && c_via.ends_with(&relay.peer_id[relay.peer_id.len() - 6..]),
        "{c_via}"
    );
    let relays = elements_with(&dom, "data-relay");
    assert!(
        relays.iter().any(|e| e.attr("data-peer") == relay.peer_id && e.attr("data-relay") == "true"),
        "{relays:?}"
    );

    // The traffic table agrees with /metrics: a row per service and port
    // with the connections counted there, or the empty table while the agent
    // exports no TCP counters.
    let traffic = elements_with(&dom, "data-service");
    if counted {
        let opened = |service: &str| {
            traffic
                .iter()
                .find(|e| e.attr("data-service") == service && e.attr("data-port") == "80")
                .map(|e| e.attr("data-connections"))
        };
        assert_eq!(opened("default/web-b"), Some("3"), "{traffic:?}");
        assert_eq!(opened("default/web-c"), Some("2"), "{traffic:?}");
    } else {
        assert!(traffic.is_empty(), "no counters, no rows: {traffic:?}");
        assert!(dom.contains("No TCP traffic counted yet"), "the empty traffic table says why");
    }

    let shot = chromium::artifacts_dir().join("ui-topology.png");
    chromium::screenshot(&mesh.a.ns, PAGE, BUDGET, &shot);
    let png = Png::read(&shot);
    eprintln!("screenshot: {} ({} colours)", shot.display(), png.colours());
    assert_eq!((png.width, png.height), (1200, 800));
    assert!(png.colours() > 16, "the screenshot is not blank: {} colours", png.colours());
    assert!(png.pixels_off_background() > 1200 * 800 / 20, "the screenshot shows more than its background");
}

/// The page kept open in real time: it refreshes by itself, and when the
/// agent stops answering a banner says so and the last picture stays.
fn the_open_page_follows_the_agent(mesh: Mesh, counted: bool) {
    let mut page = Browser::open(&mesh.a.ns, PAGE);
    // (Until the page has loaded, its elements are missing.)
    let seen = r##"JSON.stringify({
        state: document.body?.dataset.state,
        updated: document.getElementById("updated")?.textContent,
        banner: document.getElementById("banner")?.hidden === false ? document.getElementById("banner").textContent : null,
        updatedAt: document.body?.dataset.updated,
        webB: document.querySelector('tr[data-service="default/web-b"]')?.dataset.connections,
        nodes: document.querySelectorAll("#map g[data-node]").length })"##;
    let read = |page: &mut Browser| serde_json::from_str::<Value>(page.eval(seen).as_str().unwrap()).unwrap();
    let before = eventually_every(Duration::from_millis(200), LIMIT, "the open page to read the agent", || {
        Some(read(&mut page)).filter(|s| s["state"] == "ok")
    });
    assert!(before["updated"].as_str().unwrap().starts_with("Updated "), "{before}");
    assert_eq!((&before["banner"], &before["nodes"]), (&Value::Null, &json!(4)), "{before}");
    // The page's reading of the metrics contract's TCP counters, in the
    // classic text format: summed per service and port whatever the label
    // order, escapes undone, other families and the histograms left out.
    let exposition = r#"# TYPE edgemesh_tcp_sent_bytes counter
edgemesh_tcp_sent_bytes_total{service="default/web-b",port="80"} 1500
edgemesh_tcp_received_bytes_total{port="80",service="default/web-b"} 2.5e3
edgemesh_tcp_connections_opened_total{service="default/web-b",port="80"} 3
edgemesh_tcp_connections_opened_total{service="odd\"ns/x\\y",port="53"} 1
edgemesh_tcp_connections_failed_total{service="default/web-b",port="80",reason="refused"} 9
edgemesh_tcp_connect_duration_seconds_bucket{service="default/web-b",port="80",le="0.1"} 3
edgemesh_tcp_sent_bytes_total{service="other",port="other"} NaN
"#;
    let parsed = page.eval(&format!("JSON.stringify([...parseTraffic({}).values()])", json!(exposition)));
    let parsed: Value = serde_json::from_str(parsed.as_str().unwrap()).unwrap();
    assert_eq!(
        parsed,
        json!([
            { "service": "default/web-b", "port": "80", "sent": 1500, "received": 2500, "opened": 3 },
            { "service": "odd\"ns/x\\y", "port": "53", "sent": 0, "received": 0, "opened": 1 },
        ])
    );

    // It reads the agent again by itself; with the proxy's counters, the
    // traffic table follows two more connections.
    mesh.requests("b", 2);
    eventually_every(Duration::from_millis(200), LIMIT, "the page to refresh by itself", || {
        let now = read(&mut page);
        (now["updatedAt"] != before["updatedAt"] && (!counted || now["webB"] == "5")).then_some(())
    });

    mesh.agent_a.kill9();
    let after = eventually_every(Duration::from_millis(200), LIMIT, "the banner", || {
        Some(read(&mut page)).filter(|s| s["state"] == "error")
    });
    let banner = after["banner"].as_str().unwrap_or_else(|| panic!("the banner is shown: {after}"));
    assert!(banner.starts_with("The agent is not answering since "), "{banner}");
    assert!(banner.contains("Showing what it said at "), "{banner}");
    assert_eq!(after["nodes"], 4, "the last picture stays: {after}");
    let shot = chromium::artifacts_dir().join("ui-agent-down.png");
    page.screenshot(&shot);
    assert!(Png::read(&shot).colours() > 16, "{} is not blank", shot.display());
}
