//! The translation itself: EdgeMesh's effective settings, key by key, into
//! ours ([`Translator`]); its sections are in `sections` (source, DNS,
//! proxy, limits, CNI) and `tunnel`.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

use super::input::Located;
use super::{MigrateError, Migration, Note, Options, Setting};

mod sections;
mod tunnel;

/// Every EdgeMesh v1.17 agent key (`pkg/apis/config/v1alpha1/types.go`):
/// anything else in the input is reported as unknown.
const KNOWN: &[&str] = &[
    "apiVersion",
    "kind",
    "kubeAPIConfig.master",
    "kubeAPIConfig.contentType",
    "kubeAPIConfig.qps",
    "kubeAPIConfig.burst",
    "kubeAPIConfig.kubeConfig",
    "kubeAPIConfig.mode",
    "kubeAPIConfig.metaServer.server",
    "kubeAPIConfig.metaServer.security.requireAuthorization",
    "kubeAPIConfig.metaServer.security.insecureSkipTLSVerify",
    "kubeAPIConfig.metaServer.security.tlsCaFile",
    "kubeAPIConfig.metaServer.security.tlsCertFile",
    "kubeAPIConfig.metaServer.security.tlsPrivateKeyFile",
    "kubeAPIConfig.deleteKubeConfig",
    "commonConfig.bridgeDeviceName",
    "commonConfig.bridgeDeviceIP",
    "commonConfig.pprofConfig.enableProfiling",
    "commonConfig.pprofConfig.profilingAddress",
    "commonConfig.pprofConfig.profilingPort",
    "modules.edgeDNS.enable",
    "modules.edgeDNS.kubeAPIConfig",
    "modules.edgeDNS.listenInterface",
    "modules.edgeDNS.listenPort",
    "modules.edgeDNS.cacheDNS.enable",
    "modules.edgeDNS.cacheDNS.autoDetect",
    "modules.edgeDNS.cacheDNS.upstreamServers",
    "modules.edgeDNS.cacheDNS.cacheTTL",
    "modules.edgeProxy.enable",
    "modules.edgeProxy.listenInterface",
    "modules.edgeProxy.socks5Proxy.enable",
    "modules.edgeProxy.socks5Proxy.listenPort",
    "modules.edgeProxy.socks5Proxy.nodeName",
    "modules.edgeProxy.socks5Proxy.namespace",
    "modules.edgeProxy.loadBalancer.caller",
    "modules.edgeProxy.loadBalancer.nodeName",
    "modules.edgeProxy.loadBalancer.consistentHash.partitionCount",
    "modules.edgeProxy.loadBalancer.consistentHash.replicationFactor",
    "modules.edgeProxy.loadBalancer.consistentHash.load",
    "modules.edgeProxy.serviceFilterMode",
    "modules.edgeTunnel.enable",
    "modules.edgeTunnel.mode",
    "modules.edgeTunnel.nodeName",
    "modules.edgeTunnel.listenPort",
    "modules.edgeTunnel.transport",
    "modules.edgeTunnel.rendezvous",
    "modules.edgeTunnel.relayNodes",
    "modules.edgeTunnel.enableIpfsLog",
    "modules.edgeTunnel.maxCandidates",
    "modules.edgeTunnel.heartbeatPeriod",
    "modules.edgeTunnel.finderPeriod",
    "modules.edgeTunnel.psk.enable",
    "modules.edgeTunnel.psk.path",
    "modules.edgeTunnel.tunnelLimitConfig.enable",
    "modules.edgeTunnel.tunnelLimitConfig.tunnelBaseStreamIn",
    "modules.edgeTunnel.tunnelLimitConfig.tunnelBaseStreamOut",
    "modules.edgeTunnel.tunnelLimitConfig.tunnelPeerBaseStreamIn",
    "modules.edgeTunnel.tunnelLimitConfig.tunnelPeerBaseStreamOut",
    "modules.edgeTunnel.configPath",
    "modules.edgeTunnel.listenInterfaces",
    "modules.edgeTunnel.extraFilteredInterfaces",
    "modules.edgeTunnel.metricConfig.enable",
    "modules.edgeTunnel.metricConfig.port",
    "modules.edgeCNI.enable",
    "modules.edgeCNI.encapsulationIP",
    "modules.edgeCNI.tunMode",
    "modules.edgeCNI.meshCIDRConfig.cloudCIDR",
    "modules.edgeCNI.meshCIDRConfig.edgeCIDR",
];

/// EdgeMesh v1.17's defaults (`pkg/apis/config/defaults`, `v1alpha1/default.go`).
const EM_BRIDGE_IP: &str = "169.254.96.16";
const EM_BRIDGE_DEVICE: &str = "edgemesh0";
const EM_DNS_PORT: u64 = 53;
const EM_TUNNEL_PORT: u64 = 20006;
const EM_SOCKS_PORT: u64 = 10800;
const EM_PSK_PATH: &str = "/etc/edgemesh/psk";
const EM_METASERVER: &str = "http://127.0.0.1:10550";

pub(super) struct Translator<'a> {
    pub(super) config: &'a Value,
    pub(super) input: &'a Located,
    pub(super) file: &'a Path,
    pub(super) out: Migration,
}

