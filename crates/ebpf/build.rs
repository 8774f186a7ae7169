//! Compiles the BPF programs with clang (bpf/build.sh) when clang is
//! installed; otherwise uses the checked-in object bpf/edgemesh.bpf.o, so a
//! machine without clang still builds. A test checks the two agree.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=bpf/edgemesh.bpf.c");
    println!("cargo:rerun-if-changed=bpf/edgemesh.bpf.o");
    println!("cargo:rerun-if-changed=bpf/build.sh");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR")).join("edgemesh.bpf.o");
    let has_clang = Command::new("clang").arg("--version").output().is_ok_and(|o| o.status.success());
    if has_clang {
        let status = Command::new("bash").arg("bpf/build.sh").arg(&out).status().expect("running bpf/build.sh");
        assert!(status.success(), "bpf/build.sh failed to compile bpf/edgemesh.bpf.c (see clang's errors above)");
    } else {
        println!("cargo:warning=clang not found: using the checked-in bpf/edgemesh.bpf.o");
        std::fs::copy("bpf/edgemesh.bpf.o", &out).expect("copying bpf/edgemesh.bpf.o");
    }
}
