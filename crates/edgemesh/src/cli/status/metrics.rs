//! The DNS counters `edgemesh status` shows, read from `/metrics` (the
//! classic Prometheus text format): a line-based reader of
//! `name{labels} value` that sums a metric over its label sets.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One sample: metric name, labels, value.
#[derive(Debug, PartialEq)]
pub struct Sample<'a> {
    pub name: &'a str,
    pub labels: Vec<(&'a str, String)>,
    pub value: f64,
}

/// The samples of `text`; comment lines and lines that are not samples are
/// skipped.
/// A sample's value as a whole count: negatives and NaN read 0, values past
/// `u64::MAX` read `u64::MAX` (what `as` does with a float, on purpose).
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "float to integer `as` saturates")]
pub fn whole(v: f64) -> u64 {
    v as u64
}

pub fn samples(text: &str) -> impl Iterator<Item = Sample<'_>> {
    text.lines().filter_map(sample)
}

fn sample(line: &str) -> Option<Sample<'_>> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let (name, mut rest) = line.split_at(name_end);
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let (parsed, after) = label_set(inner)?;
        labels = parsed;
        rest = after;
    }
    // The value, then an optional timestamp.
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample { name, labels, value })
}

/// `a="x",b="y"}` -> the labels and what follows the `}`.
fn label_set(mut s: &str) -> Option<(Vec<(&str, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start_matches([',', ' ']);
        if let Some(after) = s.strip_prefix('}') {
            return Some((labels, after));
        }
        let (key, rest) = s.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        labels.push((key.trim(), value));
        s = &rest[end + 1..];
    }
}

/// The DNS server's counters (CoreDNS-shaped names with the `edgemesh_`
/// prefix), each summed over its labels; `None` when the agent does not
/// export that metric.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DnsCounters {
    pub requests: Option<u64>,
    /// Responses by rcode (`NOERROR`, `NXDOMAIN`, ...).
    pub responses: Option<BTreeMap<String, u64>>,
    pub cache_hits: Option<u64>,
    pub cache_misses: Option<u64>,
    /// Queries forwarded to upstream resolvers.
    pub forwarded: Option<u64>,
}

impl DnsCounters {
    pub fn from_text(text: &str) -> DnsCounters {
        let mut c = DnsCounters::default();
        let add = |slot: &mut Option<u64>, v: f64| *slot = Some(slot.unwrap_or(0).saturating_add(whole(v)));
        for s in samples(text) {
            match s.name {
                "edgemesh_dns_requests_total" => add(&mut c.requests, s.value),
                "edgemesh_dns_cache_hits_total" => add(&mut c.cache_hits, s.value),
                "edgemesh_dns_cache_misses_total" => add(&mut c.cache_misses, s.value),
                "edgemesh_dns_forward_requests_total" => add(&mut c.forwarded, s.value),
                "edgemesh_dns_responses_total" => {
                    let rcode = s.labels.iter().find(|(k, _)| *k == "rcode").map_or("other", |(_, v)| v.as_str());
                    *c.responses.get_or_insert_default().entry(rcode.to_owned()).or_default() += whole(s.value);
                }
                _ => {}
            }
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the agent serves once DNS counts (names from issue #14's
    /// contract), with other metrics around it.
    const SAMPLE: &str = r#"# HELP edgemesh_dns_requests Requests.
# TYPE edgemesh_dns_requests counter
edgemesh_dns_requests_total{server="dns://127.0.0.1:53",zone="cluster.local.",proto="udp",family="1",type="A"} 7
edgemesh_dns_requests_total{server="dns://127.0.0.1:53",zone=".",proto="tcp",family="2",type="AAAA"} 3
edgemesh_dns_responses_total{server="dns://127.0.0.1:53",zone="cluster.local.",rcode="NOERROR"} 6
edgemesh_dns_responses_total{server="dns://127.0.0.1:53",zone=".",rcode="NOERROR"} 2
edgemesh_dns_responses_total{server="dns://127.0.0.1:53",zone="cluster.local.",rcode="NXDOMAIN"} 2
edgemesh_dns_cache_hits_total{server="dns://127.0.0.1:53",type="success"} 4
edgemesh_dns_cache_hits_total{server="dns://127.0.0.1:53",type="denial"} 1
edgemesh_dns_cache_misses_total{server="dns://127.0.0.1:53"} 5
edgemesh_dns_forward_requests_total{to="10.0.0.53:53"} 3
edgemesh_dns_request_duration_seconds_bucket{server="dns://127.0.0.1:53",zone=".",type="A",le="+Inf"} 10
edgemesh_tcp_connections_opened_total{service="default/web",port="80"} 12
edgemesh_build_info{version="0.1.0"} 1
process_open_fds 31
"#;

    #[test]
    fn dns_counters_sum_over_labels() {
        let c = DnsCounters::from_text(SAMPLE);
        assert_eq!(c.requests, Some(10));
        let responses = c.responses.unwrap();
        assert_eq!(responses.get("NOERROR"), Some(&8));
        assert_eq!(responses.get("NXDOMAIN"), Some(&2));
        assert_eq!(responses.len(), 2);
        assert_eq!((c.cache_hits, c.cache_misses, c.forwarded), (Some(5), Some(5), Some(3)));
    }

    #[test]
    fn metrics_the_agent_does_not_export_are_absent_not_zero() {
        let c = DnsCounters::from_text("process_open_fds 31\nedgemesh_dns_cache_misses_total{server=\"x\"} 0\n");
        assert_eq!(c, DnsCounters { cache_misses: Some(0), ..DnsCounters::default() });
    }

    #[test]
    fn labels_with_escapes_and_samples_with_timestamps() {
        let s: Vec<_> = samples("m{a=\"x\\\"y,z\",b=\"\\\\\"} 2.5 1700000000\nbad line\nn +Inf\n").collect();
        assert_eq!(s.len(), 2, "{s:?}");
        assert_eq!(s[0].labels, [("a", "x\"y,z".to_owned()), ("b", "\\".to_owned())]);
        assert_eq!(s[0].value, 2.5);
        assert_eq!((s[1].name, s[1].value), ("n", f64::INFINITY));
    }
}
