//! Command line: `edgemesh <subcommand>`. Flags override the config file.
//!
//! - [`flags`]: the agent's setting flags.
//! - [`status`]: `edgemesh status`, a client of the admin endpoint.
//! - [`check_config`]: `edgemesh check-config FILE`.
//! - [`migrate`]: `edgemesh migrate --from-edgemesh FILE`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub mod check_config;
pub mod flags;
pub mod migrate;
pub mod status;

use self::flags::SettingFlags;
use crate::config::{Config, ConfigError};
use crate::host::SystemHost;

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
    /// Run the edge gateway: the agent with `gateway.enabled` on, serving the Gateways of
    /// `gateway.className` (Gateway API objects, and EdgeMesh's Istio Gateways and
    /// VirtualServices) from the same sources, cache and tunnel. Same flags as `agent`.
    Gateway(Box<AgentArgs>),
    /// Print this node's tunnel peer ID (creating its identity key on first use), e.g. for the
    /// edgemesh.io/peer-id annotation of its Node or the tunnel.peers allow-list of other nodes.
    Id(IdArgs),
    /// Show what a running agent serves: services, tunnel peers, DNS counters and source health,
    /// as tables or JSON/YAML (from its admin endpoint).
    Status(status::StatusArgs),
    /// Check a config file and the manifests directory it names, printing every problem with its
    /// file and line; starts nothing.
    CheckConfig(check_config::CheckConfigArgs),
    /// Translate a KubeEdge EdgeMesh agent config (the edgemesh-agent-cfg ConfigMap, or its
    /// edgemesh-agent.yaml) into this agent's config, printed with where each key came from and
    /// what has no counterpart.
    Migrate(migrate::MigrateArgs),
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
        Ok(c.key_file())
    }
}

/// Flags of `edgemesh agent`: the config file, what to do, and the setting
/// flags ([`flags::FLAGS`]), each of which overrides one key of the file.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// YAML config file; every key is optional (see the README for the reference).
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(flatten)]
    pub settings: SettingFlags,

    /// Print this node's tunnel peer ID (creating the key on first use) and exit.
    #[arg(long)]
    pub print_peer_id: bool,

    /// Print the effective configuration as YAML and exit.
    #[arg(long)]
    pub print_config: bool,
}

impl AgentArgs {
    /// The config file (or defaults) with every given flag applied,
    /// completed from this host (node name, `/etc/resolv.conf`) and
    /// validated.
    pub fn resolve(&self) -> Result<Config, ConfigError> {
        let mut c = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        self.settings.apply(&mut c).map_err(|e| ConfigError::Invalid(vec![e]))?;
        c.complete(&SystemHost::default());
        c.validate()?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use edgemesh_core::LbStrategy;

    use super::*;
    use crate::config::{InterceptMode, SourceKind};

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
            args.resolve().unwrap().tunnel.punch_ttl
        };
        assert_eq!(ttl(&[]), 3, "behind two NATs, from the file");
        assert_eq!(ttl(&["--punch-ttl", "0"]), 0, "the flag wins: priming off");
        assert_eq!(edgemesh_tunnel::TunnelConfig::default().punch_ttl, edgemesh_tunnel::DEFAULT_PUNCH_TTL);
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
        let relay = format!("/ip4/10.0.0.1/tcp/20006/p2p/{}", edgemesh_tunnel::PeerId::random());
        let cli = Cli::try_parse_from([
            "edgemesh",
            "agent",
            "--dns-upstream",
            "127.0.0.1:53",
            "--relay",
            &relay,
            "--no-mdns",
            "--no-upnp",
        ])
        .unwrap();
        let Command::Agent(args) = cli.command else { panic!("agent") };
        let c = args.resolve().unwrap();
        assert!(c.tunnel.enabled, "--relay implies --tunnel");
        assert_eq!(c.tunnel.relays, [relay.parse().unwrap()]);
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
