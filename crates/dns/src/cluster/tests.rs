//! Table tests of the cluster zone: snapshot + question -> outcome.

use std::net::IpAddr;

use edgemesh_core::registry::RegistryState;
use edgemesh_core::{LbStrategy, Object, RegistryConfig, Snapshot, SourceEvent, build};
use hickory_proto::rr::{Name, RData, RecordType};

use super::{Outcome, Zone, dashed};

fn snapshot(objects: Vec<Object>) -> Snapshot {
    let config = RegistryConfig {
        vip_cidr: "9.251.0.0/16".parse().unwrap(),
        default_strategy: LbStrategy::RoundRobin,
        ..Default::default()
    };
    let mut state = RegistryState::new(&config);
    for object in objects {
        state.apply(SourceEvent::Apply(object));
    }
    state.take_generation()
}

/// web (VIP, http/80 -> 8080), db (headless, three endpoints, one not
/// ready, two with hostnames), v6 (headless, IPv6 endpoint), dns (udp port).
fn fixture() -> Snapshot {
    snapshot(vec![
        build::service("default", "web").port("http", 80, 8080).object(),
        build::slice("default", "web-1", "web").endpoint("10.0.0.1", "n1").port("http", 8080).object(),
        build::service("prod", "db").port("pg", 5432, 5432).headless().object(),
        build::slice("prod", "db-1", "db")
            .hostname("10.1.0.1", "n1", "db-0")
            .hostname("10.1.0.2", "n2", "db-1")
            .endpoint("10.1.0.3", "n2")
            .not_ready("10.1.0.4", "n3")
            .port("pg", 5432)
            .object(),
        build::service("default", "v6").port("http", 80, 80).headless().object(),
        build::slice("default", "v6-1", "v6").endpoint("fd00::7", "n1").port("http", 80).object(),
        build::service("kube-system", "kube-dns").udp_port("dns", 53, 53).object(),
    ])
}

fn zone() -> Zone {
    Zone::new("cluster.local", 5).unwrap()
}

fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

fn resolve(snap: &Snapshot, q: &str, t: RecordType) -> Outcome {
    zone().resolve(snap, &name(q), t)
}

fn vip(snap: &Snapshot, ns: &str, svc: &str) -> IpAddr {
    snap.service(&edgemesh_core::ServiceKey::new(ns, svc)).unwrap().vip.unwrap()
}

/// The rdata of the answers, rendered, sorted.
fn answers(outcome: &Outcome) -> Vec<String> {
    let Outcome::Answer { answers, .. } = outcome else { panic!("expected an answer, got {outcome:?}") };
    let mut out: Vec<String> = answers.iter().map(|r| r.data.to_string()).collect();
    out.sort();
    out
}

fn additionals(outcome: &Outcome) -> Vec<String> {
    let Outcome::Answer { additionals, .. } = outcome else { panic!("expected an answer, got {outcome:?}") };
    let mut out: Vec<String> = additionals.iter().map(|r| format!("{} {}", r.name, r.data)).collect();
    out.sort();
    out
}

#[test]
fn service_a_is_the_vip() {
    let snap = fixture();
    let vip = vip(&snap, "default", "web");
    let out = resolve(&snap, "web.default.svc.cluster.local.", RecordType::A);
    assert_eq!(answers(&out), vec![vip.to_string()]);
    let Outcome::Answer { answers, .. } = &out else { unreachable!() };
    assert_eq!(answers[0].ttl, 5);
    assert_eq!(&answers[0].name, &name("web.default.svc.cluster.local."));
}

#[test]
fn names_are_case_insensitive_and_echo_the_question() {
    let snap = fixture();
    let vip = vip(&snap, "default", "web");
    let out = resolve(&snap, "WeB.DEFAULT.Svc.Cluster.LOCAL.", RecordType::A);
    assert_eq!(answers(&out), vec![vip.to_string()]);
    let Outcome::Answer { answers, .. } = &out else { unreachable!() };
    assert!(answers[0].name.eq_case(&name("WeB.DEFAULT.Svc.Cluster.LOCAL.")));
}

