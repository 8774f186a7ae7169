//! Command line: `edgemesh <subcommand>`. Flags override the config file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use edgemesh_core::LbStrategy;
use ipnet::IpNet;

use crate::config::{Config, ConfigError, InterceptMode, SourceKind, parse_duration, resolv_conf_nameservers};

/// edgemesh: a service mesh data plane for edge nodes.
///
/// One agent per node gives the applications on that node service discovery
/// (node-local DNS) and service-to-service traffic (a TCP proxy with load
/// balancing), from Kubernetes Service and EndpointSlice objects.
#[derive(Debug, Parser)]
#[command(name = "edgemesh", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the node agent: watch services, answer DNS, proxy connections.
    Agent(Box<AgentArgs>),
    /// Print this node's tunnel peer ID (creating its identity key on first use), e.g. for the
    /// edgemesh.io/peer-id annotation of its Node or the tunnel.peers allow-list of other nodes.
    Id(IdArgs),
}

/// Flags of `edgemesh id`.
#[derive(Debug, Args)]
pub struct IdArgs {
    /// YAML config file (for stateDir and tunnel.keyFile).
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Directory holding the identity key (tunnel.key). Default: /var/lib/edgemesh.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// The identity key file; overrides --state-dir.
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
}

impl IdArgs {
    /// The identity key file these flags name.
    pub fn key_file(&self) -> Result<PathBuf, ConfigError> {
        let mut c = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        if let Some(v) = &self.state_dir {
            c.state_dir = v.clone();
        }
        if let Some(v) = &self.key_file {
            c.tunnel.key_file = Some(v.clone());
        }
        Ok(crate::tunnel::key_file(&c))
    }
}

