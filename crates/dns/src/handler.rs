//! One request in, one response out.
//!
//! [`Handler::handle`] is synchronous and answers everything that needs no
//! upstream (cluster names, cache hits, errors) right in the receive loop;
//! only cache misses for outside names come back as [`Step::Forward`] for
//! [`Handler::forward`] to finish in a task of their own.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use edgemesh_core::Snapshot;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::DNSClass;
use tokio::sync::watch;

use crate::access::ClientAccess;
use crate::cache::{Cache, CacheKey, CachedAnswer};
use crate::cluster::{self, Outcome, Zone};
use crate::forward::Forwarder;
use crate::metrics::{DnsMetrics, LimitAction, QueryInfo, ZoneKind, rcode_of};
use crate::rate_limit::{RateLimiter, Verdict};
use crate::throttle::WarnEvery;
use crate::wire::{OUR_PAYLOAD, Question};

/// Largest UDP response we send, whatever the client's EDNS says: the
/// payload we advertise (the DNS flag day 2020 value, which fits a
/// 1280-byte IPv6 MTU unfragmented). Anything larger is truncated with TC
/// and fetched over TCP, so a spoofed query cannot make a large answer.
pub const MAX_UDP_PAYLOAD: u16 = OUR_PAYLOAD;

/// How often refused and rate-limited clients are logged at warn.
const WARN_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// How the request arrived; decides the response size limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// What to do with a packet.
#[derive(Debug)]
pub enum Step {
    /// Send the bytes now in the output buffer back.
    Reply,
    /// Not a query we can answer (garbage, a response): say nothing.
    Drop,
    /// Needs the upstreams; finish with [`Handler::forward`].
    Forward(Box<Pending>),
}

/// What the general path decided.
enum Reply {
    Bytes(Vec<u8>),
    Drop,
    Forward(Box<Pending>),
}

/// Largest UDP response for a client that sent this EDNS payload size (or none).
fn udp_limit(edns_payload: Option<u16>) -> usize {
    usize::from(edns_payload.unwrap_or(512).clamp(512, MAX_UDP_PAYLOAD))
}

/// A parsed request waiting for the upstreams.
#[derive(Debug)]
pub struct Pending {
    request: Message,
    key: CacheKey,
    max_size: usize,
    query: QueryInfo,
}

/// Everything needed to answer: the zone, the snapshots, the upstreams.
#[derive(Debug)]
pub struct Handler {
    zone: Zone,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    forwarder: Option<Forwarder>,
    cache: Cache,
    /// Labels in the zone's origin (2 for `cluster.local`).
    origin_labels: usize,
    /// Upstream exchanges in progress, by question; `None` until done, then
    /// the answer (`None` inside: SERVFAIL).
    inflight: Mutex<HashMap<CacheKey, InflightRx>>,
    metrics: DnsMetrics,
    /// Who is answered at all (see [`crate::access`]).
    access: ClientAccess,
    /// Queries per second per client over UDP (see [`crate::rate_limit`]).
    limiter: Option<RateLimiter>,
    refused_warn: WarnEvery,
    limited_warn: WarnEvery,
}

type InflightRx = watch::Receiver<Option<Option<Arc<CachedAnswer>>>>;