#[test]
fn missing_type_is_nodata_never_nxdomain() {
    let snap = fixture();
    for (q, t) in [
        ("web.default.svc.cluster.local.", RecordType::AAAA),
        ("web.default.svc.cluster.local.", RecordType::TXT),
        ("web.default.svc.cluster.local.", RecordType::SRV),
        ("v6.default.svc.cluster.local.", RecordType::A),
        ("_http._tcp.web.default.svc.cluster.local.", RecordType::A),
        ("_tcp.web.default.svc.cluster.local.", RecordType::A),
        ("default.svc.cluster.local.", RecordType::A),
        ("svc.cluster.local.", RecordType::A),
        ("cluster.local.", RecordType::A),
        ("db-0.db.prod.svc.cluster.local.", RecordType::AAAA),
    ] {
        assert_eq!(resolve(&snap, q, t), Outcome::NoData, "{q} {t}");
    }
}

#[test]
fn unknown_names_in_the_domain_are_nxdomain() {
    let snap = fixture();
    for (q, t) in [
        ("nope.default.svc.cluster.local.", RecordType::A),
        ("web.other.svc.cluster.local.", RecordType::A),
        ("x.web.default.svc.cluster.local.", RecordType::A),
        ("db-9.db.prod.svc.cluster.local.", RecordType::A),
        ("10-1-0-4.db.prod.svc.cluster.local.", RecordType::A),
        ("_grpc._tcp.web.default.svc.cluster.local.", RecordType::SRV),
        ("_http._udp.web.default.svc.cluster.local.", RecordType::SRV),
        ("_udp.web.default.svc.cluster.local.", RecordType::A),
        ("web.default.pod.cluster.local.", RecordType::A),
        ("a.b.c.d.e.f.cluster.local.", RecordType::A),
        ("foo.cluster.local.", RecordType::A),
    ] {
        assert_eq!(resolve(&snap, q, t), Outcome::NxDomain, "{q} {t}");
    }
}

#[test]
fn outside_names_are_forwarded() {
    let snap = fixture();
    for (q, t) in [
        ("example.com.", RecordType::A),
        ("local.", RecordType::A),
        ("cluster.local.example.com.", RecordType::A),
        ("web.default.svc.cluster.example.", RecordType::A),
        ("1.0.0.10.in-addr.arpa.", RecordType::PTR),
        ("1.0.251.9.in-addr.arpa.", RecordType::A),
        ("251.9.in-addr.arpa.", RecordType::PTR),
    ] {
        assert_eq!(resolve(&snap, q, t), Outcome::Forward, "{q} {t}");
    }
}

#[test]
fn apex_has_an_soa() {
    let snap = fixture();
    let out = resolve(&snap, "Cluster.Local.", RecordType::SOA);
    let Outcome::Answer { answers, .. } = &out else { panic!("{out:?}") };
    assert_eq!(answers.len(), 1);
    let RData::SOA(soa) = &answers[0].data else { panic!() };
    assert_eq!(soa.minimum, 5);
    assert_eq!(&soa.mname, &name("ns.dns.cluster.local."));
}

#[test]
fn the_negative_ttl_is_the_soas_ttl_and_minimum() {
    let zone = zone().with_negative_ttl(30);
    let soa = zone.soa(1);
    let RData::SOA(data) = &soa.data else { panic!() };
    assert_eq!((soa.ttl, data.minimum), (30, 30));
    assert_eq!(zone.ttl(), 5, "answers keep the service TTL");
}

