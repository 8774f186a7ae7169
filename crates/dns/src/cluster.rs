//! Answers for names in the cluster domain: a pure function of the snapshot
//! and the question, so every rule is table-tested without sockets.
//!
//! Names served (`<domain>` is the cluster domain, labels compared
//! case-insensitively):
//!
//! | name | records |
//! |---|---|
//! | `<domain>` | SOA |
//! | `<svc>.<ns>.svc.<domain>` | A/AAAA: the VIP (with interception: the cluster IPs, the VIP where there are none); headless: the ready endpoints |
//! | `<host>.<svc>.<ns>.svc.<domain>` | headless only: the ready endpoint whose hostname (or dashed address `10-0-0-7`) is `<host>` |
//! | `_<port>._<proto>.<svc>.<ns>.svc.<domain>` | SRV to the service (headless: one per ready endpoint), addresses in the additional section |
//! | `<reversed ip>.in-addr.arpa` / `.ip6.arpa` | PTR to the service whose VIP or cluster IP that is; other addresses are forwarded |
//!
//! An existing name asked for a type it has no data for is NODATA, an
//! unknown name in the domain NXDOMAIN; both carry the zone's SOA.

use std::cell::RefCell;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use edgemesh_core::{ServiceEntry, ServiceKey, Snapshot};
use hickory_proto::rr::rdata::{A, AAAA, PTR, SOA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use crate::error::DnsError;

/// What the cluster zone says about one question.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Not ours (outside the domain, or a PTR for an address that is no
    /// service): ask the upstreams.
    Forward,
    /// NOERROR with these records.
    Answer { answers: Vec<Record>, additionals: Vec<Record> },
    /// The name exists but has no records of the asked type: NOERROR, no
    /// answers, SOA in the authority section.
    NoData,
    /// The name does not exist: NXDOMAIN with the SOA.
    NxDomain,
}

impl Outcome {
    fn answer(answers: Vec<Record>) -> Self {
        Self::Answer { answers, additionals: Vec::new() }
    }

    /// NODATA when nothing matched the type.
    fn records_or_nodata(answers: Vec<Record>, additionals: Vec<Record>) -> Self {
        if answers.is_empty() { Self::NoData } else { Self::Answer { answers, additionals } }
    }
}

/// The cluster zone: its origin, TTL and SOA.
#[derive(Clone, Debug)]
pub struct Zone {
    /// Lowercase, fully qualified (`cluster.local.`).
    origin: Name,
    /// Shared by the zone's clones, so a reload changes them for the
    /// server that holds one (see `crate::live`).
    ttls: Arc<Ttls>,
    mname: Name,
    rname: Name,
    /// Services answer with their cluster IPs rather than their VIPs:
    /// interception makes cluster IPs reachable.
    cluster_ips_first: bool,
}

/// The zone's TTLs, in seconds.
#[derive(Debug)]
struct Ttls {
    ttl: AtomicU32,
    negative: AtomicU32,
}

impl Zone {
    /// `ttl` is the TTL of every record and, unless
    /// [`Zone::with_negative_ttl`] says otherwise, the negative TTL.
    pub fn new(cluster_domain: &str, ttl: u32) -> Result<Self, DnsError> {
        let bad = |reason: String| DnsError::ClusterDomain { domain: cluster_domain.into(), reason };
        let trimmed = cluster_domain.trim().trim_end_matches('.');
        if trimmed.is_empty() {
            return Err(bad("it is empty".into()));
        }
        let origin = Name::from_ascii(format!("{trimmed}.")).map_err(|e| bad(e.to_string()))?.to_lowercase();
        let prefixed = |label: &str| origin.prepend_label(label).map_err(|e| bad(e.to_string()));
        let mname = prefixed("dns")?.prepend_label("ns").map_err(|e| bad(e.to_string()))?;
        let rname = prefixed("hostmaster")?;
        // Room for `_port._proto.<63>.<63>.svc.` under the origin.
        if origin.len() > Name::MAX_LENGTH - 150 {
            return Err(bad("it is too long to leave room for service names".into()));
        }
        let ttls = Arc::new(Ttls { ttl: AtomicU32::new(ttl), negative: AtomicU32::new(ttl) });
        Ok(Self { origin, ttls, mname, rname, cluster_ips_first: false })
    }

