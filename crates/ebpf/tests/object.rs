//! The checked-in BPF object (used by build.rs where clang is missing) is
//! what bpf/build.sh makes from bpf/edgemesh.bpf.c: regenerate it with
//! `crates/ebpf/bpf/build.sh` after changing the source.

use std::path::Path;
use std::process::Command;

#[test]
fn the_checked_in_object_is_what_build_sh_makes_from_the_source() {
    let has_clang = Command::new("clang").arg("--version").output().is_ok_and(|o| o.status.success());
    assert!(has_clang, "clang is needed to check bpf/edgemesh.bpf.o (apt-get install clang libbpf-dev)");
    let bpf = Path::new(env!("CARGO_MANIFEST_DIR")).join("bpf");
    let dir = tempfile::tempdir().unwrap();
    let fresh = dir.path().join("edgemesh.bpf.o");
    let out = Command::new("bash").arg(bpf.join("build.sh")).arg(&fresh).output().unwrap();
    assert!(out.status.success(), "bpf/build.sh failed: {}", String::from_utf8_lossy(&out.stderr));
    let checked_in = std::fs::read(bpf.join("edgemesh.bpf.o")).unwrap();
    assert!(
        std::fs::read(&fresh).unwrap() == checked_in,
        "crates/ebpf/bpf/edgemesh.bpf.o is stale: run crates/ebpf/bpf/build.sh and commit the object"
    );
}
