//! The metric names the agent's components agree on (issue #14's contract),
//! the names an agent's `/metrics` serves, and the names the Grafana
//! dashboard (`deploy/grafana/edgemesh.json`) asks Prometheus for: a renamed
//! metric shows up as a dashboard name that is neither.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Who serves a family: a section is merged once the agent serves any name of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Section {
    Proxy,
    Http,
    Dns,
    Source,
    Tunnel,
    Process,
    /// The edge gateway's own (a gateway node's agent serves them).
    Gateway,
}

use Kind::*;
use Section::*;

/// Every family of the contract, as served (counters with `_total`).
pub const CONTRACT: &[(Section, &str, Kind)] = &[
    (Proxy, "edgemesh_tcp_connections_opened_total", Counter),
    (Proxy, "edgemesh_tcp_connections_active", Gauge),
    (Proxy, "edgemesh_tcp_connections_failed_total", Counter),
    (Proxy, "edgemesh_tcp_connections_timed_out_total", Counter),
    (Proxy, "edgemesh_tcp_sent_bytes_total", Counter),
    (Proxy, "edgemesh_tcp_received_bytes_total", Counter),
    (Proxy, "edgemesh_tcp_connect_duration_seconds", Histogram),
    (Proxy, "edgemesh_tcp_connection_duration_seconds", Histogram),
    (Proxy, "edgemesh_endpoint_ejections_total", Counter),
    (Proxy, "edgemesh_udp_sessions_opened_total", Counter),
    (Proxy, "edgemesh_udp_sessions_active", Gauge),
    (Proxy, "edgemesh_udp_sent_bytes_total", Counter),
    (Proxy, "edgemesh_udp_received_bytes_total", Counter),
    (Proxy, "edgemesh_udp_dropped_datagrams_total", Counter),
    (Proxy, "edgemesh_udp_sessions_evicted_total", Counter),
    (Proxy, "edgemesh_proxy_unrouted_connections_total", Counter),
    (Http, "edgemesh_http_requests_total", Counter),
    (Http, "edgemesh_http_request_duration_seconds", Histogram),
    (Http, "edgemesh_http_connections_active", Gauge),
    (Http, "edgemesh_http_limit_hits_total", Counter),
    (Http, "edgemesh_http_retries_total", Counter),
    (Http, "edgemesh_http_retry_budget_exhausted_total", Counter),
    (Http, "edgemesh_http_upstream_connections_opened_total", Counter),
    (Dns, "edgemesh_dns_requests_total", Counter),
    (Dns, "edgemesh_dns_responses_total", Counter),
    (Dns, "edgemesh_dns_request_duration_seconds", Histogram),
    (Dns, "edgemesh_dns_cache_hits_total", Counter),
    (Dns, "edgemesh_dns_cache_misses_total", Counter),
    (Dns, "edgemesh_dns_cache_entries", Gauge),
    (Dns, "edgemesh_dns_forward_requests_total", Counter),
    (Dns, "edgemesh_dns_forward_responses_total", Counter),
    (Dns, "edgemesh_dns_forward_request_duration_seconds", Histogram),
    (Dns, "edgemesh_dns_clients_refused_total", Counter),
    (Dns, "edgemesh_dns_rate_limited_total", Counter),
    (Source, "edgemesh_source_events_total", Counter),
    (Source, "edgemesh_source_synced", Gauge),
    (Source, "edgemesh_source_connected", Gauge),
    (Source, "edgemesh_source_last_update_timestamp_seconds", Gauge),
    (Source, "edgemesh_source_last_update_age_seconds", Gauge),
    (Source, "edgemesh_cache_writes_total", Counter),
    (Source, "edgemesh_registry_generation", Gauge),
    (Source, "edgemesh_registry_services", Gauge),
    (Tunnel, "edgemesh_tunnel_peer_path", Gauge),
    (Tunnel, "edgemesh_tunnel_peer_rtt_seconds", Gauge),
    (Tunnel, "edgemesh_tunnel_peer_streams", Gauge),
    (Tunnel, "edgemesh_tunnel_streams_opened_total", Counter),
    (Tunnel, "edgemesh_tunnel_sent_bytes_total", Counter),
    (Tunnel, "edgemesh_tunnel_received_bytes_total", Counter),
    (Tunnel, "edgemesh_tunnel_dials_total", Counter),
    (Tunnel, "edgemesh_tunnel_holepunch_attempts_total", Counter),
    (Tunnel, "edgemesh_tunnel_holepunch_successes_total", Counter),
    (Tunnel, "edgemesh_tunnel_relay_reservations", Gauge),
    (Tunnel, "edgemesh_tunnel_relay_circuits", Gauge),
    (Tunnel, "edgemesh_tunnel_peers_refused_total", Counter),
    (Tunnel, "edgemesh_tunnel_limit_hits_total", Counter),
    (Tunnel, "edgemesh_tunnel_relay_served_reservations", Gauge),
    (Tunnel, "edgemesh_tunnel_relay_served_circuits", Gauge),
    (Process, "process_cpu_seconds_total", Counter),
    (Process, "process_resident_memory_bytes", Gauge),
    (Process, "process_open_fds", Gauge),
    (Process, "process_max_fds", Gauge),
    (Process, "process_threads", Gauge),
    (Process, "process_start_time_seconds", Gauge),
    (Process, "edgemesh_build_info", Gauge),
    (Gateway, "edgemesh_gateway_tls_handshakes_total", Counter),
    (Gateway, "edgemesh_gateway_tls_handshake_seconds", Histogram),
];

