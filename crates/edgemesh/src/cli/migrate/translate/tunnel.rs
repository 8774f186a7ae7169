//! `modules.edgeTunnel`: what of EdgeMesh's tunnel carries over (mDNS,
//! relays, the PSK's intent) and what deliberately does not (its port, its
//! key).

use std::net::IpAddr;

use serde_json::Value;

use super::*;

impl Translator<'_> {
    pub(super) fn tunnel(&mut self, options: &Options) -> Result<(), MigrateError> {
        let (enabled, _) = self.bool("modules.edgeTunnel.enable", false)?;
        self.set("tunnel.enabled", if enabled { "true" } else { "false" }, self.from("modules.edgeTunnel.enable"));
        if !enabled {
            return Ok(());
        }
        self.set(
            "tunnel.mdns",
            "true",
            "from modules.edgeTunnel: EdgeMesh finds peers on the LAN with mDNS (and its DHT, which has no counterpart: \
             peers are bound to Nodes by their edgemesh.io/peer-id annotation)",
        );
        let (port, port_set) = self.uint("modules.edgeTunnel.listenPort", EM_TUNNEL_PORT, u64::from(u16::MAX))?;
        let listen_note = if port == EM_TUNNEL_PORT {
            format!(
                "{port} is EdgeMesh's; ours listens on {} by default so both run on a node during a switch: open that \
                 port where {port} was open (relays, port forwards)",
                edgemesh_tunnel::DEFAULT_PORT
            )
        } else {
            format!(
                "not carried over while EdgeMesh holds {port}: ours listens on {}; after EdgeMesh is removed, \
                 tunnel.listen: [/ip4/0.0.0.0/tcp/{port}] takes it over",
                edgemesh_tunnel::DEFAULT_PORT
            )
        };
        if port_set {
            self.note("modules.edgeTunnel.listenPort", listen_note);
        } else {
            self.out.untranslated.push(Note {
                key: "modules.edgeTunnel.listenPort".into(),
                line: None,
                why: listen_note,
            });
        }
        match self.string("modules.edgeTunnel.transport")?.as_deref() {
            None | Some("tcp") => {}
            Some("quic") => self.note(
                "modules.edgeTunnel.transport",
                "QUIC is a build option here (cargo build --features quic; then the default listen adds it); TCP is \
                 always on",
            ),
            Some(other) => self.note(
                "modules.edgeTunnel.transport",
                format!("{other:?} has no counterpart: the tunnel speaks TCP (and QUIC in a quic build)"),
            ),
        }
        let tunnel_port = edgemesh_tunnel::DEFAULT_PORT;
        if let Some(relays) = self.get("modules.edgeTunnel.relayNodes") {
            let Value::Array(relays) = relays else {
                return Err(self.error("modules.edgeTunnel.relayNodes", format!("expected a list, found {relays}")));
            };
            let mut addrs = Vec::new();
            for (i, relay) in relays.iter().enumerate() {
                let node = relay.get("nodeName").and_then(Value::as_str).ok_or_else(|| {
                    self.error("modules.edgeTunnel.relayNodes", format!("item {} has no nodeName", i + 1))
                })?;
                let advertised = relay.get("advertiseAddress").and_then(Value::as_array).cloned().unwrap_or_default();
                for a in &advertised {
                    let text = a.as_str().map(str::to_owned).unwrap_or_else(|| a.to_string());
                    let ip: IpAddr = text.parse().map_err(|_| {
                        self.error(
                            "modules.edgeTunnel.relayNodes",
                            format!("advertiseAddress {text:?} of relay {node} is not an IP address"),
                        )
                    })?;
                    let family = if ip.is_ipv4() { "ip4" } else { "ip6" };
                    addrs.push(format!("/{family}/{ip}/tcp/{tunnel_port}/p2p/<peer ID of {node}>"));
                }
                if advertised.is_empty() {
                    addrs.push(format!("/ip4/<address of {node}>/tcp/{tunnel_port}/p2p/<peer ID of {node}>"));
                }
            }
            if !addrs.is_empty() {
                self.suggest(
                    "tunnel.relays",
                    format!("[{}]", addrs.join(", ")),
                    "from modules.edgeTunnel.relayNodes: a relay is named by address and peer ID (`edgemesh id` on it, \
                     or its Node's edgemesh.io/peer-id annotation); the relay nodes run deploy/kubernetes/relay \
                     (tunnel.relayServer)",
                );
            }
        }
        let (psk, _) = self.bool("modules.edgeTunnel.psk.enable", true)?;
        if psk {
            let em_path = self.string("modules.edgeTunnel.psk.path")?.unwrap_or_else(|| EM_PSK_PATH.into());
            let comment = format!(
                "{}: a private network, with a new key in our format (/key/swarm/psk/1.0.0/, base16) from a Secret \
                 mounted read-only (mode 0400); EdgeMesh's key at {em_path} is not reused: EdgeMesh hashes that file \
                 into its own network's key, and the two tunnels never talk to each other",
                self.from("modules.edgeTunnel.psk.enable")
            );
            match &options.psk_file {
                Some(path) => self.set("tunnel.pskFile", yaml_str(&path.display().to_string()), comment),
                None => self.suggest("tunnel.pskFile", "/etc/edgemesh/psk/swarm.key", comment),
            }
        } else {
            self.note_if_set("modules.edgeTunnel.psk.path", "the PSK is off");
        }
        let (ipfs_log, _) = self.bool("modules.edgeTunnel.enableIpfsLog", false)?;
        if ipfs_log {
            self.set("logLevel", "info,libp2p=debug", "from modules.edgeTunnel.enableIpfsLog");
        }
        self.note_if_set(
            "modules.edgeTunnel.rendezvous",
            "no DHT rendezvous: a node's peer ID comes from its Node's edgemesh.io/peer-id annotation (or tunnel.peers)",
        );
        for key in ["maxCandidates", "heartbeatPeriod", "finderPeriod"] {
            self.note_if_set(
                &format!("modules.edgeTunnel.{key}"),
                "relay discovery tuning: relays are named explicitly (tunnel.relays) and their reservations renewed \
                 by the tunnel",
            );
        }
        self.limits()?;
        self.note_if_set(
            "modules.edgeTunnel.listenInterfaces",
            "listening is by address, not interface: tunnel.listen: [/ip4/<the interface's address>/tcp/20007]",
        );
        self.note_if_set(
            "modules.edgeTunnel.extraFilteredInterfaces",
            "listening is by address, not interface: list the addresses to listen on in tunnel.listen",
        );
        if self.get("modules.edgeTunnel.metricConfig").is_some() {
            self.note(
                "modules.edgeTunnel.metricConfig",
                "metrics are always on, on the admin endpoint: http://127.0.0.1:15020/metrics (admin.listen)",
            );
        }
        for key in ["mode", "nodeName", "configPath"] {
            self.note_if_set(
                &format!("modules.edgeTunnel.{key}"),
                "set by EdgeMesh itself (\"do not allow users to configure manually\")",
            );
        }
        Ok(())
    }
}
