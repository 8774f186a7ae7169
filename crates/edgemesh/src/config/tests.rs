use std::time::Duration;

use edgemesh_core::LbStrategy;

use super::*;

#[test]
fn empty_file_is_the_default() {
    assert_eq!(Config::from_yaml("# nothing\n").unwrap(), Config::default());
}

#[test]
fn every_section_parses() {
    let c = Config::from_yaml(
        "nodeName: n1\nvipCidr: 127.9.0.0/16\nmanifests:\n  dir: /tmp/m\n  pollInterval: 100ms\n\
         dns:\n  listen: 127.0.0.1:1053\n  upstreams: [127.0.0.1:53]\n  upstreamTimeout: 1s\n\
         proxy:\n  defaultStrategy: Random\n  connectTimeout: 500ms\n  maxUdpSessions: 100\n  workers: 3\nadmin:\n  listen: 127.0.0.1:9000\n",
    )
    .unwrap();
    assert_eq!(c.node_name, "n1");
    assert_eq!(c.manifests.poll_interval, Duration::from_millis(100));
    assert_eq!(c.proxy.default_strategy, LbStrategy::Random);
    assert_eq!(c.proxy.connect_timeout, Duration::from_millis(500));
    assert_eq!(c.proxy.max_udp_sessions, 100);
    assert_eq!(c.proxy.workers, 3);
    assert_eq!(c.dns.upstreams, vec!["127.0.0.1:53".parse().unwrap()]);
    c.validate().unwrap();
}

#[test]
fn unknown_key_names_key_and_line() {
    let err = Config::from_yaml("nodeName: n1\ndns:\n  listen: 127.0.0.1:1053\n  upstream: 1.1.1.1:53\n").unwrap_err();
    assert!(err.contains("upstream"), "{err}");
    assert!(err.contains("line 4"), "{err}");
}

#[test]
fn bad_values_are_reported() {
    let err = Config::from_yaml("proxy:\n  defaultStrategy: Fastest\n").unwrap_err();
    assert!(err.contains("line 2"), "{err}");
    let err = Config::from_yaml("proxy:\n  connectTimeout: 2 fortnights\n").unwrap_err();
    assert!(err.contains("duration"), "{err}");
}

#[test]
fn validation_reports_all_problems() {
    let c = Config {
        vip_cidr: Some("10.0.0.0/32".parse().unwrap()),
        proxy: ProxyConfig { connect_timeout: Duration::ZERO, ..Default::default() },
        ..Default::default()
    };
    let msg = c.validate().unwrap_err().to_string();
    assert!(msg.contains("vipCidr") && msg.contains("connectTimeout"), "{msg}");
}

#[test]
fn tunnel_stream_limits_read_from_yaml_and_zero_is_refused() {
    let c = Config::from_yaml(
        "nodeName: n1\ntunnel:\n  enabled: true\n  maxInboundStreamsPerPeer: 64\n  maxInboundStreams: 512\n",
    )
    .unwrap();
    assert_eq!((c.tunnel.max_inbound_streams_per_peer, c.tunnel.max_inbound_streams), (64, 512));
    c.validate().unwrap();
    let zero = Config::from_yaml("nodeName: n1\ntunnel:\n  enabled: true\n  maxInboundStreams: 0\n").unwrap();
    let msg = zero.validate().unwrap_err().to_string();
    assert!(msg.contains("tunnel.maxInboundStreams") && msg.contains("at least 1"), "{msg}");
}

