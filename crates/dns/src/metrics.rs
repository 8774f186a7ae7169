//! The DNS server's metrics, shaped like CoreDNS's `metrics`, `cache` and
//! `forward` plugins (names after the prefix, label names, label values and
//! buckets), so a CoreDNS dashboard works with `coredns_` changed to
//! `edgemesh_` (and `coredns_cache_`/`coredns_forward_` to
//! `edgemesh_dns_cache_`/`edgemesh_dns_forward_`):
//!
//! - `dns_requests_total{server,zone,proto,family,type}`,
//!   `dns_responses_total{server,zone,rcode}`,
//!   `dns_request_duration_seconds{server,zone,type}` ([`DnsMetrics`]);
//! - `dns_cache_hits_total{server,type}`, `dns_cache_misses_total{server}`,
//!   `dns_cache_entries{server,type}` ([`CacheMetrics`]);
//! - `dns_forward_requests_total{to}`, `dns_forward_responses_total{to,rcode}`,
//!   `dns_forward_request_duration_seconds{to,rcode}` ([`UpstreamMetrics`]);
//! - ours, for the limits of issue #18: `dns_clients_refused_total` (queries
//!   answered REFUSED because the client is not this node's) and
//!   `dns_rate_limited_total{action}` (queries over their client's rate,
//!   `drop` or `slip`: answered with TC only).
//!
//! Every label value comes from a fixed table (query types CoreDNS names,
//! else `other`; rcodes by name), so the number of series is bounded. The
//! handles of each combination are resolved on first use and kept in an
//! array indexed by it: a query costs two clock reads, a few atomic adds and
//! a histogram observation, never a label allocation or a map lookup.

use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;
use std::time::Instant;

use edgemesh_metrics::prometheus_client::encoding::EncodeLabelSet;
use edgemesh_metrics::prometheus_client::metrics::histogram::exponential_buckets;
use edgemesh_metrics::{Counter, Family, Gauge, Histogram, Registry, Unit};

use crate::handler::Transport;

/// CoreDNS's `plugin.TimeBuckets`: 0.25 ms doubling to about 8 s.
fn time_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.00025, 2.0, 16))
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// The query types CoreDNS reports by name (its `monitorType`); every other
/// type is reported as `other`, the last slot.
const QTYPES: [(u16, &str); 18] = [
    (1, "A"),
    (28, "AAAA"),
    (5, "CNAME"),
    (48, "DNSKEY"),
    (43, "DS"),
    (15, "MX"),
    (50, "NSEC3"),
    (47, "NSEC"),
    (2, "NS"),
    (12, "PTR"),
    (46, "RRSIG"),
    (6, "SOA"),
    (33, "SRV"),
    (16, "TXT"),
    (65, "HTTPS"),
    (251, "IXFR"),
    (252, "AXFR"),
    (255, "ANY"),
];
const TYPE_SLOTS: usize = QTYPES.len() + 1;

fn type_slot(qtype: u16) -> usize {
    QTYPES.iter().position(|&(t, _)| t == qtype).unwrap_or(QTYPES.len())
}

fn type_name(slot: usize) -> &'static str {
    QTYPES.get(slot).map_or("other", |&(_, name)| name)
}

/// Header rcodes (4 bits) by name, as CoreDNS (miekg/dns) writes them;
/// the unassigned ones by number.
const RCODES: [&str; 16] = [
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "YXDOMAIN", "YXRRSET", "NXRRSET", "NOTAUTH",
    "NOTZONE", "11", "12", "13", "14", "15",
];

/// The rcode in a response's header.
pub(crate) fn rcode_of(response: &[u8]) -> u8 {
    response.get(3).map_or(2, |b| b & 0x0f)
}

/// Which zone answered: ours (the cluster domain) or the root (forwarded).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZoneKind {
    Cluster = 0,
    Forwarded = 1,
}

/// What is known of a query until its response is counted.
#[derive(Clone, Copy, Debug)]
pub struct QueryInfo {
    pub start: Instant,
    pub transport: Transport,
    /// 0: IPv4 client, 1: IPv6 client.
    family: usize,
    pub qtype: u16,
    pub zone: ZoneKind,
}

