//! What the fast path needs of the kernel and the process, checked before
//! anything is loaded so the operator reads what is missing rather than a
//! bare EPERM: `CAP_BPF` (or `CAP_SYS_ADMIN`) and `CAP_NET_ADMIN` (each
//! alone is refused), `CAP_PERFMON` (or `CAP_SYS_ADMIN`: without it the
//! verifier's Spectre v1 guard refuses the programs' map-value pointer
//! arithmetic, "prohibited for !root"), a cgroup v2 hierarchy, and kernel
//! BTF.

use std::path::{Path, PathBuf};

use crate::Error;

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;
const BTF: &str = "/sys/kernel/btf/vmlinux";

/// One thing the fast path lacks.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Missing {
    #[error(
        "capability {0} is not in the process's effective set (the fast path needs it; CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON)"
    )]
    Capability(&'static str),
    #[error("no cgroup v2 hierarchy is mounted (no cgroup2 entry in /proc/self/mountinfo)")]
    Cgroup2,
    #[error("no kernel BTF at {BTF} (a kernel built without CONFIG_DEBUG_INFO_BTF)")]
    Btf,
}

/// Checks the calling thread (capabilities are per thread) and the
/// kernel; Err lists everything missing at once.
pub fn check() -> Result<(), Error> {
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap_or_default();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let missing = missing(&status, &mountinfo, Path::new(BTF).exists());
    if missing.is_empty() { Ok(()) } else { Err(Error::Unsupported(missing)) }
}

/// What is missing, given the texts of /proc/self/status and
/// /proc/self/mountinfo and whether kernel BTF exists.
pub fn missing(status: &str, mountinfo: &str, has_btf: bool) -> Vec<Missing> {
    let caps = effective_caps(status);
    let has = |cap: u32| caps & (1 << cap) != 0;
    let mut missing = Vec::new();
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push(Missing::Capability("CAP_BPF"));
    }
    if !has(CAP_PERFMON) && !has(CAP_SYS_ADMIN) {
        missing.push(Missing::Capability("CAP_PERFMON"));
    }
    if !has(CAP_NET_ADMIN) {
        missing.push(Missing::Capability("CAP_NET_ADMIN"));
    }
    if cgroup2_root_in(mountinfo).is_none() {
        missing.push(Missing::Cgroup2);
    }
    if !has_btf {
        missing.push(Missing::Btf);
    }
    missing
}

/// The `CapEff:` bits of a /proc/<pid>/status text (0 if absent).
fn effective_caps(status: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0)
}

/// The host's cgroup v2 root, from /proc/self/mountinfo.
pub fn cgroup2_root() -> Result<PathBuf, Error> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    cgroup2_root_in(&mountinfo).ok_or_else(|| Error::Unsupported(vec![Missing::Cgroup2]))
}

/// The first mount point of type `fstype` in a mountinfo text.
pub fn mount_point(mountinfo: &str, fstype: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        (right.split_whitespace().next()? == fstype).then_some(())?;
        Some(PathBuf::from(unescape(left.split_whitespace().nth(4)?)))
    })
}

fn cgroup2_root_in(mountinfo: &str) -> Option<PathBuf> {
    mount_point(mountinfo, "cgroup2")
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut rest = field;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        match rest.get(i + 1..i + 4).and_then(|o| u8::from_str_radix(o, 8).ok()) {
            Some(b) => {
                out.push(b as char);
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
24 30 0:22 / /sys rw,nosuid shared:7 - sysfs sysfs rw
35 26 0:30 / /sys/fs/cgroup/systemd rw shared:9 - cgroup cgroup rw,name=systemd
36 26 0:31 / /sys/fs/cgroup/my\\040unified rw,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
";

    #[test]
    fn the_cgroup2_root_is_the_cgroup2_mount_not_a_v1_one() {
        assert_eq!(cgroup2_root_in(MOUNTINFO), Some(PathBuf::from("/sys/fs/cgroup/my unified")));
        assert_eq!(mount_point(MOUNTINFO, "bpf"), None);
    }

    #[test]
    fn everything_missing_is_named_at_once() {
        // CAP_NET_ADMIN only (bit 12), no cgroup2, no BTF.
        let status = "Name:\tx\nCapEff:\t0000000000001000\n";
        let missing = missing(status, "24 30 0:22 / /sys rw - sysfs sysfs rw\n", false);
        let caps = [Missing::Capability("CAP_BPF"), Missing::Capability("CAP_PERFMON")];
        assert_eq!(missing, [&caps[..], &[Missing::Cgroup2, Missing::Btf]].concat());
        let message = Error::Unsupported(missing).to_string();
        assert!(message.starts_with("the kernel fast path cannot run here: capability CAP_BPF"), "{message}");
        assert!(message.contains("no cgroup v2") && message.contains("CONFIG_DEBUG_INFO_BTF"), "{message}");
    }

    #[test]
    fn cap_bpf_without_cap_net_admin_is_refused_and_root_passes() {
        let bpf_only = format!("CapEff:\t{:016x}\n", (1u64 << CAP_BPF) | (1u64 << CAP_PERFMON));
        assert_eq!(missing(&bpf_only, MOUNTINFO, true), vec![Missing::Capability("CAP_NET_ADMIN")]);
        // As in a DaemonSet that adds BPF and NET_ADMIN only: loading
        // would fail in the verifier.
        let no_perfmon = format!("CapEff:\t{:016x}\n", (1u64 << CAP_BPF) | (1u64 << CAP_NET_ADMIN));
        assert_eq!(missing(&no_perfmon, MOUNTINFO, true), vec![Missing::Capability("CAP_PERFMON")]);
        let sys_admin = format!("CapEff:\t{:016x}\n", (1u64 << CAP_SYS_ADMIN) | (1u64 << CAP_NET_ADMIN));
        assert_eq!(missing(&sys_admin, MOUNTINFO, true), vec![]);
        assert_eq!(missing("CapEff:\t000001ffffffffff\n", MOUNTINFO, true), vec![]);
    }
}
