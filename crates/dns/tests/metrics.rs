//! The DNS metrics as a scrape shows them, after a known set of queries
//! sent with the real `dig` to the real server (and to a real upstream on
//! loopback): every count exact, and the output accepted by
//! `promtool check metrics`.

mod common;

use std::net::{Ipv4Addr, SocketAddr};

use common::{FakeUpstream, Harness};
use edgemesh_core::build;
use edgemesh_dns::DnsConfig;
use edgemesh_test_support::loopback::closed_udp_port;
use edgemesh_test_support::scrape::{promtool_check, sample};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};

fn web() -> Vec<edgemesh_core::Object> {
    vec![
        build::service("default", "web").port("http", 80, 8080).object(),
        build::slice("default", "web-1", "web").endpoint("10.0.0.1", "n1").port("http", 8080).object(),
    ]
}

/// Sends `args` to the server `times` times, expecting `status` each time.
async fn dig_n(h: &Harness, times: usize, args: &[&str], status: &str) {
    for _ in 0..times {
        let out = h.dig(args).await;
        assert_eq!(out.status, status, "{args:?}: {}", out.raw);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_responses_cache_and_upstreams_are_counted_like_coredns() {
    let upstream = FakeUpstream::start(30).await;
    let h = Harness::start(web(), vec![upstream.addr]).await;
    let vip = h.vip("default", "web");

    // Cluster names over UDP: the fast path (A) and the general one.
    dig_n(&h, 3, &["web.default.svc.cluster.local", "A"], "NOERROR").await;
    dig_n(&h, 1, &["web.default.svc.cluster.local", "AAAA"], "NOERROR").await;
    dig_n(&h, 1, &["_http._tcp.web.default.svc.cluster.local", "SRV"], "NOERROR").await;
    dig_n(&h, 1, &["-x", &vip], "NOERROR").await;
    dig_n(&h, 2, &["nope.default.svc.cluster.local", "A"], "NXDOMAIN").await;
    // SPF is no type CoreDNS names: `other`.
    dig_n(&h, 1, &["web.default.svc.cluster.local", "SPF"], "NOERROR").await;
    // Over TCP.
    dig_n(&h, 2, &["+tcp", "web.default.svc.cluster.local", "A"], "NOERROR").await;
    dig_n(&h, 1, &["+tcp", "nope.default.svc.cluster.local", "A"], "NXDOMAIN").await;
    // Forwarded: the first of each a miss, the repeats cache hits.
    dig_n(&h, 3, &["www.example.com", "A"], "NOERROR").await;
    dig_n(&h, 2, &["nx.example.com", "A"], "NXDOMAIN").await;
    dig_n(&h, 1, &["+tcp", "www.example.com", "MX"], "NOERROR").await;
    assert_eq!(upstream.queries(), 3, "repeats come from the cache");
    // Two questions in one query: FORMERR, of type `other` in the root zone.
    let mut two = Message::new(77, MessageType::Query, OpCode::Query);
    for name in ["a.example.", "b.example."] {
        two.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    }
    let udp = tokio::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    udp.send_to(&two.to_vec().unwrap(), h.addr).await.unwrap();
    let mut buf = vec![0u8; 512];
    let n = tokio::time::timeout(std::time::Duration::from_secs(2), udp.recv(&mut buf)).await.unwrap().unwrap();
    assert_eq!(Message::from_vec(&buf[..n]).unwrap().metadata.response_code, ResponseCode::FormErr);

    let text = h.scrape();
    let server = format!("dns://{}", h.addr);
    let get = |series: String| sample(&text, &series);
    let requests = |zone, proto, ty| {
        get(format!(
            r#"edgemesh_dns_requests_total{{server="{server}",zone="{zone}",proto="{proto}",family="1",type="{ty}"}}"#
        ))
    };
    assert_eq!(requests("cluster.local.", "udp", "A"), Some(5.0), "{text}");
    assert_eq!(requests("cluster.local.", "udp", "AAAA"), Some(1.0));
    assert_eq!(requests("cluster.local.", "udp", "SRV"), Some(1.0));
    assert_eq!(requests("cluster.local.", "udp", "PTR"), Some(1.0));
    assert_eq!(requests("cluster.local.", "udp", "other"), Some(1.0));
    assert_eq!(requests("cluster.local.", "tcp", "A"), Some(3.0));
    assert_eq!(requests(".", "udp", "A"), Some(5.0));
    assert_eq!(requests(".", "tcp", "MX"), Some(1.0));
    assert_eq!(requests(".", "udp", "other"), Some(1.0));
    let total: f64 = text
        .lines()
        .filter(|l| l.starts_with("edgemesh_dns_requests_total{"))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
        .sum();
    assert_eq!(total, 19.0, "every query counted once: {text}");

    let responses = |zone, rcode| {
        get(format!(r#"edgemesh_dns_responses_total{{server="{server}",zone="{zone}",rcode="{rcode}"}}"#))
    };
    assert_eq!(responses("cluster.local.", "NOERROR"), Some(9.0), "{text}");
    assert_eq!(responses("cluster.local.", "NXDOMAIN"), Some(3.0));
    assert_eq!(responses(".", "NOERROR"), Some(4.0));
    assert_eq!(responses(".", "NXDOMAIN"), Some(2.0));
    assert_eq!(responses(".", "FORMERR"), Some(1.0));
    assert_eq!(responses(".", "SERVFAIL"), None, "no series for what did not happen");

    let durations = |zone, ty| {
        get(format!(r#"edgemesh_dns_request_duration_seconds_count{{server="{server}",zone="{zone}",type="{ty}"}}"#))
    };
    assert_eq!(durations("cluster.local.", "A"), Some(8.0));
    assert_eq!(durations(".", "A"), Some(5.0));
    let inf = format!(
        r#"edgemesh_dns_request_duration_seconds_bucket{{le="+Inf",server="{server}",zone="cluster.local.",type="A"}}"#
    );
    assert_eq!(get(inf), Some(8.0), "{text}");

    let cache = |name, ty| get(format!(r#"{name}{{server="{server}",type="{ty}"}}"#));
    assert_eq!(cache("edgemesh_dns_cache_hits_total", "success"), Some(2.0), "{text}");
    assert_eq!(cache("edgemesh_dns_cache_hits_total", "denial"), Some(1.0));
    assert_eq!(get(format!(r#"edgemesh_dns_cache_misses_total{{server="{server}"}}"#)), Some(3.0));
    assert_eq!(cache("edgemesh_dns_cache_entries", "success"), Some(2.0));
    assert_eq!(cache("edgemesh_dns_cache_entries", "denial"), Some(1.0));

    let to = upstream.addr;
    assert_eq!(get(format!(r#"edgemesh_dns_forward_requests_total{{to="{to}"}}"#)), Some(3.0), "{text}");
    let by_rcode = |name, rcode| get(format!(r#"{name}{{to="{to}",rcode="{rcode}"}}"#));
    assert_eq!(by_rcode("edgemesh_dns_forward_responses_total", "NOERROR"), Some(2.0));
    assert_eq!(by_rcode("edgemesh_dns_forward_responses_total", "NXDOMAIN"), Some(1.0));
    assert_eq!(by_rcode("edgemesh_dns_forward_request_duration_seconds_count", "NOERROR"), Some(2.0));

    promtool_check(&text);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_clients_are_family_2() {
    let listen = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 0));
    let h = Harness::start_with(web(), DnsConfig { listen: Some(listen), ..common::config() }).await;
    dig_n(&h, 2, &["web.default.svc.cluster.local", "A"], "NOERROR").await;
    let text = h.scrape();
    let series = format!(
        r#"edgemesh_dns_requests_total{{server="dns://{}",zone="cluster.local.",proto="udp",family="2",type="A"}}"#,
        h.addr
    );
    assert_eq!(sample(&text, &series), Some(2.0), "{text}");
    assert!(!text.contains(r#"family="1""#), "{text}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_count_as_their_rcode_and_dead_upstreams_as_requests_without_responses() {
    // A dead first upstream (refused), then one that answers: two attempts,
    // one response.
    let upstream = FakeUpstream::start(30).await;
    let closed = closed_udp_port();
    let h = Harness::start(vec![], vec![closed, upstream.addr]).await;
    dig_n(&h, 1, &["www.example.com"], "NOERROR").await;
    let text = h.scrape();
    let forward = |name, to: SocketAddr| sample(&text, &format!(r#"{name}{{to="{to}"}}"#));
    assert_eq!(forward("edgemesh_dns_forward_requests_total", closed), Some(1.0), "{text}");
    assert!(!text.contains(&format!(r#"edgemesh_dns_forward_responses_total{{to="{closed}""#)), "{text}");
    assert_eq!(forward("edgemesh_dns_forward_requests_total", upstream.addr), Some(1.0), "{text}");
    let answered = format!(r#"edgemesh_dns_forward_responses_total{{to="{}",rcode="NOERROR"}}"#, upstream.addr);
    assert_eq!(sample(&text, &answered), Some(1.0), "{text}");
    h.stop().await;

    // Only the dead one: SERVFAIL.
    let h = Harness::start(vec![], vec![closed]).await;
    dig_n(&h, 2, &["www.example.com"], "SERVFAIL").await;
    let text = h.scrape();
    let server = format!("dns://{}", h.addr);
    let servfail = format!(r#"edgemesh_dns_responses_total{{server="{server}",zone=".",rcode="SERVFAIL"}}"#);
    assert_eq!(sample(&text, &servfail), Some(2.0), "{text}");
    let misses = format!(r#"edgemesh_dns_cache_misses_total{{server="{server}"}}"#);
    assert_eq!(sample(&text, &misses), Some(2.0), "SERVFAIL is not cached: {text}");
    let entries = format!(r#"edgemesh_dns_cache_entries{{server="{server}",type="success"}}"#);
    assert_eq!(sample(&text, &entries), Some(0.0));
    h.stop().await;

    // No upstreams: outside names are REFUSED.
    let h = Harness::start(vec![], vec![]).await;
    dig_n(&h, 1, &["www.example.com"], "REFUSED").await;
    let text = h.scrape();
    let refused = format!(r#"edgemesh_dns_responses_total{{server="dns://{}",zone=".",rcode="REFUSED"}}"#, h.addr);
    assert_eq!(sample(&text, &refused), Some(1.0), "{text}");
    assert!(!text.contains("edgemesh_dns_forward_requests_total{"), "{text}");
    h.stop().await;
}
