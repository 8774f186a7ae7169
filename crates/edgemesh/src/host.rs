//! What the agent reads from the host to fill in unset settings: its node
//! name and the resolvers it forwards to. Behind a trait so that tests run
//! agents that do not depend on the machine's `/etc/resolv.conf`.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

/// The host's answers for settings left unset.
pub trait Host: Send + Sync {
    /// This node's name, if the host has one.
    fn node_name(&self) -> Option<String>;
    /// The host's resolvers (for `dns.upstreams`).
    fn nameservers(&self) -> Vec<SocketAddr>;
}

/// The machine the agent runs on: `$NODE_NAME`, else the kernel's host
/// name; the nameservers of a resolv.conf (`/etc/resolv.conf`).
#[derive(Clone, Debug)]
pub struct SystemHost {
    pub resolv_conf: PathBuf,
}

impl Default for SystemHost {
    fn default() -> Self {
        Self { resolv_conf: PathBuf::from("/etc/resolv.conf") }
    }
}

impl Host for SystemHost {
    fn node_name(&self) -> Option<String> {
        std::env::var("NODE_NAME")
            .ok()
            .filter(|n| !n.is_empty())
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_string()))
            .filter(|n| !n.is_empty())
    }

    fn nameservers(&self) -> Vec<SocketAddr> {
        resolv_conf_nameservers(&self.resolv_conf)
    }
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

/// A host with fixed answers (in-process tests, or a caller that knows).
#[derive(Clone, Debug, Default)]
pub struct FixedHost {
    pub node_name: Option<String>,
    pub nameservers: Vec<SocketAddr>,
}

impl Host for FixedHost {
    fn node_name(&self) -> Option<String> {
        self.node_name.clone()
    }

    fn nameservers(&self) -> Vec<SocketAddr> {
        self.nameservers.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_parsing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("resolv.conf");
        std::fs::write(&p, "# c\nsearch x\nnameserver 127.0.0.53\nnameserver fe80::1%eth0\noptions edns0\n").unwrap();
        assert_eq!(
            resolv_conf_nameservers(&p),
            vec!["127.0.0.53:53".parse().unwrap(), "[fe80::1]:53".parse::<SocketAddr>().unwrap()]
        );
        assert!(resolv_conf_nameservers(&dir.path().join("missing")).is_empty());
    }
}