    /// The negative TTL (SOA TTL and minimum).
    pub fn with_negative_ttl(self, ttl: u32) -> Self {
        self.ttls.negative.store(ttl, Ordering::Relaxed);
        self
    }

    /// Changes the TTLs of the answers to come, in this zone and its clones.
    pub fn set_ttls(&self, ttl: u32, negative_ttl: u32) {
        self.ttls.ttl.store(ttl, Ordering::Relaxed);
        self.ttls.negative.store(negative_ttl, Ordering::Relaxed);
    }

    /// With interception on: services answer with their cluster IPs, and
    /// with a VIP only where they have none.
    pub fn with_cluster_ips_first(mut self, on: bool) -> Self {
        self.cluster_ips_first = on;
        self
    }

    /// What a service name resolves to; see [`service_addresses`].
    pub(crate) fn addresses<'a>(&self, entry: &'a ServiceEntry) -> impl Iterator<Item = IpAddr> + 'a {
        service_addresses(entry, self.cluster_ips_first)
    }

    pub fn origin(&self) -> &Name {
        &self.origin
    }

    pub fn ttl(&self) -> u32 {
        self.ttls.ttl.load(Ordering::Relaxed)
    }

    /// How long resolvers may cache that a name or type does not exist:
    /// the SOA's TTL and minimum.
    pub fn negative_ttl(&self) -> u32 {
        self.ttls.negative.load(Ordering::Relaxed)
    }

    /// The zone's SOA record; its TTL and minimum are the negative TTL.
    pub fn soa(&self, serial: u32) -> Record {
        let negative_ttl = self.negative_ttl();
        let soa = SOA::new(self.mname.clone(), self.rname.clone(), serial, 60, 10, 3600, negative_ttl);
        Record::from_rdata(self.origin.clone(), negative_ttl, RData::SOA(soa))
    }

    /// Answers `name`/`qtype` from `snap`. The owner of answer records is
    /// `name` as the client spelled it.
    pub fn resolve(&self, snap: &Snapshot, name: &Name, qtype: RecordType) -> Outcome {
        let mut labels = name.iter();
        if labels.len() < self.origin.iter().len() {
            return self.outside(snap, name, qtype);
        }
        for origin_label in self.origin.iter().rev() {
            match labels.next_back() {
                Some(label) if label.eq_ignore_ascii_case(origin_label) => {}
                _ => return self.outside(snap, name, qtype),
            }
        }
        if labels.len() > 5 {
            return Outcome::NxDomain;
        }
        let mut buf: [&[u8]; 5] = [&[]; 5];
        let count = labels.len();
        for (slot, label) in buf.iter_mut().zip(labels) {
            *slot = label;
        }
        let is_svc = |l: &[u8]| l.eq_ignore_ascii_case(b"svc");
        match &buf[..count] {
            [] if wants(qtype, RecordType::SOA) => Outcome::answer(vec![self.soa(serial(snap))]),
            [] => Outcome::NoData,
            [s] | [_, s] if is_svc(s) => Outcome::NoData,
            [svc, ns, s] if is_svc(s) => match lookup(snap, ns, svc) {
                Some(entry) => self.service(&entry, name, qtype),
                None => Outcome::NxDomain,
            },
            [host, svc, ns, s] if is_svc(s) => match lookup(snap, ns, svc) {
                Some(entry) => self.host(&entry, host, name, qtype),
                None => Outcome::NxDomain,
            },
            [port, proto, svc, ns, s] if is_svc(s) => match lookup(snap, ns, svc) {
                Some(entry) => self.srv(&entry, port, proto, name, qtype),
                None => Outcome::NxDomain,
            },
            _ => Outcome::NxDomain,
        }
    }

    /// Outside the domain: only PTRs for service addresses are ours.
    fn outside(&self, snap: &Snapshot, name: &Name, qtype: RecordType) -> Outcome {
        if qtype != RecordType::PTR {
            return Outcome::Forward;
        }
        let Some(ip) = arpa_address(name) else { return Outcome::Forward };
        let Some(entry) = snap.service_by_ip(&ip) else { return Outcome::Forward };
        match self.service_name(&entry.key, None) {
            Some(target) => {
                Outcome::answer(vec![Record::from_rdata(name.clone(), self.ttl(), RData::PTR(PTR(target)))])
            }
            None => Outcome::Forward,
        }
    }

    /// `<svc>.<ns>.svc.<domain>`.
    fn service(&self, entry: &ServiceEntry, name: &Name, qtype: RecordType) -> Outcome {
        let answers = self.addresses(entry).filter_map(|ip| self.address(name, ip, qtype)).collect();
        Outcome::records_or_nodata(answers, Vec::new())
    }

    /// `<host>.<svc>.<ns>.svc.<domain>`: a headless endpoint, or the `_tcp`
    /// empty non-terminal above SRV names.
    fn host(&self, entry: &ServiceEntry, host: &[u8], name: &Name, qtype: RecordType) -> Outcome {
        if host.starts_with(b"_") {
            let exists = entry.ports.iter().any(|p| p.protocol.srv_label().as_bytes().eq_ignore_ascii_case(host));
            return if exists { Outcome::NoData } else { Outcome::NxDomain };
        }
        if !entry.headless {
            return Outcome::NxDomain;
        }
        let mut found = false;
        let mut answers = Vec::new();
        for ep in entry.endpoints.iter().filter(|e| e.ready) {
            let matches = match &ep.hostname {
                Some(h) if h.as_bytes().eq_ignore_ascii_case(host) => true,
                _ => host.contains(&b'-') && dashed(ep.address).as_bytes().eq_ignore_ascii_case(host),
            };
            if matches {
                found = true;
                answers.extend(self.address(name, ep.address, qtype));
            }
        }
        if !found {
            return Outcome::NxDomain;
        }
        Outcome::records_or_nodata(answers, Vec::new())
    }

    /// `_<port>._<proto>.<svc>.<ns>.svc.<domain>`.
    fn srv(&self, entry: &ServiceEntry, port: &[u8], proto: &[u8], name: &Name, qtype: RecordType) -> Outcome {
        let (Some(port_name), true) = (port.strip_prefix(b"_"), proto.starts_with(b"_")) else {
            return Outcome::NxDomain;
        };
        let Some(port) = entry.ports.iter().find(|p| {
            !p.name.is_empty()
                && p.name.as_bytes().eq_ignore_ascii_case(port_name)
                && p.protocol.srv_label().as_bytes().eq_ignore_ascii_case(proto)
        }) else {
            return Outcome::NxDomain;
        };
        if !wants(qtype, RecordType::SRV) {
            return Outcome::NoData;
        }
        let mut answers = Vec::new();
        let mut additionals = Vec::new();
        if !entry.headless {
            let Some(target) = self.service_name(&entry.key, None) else { return Outcome::NoData };
            additionals.extend(self.addresses(entry).filter_map(|ip| self.address(&target, ip, RecordType::ANY)));
            if !additionals.is_empty() {
                let srv = SRV::new(0, 100, port.port, target);
                answers.push(Record::from_rdata(name.clone(), self.ttl(), RData::SRV(srv)));
            }
            return Outcome::records_or_nodata(answers, additionals);
        }
        let weight = u16::try_from(100 / port.backends.len().max(1)).unwrap_or(1).max(1);
        for backend in port.backends.iter() {
            let ip = backend.addr.ip();
            let hostname = entry
                .endpoints
                .binary_search_by(|e| e.address.cmp(&ip))
                .ok()
                .and_then(|i| entry.endpoints[i].hostname.as_deref());
            let label = match hostname {
                Some(h) => h.to_owned(),
                None => dashed(ip),
            };
            let Some(target) = self.service_name(&entry.key, Some(&label)) else { continue };
            let srv = SRV::new(0, weight, backend.addr.port(), target.clone());
            let record = Record::from_rdata(name.clone(), self.ttl(), RData::SRV(srv));
            if hostname.is_some() && answers.contains(&record) {
                // Two addresses of one pod (dual stack): one SRV, both addresses.
                additionals.extend(self.address(&target, ip, RecordType::ANY));
                continue;
            }
            answers.push(record);
            additionals.extend(self.address(&target, ip, RecordType::ANY));
        }
        Outcome::records_or_nodata(answers, additionals)
    }

    /// An A or AAAA record for `ip` if `qtype` asks for its family.
    fn address(&self, name: &Name, ip: IpAddr, qtype: RecordType) -> Option<Record> {
        let rdata = match ip {
            IpAddr::V4(v4) if wants(qtype, RecordType::A) => RData::A(A(v4)),
            IpAddr::V6(v6) if wants(qtype, RecordType::AAAA) => RData::AAAA(AAAA(v6)),
            _ => return None,
        };
        Some(Record::from_rdata(name.clone(), self.ttl(), rdata))
    }

    /// `[<host>.]<svc>.<ns>.svc.<domain>.`, or `None` if that is no valid name.
    pub fn service_name(&self, key: &ServiceKey, host: Option<&str>) -> Option<Name> {
        let base = [key.name(), key.namespace(), "svc"];
        let name = match host {
            Some(h) => Name::from_labels(std::iter::once(h).chain(base)),
            None => Name::from_labels(base),
        };
        name.ok()?.append_domain(&self.origin).ok()
    }
}

