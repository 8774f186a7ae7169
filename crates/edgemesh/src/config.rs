//! The agent's configuration: one serialisable struct, read from a YAML file,
//! overridden by command-line flags, validated as a whole, logged at start
//! and shown by the admin endpoint (`/config`).
//!
//! Every key has a default, so an empty file (or none) is a valid config.
//! Unknown keys are an error that names the key and its line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use edgemesh_dns::DnsConfig;
pub use edgemesh_gateway::GatewayConfig;
pub use edgemesh_http::HttpConfig;
pub use edgemesh_intercept::{InterceptConfig, InterceptMode};
pub use edgemesh_kube::KubeConfig;
pub use edgemesh_manifests::ManifestsConfig;
pub use edgemesh_metrics::MetricsConfig;
pub use edgemesh_proxy::ProxyConfig;
pub use edgemesh_socks::SocksConfig;
pub use edgemesh_tunnel::TunnelConfig;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

pub use crate::admin::AdminConfig;
use crate::host::Host;
pub use crate::lifecycle::LogFormat;

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
pub const DEFAULT_DNS_LISTEN: SocketAddr = edgemesh_dns::DEFAULT_LISTEN;
/// Default DNS address in node mode: EdgeMesh's node-local DNS address
/// (held by the VIP device), on the standard port, so that pods can be
/// given it as their `clusterDNS`.
pub const NODE_MODE_DNS_LISTEN: SocketAddr = SocketAddr::new(edgemesh_intercept::DEFAULT_DNS_ADDRESS, 53);

/// Default of `drainTimeout`.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(20);

/// The agent's settings. Top-level keys are the agent's own; each section
/// is the config type of the crate that uses it, so a setting is defined
/// once, in its owner (see "Adding a setting" in the README).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Config {
    /// This node's name (endpoints with this `nodeName` are local).
    /// Default: `$NODE_NAME`, else the host name (see [`Config::complete`]).
    pub node_name: String,
    /// Log filter (`error`, `warn`, `info`, `debug`, `trace`, or a
    /// `tracing` directive such as `edgemesh_dns=debug`). `RUST_LOG` wins.
    pub log_level: String,
    /// `text` (default) or `json`: one JSON object per line. Needs a restart.
    pub log_format: LogFormat,
    /// How long established connections may go on after SIGTERM before they
    /// are closed (see the README's "Reload, drain and logs"); below
    /// Kubernetes' default termination grace period of 30 s.
    #[serde(with = "edgemesh_core::duration")]
    pub drain_timeout: Duration,
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
    pub kube: KubeConfig,
    pub dns: DnsConfig,
    pub proxy: ProxyConfig,
    /// HTTP-aware proxying of HTTP service ports (see the README's
    /// "HTTP-aware proxying").
    pub http: HttpConfig,
    pub admin: AdminConfig,
    pub metrics: MetricsConfig,
    pub intercept: InterceptConfig,
    pub tunnel: TunnelConfig,
    pub socks: SocksConfig,
    /// The edge gateway (see the README's "The edge gateway").
    pub gateway: GatewayConfig,
}

