//! Node-local DNS for the edgemesh agent.
//!
//! Answers `<svc>.<ns>.svc.<cluster domain>` (A/AAAA, SRV, PTR, headless
//! endpoints) from the newest registry [`Snapshot`](edgemesh_core::Snapshot)
//! and forwards every other name to the node's upstream resolvers, with a
//! bounded, TTL-honouring cache.
//!
//! Module map (data flows top to bottom):
//!
//! - [`server`]: binding the UDP sockets (one per core, `SO_REUSEPORT`) and
//!   the TCP listener, our UDP receive loops, hickory-server's `Server` for
//!   TCP, shutdown. The only module that touches sockets of clients.
//! - [`access`]: who is answered at all (this node and its pods; REFUSED
//!   for anyone else), and [`rate_limit`]: queries per second per client
//!   over UDP, as BIND's response rate limiting.
//! - [`hickory`]: the [`Handler`](handler::Handler) as a hickory-server
//!   `RequestHandler`, so any hickory-server transport (TCP here) serves the
//!   same answers as our UDP loops.
//! - [`handler`]: one request in, one response out: parses the wire message,
//!   reads the snapshot, asks [`cluster`] or the forwarder, encodes the answer
//!   within the client's payload size (TC over UDP when it does not fit);
//!   identical questions waiting for the upstreams share one exchange.
//! - [`wire`]: the allocation-free fast path for the commonest query (A/AAAA
//!   of a service): parses the question and writes the answer in place.
//! - [`cluster`]: the pure part: snapshot + question -> records, NODATA,
//!   NXDOMAIN or "not ours". Table-tested without I/O.
//! - [`forward`]: asks the upstreams (UDP, TCP on truncation, next upstream
//!   on failure, one deadline for all) and fills the cache.
//! - [`cache`]: bounded cache of upstream answers keyed by (name, type,
//!   class), case-insensitive, with TTL decrement and RFC 2308 negative
//!   caching.
//! - [`live`]: the settings a config reload changes while the server runs
//!   (TTLs, upstreams, upstream timeout).
//! - [`metrics`]: requests, responses, cache and upstream metrics, named
//!   and labelled like CoreDNS's.
//! - [`error`]: the [`DnsError`] enum; [`throttle`]: warnings logged once
//!   per interval.
//!
//! Built on hickory-proto (wire format) and hickory-server 0.26: TCP is
//! served by hickory-server's `Server` through [`hickory::HickoryHandler`].
//! UDP is served by our own loops rather than by that `Server`: it reads
//! each socket in one task, spawns a task per packet, funnels every reply
//! through one channel and task, and logs every request at `info`, which
//! costs more than the whole answer on this hot path (see [`server`]).
//!
//! Logging: hickory-server 0.26 logs every request it serves (here: every
//! TCP query) at `info` under the `hickory_server` target; the agent's
//! default log filter should include `hickory_server=warn`.
#![forbid(unsafe_code)]
#![warn(clippy::unwrap_used)] // outside tests: an error with context, or an `expect` naming the invariant

use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

pub mod access;
pub mod cache;
pub mod cluster;
pub mod error;
pub mod forward;
pub mod handler;
pub mod hickory;
pub mod live;
pub mod metrics;
pub mod rate_limit;
pub mod server;
pub mod throttle;
pub mod wire;

pub use error::DnsError;
pub use live::DnsLiveSettings;
pub use server::DnsServer;

/// Settings of the DNS server: the `dns` section of the agent's config
/// (keys in camelCase); fields marked "derived" are set by the agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct DnsConfig {
    /// UDP and TCP on the same address. `None`: [`DEFAULT_LISTEN`] (the
    /// agent's node mode picks `169.254.96.16:53` instead).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// Forwarders for names outside the cluster domain, tried in order
    /// (the agent fills in the nameservers of `/etc/resolv.conf` when none
    /// is given).
    pub upstreams: Vec<SocketAddr>,
    /// The cluster domain, `cluster.local` by default.
    pub cluster_domain: String,
    /// TTL of answers for services, in seconds.
    pub service_ttl: u32,
    /// How long resolvers may cache that a name in the cluster domain does
    /// not exist (NXDOMAIN, NODATA), in seconds: the SOA's TTL and minimum.
    /// Clients with `ndots:5` ask for many such names; longer saves
    /// queries, shorter lets a new service resolve sooner.
    pub negative_ttl: u32,
    /// Total time for one forwarded query, over all upstreams, before SERVFAIL.
    #[serde(with = "edgemesh_core::duration")]
    pub upstream_timeout: Duration,
    /// Most upstream answers kept in the cache (0 disables caching).
    pub cache_size: usize,
    /// Clients answered besides this node (loopback, its own addresses,
    /// the pod CIDRs of its Node object): pod CIDRs no Node object gives
    /// (manifests without a Node), or other trusted networks. Needed only
    /// when the server listens on an address that is not node-local (see
    /// [`access`]); everyone else gets REFUSED.
    pub allowed_clients: Vec<IpNet>,
    /// Queries per second per client address over UDP (0: no limit);
    /// see [`rate_limit`].
    pub rate_limit: u32,
    /// Queries a client may send at once before [`rate_limit`](Self::rate_limit) applies.
    pub rate_limit_burst: u32,
    /// Derived (`intercept.mode`): answer services with their cluster IPs
    /// rather than their VIPs (interception on: cluster IPs are reachable).
    #[serde(skip)]
    pub cluster_ips_first: bool,
}

/// The DNS server's address when none is set (without node mode; node mode
/// uses `169.254.96.16:53`, see the agent's config).
///
/// Port 15053, not 5353: 5353 is multicast DNS, where avahi-daemon and every
/// mDNS stack (EdgeMesh's and our own tunnel's peer discovery included) bind
/// `0.0.0.0:5353`, and a DNS server on `127.0.0.1:5353` made an EdgeMesh
/// agent on the same node fail to bind and never find its peer (issue #21).
/// 15053 is unassigned in the IANA registry, below Linux's ephemeral range
/// (32768-60999, where an outgoing connection could already hold it), above
/// the privileged ports (no capability needed), and clear of the de-facto
/// alternates (5335 unbound, 5354 mDNSResponder, 5355 LLMNR/systemd-resolved,
/// 8053 BIND statistics, 8600 Consul, 10053 kube-dns). It completes the
/// Istio-shaped layout of the agent's other ports (15006 transparent
/// listener, 15020 admin): Istio's DNS proxy uses 15053 only inside pod
/// network namespaces, where an Istio sidecar would take 15006 and 15020
/// from this agent anyway, never on a node's.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 15053);

impl DnsConfig {
    /// The address to serve on.
    pub fn listen(&self) -> SocketAddr {
        self.listen.unwrap_or(DEFAULT_LISTEN)
    }
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            listen: None,
            upstreams: Vec::new(),
            cluster_domain: "cluster.local".into(),
            service_ttl: 5,
            negative_ttl: 5,
            upstream_timeout: Duration::from_secs(2),
            cache_size: 10_000,
            allowed_clients: Vec::new(),
            rate_limit: 200,
            rate_limit_burst: 400,
            cluster_ips_first: false,
        }
    }
}