/// True if a question of type `qtype` wants records of type `rtype`.
fn wants(qtype: RecordType, rtype: RecordType) -> bool {
    qtype == rtype || qtype == RecordType::ANY
}

/// The SOA serial: the snapshot generation (wraps, as serials do).
pub(crate) fn serial(snap: &Snapshot) -> u32 {
    let [low @ .., _, _, _, _] = snap.generation.to_le_bytes();
    u32::from_le_bytes(low)
}

/// What a service name resolves to: its VIPs, one per family (cluster IPs
/// while it has none); with `cluster_ips_first` (interception on) the
/// cluster IPs, and a VIP only where the service has no cluster IP of its
/// family; for headless services the ready endpoints. A and AAAA questions
/// take the addresses of their family.
pub(crate) fn service_addresses(entry: &ServiceEntry, cluster_ips_first: bool) -> impl Iterator<Item = IpAddr> + '_ {
    // One iterator type for every case, without boxing: this is on the
    // fast path.
    let endpoints = if entry.headless { &entry.endpoints[..] } else { &[] };
    let has_vip = entry.vip.is_some() || entry.vip6.is_some();
    let cluster_ips = if entry.headless || (has_vip && !cluster_ips_first) { &[] } else { &entry.cluster_ips[..] };
    // With interception a cluster IP of the VIP's family wins over it.
    let shadowed = move |vip: &IpAddr| {
        entry.headless || (cluster_ips_first && entry.cluster_ips.iter().any(|c| c.is_ipv4() == vip.is_ipv4()))
    };
    let vips = entry.vips().filter(move |vip| !shadowed(vip));
    endpoints.iter().filter(|e| e.ready).map(|e| e.address).chain(cluster_ips.iter().copied()).chain(vips)
}

