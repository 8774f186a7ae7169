//! What the fuzz targets share: the DNS handler over a snapshot with a few
//! services, and the property every accepted object must have (it survives
//! the offline cache). Each target in `fuzz_targets/` feeds one parser the
//! bytes libFuzzer makes and asserts what must hold beyond "no panic".
//! [`http_front`]: the HTTP front fed from memory.

pub mod http_front;

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use edgemesh_core::registry::RegistryState;
use edgemesh_core::{LbStrategy, Object, RegistryConfig, Snapshot, SourceEvent, build};
use edgemesh_dns::cache::Cache;
use edgemesh_dns::cluster::Zone;
use edgemesh_dns::forward::Forwarder;
use edgemesh_dns::handler::Handler;
use hickory_proto::op::Message;
use tokio::sync::watch;

/// Where the queries come from: this node.
pub const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A synced snapshot with the kinds of services DNS answers differently:
/// a VIP service with named ports, a headless one with hostnames and both
/// families, and one with no endpoints.
pub static SNAPSHOT: LazyLock<Arc<Snapshot>> = LazyLock::new(|| {
    let config = RegistryConfig {
        vip_cidr: "9.251.0.0/16".parse().expect("CIDR"),
        default_strategy: LbStrategy::RoundRobin,
        ..Default::default()
    };
    let mut state = RegistryState::new(&config);
    for object in [
        build::service("default", "web").port("http", 80, 8080).udp_port("dns", 53, 5353).object(),
        build::slice("default", "web-1", "web").endpoint("10.0.0.1", "n1").port("http", 8080).object(),
        build::service("prod", "db").headless().port("pg", 5432, 5432).object(),
        build::slice("prod", "db-1", "db")
            .hostname("10.1.0.1", "n1", "db-0")
            .endpoint("fd00::1", "n2")
            .port("pg", 5432)
            .object(),
        build::service("prod", "empty").port("http", 80, 80).object(),
    ] {
        state.apply(SourceEvent::Apply(object));
    }
    let mut snapshot = state.take_generation();
    snapshot.synced = true;
    Arc::new(snapshot)
});

/// A handler over [`SNAPSHOT`] for `cluster.local`, with a fresh cache and a
/// forwarder (with no upstreams: nothing leaves the process; names outside
/// the cluster come back as `Step::Forward` unless the cache has them).
pub fn dns_handler() -> Handler {
    let (_tx, rx) = watch::channel(SNAPSHOT.clone());
    let zone = Zone::new("cluster.local", 5).expect("zone");
    Handler::new(zone, rx, Some(Forwarder::new(Vec::new(), Duration::from_secs(1))), Cache::new(64))
}

/// A response the handler sent: it parses, answers the request's ID and
/// fits the size allowed (`max`).
pub fn check_response(request_id: Option<u16>, bytes: &[u8], max: usize) {
    assert!(bytes.len() <= max, "response of {} bytes over the limit of {max}", bytes.len());
    let response = Message::from_vec(bytes)
        .unwrap_or_else(|e| panic!("the handler sent an unparsable response ({e}): {bytes:02x?}"));
    if let Some(id) = request_id {
        assert_eq!(response.metadata.id, id, "response to another ID");
    }
}

/// An object a source accepted is stored in the offline cache and read back
/// unchanged (else a restart without the cloud would serve something else).
pub fn assert_cacheable(object: &Object) {
    let mut bytes = Vec::new();
    edgemesh_cache::codec::encode(object, &mut bytes);
    let back =
        edgemesh_cache::codec::decode(&bytes).unwrap_or_else(|e| panic!("cached {object:?} does not decode: {e}"));
    assert_eq!(&back, object, "the cache changed the object");
}

/// Runs a future that never waits (a reader over a byte slice) to its end.
pub fn ready<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("a reader over a byte slice waited"),
    }
}
