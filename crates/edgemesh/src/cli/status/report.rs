//! `edgemesh status`: what the admin endpoint says, gathered into one
//! document (services, peers, DNS counters, source health) that is printed
//! as tables or as JSON/YAML.
//!
//! The `*Doc` types read the admin endpoint's JSON (only the fields shown);
//! the others are the document printed.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::metrics::{DnsCounters, whole};
use super::table::Table;

// ---------------------------------------------------------------------------
// What the admin endpoint serves

/// `/services`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicesDoc {
    pub state: StateDoc,
    pub generation: u64,
    pub synced: bool,
    pub services: Vec<ServiceDoc>,
}

/// `/services`' `state`: live or from the cache, how old, the source's
/// connection.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateDoc {
    pub origin: String,
    pub age_seconds: Option<u64>,
    pub updated_seconds: Option<u64>,
    pub stale: bool,
    pub source: Option<SourceDoc>,
    #[serde(default)]
    pub cache_degraded: bool,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceDoc {
    pub connection: String,
    pub disconnected_seconds: Option<u64>,
    pub last_error: Option<String>,
}

/// One service of `/services` (and of `/services/<ns>/<name>`).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceDoc {
    pub namespace: String,
    pub name: String,
    pub vip: Option<IpAddr>,
    pub vip6: Option<IpAddr>,
    #[serde(default)]
    pub cluster_ips: Vec<IpAddr>,
    #[serde(default)]
    pub headless: bool,
    pub strategy: String,
    pub ports: Vec<PortDoc>,
    pub endpoints: Vec<EndpointDoc>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortDoc {
    pub protocol: String,
    pub port: u16,
    pub node_port: Option<u16>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointDoc {
    pub address: IpAddr,
    pub ready: bool,
    pub node_name: Option<String>,
}

/// One peer of `/peers`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerDoc {
    pub node: Option<String>,
    pub peer_id: String,
    pub connection: String,
    pub rtt_ms: Option<f64>,
    pub path_changed_seconds_ago: f64,
    pub open_streams: usize,
}

// ---------------------------------------------------------------------------
// What `edgemesh status` prints

/// The whole status, in the order of the tables.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Overview {
    /// The agent's node name.
    pub node: String,
    pub services: Vec<ServiceRow>,
    /// `None`: the tunnel is off.
    pub peers: Option<Vec<PeerRow>>,
    pub dns: DnsCounters,
    pub source: SourceStatus,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRow {
    pub namespace: String,
    pub name: String,
    /// VIPs, then cluster IPs.
    pub addresses: Vec<IpAddr>,
    /// `port/PROTOCOL`, or `port:nodePort/PROTOCOL`.
    pub ports: Vec<String>,
    pub strategy: String,
    pub ready: usize,
    pub total: usize,
    /// Ready endpoints on this node, and elsewhere.
    pub local: usize,
    pub remote: usize,
}

impl ServiceRow {
    pub fn of(s: &ServiceDoc, node: &str) -> ServiceRow {
        let ready = s.endpoints.iter().filter(|e| e.ready);
        let local = ready.clone().filter(|e| e.node_name.as_deref() == Some(node)).count();
        let ready = ready.count();
        ServiceRow {
            namespace: s.namespace.clone(),
            name: s.name.clone(),
            addresses: s.vip.into_iter().chain(s.vip6).chain(s.cluster_ips.iter().copied()).collect(),
            ports: s.ports.iter().map(port_text).collect(),
            strategy: if s.headless { "headless".into() } else { s.strategy.clone() },
            ready,
            total: s.endpoints.len(),
            local,
            remote: ready - local,
        }
    }
}