/// Flags of `edgemesh agent`. Each one overrides the same setting of the
/// config file.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// YAML config file; every key is optional (see the README for the reference).
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// This node's name. Default: $NODE_NAME, else the host name.
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,

    /// Directory of Kubernetes manifests (Service, EndpointSlice, Endpoints) to serve; watched for changes.
    #[arg(long, value_name = "DIR")]
    pub manifest_dir: Option<PathBuf>,

    /// Where services come from: manifests (a directory) or kube (the Kubernetes API / KubeEdge metaServer).
    #[arg(long, value_name = "SOURCE", value_enum)]
    pub source: Option<SourceKind>,

    /// Kubernetes API URL, e.g. KubeEdge metaServer http://127.0.0.1:10550 (plain HTTP, no auth). Implies --source kube.
    #[arg(long, value_name = "URL")]
    pub kube_api: Option<String>,

    /// Kubeconfig file for the Kubernetes API. Implies --source kube.
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,

    /// Directory of the persistent cache that lets a restarted agent serve while the source is unreachable. Default: /var/lib/edgemesh.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// Address of the node-local DNS server, UDP and TCP. Default: 169.254.96.16:53 with --intercept nftables (on the VIP device), 127.0.0.1:5353 otherwise.
    #[arg(long, value_name = "ADDR:PORT")]
    pub dns_listen: Option<SocketAddr>,

    /// Upstream resolver for names outside the cluster domain (repeatable). Default: the nameservers of /etc/resolv.conf.
    #[arg(long = "dns-upstream", value_name = "ADDR:PORT")]
    pub dns_upstreams: Vec<SocketAddr>,

    /// Kubernetes cluster domain. Default: cluster.local.
    #[arg(long, value_name = "DOMAIN")]
    pub cluster_domain: Option<String>,

    /// Address of the admin endpoint (/healthz, /readyz, /services, /config). Default: 127.0.0.1:15020.
    #[arg(long, value_name = "ADDR:PORT")]
    pub admin_listen: Option<SocketAddr>,

    /// Range that service VIPs are allocated from. Default: 9.251.0.0/16 with --intercept nftables (on the VIP device), 127.251.0.0/16 otherwise (no root needed).
    #[arg(long, value_name = "CIDR")]
    pub vip_cidr: Option<IpNet>,

    /// Range that IPv6 service VIPs are allocated from (services asking for IPv6). Default: fd00:9:251::/112 with --intercept nftables, none otherwise.
    #[arg(long, value_name = "CIDR")]
    pub vip_cidr6: Option<IpNet>,

    /// Load-balancing strategy for services without the edgemesh.io/lb-strategy annotation.
    #[arg(long, value_name = "STRATEGY", value_parser = parse_strategy)]
    pub lb_strategy: Option<LbStrategy>,

    /// Time allowed to connect to one endpoint before trying the next, e.g. 500ms or 2s.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub connect_timeout: Option<Duration>,

    /// Threads proxied TCP connections run on, each with its own event loop. Default: 0, one per CPU.
    #[arg(long, value_name = "N")]
    pub proxy_workers: Option<usize>,

    /// Interception of service addresses: none (clients use the VIPs) or nftables (connections to cluster IPs and VIPs are redirected to the agent; needs root or CAP_NET_ADMIN and nft).
    #[arg(long, value_name = "MODE", value_enum)]
    pub intercept: Option<InterceptMode>,

    /// Port of the transparent listener that intercepted connections are redirected to. Default: 15006.
    #[arg(long, value_name = "PORT")]
    pub intercept_port: Option<u16>,

    /// Name of the agent's own nftables table (family inet). Default: edgemesh.
    #[arg(long, value_name = "NAME")]
    pub intercept_table: Option<String>,

    /// Name of the VIP device made in nftables mode, which holds the node-local DNS address and the VIPs as this node's addresses; "" for none. Default: edge0.
    #[arg(long, value_name = "NAME")]
    pub vip_device: Option<String>,

    /// Carry connections to endpoints on other nodes through the libp2p tunnel.
    #[arg(long)]
    pub tunnel: bool,

    /// Tunnel listen multiaddr (repeatable). Default: TCP port 20006, and QUIC on it in a `quic` build without --psk-file. Implies --tunnel.
    #[arg(long = "tunnel-listen", value_name = "MULTIADDR")]
    pub tunnel_listen: Vec<String>,

    /// Tunnel peer to dial at start, ending in /p2p/<peer id> (repeatable). Implies --tunnel.
    #[arg(long = "bootstrap", value_name = "MULTIADDR")]
    pub bootstrap: Vec<String>,

    /// Relay to reserve a slot on when this node is not publicly reachable, ending in /p2p/<peer id> (repeatable). Implies --tunnel.
    #[arg(long = "relay", value_name = "MULTIADDR")]
    pub relays: Vec<String>,

    /// Offer circuit relay v2 to other nodes (within tunnel.relayLimits). Implies --tunnel.
    #[arg(long)]
    pub relay_server: bool,

    /// Pre-shared key of the tunnel's private network (go-libp2p swarm.key format); TCP only. Implies --tunnel.
    #[arg(long, value_name = "FILE")]
    pub psk_file: Option<PathBuf>,

    /// The tunnel identity key file. Default: <state-dir>/tunnel.key.
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,

    /// Disable mDNS discovery of tunnel peers on the LAN.
    #[arg(long)]
    pub no_mdns: bool,

    /// Do not ask the router for a tunnel port mapping (UPnP IGD).
    #[arg(long)]
    pub no_upnp: bool,

    /// IP TTL of a hole punch's first SYN (tunnel.punchTtl): 2 behind one NAT, 3 behind two, 0 off.
    #[arg(long, value_name = "HOPS")]
    pub punch_ttl: Option<u8>,

    /// Print this node's tunnel peer ID (creating the key on first use) and exit.
    #[arg(long)]
    pub print_peer_id: bool,

    /// Log level or tracing filter (error, warn, info, debug, trace). RUST_LOG takes precedence.
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,

    /// Print the effective configuration as YAML and exit.
    #[arg(long)]
    pub print_config: bool,
}

fn parse_strategy(s: &str) -> Result<LbStrategy, String> {
    s.parse()
}