/// Where services come from.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    #[default]
    Manifests,
    Kube,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            node_name: String::new(),
            log_level: "info".into(),
            log_format: LogFormat::Text,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            vip_cidr: None,
            vip_cidr6: None,
            source: SourceKind::Manifests,
            state_dir: PathBuf::from("/var/lib/edgemesh"),
            manifests: ManifestsConfig::default(),
            kube: KubeConfig::default(),
            dns: DnsConfig::default(),
            proxy: ProxyConfig::default(),
            http: HttpConfig::default(),
            admin: AdminConfig::default(),
            metrics: MetricsConfig::default(),
            intercept: InterceptConfig::default(),
            tunnel: TunnelConfig::default(),
            socks: SocksConfig::default(),
            gateway: GatewayConfig::default(),
        }
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
        if let Some(base) = path.parent() {
            config.anchor_paths(base);
        }
        Ok(config)
    }

    /// Makes relative paths relative to `base`, the config file's
    /// directory, so a config and the files it names can move together.
    pub fn anchor_paths(&mut self, base: &Path) {
        let anchor = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        anchor(&mut self.manifests.dir);
        anchor(&mut self.state_dir);
        for file in [
            &mut self.kube.kubeconfig,
            &mut self.tunnel.key_file,
            &mut self.tunnel.psk_file,
            &mut self.socks.credentials_file,
        ] {
            if let Some(file) = file.as_mut() {
                anchor(file);
            }
        }
    }

    /// Parses YAML text; the error names the line and the offending key.
    pub fn from_yaml(text: &str) -> Result<Self, String> {
        Self::parse_yaml(text).map_err(|p| p.to_string())
    }

    /// [`Config::from_yaml`] with the error's line and column apart (for
    /// `edgemesh check-config`).
    pub fn parse_yaml(text: &str) -> Result<Self, YamlProblem> {
        if text.lines().all(|l| l.trim().is_empty() || l.trim_start().starts_with('#')) {
            return Ok(Self::default());
        }
        serde_saphyr::from_str::<Config>(text).map_err(|e| YamlProblem::of(&e))
    }

    /// The VIP range (see [`Config::vip_cidr`] for the defaults).
    pub fn vip_cidr(&self) -> IpNet {
        self.vip_cidr.unwrap_or_else(|| {
            let default = match self.intercept.mode {
                InterceptMode::None => DEFAULT_VIP_CIDR,
                InterceptMode::Nftables | InterceptMode::Ebpf => NODE_MODE_VIP_CIDR,
            };
            default.parse().expect("valid default CIDR")
        })
    }

    /// The IPv6 VIP range, if any (see [`Config::vip_cidr6`] for the
    /// default).
    pub fn vip_cidr6(&self) -> Option<IpNet> {
        self.vip_cidr6.or_else(|| match self.intercept.mode {
            InterceptMode::None => None,
            InterceptMode::Nftables | InterceptMode::Ebpf => {
                Some(NODE_MODE_VIP_CIDR6.parse().expect("valid default CIDR"))
            }
        })
    }

    /// The DNS server's address (see [`DnsConfig::listen`] for the
    /// default).
    pub fn dns_listen(&self) -> SocketAddr {
        self.dns.listen.unwrap_or(match self.intercept.mode {
            InterceptMode::None => DEFAULT_DNS_LISTEN,
            InterceptMode::Nftables | InterceptMode::Ebpf => NODE_MODE_DNS_LISTEN,
        })
    }

    /// The SOCKS5 entry's address: `socks.listen`, else port 10800 on the
    /// node-local DNS address in node mode, on 127.0.0.1 otherwise.
    pub fn socks_listen(&self) -> SocketAddr {
        self.socks.listen.unwrap_or(match self.intercept.mode {
            InterceptMode::None => edgemesh_socks::DEFAULT_LISTEN,
            InterceptMode::Nftables | InterceptMode::Ebpf => {
                SocketAddr::new(NODE_MODE_DNS_LISTEN.ip(), edgemesh_socks::DEFAULT_PORT)
            }
        })
    }

    /// Writes out the settings whose default depends on others (the mode,
    /// the state directory), so that `--print-config` and `/config` show
    /// what is in effect.
    pub fn fill_defaults(&mut self) {
        self.vip_cidr = Some(self.vip_cidr());
        self.vip_cidr6 = self.vip_cidr6();
        self.dns.listen = Some(self.dns_listen());
        self.tunnel.key_file = Some(self.key_file());
        self.socks.listen = Some(self.socks_listen());
    }

    /// Fills in what the host decides: the node name (when none is set),
    /// the upstream resolvers (the host's, when none are set, never this
    /// agent's own DNS address), and the defaults of [`Config::fill_defaults`].
    /// Settings already given are kept, so completing twice changes nothing.
    pub fn complete(&mut self, host: &dyn Host) {
        if self.node_name.trim().is_empty() {
            self.node_name = host.node_name().unwrap_or_default();
        }
        self.fill_defaults();
        if self.dns.upstreams.is_empty() {
            let own = self.dns_listen();
            self.dns.upstreams = host.nameservers().into_iter().filter(|u| *u != own).collect();
        }
    }

    /// The tunnel's identity key file: `tunnel.keyFile`, else
    /// `<stateDir>/tunnel.key`.
    pub fn key_file(&self) -> PathBuf {
        self.tunnel.key_file.clone().unwrap_or_else(|| self.state_dir.join("tunnel.key"))
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
        problems.extend(http_problems(&self.http));
        problems.extend(self.intercept.problems());
        problems.extend(self.tunnel.problems());
        problems.extend(self.socks.problems());
        // Port 0 asks the kernel for any free port, so only fixed ports clash.
        let dns = self.dns_listen();
        if dns == self.admin.listen && dns.port() != 0 {
            problems.push(format!("dns.listen and admin.listen are the same address {dns}"));
        }
        if problems.is_empty() { Ok(()) } else { Err(ConfigError::Invalid(problems)) }
    }
}

/// Where YAML text stops being a config, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct YamlProblem {
    /// 1-based line and column, when the parser knows them.
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

impl YamlProblem {
    pub(crate) fn of(e: &serde_saphyr::Error) -> Self {
        let text = e.to_string();
        let message = text.lines().next().unwrap_or_default().trim_start_matches("error: ").to_string();
        let location = e.location().filter(|l| l.line() > 0);
        YamlProblem {
            line: location.and_then(|l| usize::try_from(l.line()).ok()),
            column: location.filter(|l| l.column() > 0).and_then(|l| usize::try_from(l.column()).ok()),
            message,
        }
    }
}

/// serde-saphyr errors carry a location; the line comes first so the
/// operator sees where before why.
impl std::fmt::Display for YamlProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(line) if !self.message.contains("line") => write!(f, "line {line}: {}", self.message),
            _ => f.write_str(&self.message),
        }
    }
}

#[cfg(test)]
mod tests;

/// What is wrong with the `http` section (only its limits: a zero timeout
/// turns that timeout off).
fn http_problems(http: &HttpConfig) -> Vec<String> {
    let min = edgemesh_http::front::MIN_HEADER_BYTES;
    let mut problems = Vec::new();
    if http.max_header_bytes < min {
        problems
            .push(format!("http.maxHeaderBytes {} is below the smallest hyper accepts, {min}", http.max_header_bytes));
    }
    let zeros = [
        ("http.maxHeaders", http.max_headers == 0),
        ("http.maxConcurrentStreams", http.max_concurrent_streams == 0),
        ("http.maxConnections", http.max_connections == 0),
    ];
    for (key, zero) in zeros {
        if zero {
            problems.push(format!("{key} must be greater than zero"));
        }
    }
    problems
}
