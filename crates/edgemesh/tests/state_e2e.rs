//! State that survives a missing source and a state directory that cannot
//! be written: the real agent restarted on its cache with the manifests
//! directory moved away, and with its state directory on a file system
//! made read-only (a tmpfs in a mount namespace of the test's own), checked
//! with `dig`, `curl` and the admin endpoint.

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
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

    // Moved away while running: the state last read stays, shown as stale.
    std::fs::rename(&manifests, &aside).unwrap();
    let body = eventually(Duration::from_secs(5), "/readyz to say stale", || {
        let (status, body) = readyz(&agent);
        assert_eq!(status, 200, "serving the last state is still ready: {body}");
        body.starts_with("ready (stale: ").then_some(body)
    });
    assert!(body.contains(&manifests.display().to_string()) && body.contains("does not exist"), "{body}");
    assert_eq!(curl(&format!("http://{vip}/")).as_deref(), Some("backend-0\n"), "web stays");
    std::fs::rename(&aside, &manifests).unwrap();
    eventually(Duration::from_secs(5), "live again", || (readyz(&agent).1 == "ready (live)\n").then_some(()));
    assert!(agent.vip("shop", "web").is_some());

    // An existing, empty directory is authoritative: everything goes.
    std::fs::remove_file(manifests.join("web.yaml")).unwrap();
    eventually(Duration::from_secs(5), "web to leave DNS", || (!resolves(&agent, "web")).then_some(()));
    assert_eq!(agent.services()["count"], 0);
}

/// A mount namespace of the test's own, held by a `sleep` (at most ten
/// minutes, should the test be killed): mounts made in it are invisible
/// outside and vanish with it. Agents run in it through [`MountNs::wrapper`].
struct MountNs {
    holder: Child,
}

impl MountNs {
    fn new() -> MountNs {
        assert!(
            rustix::process::geteuid().is_root(),
            "this test mounts a tmpfs in a mount namespace of its own: run it as root (CI does)"
        );
        let holder = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sleep", "600"])
            .stdin(Stdio::null())
            .spawn()
            .expect("unshare (util-linux) is installed");
        let ns = MountNs { holder };
        let ours = std::fs::read_link("/proc/self/ns/mnt").unwrap();
        let theirs = format!("/proc/{}/ns/mnt", ns.holder.id());
        eventually(Duration::from_secs(5), "the mount namespace", || {
            std::fs::read_link(&theirs).ok().filter(|ns| *ns != ours)
        });
        ns
    }

    /// `nsenter` into the namespace: a prefix for commands.
    fn wrapper(&self) -> Vec<String> {
        ["nsenter", "-t", &self.holder.id().to_string(), "-m", "--"].map(str::to_owned).to_vec()
    }

    /// Runs `args` in the namespace; returns whether it succeeded.
    fn run(&self, args: &[&str]) -> bool {
        let wrapper = self.wrapper();
        let out = Command::new(&wrapper[0]).args(&wrapper[1..]).args(args).output().unwrap();
        out.status.success()
    }

    fn must(&self, args: &[&str]) {
        assert!(self.run(args), "{args:?} failed in the mount namespace");
    }
}

