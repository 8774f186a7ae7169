//! State that survives a missing source and a state directory that cannot
//! be written: the real agent restarted on its cache with the manifests
//! directory moved away, and with its state directory on a file system
//! made read-only (a tmpfs in a mount namespace of the test's own), checked
//! with `dig`, `curl` and the admin endpoint.

mod support;

use std::path::Path;
use std::time::Duration;

use support::*;

/// The agent on `manifests`, with its cache in `state`.
fn agent_on(manifests: &Path, state: &Path, wrapper: &[String]) -> Agent {
    let opts = AgentOptions { state_dir: Some(state.to_owned()), wrapper: wrapper.to_vec(), ..Default::default() };
    Agent::start_with(manifests, opts)
}

fn readyz(agent: &Agent) -> (u16, String) {
    agent.try_get("/readyz").expect("admin endpoint answers")
}

/// The first line of `dig +short` for a service name in `shop`.
fn resolve(agent: &Agent, name: &str) -> String {
    agent.dig(&["+short", &format!("{name}.shop.svc.cluster.local")]).trim().to_owned()
}

fn resolves(agent: &Agent, name: &str) -> bool {
    !agent.dig(&[&format!("{name}.shop.svc.cluster.local")]).contains("NXDOMAIN")
}

#[test]
fn a_restart_without_the_manifests_directory_serves_the_cache_until_it_is_back() {
    let nginx = Nginx::start(2);
    let (dir, manifests) = manifest_dir();
    let state = dir.path().join("state");
    write_manifest(&manifests, "web.yaml", &service_yaml("shop", "web", 80, &nginx.ports[..1], ""));
    write_manifest(&manifests, "api.yaml", &service_yaml("shop", "api", 81, &nginx.ports[1..], ""));
    let agent = agent_on(&manifests, &state, &[]);
    assert!(agent.vip("shop", "api").is_some());
    assert_eq!(agent.terminate().code(), Some(0));

    // Restarted with the directory moved away: the cached services are served.
    let aside = dir.path().join("manifests.aside");
    std::fs::rename(&manifests, &aside).unwrap();
    let agent = agent_on(&manifests, &state, &[]);
    let vip = agent.vip("shop", "web").expect("web comes from the cache");
    assert_eq!(resolve(&agent, "web"), vip);
    assert_eq!(curl(&format!("http://{vip}/")).as_deref(), Some("backend-0\n"));
    assert!(resolves(&agent, "api"), "every cached service is served");
    let (status, body) = readyz(&agent);
    assert_eq!(status, 200, "serving the cache is ready: {body}");
    assert!(body.starts_with("ready (from cache, ") && body.contains("the source has not answered yet"), "{body}");
    assert!(body.contains(&manifests.display().to_string()) && body.contains("does not exist"), "says why: {body}");
    let state_report = &agent.services()["state"];
    assert_eq!(state_report["stale"], true, "{state_report}");
    assert_eq!(state_report["source"]["connection"], "disconnected", "{state_report}");

    // Back, with one service removed: its content is the state again.
    std::fs::remove_file(aside.join("api.yaml")).unwrap();
    std::fs::rename(&aside, &manifests).unwrap();
    eventually(Duration::from_secs(5), "api to leave DNS", || (!resolves(&agent, "api")).then_some(()));
    assert!(agent.vip("shop", "api").is_none());
    assert_eq!(curl(&format!("http://{vip}/")).as_deref(), Some("backend-0\n"), "web stays");
    assert_eq!(readyz(&agent), (200, "ready (live)\n".to_owned()));
    let warnings = agent.log().matches("cannot read the manifest directory").count();
    assert_eq!(warnings, 1, "one warning for the outage, not one per poll:\n{}", agent.log());

    // An existing, empty directory is authoritative: everything goes.
    std::fs::remove_file(manifests.join("web.yaml")).unwrap();
    eventually(Duration::from_secs(5), "web to leave DNS", || (!resolves(&agent, "web")).then_some(()));
    assert_eq!(agent.services()["count"], 0);
}
