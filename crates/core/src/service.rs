//! Small value types shared by sources, the registry and consumers.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Identity of a service: namespace and name, both lowercase DNS labels as
/// Kubernetes requires.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ServiceKey {
    pub namespace: String,
    pub name: String,
}

impl ServiceKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self { namespace: namespace.into(), name: name.into() }
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// L4 protocol of a port, as Kubernetes spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum Protocol {
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
    #[serde(rename = "SCTP")]
    Sctp,
}

impl Protocol {
    /// The label used in SRV names (`_http._tcp...`).
    pub fn srv_label(self) -> &'static str {
        match self {
            Protocol::Tcp => "_tcp",
            Protocol::Udp => "_udp",
            Protocol::Sctp => "_sctp",
        }
    }
}

impl FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "TCP" => Ok(Protocol::Tcp),
            "UDP" => Ok(Protocol::Udp),
            "SCTP" => Ok(Protocol::Sctp),
            other => Err(format!("unknown protocol {other:?} (expected TCP, UDP or SCTP)")),
        }
    }
}

/// A Service port's `targetPort`: a number, or the name of a container port
/// that the endpoints resolve.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

/// How the proxy picks an endpoint for a new connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Default, serde::Deserialize)]
pub enum LbStrategy {
    #[default]
    RoundRobin,
    Random,
}

impl LbStrategy {
    /// The annotation that selects a strategy per service.
    pub const ANNOTATION: &'static str = "edgemesh.io/lb-strategy";
}

impl FromStr for LbStrategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "RoundRobin" => Ok(LbStrategy::RoundRobin),
            "Random" => Ok(LbStrategy::Random),
            other => Err(format!("unknown load-balancing strategy {other:?} (expected RoundRobin or Random)")),
        }
    }
}

impl fmt::Display for LbStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LbStrategy::RoundRobin => "RoundRobin",
            LbStrategy::Random => "Random",
        })
    }
}