#[test]
fn node_mode_changes_the_vip_and_dns_defaults_and_explicit_values_win() {
    let plain = Config::default();
    assert_eq!((plain.vip_cidr().to_string(), plain.dns_listen()), (DEFAULT_VIP_CIDR.into(), DEFAULT_DNS_LISTEN));
    let mut node = Config::from_yaml("intercept:\n  mode: nftables\n").unwrap();
    assert_eq!(node.vip_cidr().to_string(), NODE_MODE_VIP_CIDR);
    assert_eq!(node.vip_cidr6().map(|c| c.to_string()).as_deref(), Some(NODE_MODE_VIP_CIDR6));
    assert_eq!(plain.vip_cidr6(), None, "no IPv6 VIPs without a device to put them on");
    assert_eq!(node.dns_listen(), "169.254.96.16:53".parse().unwrap());
    node.fill_defaults();
    assert_eq!(node.vip_cidr, Some(NODE_MODE_VIP_CIDR.parse().unwrap()), "shown as in effect");
    assert_eq!(node.dns.listen, Some(NODE_MODE_DNS_LISTEN));
    let explicit =
        Config::from_yaml("vipCidr: 10.9.0.0/16\ndns:\n  listen: 127.0.0.1:1053\nintercept:\n  mode: nftables\n")
            .unwrap();
    assert_eq!(explicit.vip_cidr().to_string(), "10.9.0.0/16");
    assert_eq!(explicit.dns_listen(), "127.0.0.1:1053".parse().unwrap());
}

#[test]
fn vip_ranges_must_be_of_their_family() {
    let c = Config::from_yaml("vipCidr: fd00::/112\nvipCidr6: 10.0.0.0/24\n").unwrap();
    let msg = c.validate().unwrap_err().to_string();
    assert!(msg.contains("vipCidr fd00::/112 is not an IPv4 range"), "{msg}");
    assert!(msg.contains("vipCidr6 10.0.0.0/24 is not an IPv6 range"), "{msg}");
    let c = Config::from_yaml("vipCidr6: fd00:1::/127\n").unwrap();
    assert!(c.validate().unwrap_err().to_string().contains("/126"));
    Config::from_yaml("nodeName: n1\nvipCidr6: fd00:1::/112\n").unwrap().validate().unwrap();
}

#[test]
fn intercept_section() {
    assert_eq!(Config::default().intercept.mode, InterceptMode::None);
    let c = Config::from_yaml("nodeName: n1\nintercept:\n  mode: nftables\n  port: 15001\n  table: em_test\n").unwrap();
    assert_eq!(c.intercept.mode, InterceptMode::Nftables);
    assert_eq!((c.intercept.port, c.intercept.table.as_str()), (15001, "em_test"));
    c.validate().unwrap();
    let bad = Config::from_yaml("intercept:\n  mode: nftables\n  port: 0\n  table: 'x y'\n").unwrap();
    let msg = bad.validate().unwrap_err().to_string();
    assert!(msg.contains("intercept.port") && msg.contains("intercept.table"), "{msg}");
    assert!(Config::from_yaml("intercept:\n  mode: iptables\n").is_err());
}

/// Every key as `--print-config` writes it, with each optional one set.
fn every_key() -> Config {
    let mut c = Config::from_yaml(
        "nodeName: n1\nvipCidr6: fd00:1::/112\nkube:\n  api: http://127.0.0.1:1\n  kubeconfig: /k\n\
         tunnel:\n  keyFile: /key\n  pskFile: /psk\n  peers: {n2: 12D3KooWLMHqgnc6w6xnA7Mr9f2TGJK5EzeHrVNhm5zsLnVwrcYX}\n\
         socks:\n  credentialsFile: /socks-users\n",
    )
    .unwrap();
    c.fill_defaults();
    c
}

/// Dotted paths of the leaves of a JSON tree (a map of free keys, such as
/// `tunnel.peers`, is one leaf).
fn leaf_keys(prefix: &str, value: &serde_json::Value, free: &[&str], out: &mut std::collections::BTreeSet<String>) {
    match value {
        serde_json::Value::Object(map) if !free.contains(&prefix) => {
            for (k, v) in map {
                let path = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                leaf_keys(&path, v, free, out);
            }
        }
        _ => {
            out.insert(prefix.to_owned());
        }
    }
}

#[test]
fn print_config_round_trips_every_key() {
    let c = every_key();
    let printed = serde_saphyr::to_string(&c).unwrap();
    assert_eq!(Config::from_yaml(&printed).unwrap(), c, "{printed}");
    let plain = Config::default();
    assert_eq!(Config::from_yaml(&serde_saphyr::to_string(&plain).unwrap()).unwrap(), plain);
}