#[test]
fn headless_answers_ready_endpoints() {
    let snap = fixture();
    let out = resolve(&snap, "db.prod.svc.cluster.local.", RecordType::A);
    assert_eq!(answers(&out), vec!["10.1.0.1", "10.1.0.2", "10.1.0.3"]);
    let out = resolve(&snap, "v6.default.svc.cluster.local.", RecordType::AAAA);
    assert_eq!(answers(&out), vec!["fd00::7"]);
}

#[test]
fn headless_hostnames_and_dashed_addresses() {
    let snap = fixture();
    assert_eq!(answers(&resolve(&snap, "db-1.db.prod.svc.cluster.local.", RecordType::A)), vec!["10.1.0.2"]);
    assert_eq!(answers(&resolve(&snap, "DB-0.db.prod.svc.cluster.local.", RecordType::A)), vec!["10.1.0.1"]);
    assert_eq!(answers(&resolve(&snap, "10-1-0-3.db.prod.svc.cluster.local.", RecordType::A)), vec!["10.1.0.3"]);
    assert_eq!(answers(&resolve(&snap, "fd00--7.v6.default.svc.cluster.local.", RecordType::AAAA)), vec!["fd00::7"]);
    // Not for services with a VIP.
    assert_eq!(resolve(&snap, "10-0-0-1.web.default.svc.cluster.local.", RecordType::A), Outcome::NxDomain);
}

#[test]
fn srv_for_a_service_targets_its_name() {
    let snap = fixture();
    let vip = vip(&snap, "default", "web");
    let out = resolve(&snap, "_HTTP._tcp.web.default.svc.cluster.local.", RecordType::SRV);
    assert_eq!(answers(&out), vec!["0 100 80 web.default.svc.cluster.local."]);
    assert_eq!(additionals(&out), vec![format!("web.default.svc.cluster.local. {vip}")]);
    let out = resolve(&snap, "_dns._udp.kube-dns.kube-system.svc.cluster.local.", RecordType::SRV);
    assert_eq!(answers(&out), vec!["0 100 53 kube-dns.kube-system.svc.cluster.local."]);
}

#[test]
fn srv_for_headless_lists_each_ready_endpoint() {
    let snap = fixture();
    let out = resolve(&snap, "_pg._tcp.db.prod.svc.cluster.local.", RecordType::SRV);
    assert_eq!(
        answers(&out),
        vec![
            "0 33 5432 10-1-0-3.db.prod.svc.cluster.local.",
            "0 33 5432 db-0.db.prod.svc.cluster.local.",
            "0 33 5432 db-1.db.prod.svc.cluster.local.",
        ]
    );
    assert_eq!(
        additionals(&out),
        vec![
            "10-1-0-3.db.prod.svc.cluster.local. 10.1.0.3",
            "db-0.db.prod.svc.cluster.local. 10.1.0.1",
            "db-1.db.prod.svc.cluster.local. 10.1.0.2",
        ]
    );
}

#[test]
fn ptr_for_vips_names_the_service() {
    let snap = fixture();
    let IpAddr::V4(vip) = vip(&snap, "default", "web") else { panic!() };
    let o = vip.octets();
    let q = format!("{}.{}.{}.{}.IN-ADDR.ARPA.", o[3], o[2], o[1], o[0]);
    assert_eq!(answers(&resolve(&snap, &q, RecordType::PTR)), vec!["web.default.svc.cluster.local."]);
}

#[test]
fn any_returns_everything_for_the_name() {
    let snap = fixture();
    let out = resolve(&snap, "v6.default.svc.cluster.local.", RecordType::ANY);
    assert_eq!(answers(&out), vec!["fd00::7"]);
}

#[test]
fn custom_domain_and_bad_domains() {
    let zone = Zone::new("Edge.Mesh.", 30).unwrap();
    let snap = fixture();
    let out = zone.resolve(&snap, &name("web.default.svc.edge.mesh."), RecordType::A);
    let Outcome::Answer { answers, .. } = &out else { panic!("{out:?}") };
    assert_eq!(answers[0].ttl, 30);
    assert_eq!(zone.resolve(&snap, &name("web.default.svc.cluster.local."), RecordType::A), Outcome::Forward);
    for bad in ["", ".", "a..b", &"x".repeat(64)] {
        let err = Zone::new(bad, 5).unwrap_err().to_string();
        assert!(err.contains("cluster domain"), "{err}");
    }
}