impl Drop for MountNs {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

fn state_report(agent: &Agent) -> serde_json::Value {
    agent.services()["state"].clone()
}

#[test]
fn a_state_directory_that_is_full_or_read_only_degrades_the_cache_not_the_agent() {
    let nginx = Nginx::start(2);
    let (dir, manifests) = manifest_dir();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let state_arg = state.to_str().unwrap();
    let ns = MountNs::new();
    ns.must(&["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", state_arg]);
    let wrapper = ns.wrapper();
    write_manifest(&manifests, "web.yaml", &service_yaml("shop", "web", 80, &nginx.ports[..1], ""));
    let agent = agent_on(&manifests, &state, &wrapper);

    // The file system fills up: the cache cannot be written.
    let filler = state.join("filler");
    let fill = format!("of={}", filler.display());
    assert!(!ns.run(&["dd", "if=/dev/zero", &fill, "bs=64k"]), "dd stops at a full file system");
    write_manifest(&manifests, "cart.yaml", &service_yaml("shop", "cart", 81, &nginx.ports[1..], ""));
    let cart = eventually(Duration::from_secs(5), "cart to be served", || agent.vip("shop", "cart"));
    assert_eq!(curl(&format!("http://{cart}:81/")).as_deref(), Some("backend-1\n"), "served from memory");
    let (status, body) = eventually(Duration::from_secs(5), "/readyz to warn", || {
        readyz(&agent).1.contains("warning: the cache cannot be written").then(|| readyz(&agent))
    });
    assert_eq!(status, 200, "a cache that cannot be written does not take the node out of service: {body}");
    assert!(body.starts_with("ready (live; warning: ") && body.contains("No space left on device"), "{body}");
    // A few retries later, still one warning.
    let report = eventually(Duration::from_secs(10), "a few retries", || {
        let report = state_report(&agent);
        (report["cacheDegradedSeconds"].as_u64()? >= 4).then_some(report)
    });
    assert_eq!(report["cacheDegraded"], true, "{report}");
    assert!(report["cacheWriteError"].as_str().unwrap().contains(state_arg), "{report}");
    assert_eq!(agent.log().matches("cannot write the cache;").count(), 1, "logged once:\n{}", agent.log());

    // Space again: the next retry writes the whole state.
    ns.must(&["rm", filler.to_str().unwrap()]);
    eventually(Duration::from_secs(40), "the cache to recover", || {
        (readyz(&agent) == (200, "ready (live)\n".to_owned())).then_some(())
    });
    assert_eq!(state_report(&agent)["cacheDegraded"], false);
    assert_eq!(agent.log().matches("the cache can be written again").count(), 1);
    // Killed (its file then needs redb's recovery, which writes), and
    // restarted with the state directory read-only and no manifests: the
    // cache is still read and served.
    agent.kill9();
    ns.must(&["mount", "-o", "remount,ro", state_arg]);
    let aside = dir.path().join("manifests.aside");
    std::fs::rename(&manifests, &aside).unwrap();
    let agent = agent_on(&manifests, &state, &wrapper);
    let (status, body) = readyz(&agent);
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("ready (from cache, "), "{body}");
    assert!(body.contains("warning: the cache cannot be written") && body.contains("Read-only file system"), "{body}");
    let cart = agent.vip("shop", "cart").expect("cart comes from the read-only cache");
    assert_eq!(curl(&format!("http://{cart}:81/")).as_deref(), Some("backend-1\n"));
    // The tunnel's identity cannot be made there: that fails clearly.
    let mut id = Command::new(&wrapper[0]);
    id.args(&wrapper[1..]).arg(env!("CARGO_BIN_EXE_edgemesh")).args(["id", "--state-dir", state_arg]);
    let out = id.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("tunnel.key") && err.contains("Read-only file system"), "{err}");
    // The manifests back, changed: served from memory.
    std::fs::remove_file(aside.join("cart.yaml")).unwrap();
    write_manifest(&aside, "api.yaml", &service_yaml("shop", "api", 82, &nginx.ports[1..], ""));
    std::fs::rename(&aside, &manifests).unwrap();
    eventually(Duration::from_secs(5), "api in, cart out", || {
        (agent.vip("shop", "api").is_some() && agent.vip("shop", "cart").is_none()).then_some(())
    });
    ns.must(&["mount", "-o", "remount,rw", state_arg]);
    eventually(Duration::from_secs(40), "the cache to recover", || {
        (!state_report(&agent)["cacheDegraded"].as_bool()?).then_some(())
    });
    assert_eq!(agent.terminate().code(), Some(0));

    // A restart from the cache alone shows the latest state.
    std::fs::rename(&manifests, &aside).unwrap();
    let agent = agent_on(&manifests, &state, &wrapper);
    assert!(readyz(&agent).1.starts_with("ready (from cache, "));
    let api = agent.vip("shop", "api").expect("api was written after the recovery");
    assert_eq!(resolve(&agent, "api"), api);
    assert_eq!(curl(&format!("http://{api}:82/")).as_deref(), Some("backend-1\n"));
    assert!(resolves(&agent, "web") && !resolves(&agent, "cart"), "the cache holds exactly the latest state");
}
