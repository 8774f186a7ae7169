//! Running `nft`: one script, one transaction, errors worded for the
//! operator (the crate's error type, which also carries the VIP device's).

use std::io;
use std::process::Stdio;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// Why the table could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum InterceptError {
    #[error(
        "cannot run `{program}`: it is not installed; install nftables (e.g. `apt-get install nftables`), \
         or run without interception (--intercept none)"
    )]
    NftMissing { program: String },

    #[error(
        "nftables refused the change: {detail}; interception needs root or the CAP_NET_ADMIN capability \
         (run the agent as root, or e.g. `setcap cap_net_admin+ep` on it and on nft)"
    )]
    Permission { detail: String },

    #[error("cannot run `{program}`: {source}")]
    Spawn { program: String, source: io::Error },

    #[error("nft failed ({status}): {stderr}; first statement: {first}")]
    Nft { status: String, stderr: String, first: String },

    #[error(transparent)]
    Device(#[from] crate::device::DeviceError),
}

/// The `nft` program (a path, or a name looked up in `PATH`).
#[derive(Clone, Debug)]
pub struct Nft {
    program: String,
    /// Arguments before nft's own (e.g. `ip netns exec NS nft` in tests).
    leading: Vec<String>,
}

impl Default for Nft {
    fn default() -> Self {
        Self::new("nft")
    }
}

impl Nft {
    pub fn new(program: impl Into<String>) -> Self {
        Self { program: program.into(), leading: Vec::new() }
    }

    /// `nft` run inside network namespace `netns` (`ip netns exec`).
    pub fn in_netns(netns: &str) -> Self {
        Self { program: "ip".into(), leading: vec!["netns".into(), "exec".into(), netns.into(), "nft".into()] }
    }

    /// Applies `script` (statements, one per line) as one transaction.
    pub async fn apply(&self, script: &str) -> Result<(), InterceptError> {
        if script.is_empty() {
            return Ok(());
        }
        let mut child = Command::new(&self.program)
            .args(&self.leading)
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| self.spawn_error(source))?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        // A failed write (nft exited early) shows up in its status below.
        let _ = stdin.write_all(script.as_bytes()).await;
        drop(stdin);
        let out = child.wait_with_output().await.map_err(|source| self.spawn_error(source))?;
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        Err(classify(&out.status.to_string(), stderr, script))
    }

    /// Output of `nft <args>` (e.g. `-j list table inet edgemesh`).
    pub async fn output(&self, args: &[&str]) -> Result<String, InterceptError> {
        let out = Command::new(&self.program)
            .args(&self.leading)
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|source| self.spawn_error(source))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
            return Err(classify(&out.status.to_string(), stderr, &args.join(" ")));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn spawn_error(&self, source: io::Error) -> InterceptError {
        if source.kind() == io::ErrorKind::NotFound {
            InterceptError::NftMissing { program: self.program.clone() }
        } else {
            InterceptError::Spawn { program: self.program.clone(), source }
        }
    }
}

fn classify(status: &str, stderr: String, script: &str) -> InterceptError {
    if stderr.contains("Operation not permitted") || stderr.contains("Permission denied") {
        let detail = stderr.lines().find(|l| l.contains("rror")).unwrap_or(&stderr).trim().to_owned();
        return InterceptError::Permission { detail };
    }
    let first = script.lines().next().unwrap_or_default().to_owned();
    InterceptError::Nft { status: status.to_owned(), stderr, first }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_nft_says_what_to_install() {
        let err = Nft::new("/nonexistent/nft").apply("list tables\n").await.unwrap_err();
        assert!(matches!(err, InterceptError::NftMissing { .. }), "{err:?}");
        assert!(err.to_string().contains("apt-get install nftables"), "{err}");
    }

    #[test]
    fn no_permission_names_the_capability() {
        let err = classify(
            "exit status: 1",
            "/dev/stdin:1:1-19: Error: Could not process rule: Operation not permitted\nadd table inet x".into(),
            "add table inet x\n",
        );
        assert!(err.to_string().contains("CAP_NET_ADMIN"), "{err}");
        assert!(err.to_string().contains("Operation not permitted"), "{err}");
    }
}
