//! Secrets and state on disk (issue #18): the real binary creates its state
//! directory 0700 and its cache and identity key 0600, and will not start
//! with a key or pre-shared key that others can read, saying which file,
//! its mode and the `chmod` to run. No root needed; nothing leaves
//! loopback (the agents that must fail stop before they listen).

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use support::{Agent, AgentOptions, manifest_dir, peer_id};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

#[test]
fn the_state_directory_cache_and_key_are_the_agents_alone() {
    let (_dir, manifests) = manifest_dir();
    let root = tempfile::tempdir().unwrap();
    let state = root.path().join("var/lib/edgemesh");
    let agent =
        Agent::start_with(&manifests, AgentOptions { state_dir: Some(state.clone()), ..AgentOptions::default() });
    assert_eq!(mode(&state), 0o700, "state directory");
    assert_eq!(mode(&root.path().join("var/lib")), 0o700, "the parents it made too");
    assert_eq!(mode(&state.join("cache.redb")), 0o600, "cache file");
    drop(agent);

    // A cache an older agent left readable by all is made private.
    std::fs::set_permissions(state.join("cache.redb"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let agent =
        Agent::start_with(&manifests, AgentOptions { state_dir: Some(state.clone()), ..AgentOptions::default() });
    assert_eq!(mode(&state.join("cache.redb")), 0o600, "cache file tightened");
    drop(agent);

    // The tunnel identity (`edgemesh id` makes it as the agent does).
    let fresh = root.path().join("fresh");
    peer_id(&fresh);
    assert_eq!((mode(&fresh), mode(&fresh.join("tunnel.key"))), (0o700, 0o600));
}

/// Runs `edgemesh agent --tunnel` with `args`, which must stop at start;
/// its error output.
fn refused_start(state: &Path, args: &[&str]) -> String {
    let (_dir, manifests) = manifest_dir();
    let out = Command::new(env!("CARGO_BIN_EXE_edgemesh"))
        .args(["agent", "--node-name", "n1", "--tunnel", "--no-mdns"])
        .args([
            "--tunnel-listen",
            "/ip4/127.0.0.1/tcp/0",
            "--dns-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .arg("--manifest-dir")
        .arg(&manifests)
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    stderr
}

#[test]
fn a_key_or_psk_others_can_read_stops_the_agent_with_the_fix() {
    let root = tempfile::tempdir().unwrap();
    let state = root.path().join("state");
    peer_id(&state);
    let key = state.join("tunnel.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let stderr = refused_start(&state, &[]);
    for needle in [key.display().to_string(), "0644".into(), format!("chmod 600 {}", key.display())] {
        assert!(stderr.contains(&needle), "{needle:?} in: {stderr}");
    }
    assert_eq!(mode(&key), 0o644, "the key is left as it was, never replaced");

    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let psk = root.path().join("swarm.key");
    std::fs::write(&psk, format!("/key/swarm/psk/1.0.0/\n/base16/\n{}\n", "5a".repeat(32))).unwrap();
    std::fs::set_permissions(&psk, std::fs::Permissions::from_mode(0o644)).unwrap();
    let stderr = refused_start(&state, &["--psk-file", psk.to_str().unwrap()]);
    for needle in [psk.display().to_string(), "0644".into(), format!("chmod 600 {}", psk.display())] {
        assert!(stderr.contains(&needle), "{needle:?} in: {stderr}");
    }
}