#[test]
fn removed_service_is_nxdomain_in_the_next_snapshot() {
    let empty = snapshot(vec![]);
    assert_eq!(resolve(&empty, "web.default.svc.cluster.local.", RecordType::A), Outcome::NxDomain);
}

#[test]
fn dashed_labels() {
    assert_eq!(dashed("10.0.0.7".parse().unwrap()), "10-0-0-7");
    assert_eq!(dashed("fd00::7".parse().unwrap()), "fd00--7");
}

#[test]
fn with_interception_services_answer_their_cluster_ips() {
    // A UDP service with a cluster IP has a VIP as well (the target its
    // datagrams are DNATed to); clients are still given the cluster IP.
    let snap = snapshot(vec![
        build::service("default", "dns").cluster_ip("10.96.0.10").udp_port("dns", 53, 53).object(),
        build::service("default", "bare").port("http", 80, 80).object(),
    ]);
    let zone = zone().with_cluster_ips_first(true);
    let out = zone.resolve(&snap, &name("dns.default.svc.cluster.local."), RecordType::A);
    assert_eq!(answers(&out), vec!["10.96.0.10"]);
    let out = zone.resolve(&snap, &name("bare.default.svc.cluster.local."), RecordType::A);
    assert_eq!(answers(&out), vec![vip(&snap, "default", "bare").to_string()], "no cluster IP: the VIP");
    // Without interception the VIP is the service's address.
    let out = resolve(&snap, "dns.default.svc.cluster.local.", RecordType::A);
    assert_eq!(answers(&out), vec![vip(&snap, "default", "dns").to_string()]);
}

#[test]
fn aaaa_answers_ipv6_vips_and_cluster_ips() {
    let config = RegistryConfig {
        vip_cidr: "9.251.0.0/16".parse().unwrap(),
        vip_cidr6: Some("fd00:9:251::/112".parse().unwrap()),
        vips: edgemesh_core::VipPolicy::WhereNeeded,
        ..Default::default()
    };
    let mut state = RegistryState::new(&config);
    let mut dual = build::service("default", "dual").cluster_ip("10.96.0.10").cluster_ip("fd00:96::10");
    dual.0.ip_family_policy = Some(edgemesh_core::IpFamilyPolicy::RequireDualStack);
    let mut v6 = build::service("default", "v6only");
    v6.0.ip_families = vec![edgemesh_core::IpFamily::IPv6];
    for o in [dual.port("http", 80, 80).object(), v6.port("http", 80, 80).object()] {
        state.apply(SourceEvent::Apply(o));
    }
    let snap = state.take_generation();
    let zone = zone().with_cluster_ips_first(true);
    let ask = |q: &str, t| zone.resolve(&snap, &name(q), t);
    assert_eq!(answers(&ask("dual.default.svc.cluster.local.", RecordType::AAAA)), vec!["fd00:96::10"]);
    assert_eq!(answers(&ask("dual.default.svc.cluster.local.", RecordType::A)), vec!["10.96.0.10"]);
    // No cluster IP, IPv6 only: the IPv6 VIP, and no A record.
    let vip6 = snap.service(&edgemesh_core::ServiceKey::new("default", "v6only")).unwrap().vip6.unwrap();
    assert!(vip6.to_string().starts_with("fd00:9:251::"), "{vip6}");
    assert_eq!(answers(&ask("v6only.default.svc.cluster.local.", RecordType::AAAA)), vec![vip6.to_string()]);
    assert_eq!(ask("v6only.default.svc.cluster.local.", RecordType::A), Outcome::NoData);
}