impl Translator<'_> {
    /// The value at dotted `path`, if written (and not null).
    fn get(&self, path: &str) -> Option<&Value> {
        path.split('.').try_fold(self.config, |v, k| v.get(k)).filter(|v| !v.is_null())
    }

    /// File line of the key at dotted `path`, if written.
    fn line(&self, path: &str) -> Option<usize> {
        self.get_raw(path)?;
        crate::cli::check_config::key_line(&self.input.text, path).map(|(l, _)| self.input.line_of(l))
    }

    /// Like [`Self::get`], null values included (for unknown-key reports).
    fn get_raw(&self, path: &str) -> Option<&Value> {
        path.split('.').try_fold(self.config, |v, k| v.get(k))
    }

    fn error(&self, path: &str, message: String) -> MigrateError {
        MigrateError { file: self.file.to_owned(), line: self.line(path), message: format!("{path}: {message}") }
    }

    fn bool(&self, path: &str, default: bool) -> Result<(bool, bool), MigrateError> {
        match self.get(path) {
            None => Ok((default, false)),
            Some(Value::Bool(b)) => Ok((*b, true)),
            Some(other) => Err(self.error(path, format!("expected true or false, found {other}"))),
        }
    }

    fn uint(&self, path: &str, default: u64, max: u64) -> Result<(u64, bool), MigrateError> {
        match self.get(path) {
            None => Ok((default, false)),
            Some(Value::Number(n)) => match n.as_u64().filter(|n| *n <= max) {
                Some(n) => Ok((n, true)),
                None => Err(self.error(path, format!("expected a whole number from 0 to {max}, found {n}"))),
            },
            Some(other) => Err(self.error(path, format!("expected a number, found {other}"))),
        }
    }

    fn string(&self, path: &str) -> Result<Option<String>, MigrateError> {
        match self.get(path) {
            None => Ok(None),
            Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(self.error(path, format!("expected a string, found {other}"))),
        }
    }

    fn set(&mut self, key: &str, value: impl Into<String>, comment: impl Into<String>) {
        self.out.settings.push(Setting {
            key: key.into(),
            value: value.into(),
            comment: comment.into(),
            commented: false,
        });
    }

    fn suggest(&mut self, key: &str, value: impl Into<String>, comment: impl Into<String>) {
        self.out.settings.push(Setting {
            key: key.into(),
            value: value.into(),
            comment: comment.into(),
            commented: true,
        });
    }

    /// A note about `path`: with its line when written.
    fn note(&mut self, path: &str, why: impl Into<String>) {
        let line = self.line(path);
        self.out.untranslated.push(Note { key: path.into(), line, why: why.into() });
    }

    /// Notes `path` only when the input writes it (a setting that needs no
    /// word when left at its default).
    fn note_if_set(&mut self, path: &str, why: &str) {
        if self.get(path).is_some() {
            self.note(path, why);
        }
    }

    /// `from <key>`, marked as EdgeMesh's default when not written.
    fn from(&self, path: &str) -> String {
        if self.get(path).is_some() { format!("from {path}") } else { format!("from {path} (EdgeMesh default)") }
    }

    pub(super) fn translate(&mut self, options: &Options) -> Result<(), MigrateError> {
        self.unknown_keys();
        self.kube()?;
        self.dns()?;
        self.proxy()?;
        self.tunnel(options)?;
        self.cni();
        Ok(())
    }

    /// Reports every key of the input that EdgeMesh v1.17 does not have.
    fn unknown_keys(&mut self) {
        let mut paths = Vec::new();
        leaf_paths(self.config, String::new(), &mut paths);
        let known: BTreeSet<&str> = KNOWN.iter().copied().collect();
        for path in paths {
            let is_known = known.iter().any(|k| path == *k || path.starts_with(&format!("{k}.")))
                || known.iter().any(|k| k.starts_with(&format!("{path}."))); // an empty section
            if !is_known {
                self.note(&path, "not an EdgeMesh v1.17 agent key (a typo, or another version's): ignored");
            }
        }
    }
}

/// Dotted paths of every leaf (and empty mapping) of `v`; sequences are
/// leaves.
fn leaf_paths(v: &Value, prefix: String, out: &mut Vec<String>) {
    match v {
        Value::Object(map) if !map.is_empty() => {
            for (k, child) in map {
                let path = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                leaf_paths(child, path, out);
            }
        }
        _ if !prefix.is_empty() => out.push(prefix),
        _ => {}
    }
}

/// `s` as a YAML scalar: plain when that reads back as the same string.
fn yaml_str(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-:".contains(c))
        && !s.starts_with(['-', ':'])
        && !s.contains(": ");
    if plain { s.to_owned() } else { serde_json::Value::String(s.to_owned()).to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_strings_stay_plain() {
        assert_eq!(yaml_str("http://10.0.0.1:6443"), "http://10.0.0.1:6443");
        assert_eq!(yaml_str("/etc/kube config"), "\"/etc/kube config\"");
        assert_eq!(yaml_str("- x"), "\"- x\"");
    }
}
