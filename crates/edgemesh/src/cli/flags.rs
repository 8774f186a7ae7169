//! The agent's setting flags: a documented subset of the config's keys.
//!
//! Each flag names the key it writes ([`FLAGS`]); its value is read by the
//! same parser as the config file (YAML, into the crates' own types), so a
//! flag and a key accept the same values and report the same errors, and a
//! flag cannot miss its setting. Adding a flag is one row here.

use clap::{Arg, ArgAction, ArgMatches};
use serde_json::Value;

use crate::config::Config;

/// One flag: `--long` writes `key` (a dotted config key).
pub struct Flag {
    pub long: &'static str,
    pub key: &'static str,
    pub takes: Takes,
    /// Another key the flag sets too (e.g. `--kube-api` selects the kube source).
    pub implies: Option<(&'static str, &'static str)>,
    pub help: &'static str,
}

/// What a flag takes on the command line.
pub enum Takes {
    /// One value, named so in the help.
    Value(&'static str),
    /// One value per use (repeatable); together they replace the key's list.
    Values(&'static str),
    /// No value: writes this YAML value.
    Switch(&'static str),
}

use Takes::{Switch, Value as One, Values};

const KUBE: Option<(&str, &str)> = Some(("source", "kube"));
const TUNNEL: Option<(&str, &str)> = Some(("tunnel.enabled", "true"));

/// Every setting flag of `edgemesh agent`.
pub const FLAGS: &[Flag] = &[
    Flag {
        long: "node-name",
        key: "nodeName",
        takes: One("NAME"),
        implies: None,
        help: "This node's name. Default: $NODE_NAME, else the host name.",
    },
    Flag {
        long: "log-level",
        key: "logLevel",
        takes: One("LEVEL"),
        implies: None,
        help: "Log level or tracing filter (error, warn, info, debug, trace). RUST_LOG takes precedence.",
    },
    Flag {
        long: "log-format",
        key: "logFormat",
        takes: One("FORMAT"),
        implies: None,
        help: "Log lines as text (default) or json (one JSON object per line).",
    },
    Flag {
        long: "drain-timeout",
        key: "drainTimeout",
        takes: One("DURATION"),
        implies: None,
        help: "After SIGTERM, how long established connections may go on before they are closed, e.g. 20s.",
    },
    Flag {
        long: "manifest-dir",
        key: "manifests.dir",
        takes: One("DIR"),
        implies: None,
        help: "Directory of Kubernetes manifests (Service, EndpointSlice, Endpoints) to serve; watched for changes.",
    },
    Flag {
        long: "source",
        key: "source",
        takes: One("SOURCE"),
        implies: None,
        help: "Where services come from: manifests (a directory) or kube (the Kubernetes API / KubeEdge metaServer).",
    },
    Flag {
        long: "kube-api",
        key: "kube.api",
        takes: One("URL"),
        implies: KUBE,
        help: "Kubernetes API URL, e.g. KubeEdge metaServer http://127.0.0.1:10550 (plain HTTP, no auth). Implies --source kube.",
    },
    Flag {
        long: "kubeconfig",
        key: "kube.kubeconfig",
        takes: One("FILE"),
        implies: KUBE,
        help: "Kubeconfig file for the Kubernetes API. Implies --source kube.",
    },
    Flag {
        long: "state-dir",
        key: "stateDir",
        takes: One("DIR"),
        implies: None,
        help: "Directory of the persistent cache that lets a restarted agent serve while the source is unreachable. Default: /var/lib/edgemesh.",
    },
    Flag {
        long: "dns-listen",
        key: "dns.listen",
        takes: One("ADDR:PORT"),
        implies: None,
        help: "Address of the node-local DNS server, UDP and TCP. Default: 169.254.96.16:53 with --intercept nftables (on the VIP device), 127.0.0.1:15053 otherwise.",
    },
    Flag {
        long: "dns-upstream",
        key: "dns.upstreams",
        takes: Values("ADDR:PORT"),
        implies: None,
        help: "Upstream resolver for names outside the cluster domain (repeatable). Default: the nameservers of /etc/resolv.conf.",
    },
    Flag {
        long: "dns-allowed-client",
        key: "dns.allowedClients",
        takes: Values("CIDR"),
        implies: None,
        help: "Network whose queries DNS answers besides this node's own addresses and its Node's pod CIDRs (repeatable), e.g. the pod CIDR when no Node object gives it; needed only when --dns-listen is not node-local. Everyone else gets REFUSED.",
    },
    Flag {
        long: "cluster-domain",
        key: "dns.clusterDomain",
        takes: One("DOMAIN"),
        implies: None,
        help: "Kubernetes cluster domain. Default: cluster.local.",
    },
    Flag {
        long: "admin-listen",
        key: "admin.listen",
        takes: One("ADDR:PORT"),
        implies: None,
        help: "Address of the admin endpoint (/healthz, /readyz, /services, /config). Default: 127.0.0.1:15020.",
    },
    Flag {
        long: "vip-cidr",
        key: "vipCidr",
        takes: One("CIDR"),
        implies: None,
        help: "Range that service VIPs are allocated from. Default: 9.251.0.0/16 with --intercept nftables (on the VIP device), 127.251.0.0/16 otherwise (no root needed).",
    },
    Flag {
        long: "vip-cidr6",
        key: "vipCidr6",
        takes: One("CIDR"),
        implies: None,
        help: "Range that IPv6 service VIPs are allocated from (services asking for IPv6). Default: fd00:9:251::/112 with --intercept nftables, none otherwise.",
    },
    Flag {
        long: "lb-strategy",
        key: "proxy.defaultStrategy",
        takes: One("STRATEGY"),
        implies: None,
        help: "Load-balancing strategy for services without the edgemesh.io/lb-strategy annotation: RoundRobin, Random or ConsistentHash.",
    },
    Flag {
        long: "connect-timeout",
        key: "proxy.connectTimeout",
        takes: One("DURATION"),
        implies: None,
        help: "Time allowed to connect to one endpoint before trying the next, e.g. 500ms or 2s.",
    },
    Flag {
        long: "proxy-workers",
        key: "proxy.workers",
        takes: One("N"),
        implies: None,
        help: "Threads proxied TCP connections run on, each with its own event loop. Default: 0, one per CPU.",
    },
    Flag {
        long: "intercept",
        key: "intercept.mode",
        takes: One("MODE"),
        implies: None,
        help: "Interception of service addresses: none (clients use the VIPs), nftables (connections to cluster IPs and VIPs are redirected to the agent; needs root or CAP_NET_ADMIN and nft) or ebpf (the kernel fast path: BPF programs connect clients straight to local endpoints, the rest to the agent; needs CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN, cgroup v2).",
    },
    Flag {
        long: "cgroup-path",
        key: "intercept.cgroupPath",
        takes: One("DIR"),
        implies: None,
        help: "With --intercept ebpf: the cgroup v2 directory the programs attach to (its processes and those below). Default: the cgroup v2 root.",
    },
    Flag {
        long: "ebpf-fallback",
        key: "intercept.fallback",
        takes: One("MODE"),
        implies: None,
        help: "With --intercept ebpf, when the kernel or the process lacks what the fast path needs: none (refuse to start) or nftables (run nftables mode and say so). Default: none.",
    },
    Flag {
        long: "intercept-port",
        key: "intercept.port",
        takes: One("PORT"),
        implies: None,
        help: "Port of the transparent listener that intercepted connections are redirected to. Default: 15006.",
    },
    Flag {
        long: "intercept-table",
        key: "intercept.table",
        takes: One("NAME"),
        implies: None,
        help: "Name of the agent's own nftables table (family inet); mode ebpf's node-port table is <NAME>_nodeports. Default: edgemesh.",
    },
    Flag {
        long: "vip-device",
        key: "intercept.vipDevice",
        takes: One("NAME"),
        implies: None,
        help: "Name of the VIP device made in nftables mode, which holds the node-local DNS address and the VIPs as this node's addresses; \"\" for none. Default: edge0.",
    },
    Flag {
        long: "tunnel",
        key: "tunnel.enabled",
        takes: Switch("true"),
        implies: None,
        help: "Carry connections to endpoints on other nodes through the libp2p tunnel.",
    },
    Flag {
        long: "tunnel-listen",
        key: "tunnel.listen",
        takes: Values("MULTIADDR"),
        implies: TUNNEL,
        help: "Tunnel listen multiaddr (repeatable). Default: TCP port 20007, and QUIC on it in a `quic` build without --psk-file. Implies --tunnel.",
    },
    Flag {
        long: "bootstrap",
        key: "tunnel.bootstrap",
        takes: Values("MULTIADDR"),
        implies: TUNNEL,
        help: "Tunnel peer to dial at start, ending in /p2p/<peer id> (repeatable). Implies --tunnel.",
    },
    Flag {
        long: "relay",
        key: "tunnel.relays",
        takes: Values("MULTIADDR"),
        implies: TUNNEL,
        help: "Relay to reserve a slot on when this node is not publicly reachable, ending in /p2p/<peer id> (repeatable). Implies --tunnel.",
    },
    Flag {
        long: "relay-server",
        key: "tunnel.relayServer",
        takes: Switch("true"),
        implies: TUNNEL,
        help: "Offer circuit relay v2 to other nodes (within tunnel.relayLimits). Implies --tunnel.",
    },
    Flag {
        long: "psk-file",
        key: "tunnel.pskFile",
        takes: One("FILE"),
        implies: TUNNEL,
        help: "Pre-shared key of the tunnel's private network (go-libp2p swarm.key format); TCP only. Implies --tunnel.",
    },
    Flag {
        long: "key-file",
        key: "tunnel.keyFile",
        takes: One("FILE"),
        implies: None,
        help: "The tunnel identity key file. Default: <state-dir>/tunnel.key.",
    },
    Flag {
        long: "allowed-peer",
        key: "tunnel.allowedPeers",
        takes: Values("PEER_ID"),
        implies: None,
        help: "The only peer IDs the tunnel keeps a connection with (repeatable; its relays are added). Default: any peer (still refused proxy streams unless bound to a node).",
    },
    Flag {
        long: "no-mdns",
        key: "tunnel.mdns",
        takes: Switch("false"),
        implies: None,
        help: "Disable mDNS discovery of tunnel peers on the LAN.",
    },
    Flag {
        long: "no-upnp",
        key: "tunnel.upnp",
        takes: Switch("false"),
        implies: None,
        help: "Do not ask the router for a tunnel port mapping (UPnP IGD).",
    },
    Flag {
        long: "punch-ttl",
        key: "tunnel.punchTtl",
        takes: One("HOPS"),
        implies: None,
        help: "IP TTL of a hole punch's first SYN: 2 behind one NAT, 3 behind two, 0 off.",
    },
    Flag {
        long: "socks",
        key: "socks.enabled",
        takes: Switch("true"),
        implies: None,
        help: "Serve the SOCKS5 entry to nodes' hosts and services (port 10800 on the node-local address).",
    },
    Flag {
        long: "socks-listen",
        key: "socks.listen",
        takes: One("ADDR"),
        implies: Some(("socks.enabled", "true")),
        help: "SOCKS5 entry address. Default: 127.0.0.1:10800; node mode: 169.254.96.16:10800. Implies --socks.",
    },
    Flag {
        long: "gateway",
        key: "gateway.enabled",
        takes: Switch("true"),
        implies: None,
        help: "Serve the edge gateway in this process (what `edgemesh gateway` does).",
    },
    Flag {
        long: "gateway-class",
        key: "gateway.className",
        takes: One("NAME"),
        implies: None,
        help: "The GatewayClass the gateway serves. Default: edgemesh.",
    },
    Flag {
        long: "gateway-listen",
        key: "gateway.listenAddress",
        takes: One("IP"),
        implies: None,
        help: "The address the gateway's listeners bind. Default: 0.0.0.0.",
    },
];

/// The setting flags given on a command line, in [`FLAGS`] order.
#[derive(Clone, Debug, Default)]
pub struct SettingFlags {
    /// (key, YAML value) pairs to write over the config file's.
    pub settings: Vec<(&'static str, String)>,
}

impl clap::FromArgMatches for SettingFlags {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut settings = Vec::new();
        for flag in FLAGS {
            let value = match flag.takes {
                Switch(value) => matches.get_flag(flag.long).then(|| value.to_owned()),
                One(_) => matches.get_one::<String>(flag.long).map(|v| yaml_scalar(v)),
                Values(_) => matches.get_many::<String>(flag.long).map(|vs| {
                    let items: Vec<String> = vs.map(|v| yaml_scalar(v)).collect();
                    format!("[{}]", items.join(", "))
                }),
            };
            if let Some(value) = value {
                settings.push((flag.key, value));
                if let Some((key, value)) = flag.implies {
                    settings.push((key, value.to_owned()));
                }
            }
        }
        Ok(Self { settings })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl clap::Args for SettingFlags {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        FLAGS.iter().fold(cmd, |cmd, flag| {
            let arg = Arg::new(flag.long).long(flag.long).help(flag.help);
            cmd.arg(match flag.takes {
                Switch(_) => arg.action(ArgAction::SetTrue),
                One(name) => arg.value_name(name).action(ArgAction::Set),
                Values(name) => arg.value_name(name).action(ArgAction::Append),
            })
        })
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

impl SettingFlags {
    /// Writes the flags' settings over `config`: each value is parsed as
    /// the config file's key would be, then put in place by key.
    pub fn apply(&self, config: &mut Config) -> Result<(), String> {
        if self.settings.is_empty() {
            return Ok(());
        }
        let mut tree = serde_json::to_value(&*config).map_err(|e| format!("cannot apply flags: {e}"))?;
        for (key, value) in &self.settings {
            let flag = FLAGS.iter().find(|f| f.key == *key).map_or(*key, |f| f.long);
            let parsed = Config::from_yaml(&nested(key, value)).map_err(|e| {
                // The document is the flag's own one-liner: its line and column say nothing.
                let why =
                    e.split_once(": ").filter(|(at, _)| at.starts_with("line ")).map_or(e.as_str(), |(_, why)| why);
                format!("--{flag} {value}: {why}")
            })?;
            let parsed = serde_json::to_value(&parsed).map_err(|e| format!("--{flag}: {e}"))?;
            let pointer = format!("/{}", key.replace('.', "/"));
            let value = parsed.pointer(&pointer).cloned().unwrap_or(Value::Null);
            set(&mut tree, key, value);
        }
        *config = serde_json::from_value(tree).map_err(|e| format!("cannot apply flags: {e}"))?;
        Ok(())
    }
}

/// `a.b.c` and a value as the YAML document `a: {b: {c: value}}`.
fn nested(key: &str, value: &str) -> String {
    key.rsplit('.').fold(value.to_owned(), |inner, part| format!("{{{part}: {inner}}}"))
}

/// A command-line value as a YAML scalar: plain when it is a simple word
/// (numbers stay numbers), else single-quoted so that it is read as the
/// text given (`""` stays empty; commas, brackets and `#` are no syntax).
fn yaml_scalar(value: &str) -> String {
    let plain = value.chars().all(|c| c.is_ascii_alphanumeric() || "._:/+=@-".contains(c))
        && value.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '/' || c == '.');
    if plain { value.to_owned() } else { format!("'{}'", value.replace('\'', "''")) }
}

/// Sets `key` (dotted) in a JSON object tree, making objects on the way.
pub(crate) fn set(tree: &mut Value, key: &str, value: Value) {
    let mut node = tree;
    let mut parts = key.split('.').peekable();
    while let Some(part) = parts.next() {
        if !node.is_object() {
            *node = Value::Object(Default::default());
        }
        let map = node.as_object_mut().expect("made an object above");
        if parts.peek().is_none() {
            map.insert(part.to_owned(), value);
            return;
        }
        node = map.entry(part.to_owned()).or_insert(Value::Null);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every flag writes a key that exists, and the value given reaches it.
    #[test]
    fn every_flag_writes_its_key() {
        let mut full = Config::default();
        full.fill_defaults();
        full.vip_cidr6 = Some("fd00:1::/112".parse().unwrap());
        full.kube.api = Some("http://x".into());
        full.kube.kubeconfig = Some("/k".into());
        full.tunnel.psk_file = Some("/p".into());
        let tree = serde_json::to_value(&full).unwrap();
        for flag in FLAGS {
            let pointer = format!("/{}", flag.key.replace('.', "/"));
            assert!(tree.pointer(&pointer).is_some(), "--{} writes {}, which is no key", flag.long, flag.key);
        }
        let flags = SettingFlags {
            settings: vec![
                ("proxy.workers", "3".into()),
                ("dns.upstreams", "['127.0.0.2:53', '[::1]:53']".into()),
                ("intercept.vipDevice", yaml_scalar("")),
                ("logLevel", yaml_scalar("info,edgemesh_dns=debug")),
                ("nodeName", yaml_scalar("123")),
            ],
        };
        let mut c = Config::default();
        flags.apply(&mut c).unwrap();
        assert_eq!(c.proxy.workers, 3);
        assert_eq!(c.dns.upstreams, ["127.0.0.2:53".parse().unwrap(), "[::1]:53".parse().unwrap()]);
        assert_eq!(c.intercept.vip_device, "");
        assert_eq!(c.log_level, "info,edgemesh_dns=debug");
        assert_eq!(c.node_name, "123");
        let bad = SettingFlags { settings: vec![("proxy.workers", "x".into())] };
        let err = bad.apply(&mut c).unwrap_err();
        assert!(err.starts_with("--proxy-workers x: "), "{err}");
    }
}
