//! Release link of the `edgemesh` binary: stripped, and with the functions a
//! node agent runs laid out first in `.text`.
//!
//! Why the layout: the kernel maps a binary's code 64 KiB at a time around
//! each page touched (fault-around), so resident code follows how scattered
//! the run code is, not how much there is. Packed together
//! (`link/symbol-order.txt`, made by `bench/link_order.sh`), the ~2 MiB an
//! agent runs stays ~2 MiB resident instead of ~7.5 MiB of the 16 MiB
//! `.text`: idle RSS at 1,000 services 16.4 -> 11 MiB (`bench/scale.sh`).
//! With the tunnel in the run (5.1 MiB of 21.4), an agent under tunnel load
//! has 7-7.6 MiB of code resident instead of 16.4 (`bench/tunnel.sh`'s rss
//! rows): a stale file costs that much, so regenerate it when they grow.
//! The toolchain's own lld (`gcc-ld/ld.lld`, shipped with rustup's Rust)
//! does the ordering, so no system package is needed; without it the system
//! linker links in the default layout, with a warning.
//!
//! Why strip here and not with the profile's `strip`: that setting is part
//! of every crate's metadata, so it renames every symbol; stripping at the
//! link keeps the names the same as in the unstripped build the order file
//! is made from (`EDGEMESH_KEEP_SYMBOLS=1`).
//!
//! Debug builds, other targets than Linux, and `EDGEMESH_LINK_ORDER=0` link
//! as cargo does by default.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=link/symbol-order.txt");
    println!("cargo:rerun-if-env-changed=EDGEMESH_LINK_ORDER");
    println!("cargo:rerun-if-env-changed=EDGEMESH_KEEP_SYMBOLS");
    let release = env::var("PROFILE").is_ok_and(|p| p == "release");
    let linux = env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux");
    if !release || !linux {
        return;
    }
    if !env::var("EDGEMESH_KEEP_SYMBOLS").is_ok_and(|v| v == "1") {
        link_arg("-Wl,--strip-all");
    }
    if env::var("EDGEMESH_LINK_ORDER").is_ok_and(|v| v == "0") {
        return;
    }
    let Some(gcc_ld) = toolchain_lld_dir() else {
        println!("cargo:warning=the Rust toolchain has no gcc-ld/ld.lld: system linker, code not ordered");
        return;
    };
    let order = Path::new(&env::var("CARGO_MANIFEST_DIR").expect("set by cargo")).join("link/symbol-order.txt");
    link_arg("-fuse-ld=lld");
    link_arg(&format!("-B{}", gcc_ld.display()));
    link_arg(&format!("-Wl,--symbol-ordering-file={}", order.display()));
    // Functions the current code no longer has are expected between regenerations.
    link_arg("-Wl,--no-warn-symbol-ordering");
}

fn link_arg(arg: &str) {
    println!("cargo:rustc-link-arg-bin=edgemesh={arg}");
}

/// The `gcc-ld` directory of the compiling toolchain: its `ld.lld` runs the
/// toolchain's `rust-lld`.
fn toolchain_lld_dir() -> Option<PathBuf> {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = Command::new(rustc).args(["--print", "sysroot"]).output().ok()?;
    let sysroot = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    let dir = sysroot.join("lib/rustlib").join(env::var("HOST").ok()?).join("bin/gcc-ld");
    dir.join("ld.lld").is_file().then_some(dir)
}
