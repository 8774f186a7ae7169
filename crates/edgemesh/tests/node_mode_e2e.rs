//! Node mode as a user runs it (userspace half): the real binary, a UDP
//! service reached through its VIP by `dig` and by a plain UDP client, and
//! consistent hashing by an HTTP header driven by `curl -H`.

mod support;

use std::collections::{HashMap, HashSet};
use std::net::UdpSocket;
use std::process::Command;
use std::time::Duration;

use support::*;

/// A UDP service `name` on `port` whose endpoints are these ports of 127.0.0.1.
fn udp_service_yaml(name: &str, port: u16, backends: &[u16], annotations: &str) -> String {
    let mut y = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\n{annotations}spec:\n  \
         ports:\n  - name: dns\n    protocol: UDP\n    port: {port}\n"
    );
    for (i, b) in backends.iter().enumerate() {
        y += &format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-{i}\n  \
             labels:\n    kubernetes.io/service-name: {name}\naddressType: IPv4\nports:\n- name: dns\n  \
             protocol: UDP\n  port: {b}\nendpoints:\n- addresses: [127.0.0.1]\n  nodeName: test-node\n"
        );
    }
    y
}

/// A UDP echo server on its own thread, answering `<id>:<datagram>`.
fn udp_echo(id: &'static str) -> u16 {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = socket.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            let mut reply = format!("{id}:").into_bytes();
            reply.extend_from_slice(&buf[..n]);
            let _ = socket.send_to(&reply, from);
        }
    });
    port
}

#[test]
fn udp_service_through_its_vip() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path());
    // Endpoint 1: the agent's own DNS server, so `dig` works through the
    // VIP; endpoint 2: an echo server, for a plain UDP client.
    write_manifest(dir.path(), "dns.yaml", &udp_service_yaml("dns", 53, &[agent.dns_port], ""));
    write_manifest(dir.path(), "web.yaml", &service_yaml("default", "web", 80, &[9], ""));
    let echo = udp_echo("echo");
    write_manifest(dir.path(), "echo.yaml", &udp_service_yaml("echo", 7, &[echo], ""));
    let dns_vip = eventually(Duration::from_secs(3), "the UDP service", || agent.vip("default", "dns"));
    let web_vip = eventually(Duration::from_secs(3), "the web service", || agent.vip("default", "web"));
    let echo_vip = eventually(Duration::from_secs(3), "the echo service", || agent.vip("default", "echo"));

    // dig sends to VIP:53 and accepts the answer only from that address.
    let out = Command::new("dig")
        .args(["@".to_owned() + &dns_vip, "-p".into(), "53".into(), "+tries=2".into(), "+time=2".into()])
        .args(["+short", "web.default.svc.cluster.local"])
        .output()
        .expect("dig is installed");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), web_vip, "a DNS answer through the UDP proxy");

    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let to = format!("{echo_vip}:7");
    let mut buf = [0u8; 2048];
    for i in 0..100 {
        let msg = format!("hello {i}");
        client.send_to(msg.as_bytes(), &to).unwrap();
        let (n, from) = client.recv_from(&mut buf).expect("a reply through the VIP");
        assert_eq!(from.to_string(), to, "replies come from the service address");
        assert_eq!(&buf[..n], format!("echo:{msg}").as_bytes());
    }
    let dump = agent.services();
    let echo_entry = dump["services"].as_array().unwrap().iter().find(|s| s["name"] == "echo").unwrap().clone();
    assert_eq!(echo_entry["udpIdleTimeoutMs"], 60_000, "the default idle timeout");
    assert_eq!(agent.terminate().code(), Some(0));
}

fn curl_with_header(url: &str, header: &str) -> String {
    let out =
        Command::new("curl").args(["-sS", "--max-time", "5", "-H", header, url]).output().expect("curl is installed");
    assert!(out.status.success(), "curl -H {header:?} {url}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn consistent_hash_by_header_with_curl() {
    let nginx = Nginx::start(3);
    let dir = tempfile::tempdir().unwrap();
    let annotations =
        "  annotations:\n    edgemesh.io/lb-strategy: ConsistentHash\n    edgemesh.io/hash-key: header:X-User\n";
    write_manifest(dir.path(), "web.yaml", &service_yaml("default", "web", 80, &nginx.ports, annotations));
    let agent = Agent::start(dir.path());
    let vip = agent.vip("default", "web").unwrap();
    let url = format!("http://{vip}/");

    let mut owner = HashMap::new();
    for user in 0..30 {
        let header = format!("X-User: user-{user}");
        let first = curl_with_header(&url, &header);
        for _ in 0..3 {
            assert_eq!(curl_with_header(&url, &header), first, "user-{user} always reaches the same backend");
        }
        owner.insert(user, first);
    }
    let used: HashSet<&String> = owner.values().collect();
    assert!(used.len() >= 2, "different users spread over the backends: {owner:?}");
    // Header names are case-insensitive.
    assert_eq!(curl_with_header(&url, "x-user: user-7"), owner[&7]);
    let dump = agent.services();
    assert_eq!(dump["services"][0]["strategy"], "ConsistentHash");
    assert_eq!(dump["services"][0]["hashKey"], "header:X-User");
}