impl AgentArgs {
    /// The config file (or defaults) with every given flag applied, and
    /// upstreams defaulted from /etc/resolv.conf.
    pub fn resolve(&self) -> Result<Config, ConfigError> {
        let mut c = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        if let Some(v) = &self.node_name {
            c.node_name = v.clone();
        }
        if let Some(v) = &self.manifest_dir {
            c.manifests.dir = v.clone();
        }
        if let Some(v) = self.source {
            c.source = v;
        }
        if let Some(v) = &self.kube_api {
            c.kube.api = Some(v.clone());
            c.source = SourceKind::Kube;
        }
        if let Some(v) = &self.kubeconfig {
            c.kube.kubeconfig = Some(v.clone());
            c.source = SourceKind::Kube;
        }
        if let Some(v) = &self.state_dir {
            c.state_dir = v.clone();
        }
        if let Some(v) = self.dns_listen {
            c.dns.listen = Some(v);
        }
        if !self.dns_upstreams.is_empty() {
            c.dns.upstreams = self.dns_upstreams.clone();
        }
        if let Some(v) = &self.cluster_domain {
            c.dns.cluster_domain = v.clone();
        }
        if let Some(v) = self.admin_listen {
            c.admin.listen = v;
        }
        if let Some(v) = self.vip_cidr {
            c.vip_cidr = Some(v);
        }
        if let Some(v) = self.vip_cidr6 {
            c.vip_cidr6 = Some(v);
        }
        if let Some(v) = self.lb_strategy {
            c.proxy.default_strategy = v;
        }
        if let Some(v) = self.connect_timeout {
            c.proxy.connect_timeout = v;
        }
        if let Some(v) = self.proxy_workers {
            c.proxy.workers = v;
        }
        if let Some(v) = self.intercept {
            c.intercept.mode = v;
        }
        if let Some(v) = self.intercept_port {
            c.intercept.port = v;
        }
        if let Some(v) = &self.intercept_table {
            c.intercept.table = v.clone();
        }
        if let Some(v) = &self.vip_device {
            c.intercept.vip_device = v.clone();
        }
        if let Some(v) = &self.log_level {
            c.log_level = v.clone();
        }
        self.apply_tunnel_flags(&mut c.tunnel);
        c.fill_defaults();
        if c.dns.upstreams.is_empty() {
            c.dns.upstreams = resolv_conf_nameservers(std::path::Path::new("/etc/resolv.conf"))
                .into_iter()
                // Never forward to ourselves.
                .filter(|u| Some(*u) != c.dns.listen)
                .collect();
        }
        c.validate()?;
        Ok(c)
    }
}

impl AgentArgs {
    fn apply_tunnel_flags(&self, t: &mut crate::config::TunnelSection) {
        let mut implied = false;
        for (flag, setting) in
            [(&self.tunnel_listen, &mut t.listen), (&self.bootstrap, &mut t.bootstrap), (&self.relays, &mut t.relays)]
        {
            if !flag.is_empty() {
                setting.clone_from(flag);
                implied = true;
            }
        }
        if self.relay_server {
            t.relay_server = true;
            implied = true;
        }
        if let Some(v) = &self.psk_file {
            t.psk_file = Some(v.clone());
            implied = true;
        }
        if let Some(v) = &self.key_file {
            t.key_file = Some(v.clone());
        }
        if self.no_mdns {
            t.mdns = false;
        }
        if self.no_upnp {
            t.upnp = false;
        }
        if let Some(v) = self.punch_ttl {
            t.punch_ttl = v;
        }
        if self.tunnel || implied {
            t.enabled = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        std::fs::write(&file, "nodeName: from-file\ndns:\n  listen: 127.0.0.1:1053\n  upstreams: [127.0.0.1:53]\n")
            .unwrap();
        let cli = Cli::try_parse_from([
            "edgemesh",
            "agent",
            "--config",
            file.to_str().unwrap(),
            "--node-name",
            "from-flag",
            "--dns-upstream",
            "127.0.0.2:53",
            "--dns-upstream",
            "127.0.0.3:53",
            "--lb-strategy",
            "Random",
            "--intercept",
            "nftables",
            "--intercept-table",
            "em_flag",
        ])
        .unwrap();
        let Command::Agent(args) = cli.command else { panic!("agent") };
        let c = args.resolve().unwrap();
        assert_eq!(c.node_name, "from-flag");
        assert_eq!(c.dns.listen, Some("127.0.0.1:1053".parse().unwrap()), "unset flags keep the file's value");
        assert_eq!(c.dns.upstreams.len(), 2);
        assert_eq!(c.proxy.default_strategy, LbStrategy::Random);
        assert_eq!(c.intercept.mode, InterceptMode::Nftables);
        assert_eq!(c.intercept.table, "em_flag");
        assert_eq!(c.intercept.port, 15006, "the default port");
    }

    #[test]
    fn the_hole_punch_ttl_comes_from_the_file_or_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        std::fs::write(&file, "nodeName: n\ntunnel:\n  enabled: true\n  punchTtl: 3\n").unwrap();
        let ttl = |extra: &[&str]| {
            let mut argv = vec!["edgemesh", "agent", "--config", file.to_str().unwrap()];
            argv.extend_from_slice(extra);
            let Command::Agent(args) = Cli::try_parse_from(argv).unwrap().command else { panic!("agent") };
            crate::tunnel::tunnel_config(&args.resolve().unwrap()).unwrap().punch_ttl
        };
        assert_eq!(ttl(&[]), 3, "behind two NATs, from the file");
        assert_eq!(ttl(&["--punch-ttl", "0"]), 0, "the flag wins: priming off");
        assert_eq!(crate::config::TunnelSection::default().punch_ttl, edgemesh_tunnel::DEFAULT_PUNCH_TTL);
    }