/// Removes the leader's in-flight entry however its exchange ends.
struct InflightGuard<'a> {
    map: &'a Mutex<HashMap<CacheKey, InflightRx>>,
    key: &'a CacheKey,
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        lock(self.map).remove(self.key);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Handler {
    pub fn new(
        zone: Zone,
        snapshots: watch::Receiver<Arc<Snapshot>>,
        forwarder: Option<Forwarder>,
        cache: Cache,
    ) -> Self {
        let origin_labels = zone.origin().iter().len();
        let unbound = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
        let metrics = DnsMetrics::new(unbound, &zone.origin().to_ascii());
        Self {
            zone,
            snapshots,
            forwarder,
            cache,
            origin_labels,
            inflight: Mutex::default(),
            metrics,
            access: ClientAccess::new(Ipv4Addr::UNSPECIFIED.into(), Vec::new()),
            limiter: None,
            refused_warn: WarnEvery::new(WARN_EVERY),
            limited_warn: WarnEvery::new(WARN_EVERY),
        }
    }

    /// Answers only the clients `access` allows (by default: loopback,
    /// this node's addresses and its pod CIDRs), rate-limited by `limiter`
    /// over UDP.
    pub fn with_clients(mut self, access: ClientAccess, limiter: Option<RateLimiter>) -> Self {
        self.access = access;
        self.limiter = limiter;
        self
    }

    /// The client check (its networks change on a reload).
    pub fn access(&self) -> &ClientAccess {
        &self.access
    }

    /// Counts every query, response, cache lookup and upstream exchange into
    /// `metrics` (from zero).
    pub fn with_metrics(mut self, metrics: DnsMetrics) -> Self {
        self.forwarder = self.forwarder.map(|f| f.with_metrics(&metrics.forward));
        self.cache = self.cache.with_metrics(metrics.cache.clone());
        self.metrics = metrics;
        self
    }

    pub fn metrics(&self) -> &DnsMetrics {
        &self.metrics
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// The cluster zone (its TTLs change on a reload).
    pub fn zone(&self) -> &Zone {
        &self.zone
    }

    /// The upstreams, if the server forwards (its list changes on a reload).
    pub fn forwarder(&self) -> Option<&Forwarder> {
        self.forwarder.as_ref()
    }

    /// Answers `packet` (from `client`) into `out` if that needs no upstream.
    /// Every query answered is counted in the metrics once its response is
    /// ready (here, or in [`forward`](Self::forward)); packets dropped are not.
    pub fn handle(&self, packet: &[u8], transport: Transport, client: IpAddr, out: &mut Vec<u8>) -> Step {
        let mut query = QueryInfo::received(transport, client);
        // Limited first: a REFUSED reflected at a spoofed source is traffic too.
        if transport == Transport::Udp
            && let Some(step) = self.rate_limited(packet, client, out)
        {
            return step;
        }
        let in_pod_cidrs = |ip| self.snapshots.borrow().own_pod_cidrs().iter().any(|net| net.contains(&ip));
        if !self.access.allows(client, in_pod_cidrs) {
            return self.refuse(packet, transport, client, &mut query, out);
        }
        if let Some(question) = Question::parse(packet)
            && self.fast_answer(&question, transport, out)
        {
            query.qtype = question.qtype;
            query.zone = ZoneKind::Cluster;
            self.metrics.answered(&query, 0);
            return Step::Reply;
        }
        match self.general(packet, transport, &mut query) {
            Reply::Bytes(bytes) => {
                self.metrics.answered(&query, rcode_of(&bytes));
                *out = bytes;
                Step::Reply
            }
            Reply::Drop => Step::Drop,
            Reply::Forward(pending) => Step::Forward(pending),
        }
    }

    /// `Some` when `client` is over its rate: nothing, or (every second
    /// time) an empty response with TC in `out`. Loopback clients are never
    /// limited (nobody can spoof them from outside; every process of the
    /// node shares them).
    fn rate_limited(&self, packet: &[u8], client: IpAddr, out: &mut Vec<u8>) -> Option<Step> {
        let limiter = self.limiter.as_ref()?;
        if client.is_loopback()
            || matches!(client, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()))
        {
            return None;
        }
        let action = match limiter.check(client, Instant::now()) {
            Verdict::Answer => return None,
            Verdict::Drop => LimitAction::Drop,
            Verdict::Slip => LimitAction::Slip,
        };
        self.metrics.rate_limited(action);
        if self.limited_warn.due() {
            tracing::warn!(%client, "DNS client over its rate limit (dns.rateLimit); dropping or truncating its queries (further ones counted in edgemesh_dns_rate_limited_total, logged at debug for 30 s)");
        } else {
            tracing::debug!(%client, ?action, "DNS client over its rate limit");
        }
        let request = match action {
            LimitAction::Drop => return Some(Step::Drop),
            LimitAction::Slip => {
                Message::from_vec(packet).ok().filter(|m| m.metadata.message_type == MessageType::Query)
            }
        };
        let Some(request) = request else { return Some(Step::Drop) };
        let mut response = self.response(request, ResponseCode::NoError);
        response.metadata.truncation = true;
        *out = encode(&response, usize::from(MAX_UDP_PAYLOAD));
        Some(Step::Reply)
    }

    /// REFUSED for a client that is not this node's (see [`crate::access`]).
    fn refuse(
        &self,
        packet: &[u8],
        transport: Transport,
        client: IpAddr,
        query: &mut QueryInfo,
        out: &mut Vec<u8>,
    ) -> Step {
        let Ok(request) = Message::from_vec(packet) else { return Step::Drop };
        if request.metadata.message_type != MessageType::Query {
            return Step::Drop;
        }
        if self.refused_warn.due() {
            tracing::warn!(%client, "refusing DNS queries from a client that is not this node's (allow it with dns.allowedClients; further ones counted in edgemesh_dns_clients_refused_total, logged at debug for 30 s)");
        } else {
            tracing::debug!(%client, "refusing a DNS query from a client that is not this node's");
        }
        if let Some(q) = request.queries.first() {
            query.qtype = u16::from(q.query_type());
        }
        let max_size = match transport {
            Transport::Tcp => usize::from(u16::MAX),
            Transport::Udp => udp_limit(request.edns.as_ref().map(Edns::max_payload)),
        };
        *out = self.error(request, ResponseCode::Refused, max_size);
        self.metrics.refused();
        self.metrics.answered(query, rcode_of(out));
        Step::Reply
    }

    /// The whole exchange for one request: [`handle`](Self::handle), then
    /// [`forward`](Self::forward) if it needs the upstreams. `None` for
    /// packets we do not answer. For the stream transports, which answer one
    /// query of a connection after the other anyway.
    pub async fn answer(&self, packet: &[u8], transport: Transport, client: IpAddr) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        match self.handle(packet, transport, client, &mut out) {
            Step::Reply => Some(out),
            Step::Drop => None,
            Step::Forward(pending) => Some(self.forward(pending).await),
        }
    }

    /// A/AAAA of a service with addresses, written straight into `out`;
    /// `false` for anything else.
    fn fast_answer(&self, question: &Question<'_>, transport: Transport, out: &mut Vec<u8>) -> bool {
        if !question.is_address_query() {
            return false;
        }
        let mut labels = question.labels();
        if labels.len() != self.origin_labels + 3 {
            return false;
        }
        for origin_label in self.zone.origin().iter().rev() {
            if !labels.next_back().is_some_and(|l| l.eq_ignore_ascii_case(origin_label)) {
                return false;
            }
        }
        let (Some(svc_label), Some(ns), Some(name)) = (labels.next_back(), labels.next_back(), labels.next_back())
        else {
            return false;
        };
        if !svc_label.eq_ignore_ascii_case(b"svc") {
            return false;
        }
        let snapshot = self.snapshots.borrow().clone();
        let Some(entry) = cluster::lookup(&snapshot, ns, name) else { return false };
        let max_size = match transport {
            Transport::Tcp => usize::from(u16::MAX),
            Transport::Udp => udp_limit(question.edns_payload),
        };
        let addrs = self.zone.addresses(&entry).filter(|ip| question.wants(ip));
        let written = question.write_answer(out, addrs, self.zone.ttl(), self.forwarder.is_some(), max_size);
        if written {
            tracing::trace!(?transport, qtype = question.qtype, "answered on the fast path");
        }
        written
    }

    /// Every request the fast path does not take; notes its type and zone
    /// in `info`.
    fn general(&self, packet: &[u8], transport: Transport, info: &mut QueryInfo) -> Reply {
        let Ok(request) = Message::from_vec(packet) else {
            tracing::trace!(len = packet.len(), "dropping unparsable packet");
            return Reply::Drop;
        };
        if request.metadata.message_type != MessageType::Query {
            return Reply::Drop;
        }
        let max_size = match transport {
            Transport::Tcp => usize::from(u16::MAX),
            Transport::Udp => udp_limit(request.edns.as_ref().map(Edns::max_payload)),
        };
        if request.metadata.op_code != OpCode::Query {
            return Reply::Bytes(self.error(request, ResponseCode::NotImp, max_size));
        }
        if request.queries.len() != 1 {
            return Reply::Bytes(self.error(request, ResponseCode::FormErr, max_size));
        }
        let query = &request.queries[0];
        info.qtype = u16::from(query.query_type());
        let snapshot = self.snapshots.borrow().clone();
        // The cluster zone is class IN only; CHAOS and friends go upstream.
        let outcome = if query.query_class() == DNSClass::IN {
            self.zone.resolve(&snapshot, query.name(), query.query_type())
        } else {
            Outcome::Forward
        };
        tracing::trace!(name = %query.name(), qtype = %query.query_type(), ?transport, ?outcome, "query");
        if !matches!(outcome, Outcome::Forward) {
            info.zone = ZoneKind::Cluster;
        }
        let (rcode, answers, additionals) = match outcome {
            Outcome::Answer { answers, additionals } => (ResponseCode::NoError, answers, additionals),
            Outcome::NoData => (ResponseCode::NoError, Vec::new(), Vec::new()),
            // Before the first full read of the source, a missing name may
            // just not be loaded yet: SERVFAIL makes clients retry, where an
            // NXDOMAIN would be cached as the truth.
            Outcome::NxDomain if !snapshot.synced => {
                return Reply::Bytes(self.error(request, ResponseCode::ServFail, max_size));
            }
            Outcome::NxDomain => (ResponseCode::NXDomain, Vec::new(), Vec::new()),
            Outcome::Forward => return self.outside(request, max_size, *info),
        };
        let authorities =
            if answers.is_empty() { vec![self.zone.soa(crate::cluster::serial(&snapshot))] } else { Vec::new() };
        let mut response = self.response(request, rcode);
        response.metadata.authoritative = true;
        response.answers = answers;
        response.authorities = authorities;
        response.additionals = additionals;
        Reply::Bytes(encode(&response, max_size))
    }

    /// A name outside the cluster: from the cache, or [`Step::Forward`].
    fn outside(&self, request: Message, max_size: usize, info: QueryInfo) -> Reply {
        if self.forwarder.is_none() {
            return Reply::Bytes(self.error(request, ResponseCode::Refused, max_size));
        }
        let query = &request.queries[0];
        let key = CacheKey { name: query.name().clone(), qtype: query.query_type(), qclass: query.query_class() };
        if let Some(hit) = self.cache.get(&key, Instant::now()) {
            return Reply::Bytes(self.answer_from(request, &hit, max_size));
        }
        Reply::Forward(Box::new(Pending { request, key, max_size, query: info }))
    }

    /// Asks the upstreams for `pending` and returns the response bytes
    /// (SERVFAIL when none answered in time).
    pub async fn forward(&self, pending: Box<Pending>) -> Vec<u8> {
        let query = pending.query;
        let bytes = self.forward_uncounted(pending).await;
        self.metrics.answered(&query, rcode_of(&bytes));
        bytes
    }

    async fn forward_uncounted(&self, pending: Box<Pending>) -> Vec<u8> {
        let Pending { request, key, max_size, .. } = *pending;
        let Some(forwarder) = &self.forwarder else {
            return self.error(request, ResponseCode::Refused, max_size);
        };
        // Identical questions in flight share one upstream exchange, so a
        // popular name expiring does not send a burst upstream.
        let joined = {
            let mut inflight = lock(&self.inflight);
            match inflight.get(&key) {
                Some(rx) => Err(rx.clone()),
                None => {
                    let (tx, rx) = watch::channel(None);
                    inflight.insert(key.clone(), rx);
                    Ok(tx)
                }
            }
        };
        let answer = match joined {
            Ok(tx) => {
                let _leader = InflightGuard { map: &self.inflight, key: &key };
                let answer = forwarder
                    .resolve(&request.queries[0])
                    .await
                    .map(|msg| self.cache.insert(key.clone(), msg, Instant::now()));
                tx.send_replace(Some(answer.clone()));
                answer
            }
            // The leader gone without a result (shut down): SERVFAIL.
            Err(mut rx) => rx.wait_for(Option::is_some).await.ok().and_then(|r| r.clone().flatten()),
        };
        match answer {
            Some(answer) => self.answer_from(request, &answer, max_size),
            None => self.error(request, ResponseCode::ServFail, max_size),
        }
    }

    /// A SERVFAIL for a request we had to give up on (overload).
    pub fn servfail(&self, pending: Box<Pending>) -> Vec<u8> {
        let query = pending.query;
        let bytes = self.error(pending.request, ResponseCode::ServFail, pending.max_size);
        self.metrics.answered(&query, rcode_of(&bytes));
        bytes
    }

    fn answer_from(&self, request: Message, answer: &CachedAnswer, max_size: usize) -> Vec<u8> {
        let [answers, authorities, additionals] = answer.sections_at(Instant::now());
        let mut response = self.response(request, answer.rcode);
        response.answers = answers;
        response.authorities = authorities;
        response.additionals = additionals;
        encode(&response, max_size)
    }

    fn error(&self, request: Message, rcode: ResponseCode, max_size: usize) -> Vec<u8> {
        encode(&self.response(request, rcode), max_size)
    }

    /// The response skeleton: the request's ID, flags and question.
    fn response(&self, request: Message, rcode: ResponseCode) -> Message {
        let mut response = Message::new(request.metadata.id, MessageType::Response, request.metadata.op_code);
        response.metadata.recursion_desired = request.metadata.recursion_desired;
        response.metadata.recursion_available = self.forwarder.is_some();
        response.metadata.checking_disabled = request.metadata.checking_disabled;
        response.metadata.response_code = rcode;
        response.queries = request.queries;
        if request.edns.is_some() {
            let mut edns = Edns::new();
            edns.set_max_payload(OUR_PAYLOAD);
            response.edns = Some(edns);
        }
        response
    }
}

/// The wire form of `response`; if it exceeds `max_size`, the header and
/// question alone with TC set, so the client retries over TCP.
pub fn encode(response: &Message, max_size: usize) -> Vec<u8> {
    match response.to_vec() {
        Ok(bytes) if bytes.len() <= max_size => bytes,
        Ok(_) => {
            let mut truncated = Message::new(response.metadata.id, MessageType::Response, response.metadata.op_code);
            truncated.metadata = response.metadata;
            truncated.metadata.truncation = true;
            truncated.queries = response.queries.clone();
            truncated.edns = response.edns.clone();
            truncated.to_vec().unwrap_or_else(|_| servfail_bytes(response))
        }
        Err(error) => {
            tracing::debug!(%error, "cannot encode a response; answering SERVFAIL");
            servfail_bytes(response)
        }
    }
}

fn servfail_bytes(response: &Message) -> Vec<u8> {
    let mut m = Message::new(response.metadata.id, MessageType::Response, response.metadata.op_code);
    m.metadata.response_code = ResponseCode::ServFail;
    m.to_vec().unwrap_or_default()
}

#[cfg(test)]
mod tests;