/// What an agent serves under `edgemesh_` besides the contract: libp2p's
/// own metrics (under this prefix) ...
pub const LIBP2P_PREFIX: &str = "edgemesh_libp2p_";
/// ... and the label caps' counts of folded values (edgemesh-metrics).
pub const OUTSIDE_CONTRACT: &[&str] = &["edgemesh_service_label_folded_values", "edgemesh_node_label_folded_values"];

/// The series names a family of `kind` has (a histogram's `_bucket`,
/// `_sum`, `_count`; the name itself too, as PromQL writers sometimes
/// refer to the family).
fn series_names(name: &str, kind: Kind) -> Vec<String> {
    match kind {
        Histogram => ["", "_bucket", "_sum", "_count"].iter().map(|s| format!("{name}{s}")).collect(),
        Counter | Gauge => vec![name.to_owned()],
    }
}

/// The contract's section of a series name, if it is in the contract.
pub fn contract_section(series: &str) -> Option<Section> {
    CONTRACT.iter().find(|(_, name, kind)| series_names(name, *kind).iter().any(|s| s == series)).map(|c| c.0)
}

/// Names an exposition in the classic text format serves: every `# TYPE`
/// family (also when it has no series yet) with its series names, and every
/// sample's name.
pub fn served_names(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                let kind = if kind == "histogram" { Histogram } else { Gauge };
                names.extend(series_names(name, kind));
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_owned());
        }
    }
    names
}

pub fn dashboard_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/grafana/edgemesh.json")
}

/// The dashboard, parsed.
pub fn dashboard() -> Value {
    let path = dashboard_path();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()))
}

/// Every PromQL text in the dashboard: panel targets' `expr`, template
/// variables' `query` and `definition`.
pub fn dashboard_queries(dashboard: &Value) -> Vec<String> {
    let mut found = Vec::new();
    collect_queries(dashboard, &mut found);
    found
}

fn collect_queries(value: &Value, found: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr" | "query" | "definition", Value::String(text)) => found.push(text.clone()),
                    _ => collect_queries(v, found),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_queries(v, found)),
        _ => {}
    }
}

/// The metric names (ours: `edgemesh_*`, `process_*`) a PromQL text uses
/// (outside quoted label values).
pub fn metric_names_in(promql: &str) -> BTreeSet<String> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = BTreeSet::new();
    let (mut token, mut quoted) = (String::new(), false);
    for c in promql.chars().chain([' ']) {
        if !quoted && is_ident(c) {
            token.push(c);
            continue;
        }
        if token.starts_with("edgemesh_") || token.starts_with("process_") {
            names.insert(std::mem::take(&mut token));
        }
        token.clear();
        if c == '"' {
            quoted = !quoted;
        }
    }
    names
}