    #[test]
    fn kube_flags_select_the_kube_source() {
        let cli =
            Cli::try_parse_from(["edgemesh", "agent", "--kube-api", "http://127.0.0.1:10550", "--state-dir", "/tmp/s"])
                .unwrap();
        let Command::Agent(args) = cli.command else { panic!("agent") };
        let c = args.resolve().unwrap();
        assert_eq!(c.source, SourceKind::Kube);
        assert_eq!(c.kube.api.as_deref(), Some("http://127.0.0.1:10550"));
        assert_eq!(c.state_dir, PathBuf::from("/tmp/s"));
        let c = Config::from_yaml("source: kube\nkube:\n  kubeconfig: /etc/kube.conf\n").unwrap();
        assert_eq!(c.source, SourceKind::Kube);
        assert_eq!(Config::default().source, SourceKind::Manifests);
    }

    #[test]
    fn tunnel_flags_turn_the_tunnel_on() {
        let cli = Cli::try_parse_from(["edgemesh", "agent", "--dns-upstream", "127.0.0.1:53"]).unwrap();
        let Command::Agent(args) = cli.command else { panic!("agent") };
        assert!(!args.resolve().unwrap().tunnel.enabled, "off by default");
        let cli = Cli::try_parse_from([
            "edgemesh",
            "agent",
            "--dns-upstream",
            "127.0.0.1:53",
            "--relay",
            "/ip4/10.0.0.1/tcp/20006/p2p/12D3KooWAbc",
            "--no-mdns",
            "--no-upnp",
        ])
        .unwrap();
        let Command::Agent(args) = cli.command else { panic!("agent") };
        let c = args.resolve().unwrap();
        assert!(c.tunnel.enabled, "--relay implies --tunnel");
        assert_eq!(c.tunnel.relays, ["/ip4/10.0.0.1/tcp/20006/p2p/12D3KooWAbc"]);
        assert!(!c.tunnel.mdns);
        assert!(!c.tunnel.upnp);
    }

    #[test]
    fn help_mentions_every_flag() {
        use clap::CommandFactory;
        let mut cmd = Cli::command();
        let help = cmd.find_subcommand_mut("agent").unwrap().render_long_help().to_string();
        for flag in [
            "--node-name",
            "--manifest-dir",
            "--kube-api",
            "--kubeconfig",
            "--state-dir",
            "--source",
            "--dns-listen",
            "--dns-upstream",
            "--admin-listen",
            "--vip-cidr",
            "--vip-cidr6",
            "--intercept",
            "--intercept-port",
            "--intercept-table",
            "--vip-device",
            "--tunnel",
            "--tunnel-listen",
            "--bootstrap",
            "--relay",
            "--relay-server",
            "--psk-file",
            "--key-file",
            "--print-peer-id",
            "--no-upnp",
        ] {
            assert!(help.contains(flag), "{flag} missing from help");
        }
    }
}
