//! The shipped edge gateway as shipped (deploy/kubernetes/gateway/): its
//! DaemonSet's `edgemesh` container (`gateway`, its arguments, exactly the
//! capabilities it adds, a read-only root but for its volumes) runs the
//! shared ConfigMap's config on a node of its own, and a client on the LAN
//! reaches a Service through a Gateway listener on port 80 (a privileged
//! port: NET_BIND_SERVICE is what lets it bind) while the node's pods keep
//! their node-local DNS (node mode). The Gateway's status is written back.
//!
//! The one difference from a cluster: the DaemonSet reads the API server
//! with its service account, which needs an in-cluster API (HTTPS, a token);
//! here `--kube-api` names the fake API server, relayed into the node.
//!
//! ```text
//!  client 10.0.0.9 ── LAN ── node 10.0.0.2 (edgemesh gateway, :80) ── pod 10.244.1.2 (nginx)
//! ```

mod support;

use std::time::Duration;

use edgemesh_fake_apiserver::{FakeApiServer, Resource};
use serde_json::{Value, json};
use support::daemonset::{EdgeNode, shipped_config};
use support::eventually;
use support::netns::{Lan, Netns, NsNginx, TcpRelay};

const DAEMONSET: &str = "gateway/daemonset-gateway.yaml";
const CLUSTER_IP: &str = "10.96.0.10";

#[test]
fn the_shipped_gateway_daemon_set_serves_a_gateway_on_port_80_and_writes_its_status() {
    let config = shipped_config();
    let lan = Lan::new("gwshiplan");
    let node = EdgeNode::new(&lan, 1, &config, DAEMONSET);
    let client = Netns::new("gwshipclient");
    lan.attach(&client, "eth0", &["10.0.0.9/24"]);
    let _nginx = NsNginx::start(&node.pod, &["10.244.1.2:8080"], "pod behind the gateway");

    let api = FakeApiServer::start();
    api.apply(Resource::Nodes, node.object(1));
    api.apply(
        Resource::Services,
        json!({"metadata": {"name": "web", "namespace": "shop"},
               "spec": {"clusterIP": CLUSTER_IP, "clusterIPs": [CLUSTER_IP],
                        "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}}),
    );
    api.apply(
        Resource::EndpointSlices,
        json!({"metadata": {"name": "web-1", "namespace": "shop", "labels": {"kubernetes.io/service-name": "web"}},
               "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
               "endpoints": [{"addresses": ["10.244.1.2"], "nodeName": node.name, "conditions": {"ready": true}}]}),
    );
    api.apply(
        Resource::Gateways,
        json!({"metadata": {"name": "site", "namespace": "shop", "generation": 1},
               "spec": {"gatewayClassName": "edgemesh", "listeners": [{"name": "web", "port": 80, "protocol": "HTTP"}]}}),
    );
    api.apply(
        Resource::HttpRoutes,
        json!({"metadata": {"name": "front", "namespace": "shop"},
               "spec": {"parentRefs": [{"name": "site"}], "hostnames": ["shop.example"],
                        "rules": [{"backendRefs": [{"name": "web", "port": 80}]}]}}),
    );
    let meta = "127.0.0.1:10550".parse().unwrap();
    let _relay = TcpRelay::start_at(&node.ns, meta, api.addr());
    let agent = node.start(&config, &[&format!("--kube-api=http://{meta}")]);
    assert_eq!(agent.json("/config")["gateway"]["enabled"], true, "the DaemonSet runs the gateway");

    let resolve = "shop.example:80:10.0.0.2";
    let body = eventually(Duration::from_secs(10), "the client reaches the Service through the gateway", || {
        client.curl_with(&["--max-time", "3", "--resolve", resolve], "http://shop.example/")
    });
    assert_eq!(body.trim(), "pod behind the gateway", "{}", agent.log());

    let condition = |status: &Value, kind: &str| -> Option<Value> {
        status["conditions"].as_array()?.iter().find(|c| c["type"] == kind).cloned()
    };
    let status = eventually(Duration::from_secs(10), "the Gateway's status", || {
        let status = api.object(Resource::Gateways, "shop", "site")?["status"].clone();
        condition(&status, "Programmed").filter(|c| c["status"] == "True").map(|_| status)
    });
    assert_eq!(status["listeners"][0]["attachedRoutes"], 1, "{status}");

    // Still the node's agent: its pod resolves the Service at the
    // node-local DNS address.
    let out = node.pod.exec(&["dig", "@169.254.96.16", "+short", "+time=2", "+tries=1", "web.shop.svc.cluster.local"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), CLUSTER_IP);

    assert!(agent.terminate().success(), "a clean stop");
    assert!(!node.ns.tables().contains("edgemesh"), "the nft table is gone");
}