impl QueryInfo {
    /// A query from `client` received now; type and zone are filled in as
    /// the handler learns them (until then: `other`, the root zone).
    pub fn received(transport: Transport, client: IpAddr) -> Self {
        let family = match client {
            IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => 1,
            _ => 0,
        };
        Self { start: Instant::now(), transport, family, qtype: 0, zone: ZoneKind::Forwarded }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    server: String,
    zone: String,
    proto: &'static str,
    family: &'static str,
    r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResponseLabels {
    server: String,
    zone: String,
    rcode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DurationLabels {
    server: String,
    zone: String,
    r#type: &'static str,
}

/// Requests, responses and their durations, per server.
#[derive(Debug)]
pub struct DnsMetrics {
    server: String,
    /// The cluster domain with a trailing dot, and `.`.
    zones: [String; 2],
    requests: Family<RequestLabels, Counter>,
    responses: Family<ResponseLabels, Counter>,
    durations: Histograms<DurationLabels>,
    /// Indexed [zone][proto][family][type].
    request_slots: Box<[OnceLock<Counter>]>,
    /// Indexed [zone][rcode].
    response_slots: Box<[OnceLock<Counter>]>,
    /// Indexed [zone][type].
    duration_slots: Box<[OnceLock<Histogram>]>,
    pub(crate) cache: CacheMetrics,
    pub(crate) forward: ForwardMetrics,
    clients_refused: Counter,
    rate_limited: Family<ActionLabels, Counter>,
    /// Indexed by [`LimitAction`].
    rate_limited_slots: [Counter; 2],
}

/// What happened to a query over its client's rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitAction {
    Drop = 0,
    Slip = 1,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    action: &'static str,
}

fn slots<T>(n: usize) -> Box<[OnceLock<T>]> {
    (0..n).map(|_| OnceLock::new()).collect()
}

impl DnsMetrics {
    /// Metrics of the server on `listen` (`server` = `dns://<listen>`) for
    /// the cluster domain `domain`; counted from now on, exported once
    /// [registered](Self::register).
    pub fn new(listen: SocketAddr, domain: &str) -> Self {
        let server = format!("dns://{listen}");
        let cluster_zone = format!("{}.", domain.trim_end_matches('.'));
        let rate_limited = Family::<ActionLabels, Counter>::default();
        let rate_limited_slots =
            ["drop", "slip"].map(|action| rate_limited.get_or_create_owned(&ActionLabels { action }));
        Self {
            clients_refused: Counter::default(),
            rate_limited,
            rate_limited_slots,
            cache: CacheMetrics::new(&server),
            server,
            zones: [cluster_zone, ".".into()],
            requests: Family::default(),
            responses: Family::default(),
            durations: Family::new_with_constructor(time_buckets),
            request_slots: slots(2 * 2 * 2 * TYPE_SLOTS),
            response_slots: slots(2 * RCODES.len()),
            duration_slots: slots(2 * TYPE_SLOTS),
            forward: ForwardMetrics::default(),
        }
    }

    /// Counts one query and its response (`rcode` from its header).
    pub fn answered(&self, query: &QueryInfo, rcode: u8) {
        let zone = query.zone as usize;
        let proto = match query.transport {
            Transport::Udp => 0,
            Transport::Tcp => 1,
        };
        let ty = type_slot(query.qtype);
        let rcode = usize::from(rcode & 0x0f);
        let index = ((zone * 2 + proto) * 2 + query.family) * TYPE_SLOTS + ty;
        self.request_slots[index]
            .get_or_init(|| {
                self.requests.get_or_create_owned(&RequestLabels {
                    server: self.server.clone(),
                    zone: self.zones[zone].clone(),
                    proto: ["udp", "tcp"][proto],
                    family: ["1", "2"][query.family],
                    r#type: type_name(ty),
                })
            })
            .inc();
        self.response_slots[zone * RCODES.len() + rcode]
            .get_or_init(|| {
                self.responses.get_or_create_owned(&ResponseLabels {
                    server: self.server.clone(),
                    zone: self.zones[zone].clone(),
                    rcode: RCODES[rcode],
                })
            })
            .inc();
        self.duration_slots[zone * TYPE_SLOTS + ty]
            .get_or_init(|| {
                self.durations.get_or_create_owned(&DurationLabels {
                    server: self.server.clone(),
                    zone: self.zones[zone].clone(),
                    r#type: type_name(ty),
                })
            })
            .observe(query.start.elapsed().as_secs_f64());
    }

    /// Counts a query refused because of its client.
    pub fn refused(&self) {
        self.clients_refused.inc();
    }

    /// Counts a query over its client's rate.
    pub fn rate_limited(&self, action: LimitAction) {
        self.rate_limited_slots[action as usize].inc();
    }

    /// Registers everything under `dns_` in `registry` (the `edgemesh_` one).
    pub fn register(&self, registry: &mut Registry) {
        let dns = registry.sub_registry_with_prefix("dns");
        dns.register("requests", "Counter of DNS requests made per zone, protocol and family", self.requests.clone());
        dns.register("responses", "Counter of response status codes", self.responses.clone());
        dns.register_with_unit(
            "request_duration",
            "Histogram of the time each request took",
            Unit::Seconds,
            self.durations.clone(),
        );
        dns.register(
            "clients_refused",
            "Queries answered REFUSED because the client is not this node's (dns.allowedClients)",
            self.clients_refused.clone(),
        );
        dns.register(
            "rate_limited",
            "Queries over their client's rate limit (dns.rateLimit): dropped, or answered with TC only (slip)",
            self.rate_limited.clone(),
        );
        let cache = dns.sub_registry_with_prefix("cache");
        cache.register("hits", "The count of cache hits", self.cache.hits.clone());
        cache.register("misses", "The count of cache misses", self.cache.misses.clone());
        cache.register("entries", "The number of elements in the cache", self.cache.entries.clone());
        let forward = dns.sub_registry_with_prefix("forward");
        forward.register("requests", "Counter of requests made per upstream", self.forward.requests.clone());
        forward.register(
            "responses",
            "Counter of responses received per upstream and rcode",
            self.forward.responses.clone(),
        );
        forward.register_with_unit(
            "request_duration",
            "Histogram of the time each request to an upstream took",
            Unit::Seconds,
            self.forward.durations.clone(),
        );
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheTypeLabels {
    server: String,
    r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServerLabels {
    server: String,
}

/// Whether a cached answer is a positive one or a denial (NXDOMAIN, NODATA).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheType {
    Success = 0,
    Denial = 1,
}

/// The forwarding cache's hits, misses and entries.
#[derive(Clone, Debug)]
pub struct CacheMetrics {
    hits: Family<CacheTypeLabels, Counter>,
    misses: Family<ServerLabels, Counter>,
    entries: Family<CacheTypeLabels, Gauge>,
    hit: [Counter; 2],
    miss: Counter,
    entry: [Gauge; 2],
}

impl CacheMetrics {
    pub(crate) fn new(server: &str) -> Self {
        let (hits, misses, entries) = (Family::default(), Family::default(), Family::default());
        let labels = |r#type| CacheTypeLabels { server: server.into(), r#type };
        let hit = [labels("success"), labels("denial")].map(|l| Family::get_or_create_owned(&hits, &l));
        let entry = [labels("success"), labels("denial")].map(|l| Family::get_or_create_owned(&entries, &l));
        let miss = misses.get_or_create_owned(&ServerLabels { server: server.into() });
        Self { hits, misses, entries, hit, miss, entry }
    }

    pub(crate) fn hit(&self, kind: CacheType) {
        self.hit[kind as usize].inc();
    }

    pub(crate) fn miss(&self) {
        self.miss.inc();
    }

    pub(crate) fn stored(&self, kind: CacheType) {
        self.entry[kind as usize].inc();
    }

    pub(crate) fn removed(&self, kind: CacheType) {
        self.entry[kind as usize].dec();
    }

    /// The entries gauge of `kind`.
    pub fn entries(&self, kind: CacheType) -> i64 {
        self.entry[kind as usize].get()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    to: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamRcodeLabels {
    to: String,
    rcode: &'static str,
}

/// The forwarder's families, shared by its upstreams.
#[derive(Clone, Debug)]
pub struct ForwardMetrics {
    requests: Family<UpstreamLabels, Counter>,
    responses: Family<UpstreamRcodeLabels, Counter>,
    durations: Histograms<UpstreamRcodeLabels>,
}

impl Default for ForwardMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            responses: Family::default(),
            durations: Family::new_with_constructor(time_buckets),
        }
    }
}

impl ForwardMetrics {
    /// The handles of one upstream (`to` = its address).
    pub(crate) fn upstream(&self, to: SocketAddr) -> UpstreamMetrics {
        let to = to.to_string();
        UpstreamMetrics {
            requests: self.requests.get_or_create_owned(&UpstreamLabels { to: to.clone() }),
            responses: self.responses.clone(),
            durations: self.durations.clone(),
            to,
            rcodes: std::array::from_fn(|_| OnceLock::new()),
        }
    }
}

/// One upstream's requests, and its responses by rcode with their duration.
#[derive(Debug)]
pub struct UpstreamMetrics {
    to: String,
    requests: Counter,
    responses: Family<UpstreamRcodeLabels, Counter>,
    durations: Histograms<UpstreamRcodeLabels>,
    rcodes: [OnceLock<(Counter, Histogram)>; 16],
}

impl UpstreamMetrics {
    pub(crate) fn request(&self) {
        self.requests.inc();
    }

    /// A response with `rcode` to a request sent at `sent`.
    pub(crate) fn response(&self, rcode: u8, sent: Instant) {
        let rcode = usize::from(rcode & 0x0f);
        let (count, duration) = self.rcodes[rcode].get_or_init(|| {
            let labels = UpstreamRcodeLabels { to: self.to.clone(), rcode: RCODES[rcode] };
            (self.responses.get_or_create_owned(&labels), self.durations.get_or_create_owned(&labels))
        });
        count.inc();
        duration.observe(sent.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_coredns_names_keep_their_name_the_rest_are_other() {
        assert_eq!(type_name(type_slot(1)), "A");
        assert_eq!(type_name(type_slot(28)), "AAAA");
        assert_eq!(type_name(type_slot(33)), "SRV");
        assert_eq!(type_name(type_slot(65)), "HTTPS");
        assert_eq!(type_name(type_slot(99)), "other", "SPF is not one CoreDNS names");
        assert_eq!(type_name(type_slot(0)), "other");
        assert_eq!(type_name(type_slot(u16::MAX)), "other");
    }

    #[test]
    fn each_combination_is_one_series() {
        let metrics = DnsMetrics::new("127.0.0.1:53".parse().unwrap(), "cluster.local");
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut query = QueryInfo::received(Transport::Udp, "::1".parse().unwrap());
        query.qtype = 12;
        query.zone = ZoneKind::Cluster;
        metrics.answered(&query, 3);
        metrics.answered(&query, 3);
        query.qtype = 99;
        query.zone = ZoneKind::Forwarded;
        metrics.answered(&query, 0x15); // low bits: REFUSED
        let mut text = String::new();
        edgemesh_metrics::prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let line = |s: &str| text.lines().any(|l| l == s);
        assert!(
            line(
                r#"dns_requests_total{server="dns://127.0.0.1:53",zone="cluster.local.",proto="udp",family="2",type="PTR"} 2"#
            ),
            "{text}"
        );
        assert!(
            line(r#"dns_responses_total{server="dns://127.0.0.1:53",zone="cluster.local.",rcode="NXDOMAIN"} 2"#),
            "{text}"
        );
        assert!(
            line(r#"dns_requests_total{server="dns://127.0.0.1:53",zone=".",proto="udp",family="2",type="other"} 1"#),
            "{text}"
        );
        assert!(line(r#"dns_responses_total{server="dns://127.0.0.1:53",zone=".",rcode="REFUSED"} 1"#), "{text}");
        assert!(
            line(
                r#"dns_request_duration_seconds_count{server="dns://127.0.0.1:53",zone="cluster.local.",type="PTR"} 2"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"le="0.00025""#) && text.contains(r#"le="8.192""#), "CoreDNS's buckets: {text}");
    }
}
