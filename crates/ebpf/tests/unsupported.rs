//! Without the capabilities, the fast path says exactly which is missing
//! and leaves nothing behind. Capabilities are per thread: the test drops
//! them from a thread of its own, whose BPF calls the kernel would refuse.

mod support;

use edgemesh_ebpf::{Error, FastPath, support::Missing};
use rustix::thread::{CapabilitySet, capabilities, set_capabilities};
use support::{PinDir, TestCgroup, options};

/// `FastPath::start` on a thread whose effective set lacks `dropped`.
fn start_without(dropped: CapabilitySet, role: &str) -> (Result<FastPath, Error>, PinDir) {
    edgemesh_test_support::netns::require_root();
    let (cgroup, pins) = (TestCgroup::new(role), PinDir::new(role));
    let opts = options(&cgroup, &pins);
    let result = std::thread::spawn(move || {
        let mut sets = capabilities(None).unwrap();
        sets.effective -= dropped;
        set_capabilities(None, sets).unwrap();
        FastPath::start(opts)
    })
    .join()
    .unwrap();
    (result, pins)
}

#[test]
fn without_cap_bpf_it_names_cap_bpf_and_pins_nothing() {
    let (result, pins) = start_without(CapabilitySet::BPF | CapabilitySet::SYS_ADMIN, "nobpf");
    let Err(Error::Unsupported(missing)) = result else { panic!("started without CAP_BPF") };
    assert_eq!(missing, vec![Missing::Capability("CAP_BPF")]);
    let message = Error::Unsupported(missing).to_string();
    assert!(message.starts_with("the kernel fast path cannot run here: capability CAP_BPF is not in"), "{message}");
    assert!(!pins.0.exists(), "nothing pinned");
}

#[test]
fn cap_bpf_alone_is_not_enough_cap_net_admin_is_named() {
    let (result, pins) = start_without(CapabilitySet::NET_ADMIN, "nonet");
    let Err(Error::Unsupported(missing)) = result else { panic!("started without CAP_NET_ADMIN") };
    assert_eq!(missing, vec![Missing::Capability("CAP_NET_ADMIN")]);
    assert!(!pins.0.exists(), "nothing pinned");
}