fn port_text(p: &PortDoc) -> String {
    match p.node_port {
        Some(node_port) => format!("{}:{node_port}/{}", p.port, p.protocol),
        None => format!("{}/{}", p.port, p.protocol),
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerRow {
    /// The node name (`-` while its claim is not accepted).
    pub node: String,
    pub peer_id: String,
    /// `direct` or `relayed`.
    pub path: String,
    pub rtt_ms: Option<f64>,
    pub streams: usize,
    /// Seconds since the path last changed.
    pub last_change_seconds: f64,
}

impl PeerRow {
    pub fn of(p: PeerDoc) -> PeerRow {
        PeerRow {
            node: p.node.unwrap_or_else(|| "-".into()),
            peer_id: p.peer_id,
            path: p.connection,
            rtt_ms: p.rtt_ms,
            streams: p.open_streams,
            last_change_seconds: p.path_changed_seconds_ago,
        }
    }
}

/// `/readyz` and `/services`' `state`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceStatus {
    pub ready: bool,
    /// `/readyz`'s answer (why not ready, or what the state is).
    pub readiness: String,
    /// `live`, `cache` or `starting`.
    pub origin: String,
    pub stale: bool,
    /// `connected`, `connecting` or `disconnected`, when the source says.
    pub connection: Option<String>,
    /// For how long it has been disconnected.
    pub disconnected_seconds: Option<u64>,
    /// Seconds since the state last changed (from the cache: its age).
    pub age_seconds: Option<u64>,
    pub last_error: Option<String>,
    pub cache_degraded: bool,
    pub generation: u64,
    pub synced: bool,
}

impl SourceStatus {
    pub fn of(ready: bool, readiness: &str, doc: &ServicesDoc) -> SourceStatus {
        let s = &doc.state;
        SourceStatus {
            ready,
            readiness: readiness.trim().to_owned(),
            origin: s.origin.clone(),
            stale: s.stale,
            connection: s.source.as_ref().map(|c| c.connection.clone()),
            disconnected_seconds: s.source.as_ref().and_then(|c| c.disconnected_seconds),
            age_seconds: s.updated_seconds.or(s.age_seconds),
            last_error: s.source.as_ref().and_then(|c| c.last_error.clone()),
            cache_degraded: s.cache_degraded,
            generation: doc.generation,
            synced: doc.synced,
        }
    }
}

// ---------------------------------------------------------------------------
// Tables

impl Overview {
    pub fn render(&self) -> String {
        let mut out = format!("Source (node {})\n", self.node);
        let s = &self.source;
        let mut t = Table::new(&["READY", "ORIGIN", "STALE", "CONNECTION", "AGE", "GENERATION"]);
        t.row(vec![
            yes_no(s.ready).into(),
            s.origin.clone(),
            yes_no(s.stale).into(),
            match (&s.connection, s.disconnected_seconds) {
                (Some(c), Some(secs)) => format!("{c} {}", age(secs as f64)),
                (Some(c), None) => c.clone(),
                (None, _) => "-".into(),
            },
            s.age_seconds.map_or("-".into(), |a| age(a as f64)),
            s.generation.to_string(),
        ]);
        out += &t.render();
        if !s.ready || s.stale || s.cache_degraded {
            out += &format!("{}\n", s.readiness);
        }

        out += &format!("\nServices ({})\n", self.services.len());
        out += &services_table(&self.services).render();

        match &self.peers {
            None => out += "\nPeers: the tunnel is off (tunnel.enabled)\n",
            Some(peers) => {
                out += &format!("\nPeers ({})\n", peers.len());
                let mut t = Table::new(&["NODE", "PATH", "RTT", "STREAMS", "LAST CHANGE"]);
                for p in peers {
                    t.row(vec![
                        p.node.clone(),
                        p.path.clone(),
                        p.rtt_ms.map_or("-".into(), |ms| format!("{ms:.1}ms")),
                        p.streams.to_string(),
                        age(p.last_change_seconds),
                    ]);
                }
                out += &t.render();
            }
        }

        out += "\nDNS\n";
        let d = &self.dns;
        let count = |c: Option<u64>| c.map_or("-".into(), |c| c.to_string());
        let mut t = Table::new(&["REQUESTS", "RESPONSES", "CACHE HITS", "CACHE MISSES", "FORWARDED"]);
        t.row(vec![
            count(d.requests),
            d.responses.as_ref().map_or("-".into(), |r| {
                let by_rcode: Vec<String> = r.iter().map(|(rcode, n)| format!("{rcode}={n}")).collect();
                if by_rcode.is_empty() { "0".into() } else { by_rcode.join(",") }
            }),
            count(d.cache_hits),
            count(d.cache_misses),
            count(d.forwarded),
        ]);
        out += &t.render();
        out
    }
}

/// The services table (also the head of `status service`).
pub fn services_table(rows: &[ServiceRow]) -> Table {
    let mut t = Table::new(&["NAMESPACE/NAME", "ADDRESSES", "PORTS", "STRATEGY", "READY", "LOCAL/REMOTE"]);
    for s in rows {
        let list = |v: Vec<String>| if v.is_empty() { "-".to_string() } else { v.join(",") };
        t.row(vec![
            format!("{}/{}", s.namespace, s.name),
            list(s.addresses.iter().map(IpAddr::to_string).collect()),
            list(s.ports.clone()),
            s.strategy.clone(),
            format!("{}/{}", s.ready, s.total),
            format!("{}/{}", s.local, s.remote),
        ]);
    }
    t
}

pub fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// An age as kubectl prints it: `45s`, `3m12s`, `2h5m`, `4d3h`.
pub fn age(seconds: f64) -> String {
    let s = whole(seconds);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86400 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86400, s % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_kubectl() {
        assert_eq!(age(0.4), "0s");
        assert_eq!(age(59.9), "59s");
        assert_eq!(age(192.0), "3m12s");
        assert_eq!(age(7500.0), "2h5m");
        assert_eq!(age(356_400.0), "4d3h");
    }

    #[test]
    fn local_and_remote_count_ready_endpoints() {
        let doc: ServiceDoc = serde_json::from_str(
            r#"{"namespace":"default","name":"web","vip":"127.90.0.1","clusterIps":["10.96.0.10"],
                "strategy":"RoundRobin","ports":[{"protocol":"TCP","port":80,"nodePort":30080}],
                "endpoints":[{"address":"10.0.0.2","ready":true,"nodeName":"node-a"},
                             {"address":"10.0.0.3","ready":true,"nodeName":"node-b"},
                             {"address":"10.0.0.4","ready":false,"nodeName":"node-a"}]}"#,
        )
        .unwrap();
        let row = ServiceRow::of(&doc, "node-a");
        assert_eq!((row.ready, row.total, row.local, row.remote), (2, 3, 1, 1));
        assert_eq!(row.ports, ["80:30080/TCP"]);
        let table = services_table(&[row]).render();
        assert!(
            table.contains("default/web      127.90.0.1,10.96.0.10   80:30080/TCP   RoundRobin   2/3     1/1"),
            "{table}"
        );
    }
}