/// `10.0.0.7` -> `10-0-0-7`, `fd00::7` -> `fd00--7`: the label Kubernetes DNS
/// gives endpoints without a hostname.
pub fn dashed(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string().replace('.', "-"),
        IpAddr::V6(v6) => v6.to_string().replace(':', "-"),
    }
}

/// The address of a full `in-addr.arpa.` / `ip6.arpa.` name.
fn arpa_address(name: &Name) -> Option<IpAddr> {
    let net = name.parse_arpa_name().ok()?;
    (net.prefix_len() == net.max_prefix_len()).then(|| net.addr())
}

thread_local! {
    /// Reused lookup text: Kubernetes names are lowercase, queries may not
    /// be, and a fresh key would cost an allocation per query on the hot path.
    static KEY: RefCell<String> = const { RefCell::new(String::new()) };
}

/// The service `ns/name`, case-insensitively.
pub(crate) fn lookup(snap: &Snapshot, ns: &[u8], name: &[u8]) -> Option<Arc<ServiceEntry>> {
    if !ns.is_ascii() || !name.is_ascii() {
        return None;
    }
    KEY.with_borrow_mut(|key| {
        let lower = |b: &u8| char::from(b.to_ascii_lowercase());
        ServiceKey::join_into(key, ns.iter().map(lower), name.iter().map(lower));
        snap.service_by_joined_key(key).cloned()
    })
}

#[cfg(test)]
mod tests;
