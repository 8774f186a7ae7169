//! The fast path and the general path must agree, byte for byte where it
//! matters (flags, question, answers, EDNS).

use std::sync::Arc;

use edgemesh_core::registry::RegistryState;
use edgemesh_core::{LbStrategy, RegistryConfig, SourceEvent, build};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use tokio::sync::watch;

use super::{Handler, Reply, Step, Transport};
use crate::cache::Cache;
use crate::cluster::Zone;
use crate::metrics::QueryInfo;
use crate::wire::Question;

/// Where the test queries come from.
const CLIENT: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

fn handler() -> (Handler, watch::Sender<Arc<edgemesh_core::Snapshot>>) {
    let config = RegistryConfig {
        vip_cidr: "9.251.0.0/16".parse().unwrap(),
        default_strategy: LbStrategy::RoundRobin,
        ..Default::default()
    };
    let mut state = RegistryState::new(&config);
    for object in [
        build::service("default", "web").port("http", 80, 8080).object(),
        build::service("prod", "db").headless().object(),
        build::slice("prod", "db-1", "db").endpoint("10.1.0.1", "n1").endpoint("fd00::1", "n1").object(),
    ] {
        state.apply(SourceEvent::Apply(object));
    }
    let (tx, rx) = watch::channel(synced(&mut state));
    (Handler::new(Zone::new("cluster.local", 5).unwrap(), rx, None, Cache::new(10)), tx)
}

/// The next generation of `state`, as the registry publishes it once every
/// source has been read in full.
fn synced(state: &mut RegistryState) -> Arc<edgemesh_core::Snapshot> {
    let mut snap = state.take_generation();
    snap.synced = true;
    Arc::new(snap)
}

fn query(name: &str, qtype: RecordType, edns: bool, cd: bool) -> Vec<u8> {
    let mut m = Message::new(0xbeef, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.metadata.checking_disabled = cd;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    if edns {
        let mut e = Edns::new();
        e.set_max_payload(4000);
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}

#[test]
fn fast_and_general_paths_agree() {
    let (handler, _tx) = handler();
    let mut fast_count = 0;
    for name in ["web.default.svc.cluster.local.", "WEB.Default.SVC.cluster.LOCAL.", "db.prod.svc.cluster.local."] {
        for qtype in [RecordType::A, RecordType::AAAA] {
            for edns in [false, true] {
                for cd in [false, true] {
                    let packet = query(name, qtype, edns, cd);
                    let mut out = Vec::new();
                    assert!(matches!(handler.handle(&packet, Transport::Udp, CLIENT, &mut out), Step::Reply));
                    let mut info = QueryInfo::received(Transport::Udp, CLIENT);
                    let Reply::Bytes(general) = handler.general(&packet, Transport::Udp, &mut info) else { panic!() };
                    let q = Question::parse(&packet).unwrap();
                    let mut fast = Vec::new();
                    if handler.fast_answer(&q, Transport::Udp, &mut fast) {
                        fast_count += 1;
                        assert_eq!(fast, out);
                    }
                    let (a, b) = (Message::from_vec(&out).unwrap(), Message::from_vec(&general).unwrap());
                    assert_eq!(a.metadata, b.metadata, "{name} {qtype} edns={edns}");
                    assert_eq!(a.queries, b.queries);
                    assert_eq!(a.answers, b.answers);
                    assert_eq!(a.authorities, b.authorities);
                    assert_eq!(a.edns.map(|e| e.max_payload()), b.edns.map(|e| e.max_payload()));
                }
            }
        }
    }
    // AAAA of web (both spellings) is NODATA, on the general path; the
    // other four name/type pairs, in all four flag variants, are fast.
    assert_eq!(fast_count, 16);
}

#[test]
fn snapshot_updates_are_seen_by_the_next_query() {
    let (handler, tx) = handler();
    let packet = query("new.default.svc.cluster.local.", RecordType::A, false, false);
    let mut out = Vec::new();
    handler.handle(&packet, Transport::Udp, CLIENT, &mut out);
    assert_eq!(Message::from_vec(&out).unwrap().metadata.response_code, ResponseCode::NXDomain);

    let config = RegistryConfig {
        vip_cidr: "9.251.0.0/16".parse().unwrap(),
        default_strategy: LbStrategy::RoundRobin,
        ..Default::default()
    };
    let mut state = RegistryState::new(&config);
    state.apply(SourceEvent::Apply(build::service("default", "new").object()));
    tx.send_replace(synced(&mut state));
    handler.handle(&packet, Transport::Udp, CLIENT, &mut out);
    let m = Message::from_vec(&out).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(m.answers.len(), 1);
}

#[test]
fn garbage_and_non_queries_are_dropped_or_refused() {
    let (handler, _tx) = handler();
    let mut out = Vec::new();
    assert!(matches!(handler.handle(&[1, 2, 3], Transport::Udp, CLIENT, &mut out), Step::Drop));
    let mut response = query("web.default.svc.cluster.local.", RecordType::A, false, false);
    response[2] |= 0x80;
    assert!(matches!(handler.handle(&response, Transport::Udp, CLIENT, &mut out), Step::Drop));
    // No upstreams: outside names are REFUSED.
    let outside = query("example.com.", RecordType::A, false, false);
    assert!(matches!(handler.handle(&outside, Transport::Udp, CLIENT, &mut out), Step::Reply));
    assert_eq!(Message::from_vec(&out).unwrap().metadata.response_code, ResponseCode::Refused);
    // Class CHAOS is not the cluster zone's: forwarded (here REFUSED).
    let mut chaos = query("web.default.svc.cluster.local.", RecordType::A, false, false);
    let len = chaos.len();
    chaos[len - 1] = 3;
    assert!(matches!(handler.handle(&chaos, Transport::Udp, CLIENT, &mut out), Step::Reply));
    assert_eq!(Message::from_vec(&out).unwrap().metadata.response_code, ResponseCode::Refused);
    // Another opcode: NOTIMP.
    let mut notify = outside.clone();
    notify[2] = 4 << 3;
    assert!(matches!(handler.handle(&notify, Transport::Udp, CLIENT, &mut out), Step::Reply));
    assert_eq!(Message::from_vec(&out).unwrap().metadata.response_code, ResponseCode::NotImp);
}

#[test]
fn unknown_names_are_servfail_until_the_source_is_read_in_full() {
    let (handler, tx) = handler();
    let packet = query("later.default.svc.cluster.local.", RecordType::A, false, false);
    let config = RegistryConfig {
        vip_cidr: "9.251.0.0/16".parse().unwrap(),
        default_strategy: LbStrategy::RoundRobin,
        ..Default::default()
    };
    let mut state = RegistryState::new(&config);
    tx.send_replace(Arc::new(state.take_generation()));
    let mut out = Vec::new();
    handler.handle(&packet, Transport::Udp, CLIENT, &mut out);
    assert_eq!(Message::from_vec(&out).unwrap().metadata.response_code, ResponseCode::ServFail);
    tx.send_replace(synced(&mut state));
    handler.handle(&packet, Transport::Udp, CLIENT, &mut out);
    assert_eq!(Message::from_vec(&out).unwrap().metadata.response_code, ResponseCode::NXDomain);
}