/// A key without a row in the README's reference tables fails here, and
/// so does a row naming no key: adding a setting is its crate's field plus
/// its row.
#[test]
fn every_key_has_a_readme_row_and_every_row_a_key() {
    let mut keys = std::collections::BTreeSet::new();
    leaf_keys("", &serde_json::to_value(every_key()).unwrap(), &["tunnel.peers"], &mut keys);
    let sections: Vec<&str> = keys.iter().map(|k| k.split('.').next().unwrap()).collect();
    let readme = include_str!("../../../../README.md");
    let rows: std::collections::BTreeSet<String> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("| `")?.split('`').next())
        .filter(|k| !k.ends_with(".*") && sections.contains(&k.split('.').next().unwrap()))
        .map(str::to_owned)
        .collect();
    let undocumented: Vec<_> = keys.difference(&rows).collect();
    let unknown: Vec<_> = rows.difference(&keys).collect();
    assert!(undocumented.is_empty(), "keys without a README row: {undocumented:?}");
    assert!(unknown.is_empty(), "README rows naming no key: {unknown:?}");
}

#[test]
fn tunnel_liveness_settings_are_checked_with_the_rest() {
    let c = Config::from_yaml("nodeName: n1\ntunnel:\n  enabled: true\n  pingInterval: 2s\n  livenessTimeout: 3s\n")
        .unwrap();
    let msg = c.validate().unwrap_err().to_string();
    assert!(msg.contains("tunnel.livenessTimeout 3s must be at least twice pingInterval"), "{msg}");
}

#[test]
fn http_limits_are_checked_with_the_rest() {
    let c = Config::from_yaml("nodeName: n1\nhttp:\n  maxHeaderBytes: 1024\n  maxConnections: 0\n").unwrap();
    let msg = c.validate().unwrap_err().to_string();
    assert!(msg.contains("http.maxHeaderBytes 1024 is below the smallest hyper accepts, 8192"), "{msg}");
    assert!(msg.contains("http.maxConnections must be greater than zero"), "{msg}");
    let off = Config::from_yaml("nodeName: n1\nhttp:\n  enabled: false\n  idleTimeout: 0s\n").unwrap();
    assert!(off.validate().is_ok());
    assert!(!off.http.enabled);
}

#[test]
fn the_socks_entry_listens_on_the_node_local_address() {
    let plain = Config::from_yaml("socks:\n  enabled: true\n").unwrap();
    assert_eq!(plain.socks_listen(), "127.0.0.1:10800".parse().unwrap());
    let node_mode = Config::from_yaml("intercept:\n  mode: nftables\nsocks:\n  enabled: true\n").unwrap();
    assert_eq!(node_mode.socks_listen(), "169.254.96.16:10800".parse().unwrap());
    let set = Config::from_yaml("intercept:\n  mode: nftables\nsocks:\n  listen: 10.0.0.2:1080\n").unwrap();
    assert_eq!(set.socks_listen(), "10.0.0.2:1080".parse().unwrap());
    let bad = Config::from_yaml("nodeName: n1\nsocks:\n  handshakeTimeout: 0s\n  maxConnections: 0\n").unwrap();
    let msg = bad.validate().unwrap_err().to_string();
    assert!(msg.contains("socks.handshakeTimeout") && msg.contains("socks.maxConnections"), "{msg}");
}

/// Without a config file the agent listens on loopback only: its admin
/// endpoint (which reloads the config and shows the mesh) and DNS on
/// 127.0.0.1, VIPs inside 127/8, and neither the SOCKS entry nor the tunnel
/// (which listens on every address) unless asked for.
#[test]
fn by_default_every_listener_is_on_loopback() {
    assert_eq!(AdminConfig::default().listen, "127.0.0.1:15020".parse().unwrap());
    let mut c = Config::from_yaml("# nothing\n").unwrap();
    c.fill_defaults();
    assert_eq!(c.admin.listen, "127.0.0.1:15020".parse().unwrap());
    assert!(c.dns_listen().ip().is_loopback(), "{}", c.dns_listen());
    let vips = c.vip_cidr();
    assert!(vips.network().is_loopback() && vips.broadcast().is_loopback(), "{vips}");
    assert_eq!(c.vip_cidr6(), None);
    assert!(!c.socks.enabled && c.socks_listen().ip().is_loopback(), "{}", c.socks_listen());
    assert!(!c.tunnel.enabled);
}
