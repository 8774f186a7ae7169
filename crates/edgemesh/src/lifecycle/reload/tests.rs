use std::time::Duration;

use super::*;
use crate::host::FixedHost;
use crate::lifecycle::LogControl;
use edgemesh_intercept::InterceptMode;

struct Fixture {
    _dir: tempfile::TempDir,
    file: PathBuf,
    lifecycle: Arc<Lifecycle>,
    proxy: Arc<LiveSettings>,
    reloader: Reloader,
}

/// A reloader of `text`, with the flags `--admin-listen 127.0.0.1:0`, over
/// the config it resolves to (as at start).
fn fixture(text: &str) -> Fixture {
    fixture_started(text, |_| {})
}

/// As [`fixture`], with `start` changing the config in force as the agent's
/// start may (a fallback).
fn fixture_started(text: &str, start_changes: impl FnOnce(&mut Config)) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("edgemesh.yaml");
    std::fs::write(&file, text).unwrap();
    let flags = SettingFlags { settings: vec![("admin.listen", "127.0.0.1:0".into())] };
    let host: Arc<dyn Host> =
        Arc::new(FixedHost { node_name: Some("n1".into()), nameservers: vec!["127.0.0.1:53".parse().unwrap()] });
    let mut start = Config::from_file(&file).unwrap();
    flags.apply(&mut start).unwrap();
    start.complete(&*host);
    let configured_mode = start.intercept.mode;
    start_changes(&mut start);
    let lifecycle = Lifecycle::new(Arc::new(start.clone()), configured_mode, LogControl::detached(&start.log_level));
    let proxy = Arc::new(LiveSettings::new(&start.proxy));
    let source = ReloadSource { file: Some(file.clone()), flags };
    let reloader = Reloader::new(
        source,
        host,
        lifecycle.clone(),
        Components { proxy: proxy.clone(), dns: None, strategy: watch::channel(start.proxy.default_strategy).0 },
    );
    Fixture { _dir: dir, file, lifecycle, proxy, reloader }
}

#[test]
fn live_settings_apply_and_restart_only_ones_stay_pending() {
    let mut f = fixture("proxy:\n  connectTimeout: 2s\n  maxConnections: 100\n");
    std::fs::write(
        &f.file,
        "logLevel: debug\ndrainTimeout: 3s\ndns:\n  listen: 127.0.0.1:1053\nproxy:\n  connectTimeout: 250ms\n  maxConnections: 7\n",
    )
    .unwrap();
    let report = f.reloader.reload("SIGHUP");
    assert_eq!(report.result, ReloadResult::Applied, "{report:?}");
    assert_eq!(f.proxy.connect_timeout(), Duration::from_millis(250));
    assert_eq!(f.proxy.max_connections(), 7);
    let in_force = f.lifecycle.config();
    assert_eq!(in_force.drain_timeout, Duration::from_secs(3));
    assert_eq!(f.lifecycle.logging.current(), "debug,hickory_server=warn,libp2p_swarm=warn");
    assert_eq!(in_force.admin.listen.port(), 0, "the flags still apply over the file");
    assert_eq!(in_force.dns.listen, Some(crate::config::DEFAULT_DNS_LISTEN), "restart-only: the old value stays");
    let status = f.lifecycle.status();
    let pending: Vec<&str> = status.pending_restart.iter().map(|c| c.key.as_str()).collect();
    assert_eq!(pending, ["dns.listen"]);
    assert_eq!(status.reloads, 1);

    // The same file again: nothing to apply, the restart is still pending.
    assert_eq!(f.reloader.reload("SIGHUP").result, ReloadResult::Unchanged);
    assert_eq!(f.lifecycle.status().pending_restart.len(), 1);
}

/// After a fallback from ebpf to nftables mode, the same file asks for no
/// restart; changing the configured mode does.
#[test]
fn after_a_fallback_the_configured_mode_is_what_a_reload_compares() {
    let ebpf = "intercept:\n  mode: ebpf\n  fallback: nftables\nproxy:\n  maxConnections: 100\n";
    let mut f = fixture_started(ebpf, |c| c.intercept.mode = InterceptMode::Nftables);
    assert_eq!(f.lifecycle.config().intercept.mode, InterceptMode::Nftables, "the mode that runs");
    let report = f.reloader.reload("SIGHUP");
    assert_eq!(report.result, ReloadResult::Unchanged, "{report:?}");
    assert_eq!(f.lifecycle.status().pending_restart, vec![], "nothing changed");

    // A live key beside it applies; the mode in force stays.
    std::fs::write(&f.file, ebpf.replace("100", "7")).unwrap();
    assert_eq!(f.reloader.reload("file changed").result, ReloadResult::Applied);
    assert_eq!((f.proxy.max_connections(), f.lifecycle.config().intercept.mode), (7, InterceptMode::Nftables));
    assert_eq!(f.lifecycle.status().pending_restart, vec![]);

    // The operator asks for another mode (none, which changes the
    // node-mode defaults as well): that needs a restart.
    std::fs::write(&f.file, "proxy:\n  maxConnections: 7\n").unwrap();
    f.reloader.reload("file changed");
    let pending = f.lifecycle.status().pending_restart;
    let mode = pending.iter().find(|c| c.key == "intercept.mode").expect("intercept.mode pending");
    assert_eq!((&mode.in_force, &mode.configured), (&serde_json::json!("nftables"), &serde_json::json!("none")));
}

#[test]
fn a_bad_config_is_refused_whole_with_its_line() {
    let mut f = fixture("proxy:\n  maxConnections: 100\n");
    let before = f.lifecycle.config();
    for (text, expect) in [
        ("proxy:\n  maxConnections: 5\n  conectTimeout: 1s\n", "line 3"),
        ("proxy:\n  maxConnections: 5\n  connectTimeout: 0s\n", "proxy.connectTimeout must be greater than zero"),
        ("logLevel: 'info,edgemesh=loud'\nproxy:\n  maxConnections: 5\n", "logLevel"),
        ("proxy: [\n", "edgemesh.yaml"),
    ] {
        std::fs::write(&f.file, text).unwrap();
        let report = f.reloader.reload("file changed");
        assert_eq!(report.result, ReloadResult::Refused, "{text}");
        let errors = report.errors.join("\n");
        assert!(errors.contains(expect), "{text}: {errors}");
        assert!(errors.contains(&f.file.display().to_string()), "the error names the file: {errors}");
        assert_eq!(f.lifecycle.config(), before, "nothing of a refused config is applied");
        assert_eq!(f.proxy.max_connections(), 100);
    }
    assert_eq!(f.lifecycle.status().last.unwrap().result, ReloadResult::Refused);
}
