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
        proxy: ProxySection { connect_timeout: Duration::ZERO, ..Default::default() },
        ..Default::default()
    };
    let msg = c.validate().unwrap_err().to_string();
    assert!(msg.contains("vipCidr") && msg.contains("connectTimeout"), "{msg}");
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
    Config::from_yaml("vipCidr6: fd00:1::/112\n").unwrap().validate().unwrap();
}

#[test]
fn intercept_section() {
    assert_eq!(Config::default().intercept.mode, InterceptMode::None);
    let c = Config::from_yaml("intercept:\n  mode: nftables\n  port: 15001\n  table: em_test\n").unwrap();
    assert_eq!(c.intercept.mode, InterceptMode::Nftables);
    assert_eq!((c.intercept.port, c.intercept.table.as_str()), (15001, "em_test"));
    c.validate().unwrap();
    let bad = Config::from_yaml("intercept:\n  mode: nftables\n  port: 0\n  table: 'x y'\n").unwrap();
    let msg = bad.validate().unwrap_err().to_string();
    assert!(msg.contains("intercept.port") && msg.contains("intercept.table"), "{msg}");
    assert!(Config::from_yaml("intercept:\n  mode: iptables\n").is_err());
}

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
