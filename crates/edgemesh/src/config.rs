//! The agent's configuration: one serialisable struct, read from a YAML file,
//! overridden by command-line flags, validated as a whole, logged at start
//! and shown by the admin endpoint (`/config`).
//!
//! Every key has a default, so an empty file (or none) is a valid config.
//! Unknown keys are an error that names the key and its line.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use edgemesh_core::LbStrategy;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

mod tunnel;
pub use tunnel::TunnelSection;

/// Default VIP range without interception: inside 127.0.0.0/8, so VIPs can
/// be bound without root.
pub const DEFAULT_VIP_CIDR: &str = "127.251.0.0/16";
/// Default VIP range in node mode (`intercept.mode: nftables`): EdgeMesh's
/// original pool, whose addresses the VIP device makes this node's.
pub const NODE_MODE_VIP_CIDR: &str = "9.251.0.0/16";
/// Default IPv6 VIP range in node mode: a unique local range, on the VIP
/// device like the IPv4 one.
pub const NODE_MODE_VIP_CIDR6: &str = "fd00:9:251::/112";
/// Default DNS address without interception.
pub const DEFAULT_DNS_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 5353);
/// Default DNS address in node mode: EdgeMesh's node-local DNS address
/// (held by the VIP device), on the standard port, so that pods can be
/// given it as their `clusterDNS`.
pub const NODE_MODE_DNS_LISTEN: SocketAddr = SocketAddr::new(edgemesh_intercept::DEFAULT_DNS_ADDRESS, 53);

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Config {
    /// This node's name (endpoints with this `nodeName` are local).
    /// Default: the host name.
    pub node_name: String,
    /// Log filter (`error`, `warn`, `info`, `debug`, `trace`, or a
    /// `tracing` directive such as `edgemesh_dns=debug`). `RUST_LOG` wins.
    pub log_level: String,
    /// Virtual IPs for services come from this range. Default:
    /// `9.251.0.0/16` in node mode (`intercept.mode: nftables`), where only
    /// services without a cluster IP (and UDP services, as the target their
    /// cluster IP is DNATed to) get one; `127.251.0.0/16` otherwise, where
    /// every service gets one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vip_cidr: Option<IpNet>,
    /// IPv6 virtual IPs come from this range, for services that ask for
    /// IPv6 (`ipFamilies`, `ipFamilyPolicy`, IPv6 cluster IPs), on the same
    /// terms as `vipCidr`. Default: `fd00:9:251::/112` in node mode; none
    /// otherwise (IPv6 VIPs would need a route to this node).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vip_cidr6: Option<IpNet>,
    /// Where services come from: `manifests` (a directory) or `kube` (the
    /// Kubernetes API or KubeEdge metaServer).
    pub source: SourceKind,
    /// Directory for the persistent cache (`cache.redb`), which lets the
    /// agent serve its last known state when restarted offline.
    pub state_dir: PathBuf,
    pub manifests: ManifestsConfig,
    pub kube: KubeSection,
    pub dns: DnsSection,
    pub proxy: ProxySection,
    pub admin: AdminSection,
    pub intercept: InterceptSection,
    pub tunnel: TunnelSection,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ManifestsConfig {
    /// Directory of Kubernetes manifests (`*.yaml`, `*.yml`) to serve.
    pub dir: PathBuf,
    /// How often the directory is checked for changes.
    #[serde(with = "duration")]
    pub poll_interval: Duration,
}

/// Where services come from.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    #[default]
    Manifests,
    Kube,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct KubeSection {
    /// API URL, e.g. KubeEdge metaServer `http://127.0.0.1:10550` (plain
    /// HTTP, no authentication). Wins over `kubeconfig`.
    pub api: Option<String>,
    /// Kubeconfig file. With neither set: the pod's service account, else
    /// `$KUBECONFIG` or `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct DnsSection {
    /// Address of the node-local DNS server (UDP and TCP). Default:
    /// `169.254.96.16:53` in node mode (`intercept.mode: nftables`; the
    /// address is put on the VIP device), `127.0.0.1:5353` otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// Resolvers for names outside the cluster domain. Empty: the
    /// nameservers of `/etc/resolv.conf`.
    pub upstreams: Vec<SocketAddr>,
    /// Kubernetes cluster domain.
    pub cluster_domain: String,
    /// TTL of answers for services, in seconds.
    pub service_ttl: u32,
    /// How long to wait for upstreams before answering SERVFAIL.
    #[serde(with = "duration")]
    pub upstream_timeout: Duration,
    /// Maximum number of cached upstream answers.
    pub cache_size: usize,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ProxySection {
    /// Strategy for services without the `edgemesh.io/lb-strategy` annotation.
    pub default_strategy: LbStrategy,
    /// Time allowed to connect to one endpoint before trying the next.
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// Concurrent proxied connections; 0 derives it from the open-files limit.
    pub max_connections: usize,
    /// Concurrent UDP sessions (one socket each); at the limit a new client
    /// replaces the longest-idle session of its service port.
    pub max_udp_sessions: usize,
    /// Threads proxied TCP connections run on, each with its own event
    /// loop; 0: one per CPU.
    pub workers: usize,
}

/// How connections to service addresses reach the proxy.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum InterceptMode {
    /// A listener per service VIP and port; clients use the VIPs (from DNS).
    #[default]
    None,
    /// An nftables table redirects connections to cluster IPs and VIPs to
    /// one transparent port (needs root or CAP_NET_ADMIN, and `nft`).
    Nftables,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct InterceptSection {
    /// `none` or `nftables`.
    pub mode: InterceptMode,
    /// Port of the transparent listener (all addresses) that intercepted
    /// connections are redirected to.
    pub port: u16,
    /// Name of the agent's nftables table (family `inet`); the agent
    /// replaces it at start and deletes it at stop.
    pub table: String,
    /// Mark of the agent's own upstream connections, which the table lets
    /// pass (must not be used by other software on the node).
    pub mark: u32,
    /// Name of the agent's VIP device (made at start in nftables mode,
    /// removed at stop), which holds the node-local DNS address and the
    /// VIPs (outside 127.0.0.0/8) as addresses of this node; empty for none.
    pub vip_device: String,
}

impl Default for InterceptSection {
    fn default() -> Self {
        Self {
            mode: InterceptMode::None,
            port: edgemesh_intercept::DEFAULT_PORT,
            table: edgemesh_intercept::DEFAULT_TABLE.into(),
            mark: edgemesh_intercept::DEFAULT_MARK,
            vip_device: edgemesh_intercept::DEFAULT_VIP_DEVICE.into(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct AdminSection {
    /// Address of the admin endpoint (`/healthz`, `/readyz`, `/services`, `/config`).
    pub listen: SocketAddr,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            node_name: default_node_name(),
            log_level: "info".into(),
            vip_cidr: None,
            vip_cidr6: None,
            source: SourceKind::Manifests,
            state_dir: PathBuf::from("/var/lib/edgemesh"),
            manifests: ManifestsConfig::default(),
            kube: KubeSection::default(),
            dns: DnsSection::default(),
            proxy: ProxySection::default(),
            admin: AdminSection::default(),
            intercept: InterceptSection::default(),
            tunnel: TunnelSection::default(),
        }
    }
}

impl Default for ManifestsConfig {
    fn default() -> Self {
        Self { dir: PathBuf::from("/etc/edgemesh/manifests"), poll_interval: Duration::from_millis(200) }
    }
}

impl Default for DnsSection {
    fn default() -> Self {
        Self {
            listen: None,
            upstreams: Vec::new(),
            cluster_domain: "cluster.local".into(),
            service_ttl: 5,
            upstream_timeout: Duration::from_secs(2),
            cache_size: 10_000,
        }
    }
}

impl Default for ProxySection {
    fn default() -> Self {
        Self {
            default_strategy: LbStrategy::RoundRobin,
            connect_timeout: Duration::from_secs(2),
            max_connections: 0,
            max_udp_sessions: edgemesh_proxy::DEFAULT_MAX_UDP_SESSIONS,
            workers: 0,
        }
    }
}

impl Default for AdminSection {
    fn default() -> Self {
        Self { listen: SocketAddr::from(([127, 0, 0, 1], 15020)) }
    }
}

/// A config that could not be used; the message says where and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration:\n{}", .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<String>),
}

impl Config {
    /// Reads a config file; an empty file is the default config.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let mut config =
            Self::from_yaml(&text).map_err(|message| ConfigError::Parse { path: path.to_owned(), message })?;
        // Relative paths are relative to the config file, so a config and
        // the files it names can move together.
        if let Some(base) = path.parent() {
            let anchor = |p: &mut PathBuf| {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            };
            anchor(&mut config.manifests.dir);
            anchor(&mut config.state_dir);
            for file in [&mut config.kube.kubeconfig, &mut config.tunnel.key_file, &mut config.tunnel.psk_file] {
                if let Some(file) = file.as_mut() {
                    anchor(file);
                }
            }
        }
        Ok(config)
    }

    /// Parses YAML text; the error names the line and the offending key.
    pub fn from_yaml(text: &str) -> Result<Self, String> {
        if text.lines().all(|l| l.trim().is_empty() || l.trim_start().starts_with('#')) {
            return Ok(Self::default());
        }
        serde_saphyr::from_str::<Config>(text).map_err(|e| describe_yaml_error(&e))
    }

    /// The VIP range (see [`Config::vip_cidr`] for the defaults).
    pub fn vip_cidr(&self) -> IpNet {
        self.vip_cidr.unwrap_or_else(|| {
            let default = match self.intercept.mode {
                InterceptMode::None => DEFAULT_VIP_CIDR,
                InterceptMode::Nftables => NODE_MODE_VIP_CIDR,
            };
            default.parse().expect("valid default CIDR")
        })
    }

    /// The IPv6 VIP range, if any (see [`Config::vip_cidr6`] for the
    /// default).
    pub fn vip_cidr6(&self) -> Option<IpNet> {
        self.vip_cidr6.or_else(|| match self.intercept.mode {
            InterceptMode::None => None,
            InterceptMode::Nftables => Some(NODE_MODE_VIP_CIDR6.parse().expect("valid default CIDR")),
        })
    }

    /// The DNS server's address (see [`DnsSection::listen`] for the
    /// default).
    pub fn dns_listen(&self) -> SocketAddr {
        self.dns.listen.unwrap_or(match self.intercept.mode {
            InterceptMode::None => DEFAULT_DNS_LISTEN,
            InterceptMode::Nftables => NODE_MODE_DNS_LISTEN,
        })
    }

    /// Writes out the settings whose default depends on others (the mode),
    /// so that `--print-config` and `/config` show what is in effect.
    pub fn fill_defaults(&mut self) {
        self.vip_cidr = Some(self.vip_cidr());
        self.vip_cidr6 = self.vip_cidr6();
        self.dns.listen = Some(self.dns_listen());
    }

    /// Checks the settings together and reports every problem at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if self.node_name.trim().is_empty() {
            problems.push("nodeName is empty and the host name is unknown; set --node-name".to_string());
        }
        let vip_cidr = self.vip_cidr();
        if !matches!(vip_cidr, IpNet::V4(_)) {
            problems.push(format!("vipCidr {vip_cidr} is not an IPv4 range; IPv6 VIPs come from vipCidr6"));
        } else if vip_cidr.max_prefix_len() - vip_cidr.prefix_len() < 2 {
            problems.push(format!("vipCidr {vip_cidr} is too small to hold service VIPs; use at least a /30"));
        }
        if let Some(v6) = self.vip_cidr6() {
            if !matches!(v6, IpNet::V6(_)) {
                problems.push(format!("vipCidr6 {v6} is not an IPv6 range"));
            } else if v6.max_prefix_len() - v6.prefix_len() < 2 {
                problems.push(format!("vipCidr6 {v6} is too small to hold service VIPs; use at least a /126"));
            }
        }
        if self.dns.cluster_domain.trim_matches('.').is_empty() {
            problems.push("dns.clusterDomain is empty".into());
        }
        if self.manifests.poll_interval.is_zero() {
            problems.push("manifests.pollInterval must be greater than zero".into());
        }
        if self.dns.upstream_timeout.is_zero() {
            problems.push("dns.upstreamTimeout must be greater than zero".into());
        }
        if self.proxy.connect_timeout.is_zero() {
            problems.push("proxy.connectTimeout must be greater than zero".into());
        }
        if self.proxy.max_udp_sessions == 0 {
            problems.push("proxy.maxUdpSessions must be greater than zero".into());
        }
        let table = &self.intercept.table;
        if table.is_empty()
            || table.len() > 64
            || !table.starts_with(|c: char| c.is_ascii_alphabetic())
            || !table.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            problems.push(format!(
                "intercept.table {table:?} is not a valid nftables table name (a letter, then letters, digits, _ or -)"
            ));
        }
        if self.intercept.mode == InterceptMode::Nftables {
            if self.intercept.port == 0 {
                problems.push("intercept.port must be a fixed port (not 0) with intercept.mode nftables".into());
            }
            if self.intercept.mark == 0 {
                problems.push("intercept.mark must not be 0 (unmarked traffic is everyone's)".into());
            }
            let dev = &self.intercept.vip_device;
            if dev.len() > 15 || dev == "." || dev == ".." || dev.chars().any(|c| c == '/' || c.is_whitespace()) {
                problems.push(format!(
                    "intercept.vipDevice {dev:?} is not a valid device name (at most 15 characters, no '/' or spaces)"
                ));
            }
        }
        problems.extend(self.tunnel.problems());
        // Port 0 asks the kernel for any free port, so only fixed ports clash.
        let dns = self.dns_listen();
        if dns == self.admin.listen && dns.port() != 0 {
            problems.push(format!("dns.listen and admin.listen are the same address {dns}"));
        }
        if problems.is_empty() { Ok(()) } else { Err(ConfigError::Invalid(problems)) }
    }
}

/// serde-saphyr errors carry a location; put the line first so the operator
/// sees where before why.
fn describe_yaml_error(e: &serde_saphyr::Error) -> String {
    let text = e.to_string();
    let first = text.lines().next().unwrap_or_default().trim_start_matches("error: ").to_string();
    match e.location() {
        Some(loc) if !first.contains("line") => format!("line {}: {first}", loc.line()),
        _ => first,
    }
}

fn default_node_name() -> String {
    std::env::var("NODE_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_string()))
        .unwrap_or_default()
}

/// Reads `nameserver` lines of a resolv.conf; a missing file yields none.
pub fn resolv_conf_nameservers(path: &Path) -> Vec<SocketAddr> {
    let Ok(text) = std::fs::read_to_string(path) else { return Vec::new() };
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver")).then(|| words.next()).flatten()
        })
        .filter_map(|w| w.split('%').next()?.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

mod duration;
pub use duration::parse as parse_duration;

#[cfg(test)]
mod tests;
