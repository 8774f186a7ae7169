//! Which settings a reload applies live and which need a restart, and the
//! difference between two configs key by key: pure, table-tested.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::config::Config;

/// Keys a reload puts in force at once (dotted, as in the config file).
/// Each is read by its owner from something the reload changes: the log
/// filter ([`super::LogControl`]), the proxy's
/// [`LiveSettings`](edgemesh_proxy::LiveSettings), the config in force
/// (`drainTimeout`, read when a drain starts), the registry's default
/// strategy (a watch it follows), the DNS server's
/// [`DnsLiveSettings`](edgemesh_dns::DnsLiveSettings). Every other key shapes
/// sockets, tables, identities or threads made at start: it is reported as
/// pending until the agent restarts, and its old value stays in force.
pub const LIVE_KEYS: &[&str] = &[
    "logLevel",
    "drainTimeout",
    "proxy.defaultStrategy",
    "proxy.connectTimeout",
    "proxy.idleTimeout",
    "proxy.maxConnectionDuration",
    "proxy.maxConnections",
    "proxy.maxConnectionsPerService",
    "proxy.maxUdpSessions",
    "dns.upstreams",
    "dns.upstreamTimeout",
    "dns.serviceTtl",
    "dns.negativeTtl",
    "dns.allowedClients",
];

/// Whether a reload applies `key` live.
pub fn is_live(key: &str) -> bool {
    LIVE_KEYS.contains(&key)
}

/// One setting that differs between the config in force and the new one.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Change {
    pub key: String,
    /// The value in force (`null`: unset).
    pub in_force: Value,
    /// The value the file (with the command line's flags) now asks for.
    pub configured: Value,
}

/// Every leaf key whose value differs, in key order; lists compare whole.
pub fn changes(in_force: &Config, configured: &Config) -> Vec<Change> {
    let (old, new) = (leaves(in_force), leaves(configured));
    let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter_map(|key| {
            let (a, b) = (old.get(key).cloned().unwrap_or(Value::Null), new.get(key).cloned().unwrap_or(Value::Null));
            (a != b).then(|| Change { key: key.clone(), in_force: a, configured: b })
        })
        .collect()
}

/// `in_force` with the live keys among `changes` set to their new values.
pub fn with_live_changes(in_force: &Config, changes: &[Change]) -> Result<Config, String> {
    let mut tree = serde_json::to_value(in_force).map_err(|e| format!("cannot apply the reload: {e}"))?;
    for change in changes.iter().filter(|c| is_live(&c.key)) {
        crate::cli::flags::set(&mut tree, &change.key, change.configured.clone());
    }
    serde_json::from_value(tree).map_err(|e| format!("cannot apply the reload: {e}"))
}

/// The config as dotted leaf keys and values.
fn leaves(config: &Config) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    flatten("", serde_json::to_value(config).unwrap_or(Value::Null), &mut out);
    out
}

fn flatten(prefix: &str, value: Value, out: &mut BTreeMap<String, Value>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() { k } else { format!("{prefix}.{k}") };
                flatten(&key, v, out);
            }
        }
        leaf => {
            out.insert(prefix.to_owned(), leaf);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn changes_name_each_differing_key_and_only_live_ones_are_applied() {
        let old = Config::default();
        let mut new = old.clone();
        new.proxy.connect_timeout = Duration::from_millis(300);
        new.log_level = "debug".into();
        new.dns.listen = Some("127.0.0.1:1053".parse().unwrap());
        new.tunnel.relays =
            vec![format!("/ip4/10.0.0.1/tcp/1/p2p/{}", edgemesh_tunnel::PeerId::random()).parse().unwrap()];
        let changes = changes(&old, &new);
        let keys: Vec<&str> = changes.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(keys, ["dns.listen", "logLevel", "proxy.connectTimeout", "tunnel.relays"]);
        assert_eq!(changes[0].in_force, Value::Null, "unset before");
        let applied = with_live_changes(&old, &changes).unwrap();
        assert_eq!(applied.proxy.connect_timeout, Duration::from_millis(300));
        assert_eq!(applied.log_level, "debug");
        assert_eq!(applied.dns.listen, None, "a restart-only key keeps its old value");
        assert!(applied.tunnel.relays.is_empty());
        assert!(super::changes(&new, &new).is_empty());
    }

    #[test]
    fn every_live_key_is_a_key() {
        let keys = leaves(&Config::default());
        for key in LIVE_KEYS {
            assert!(keys.contains_key(*key), "{key} is no config key");
        }
    }
}
