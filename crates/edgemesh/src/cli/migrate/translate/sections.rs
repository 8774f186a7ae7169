//! The sections of EdgeMesh's config but the tunnel: the API source, DNS,
//! the proxy, the tunnel's resource limits, and edgeCNI.

use std::net::{IpAddr, SocketAddr};

use serde_json::Value;

use super::*;

impl Translator<'_> {
    pub(super) fn kube(&mut self) -> Result<(), MigrateError> {
        self.set(
            "source",
            "kube",
            "from kubeAPIConfig: EdgeMesh reads Services from the API (edge nodes: edgecore's metaServer, which the \
             DaemonSet names with --kube-api; cloud nodes: the pod's service account)",
        );
        if let Some(master) = self.string("kubeAPIConfig.master")? {
            self.set("kube.api", yaml_str(&master), "from kubeAPIConfig.master");
        }
        if let Some(kubeconfig) = self.string("kubeAPIConfig.kubeConfig")? {
            self.set("kube.kubeconfig", yaml_str(&kubeconfig), "from kubeAPIConfig.kubeConfig");
        }
        if let Some(server) = self.string("kubeAPIConfig.metaServer.server")?
            && server != EM_METASERVER
        {
            self.note(
                "kubeAPIConfig.metaServer.server",
                format!("per node type, not in the shared config: give edge nodes --kube-api {server} on the DaemonSet's command line"),
            );
        }
        let why_security = "metaServer over TLS with client certificates: not with kube.api (plain HTTP); write a kubeconfig \
                            with the server, CA and client certificate and set kube.kubeconfig";
        for key in ["requireAuthorization", "insecureSkipTLSVerify", "tlsCaFile", "tlsCertFile", "tlsPrivateKeyFile"] {
            self.note_if_set(&format!("kubeAPIConfig.metaServer.security.{key}"), why_security);
        }
        self.note_if_set(
            "kubeAPIConfig.contentType",
            "the agent speaks JSON to the API, which metaServer requires anyway",
        );
        for key in ["qps", "burst"] {
            self.note_if_set(
                &format!("kubeAPIConfig.{key}"),
                "no client-side rate limit: the agent lists once and then watches (a handful of requests per outage)",
            );
        }
        self.note_if_set("kubeAPIConfig.mode", "derived by EdgeMesh itself; here the DaemonSet's --kube-api decides");
        self.note_if_set(
            "kubeAPIConfig.deleteKubeConfig",
            "the agent never writes a kubeconfig, so there is nothing to delete",
        );
        Ok(())
    }

    pub(super) fn dns(&mut self) -> Result<(), MigrateError> {
        let ip_text = self.string("commonConfig.bridgeDeviceIP")?.unwrap_or_else(|| EM_BRIDGE_IP.into());
        let ip: IpAddr = ip_text
            .parse()
            .map_err(|_| self.error("commonConfig.bridgeDeviceIP", format!("{ip_text:?} is not an IP address")))?;
        let (port, _) = self.uint("modules.edgeDNS.listenPort", EM_DNS_PORT, u64::from(u16::MAX))?;
        let (enabled, _) = self.bool("modules.edgeDNS.enable", true)?;
        let listen = SocketAddr::new(ip, u16::try_from(port).expect("checked against u16::MAX"));
        let mut comment = format!(
            "{} and {}: the node-local DNS address kubelet's clusterDNS points at",
            self.from("commonConfig.bridgeDeviceIP"),
            self.from("modules.edgeDNS.listenPort")
        );
        if !enabled {
            comment
                .push_str(" (modules.edgeDNS.enable is false: nothing pointed at EdgeMesh's DNS; ours serves anyway)");
        }
        comment.push_str(
            "; while EdgeMesh still runs on the node, EdgeMesh holds it: use e.g. 169.254.96.17:53 until it is removed \
             (README, \"Coming from EdgeMesh\")",
        );
        self.set("dns.listen", listen.to_string(), comment);
        let (cache, _) = self.bool("modules.edgeDNS.cacheDNS.enable", false)?;
        match self.get("modules.edgeDNS.cacheDNS.upstreamServers") {
            None => {}
            Some(Value::Array(servers)) => {
                let mut upstreams = Vec::new();
                for s in servers {
                    let text = s.as_str().map(str::to_owned).unwrap_or_else(|| s.to_string());
                    let addr = text
                        .parse::<SocketAddr>()
                        .or_else(|_| text.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                        .map_err(|_| {
                            self.error(
                                "modules.edgeDNS.cacheDNS.upstreamServers",
                                format!("{text:?} is not an IP address (or address:port)"),
                            )
                        })?;
                    upstreams.push(addr.to_string());
                }
                if !upstreams.is_empty() {
                    let mut comment = "from modules.edgeDNS.cacheDNS.upstreamServers: names outside the cluster \
                                       domain go there"
                        .to_owned();
                    if !cache {
                        comment.push_str(" (cacheDNS was off in EdgeMesh, which then used the node's resolv.conf)");
                    }
                    self.set("dns.upstreams", format!("[{}]", upstreams.join(", ")), comment);
                }
            }
            Some(other) => {
                return Err(self.error(
                    "modules.edgeDNS.cacheDNS.upstreamServers",
                    format!("expected a list of addresses, found {other}"),
                ));
            }
        }
        self.note_if_set(
            "modules.edgeDNS.cacheDNS.enable",
            "forwarded answers are always cached here (dns.cacheSize), honouring their TTLs",
        );
        self.note_if_set(
            "modules.edgeDNS.cacheDNS.autoDetect",
            "cluster names are answered from the agent's own view of the API, so there is no cluster DNS to detect; \
             other names go to dns.upstreams (default: the node's resolv.conf)",
        );
        self.note_if_set(
            "modules.edgeDNS.cacheDNS.cacheTTL",
            "forwarded answers keep their own TTLs; service answers use dns.serviceTtl (5 s)",
        );
        for key in ["modules.edgeDNS.listenInterface", "modules.edgeDNS.kubeAPIConfig"] {
            self.note_if_set(key, "set by EdgeMesh itself (\"do not allow users to configure manually\")");
        }
        let device = self.string("commonConfig.bridgeDeviceName")?.unwrap_or_else(|| EM_BRIDGE_DEVICE.into());
        self.note(
            "commonConfig.bridgeDeviceName",
            format!(
                "{device} stays EdgeMesh's: ours is edge0 (intercept.vipDevice), since both devices exist while both \
                 agents run, and the agent replaces a port-less bridge of its own name at start"
            ),
        );
        if self.get("commonConfig.pprofConfig").is_some() {
            self.note(
                "commonConfig.pprofConfig",
                "no pprof endpoint; the admin endpoint (127.0.0.1:15020) serves /metrics, /config and /services",
            );
        }
        Ok(())
    }

    pub(super) fn proxy(&mut self) -> Result<(), MigrateError> {
        let (enabled, _) = self.bool("modules.edgeProxy.enable", false)?;
        if enabled {
            self.set(
                "intercept.mode",
                "nftables",
                "from modules.edgeProxy.enable: connections to cluster IPs are intercepted (EdgeMesh: iptables; \
                 here one nftables table, inet edgemesh, and the device edge0)",
            );
        } else {
            self.set(
                "intercept.mode",
                "none",
                format!(
                    "{}: EdgeMesh did not proxy here; ours still serves each service on a VIP",
                    self.from("modules.edgeProxy.enable")
                ),
            );
        }
        match self.string("modules.edgeProxy.serviceFilterMode")?.as_deref() {
            None | Some("FilterIfLabelExists") => {}
            Some("FilterIfLabelDoesNotExists") => self.note(
                "modules.edgeProxy.serviceFilterMode",
                "FilterIfLabelDoesNotExists (proxy only the labelled services) has no counterpart: the agent serves \
                 every Service but those labelled service.edgemesh.kubeedge.io/service-proxy-name (EdgeMesh's default, \
                 FilterIfLabelExists)",
            ),
            Some(other) => {
                return Err(self.error(
                    "modules.edgeProxy.serviceFilterMode",
                    format!(
                        "unknown mode {other:?} (EdgeMesh knows FilterIfLabelExists and FilterIfLabelDoesNotExists)"
                    ),
                ));
            }
        }
        let (socks, _) = self.bool("modules.edgeProxy.socks5Proxy.enable", false)?;
        let (socks_port, socks_port_set) =
            self.uint("modules.edgeProxy.socks5Proxy.listenPort", EM_SOCKS_PORT, u64::from(u16::MAX))?;
        if socks {
            self.set("socks.enabled", "true", "from modules.edgeProxy.socks5Proxy.enable");
            let ip = self.string("commonConfig.bridgeDeviceIP")?.unwrap_or_else(|| EM_BRIDGE_IP.into());
            self.set(
                "socks.listen",
                format!("{ip}:{socks_port}"),
                format!(
                    "{} on {}",
                    self.from("modules.edgeProxy.socks5Proxy.listenPort"),
                    self.from("commonConfig.bridgeDeviceIP")
                ),
            );
            self.suggest(
                "socks.allowedPorts",
                "[22]",
                "not in EdgeMesh, whose SOCKS5 proxy reached every port of a node's host: here only the listed ones \
                 (on every node that is reached)",
            );
        } else if socks_port_set {
            self.note("modules.edgeProxy.socks5Proxy.listenPort", "the SOCKS5 proxy is off");
        }
        for key in ["nodeName", "namespace"] {
            self.note_if_set(
                &format!("modules.edgeProxy.socks5Proxy.{key}"),
                "set by EdgeMesh itself (\"do not allow users to configure manually\")",
            );
        }
        for key in [
            "modules.edgeProxy.listenInterface",
            "modules.edgeProxy.loadBalancer.caller",
            "modules.edgeProxy.loadBalancer.nodeName",
        ] {
            self.note_if_set(key, "set by EdgeMesh itself (\"do not allow users to configure manually\")");
        }
        for key in ["partitionCount", "replicationFactor", "load"] {
            self.note_if_set(
                &format!("modules.edgeProxy.loadBalancer.consistentHash.{key}"),
                "the ConsistentHash ring is fixed (160 virtual nodes per endpoint, no load bound); the strategy itself \
                 is chosen per service (edgemesh.io/lb-strategy, or an Istio DestinationRule as with EdgeMesh)",
            );
        }
        Ok(())
    }

    /// `tunnelLimitConfig`: EdgeMesh's libp2p resource limits, where ours
    /// has the same limit.
    pub(super) fn limits(&mut self) -> Result<(), MigrateError> {
        const BASE: &str = "modules.edgeTunnel.tunnelLimitConfig";
        let max = edgemesh_tunnel::MAX_STREAMS_PER_CONNECTION as u64;
        let pairs = [
            ("tunnelBaseStreamIn", "tunnel.maxInboundStreams", u64::from(u32::MAX)),
            ("tunnelPeerBaseStreamIn", "tunnel.maxInboundStreamsPerPeer", u64::from(u32::MAX)),
            ("tunnelPeerBaseStreamOut", "tunnel.maxStreamsPerConnection", max),
        ];
        for (em, ours, limit) in pairs {
            let path = format!("{BASE}.{em}");
            let (n, set) = self.uint(&path, 0, u64::MAX)?;
            if !set {
                continue;
            }
            if n == 0 || n > limit {
                self.note(&path, format!("{n} is outside what {ours} accepts (1 to {limit}); its default stays"));
            } else {
                self.set(ours, n.to_string(), format!("from {path}"));
            }
        }
        self.note_if_set(
            &format!("{BASE}.tunnelBaseStreamOut"),
            "no total of outbound streams: bounded by proxy.maxConnections (from the open-files limit)",
        );
        let (limits_on, set) = self.bool(&format!("{BASE}.enable"), true)?;
        if set && !limits_on {
            self.note(
                &format!("{BASE}.enable"),
                "stream limits are always on (an unlimited peer could exhaust descriptors)",
            );
        }
        Ok(())
    }

    pub(super) fn cni(&mut self) {
        if self.get_raw("modules.edgeCNI").is_some() {
            let on = self.get("modules.edgeCNI.enable").and_then(Value::as_bool).unwrap_or(false);
            let why = if on {
                "EdgeCNI (a pod network across edge and cloud) has no counterpart: the agent carries service traffic \
                 only; keep a CNI for pod-to-pod traffic"
            } else {
                "off here; EdgeCNI has no counterpart (the agent carries service traffic, not a pod network)"
            };
            self.note("modules.edgeCNI", why);
        }
    }
}
