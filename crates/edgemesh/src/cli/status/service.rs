//! `edgemesh status service NS/NAME`: one service and each of its
//! endpoints: address, node, ready, local or remote, and its passive
//! health in the proxy (from `/services/<ns>/<name>`).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::metrics::whole;
use super::report::{ServiceDoc, ServiceRow, services_table, yes_no};
use super::table::Table;

/// `/services/<ns>/<name>`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceDetailDoc {
    pub node_name: String,
    pub service: ServiceDoc,
    pub ports: Vec<PortHealthDoc>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortHealthDoc {
    pub port: u16,
    pub protocol: String,
    pub endpoints: Vec<EndpointHealthDoc>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointHealthDoc {
    pub address: SocketAddr,
    pub node_name: Option<String>,
    pub consecutive_failures: u32,
    pub ejected_for_seconds: Option<f64>,
}

/// What `status service` prints.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceDetail {
    pub node: String,
    pub service: ServiceRow,
    pub endpoints: Vec<EndpointRow>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointRow {
    /// `ip:port` for the endpoints a service port forwards to; the IP alone
    /// for those it does not use (not ready, or excluded by topology).
    pub address: String,
    /// The service port (`80/TCP`) whose pool holds this endpoint.
    pub port: Option<String>,
    pub node: Option<String>,
    pub ready: bool,
    pub local: bool,
    /// `healthy`, `ejected` (skipped by new connections for
    /// `ejectedForSeconds`) or `recovering` (back in use after an ejection,
    /// failures not yet cleared by a success); none for unused endpoints.
    pub health: Option<&'static str>,
    pub consecutive_failures: u32,
    pub ejected_for_seconds: Option<f64>,
    /// Unix time the ejection ends (this host's clock, which is the
    /// agent's when asked on its node).
    pub ejected_until: Option<f64>,
}

impl ServiceDetail {
    pub fn of(doc: ServiceDetailDoc) -> ServiceDetail {
        let node = doc.node_name;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let mut endpoints = Vec::new();
        for port in &doc.ports {
            for e in &port.endpoints {
                endpoints.push(EndpointRow {
                    address: e.address.to_string(),
                    port: Some(format!("{}/{}", port.port, port.protocol)),
                    node: e.node_name.clone(),
                    ready: true,
                    local: e.node_name.as_deref() == Some(node.as_str()),
                    health: Some(match (e.consecutive_failures, e.ejected_for_seconds) {
                        (_, Some(_)) => "ejected",
                        (0, None) => "healthy",
                        (_, None) => "recovering",
                    }),
                    consecutive_failures: e.consecutive_failures,
                    ejected_for_seconds: e.ejected_for_seconds,
                    ejected_until: e.ejected_for_seconds.map(|s| now.as_secs_f64() + s),
                });
            }
        }
        let pooled = |ip| doc.ports.iter().flat_map(|p| &p.endpoints).any(|e| e.address.ip() == ip);
        for e in doc.service.endpoints.iter().filter(|e| !pooled(e.address)) {
            endpoints.push(EndpointRow {
                address: e.address.to_string(),
                port: None,
                node: e.node_name.clone(),
                ready: e.ready,
                local: e.node_name.as_deref() == Some(node.as_str()),
                health: None,
                consecutive_failures: 0,
                ejected_for_seconds: None,
                ejected_until: None,
            });
        }
        ServiceDetail { service: ServiceRow::of(&doc.service, &node), node, endpoints }
    }

    pub fn render(&self) -> String {
        let mut out = services_table(std::slice::from_ref(&self.service)).render();
        out += &format!("\nEndpoints ({}, node {})\n", self.endpoints.len(), self.node);
        let mut t = Table::new(&["ENDPOINT", "PORT", "NODE", "READY", "LOCATION", "HEALTH"]);
        for e in &self.endpoints {
            let failures = match e.consecutive_failures {
                1 => "1 failure".to_string(),
                n => format!("{n} failures"),
            };
            let health = match (e.health, e.ejected_for_seconds) {
                (Some("ejected"), Some(s)) => {
                    let until = e.ejected_until.map_or(String::new(), |t| format!(", until {}", clock_time(t)));
                    format!("ejected for {s:.1}s{until} ({failures})")
                }
                (Some("recovering"), _) => format!("recovering ({failures})"),
                (Some(h), _) => h.to_string(),
                (None, _) => "-".into(),
            };
            t.row(vec![
                e.address.clone(),
                e.port.clone().unwrap_or_else(|| "-".into()),
                e.node.clone().unwrap_or_else(|| "-".into()),
                yes_no(e.ready).into(),
                if e.local { "local" } else { "remote" }.into(),
                health,
            ]);
        }
        out + &t.render()
    }
}

/// `HH:MM:SS UTC` of a Unix time.
fn clock_time(unix: f64) -> String {
    let s = whole(unix) % 86_400;
    format!("{:02}:{:02}:{:02} UTC", s / 3600, s % 3600 / 60, s % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_show_their_health_and_unused_ones_their_readiness() {
        let doc: ServiceDetailDoc = serde_json::from_str(
            r#"{"nodeName":"node-a","generation":3,
                "service":{"namespace":"default","name":"web","vip":"127.90.0.1","strategy":"RoundRobin",
                  "ports":[{"protocol":"TCP","port":80}],
                  "endpoints":[{"address":"10.0.0.2","ready":true,"nodeName":"node-a"},
                               {"address":"10.0.0.3","ready":true,"nodeName":"node-b"},
                               {"address":"10.0.0.4","ready":false,"nodeName":"node-b"}]},
                "ports":[{"port":80,"protocol":"TCP","listener":"127.90.0.1:80","endpoints":[
                  {"address":"10.0.0.2:8080","nodeName":"node-a","consecutiveFailures":0},
                  {"address":"10.0.0.3:8080","nodeName":"node-b","consecutiveFailures":2,"ejectedForSeconds":1.5}]}]}"#,
        )
        .unwrap();
        let detail = ServiceDetail::of(doc);
        let text = detail.render();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.iter().any(|l| l.starts_with("10.0.0.2:8080") && l.ends_with("local      healthy")), "{text}");
        let ejected = lines.iter().find(|l| l.starts_with("10.0.0.3:8080")).unwrap();
        assert!(
            ejected.contains("remote     ejected for 1.5s, until ") && ejected.ends_with(" UTC (2 failures)"),
            "{text}"
        );
        assert!(lines.iter().any(|l| l.starts_with("10.0.0.4 ") && l.contains(" no ") && l.ends_with("-")), "{text}");
        assert_eq!(detail.endpoints.len(), 3);
        assert_eq!(clock_time(1_800_000_000.0 + 3725.0), "09:02:05 UTC");
    }
}
