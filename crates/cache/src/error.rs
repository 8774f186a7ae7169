//! Errors of the persistent cache: they name the file and what to check.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cannot create the state directory {}: {source} (set --state-dir to a writable directory)", dir.display())]
    Dir { dir: PathBuf, source: std::io::Error },
    #[error("cache file {} is in use by another process (is another agent running with the same --state-dir?)", path.display())]
    Locked { path: PathBuf },
    #[error("cache file {} is unreadable: {reason}", path.display())]
    Unreadable { path: PathBuf, reason: String },
    #[error("cannot open the cache file {} for writing: {reason} (is the state directory read-only or full?)", path.display())]
    Unwritable { path: PathBuf, reason: String },
    #[error("cannot move the unreadable cache file {} aside: {source}", path.display())]
    MoveAside { path: PathBuf, source: std::io::Error },
    #[error("cannot write the cache file {}: {reason} (is the disk full or read-only?)", path.display())]
    Write { path: PathBuf, reason: String },
}
