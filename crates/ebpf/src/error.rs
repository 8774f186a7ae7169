//! What can go wrong, worded for the operator: what is missing or which
//! object failed, and where.
//!
//! Each message carries its cause (the I/O or aya error) itself, so a log
//! line with `%error` says everything; the cause is therefore not also
//! given as [`std::error::Error::source`], or a report that prints the
//! chain (`{:#}`) would say it twice.

use std::path::PathBuf;

use crate::support::Missing;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the kernel fast path cannot run here: {}", list(.0))]
    Unsupported(Vec<Missing>),
    #[error("bpffs at {path}: {error}")]
    Bpffs { path: PathBuf, error: std::io::Error },
    #[error("cgroup {path}: {error}")]
    Cgroup { path: PathBuf, error: std::io::Error },
    #[error("network namespace {path} (for its cookie): {error}")]
    Netns { path: PathBuf, error: std::io::Error },
    #[error("pinned state under {path}: {error}")]
    Pins { path: PathBuf, error: std::io::Error },
    #[error(
        "pinned programs under {path} come from another build (object hash {found:016x}, this build's {want:016x})"
    )]
    OtherBuild { path: PathBuf, found: u64, want: u64 },
    #[error("loading the BPF object: {0}")]
    Load(aya::EbpfError),
    #[error("the BPF object has no {name}: bpf/edgemesh.bpf.c and the loader disagree")]
    NotInObject { name: &'static str },
    #[error("BPF program {name}: {error}")]
    Program { name: &'static str, error: aya::programs::ProgramError },
    #[error("BPF link of {name}: {error}")]
    Link { name: &'static str, error: aya::programs::links::LinkError },
    #[error("pinning {path}: {error}")]
    Pin { path: PathBuf, error: aya::pin::PinError },
    #[error("BPF map {name}: {error}")]
    Map { name: &'static str, error: aya::maps::MapError },
    #[error(transparent)]
    TooManyBackends(#[from] crate::plan::TooManyBackends),
}

/// `?` on loading the object (not `#[from]`, which would also make the
/// error the source; see the module docs).
impl From<aya::EbpfError> for Error {
    fn from(error: aya::EbpfError) -> Self {
        Error::Load(error)
    }
}

fn list(missing: &[Missing]) -> String {
    missing.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The message and every source below it, as `{:#}` prints them.
    fn chain(error: &dyn std::error::Error) -> String {
        let mut out = error.to_string();
        let mut next = error.source();
        while let Some(e) = next {
            out.push_str(": ");
            out.push_str(&e.to_string());
            next = e.source();
        }
        out
    }

    #[test]
    fn each_cause_is_printed_once() {
        let io = || std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a cgroup2 directory");
        let no_fd = || aya::pin::PinError::NoFd { name: "em_services".into() };
        let errors = [
            Error::Cgroup { path: "/sys/fs/cgroup/x".into(), error: io() },
            Error::Bpffs { path: "/sys/fs/bpf".into(), error: io() },
            Error::Netns { path: "/run/netns/n".into(), error: io() },
            Error::Pins { path: "/sys/fs/bpf/edgemesh".into(), error: io() },
            Error::Pin { path: "/sys/fs/bpf/edgemesh/x".into(), error: no_fd() },
        ];
        for error in &errors {
            let text = chain(error);
            let cause = match error {
                Error::Pin { .. } => no_fd().to_string(),
                _ => io().to_string(),
            };
            assert_eq!(text.matches(&cause).count(), 1, "{text}");
        }
        assert_eq!(chain(&errors[0]), "cgroup /sys/fs/cgroup/x: not a cgroup2 directory");
    }
}
