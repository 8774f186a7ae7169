//! What can go wrong, worded for the operator: what is missing or which
//! object failed, and where.

use std::path::PathBuf;

use crate::support::Missing;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the kernel fast path cannot run here: {}", list(.0))]
    Unsupported(Vec<Missing>),
    #[error("bpffs at {path}: {source}")]
    Bpffs { path: PathBuf, source: std::io::Error },
    #[error("cgroup {path}: {source}")]
    Cgroup { path: PathBuf, source: std::io::Error },
    #[error("network namespace {path} (for its cookie): {source}")]
    Netns { path: PathBuf, source: std::io::Error },
    #[error("pinned state under {path}: {source}")]
    Pins { path: PathBuf, source: std::io::Error },
    #[error(
        "pinned programs under {path} come from another build (object hash {found:016x}, this build's {want:016x})"
    )]
    OtherBuild { path: PathBuf, found: u64, want: u64 },
    #[error("loading the BPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("the BPF object has no {name}: bpf/edgemesh.bpf.c and the loader disagree")]
    NotInObject { name: &'static str },
    #[error("BPF program {name}: {source}")]
    Program { name: &'static str, source: aya::programs::ProgramError },
    #[error("BPF link of {name}: {source}")]
    Link { name: &'static str, source: aya::programs::links::LinkError },
    #[error("pinning {path}: {source}")]
    Pin { path: PathBuf, source: aya::pin::PinError },
    #[error("BPF map {name}: {source}")]
    Map { name: &'static str, source: aya::maps::MapError },
    #[error(transparent)]
    TooManyBackends(#[from] crate::plan::TooManyBackends),
}

fn list(missing: &[Missing]) -> String {
    missing.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}
