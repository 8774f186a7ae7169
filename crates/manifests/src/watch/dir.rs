//! Listing the manifests directory, and whether it can be read: a missing
//! or unreadable directory is a source that has not answered (reported once
//! per outage, and to the [`SourceHealth`](edgemesh_core::SourceHealth)),
//! never an empty one.

use std::collections::HashMap;
use std::io;
use std::time::SystemTime;

use super::{RACY_WINDOW, Scanner};
use crate::index::FileId;

/// Identity and version of a file as `stat` sees it (symlinks followed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Stat {
    mtime: Option<SystemTime>,
    size: u64,
    ino: u64,
    dev: u64,
}

impl Stat {
    pub(super) fn of(m: &std::fs::Metadata) -> Self {
        #[cfg(unix)]
        let (ino, dev) = {
            use std::os::unix::fs::MetadataExt;
            (m.ino(), m.dev())
        };
        #[cfg(not(unix))]
        let (ino, dev) = (0, 0);
        Stat { mtime: m.modified().ok(), size: m.len(), ino, dev }
    }

    /// Whether the stat data may not change on a further write (see
    /// [`RACY_WINDOW`]).
    pub(super) fn racy(&self, now: SystemTime) -> bool {
        self.mtime.is_none_or(|t| t + RACY_WINDOW > now)
    }
}

/// What the directory looked like at the last poll, to log changes once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum DirState {
    Unknown,
    /// Missing or unreadable, and why: the source has not answered.
    Unreadable(String),
    Empty,
    Ok,
}

impl Scanner {
    /// Manifest files in the directory with their stat; `None` when the
    /// directory is missing or cannot be read (state is kept as it was).
    pub(super) fn list(&mut self) -> Option<HashMap<FileId, io::Result<Stat>>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.set_dir_state(DirState::Unreadable("the directory does not exist".into()));
                return None;
            }
            Err(e) => {
                self.set_dir_state(DirState::Unreadable(e.to_string()));
                return None;
            }
        };
        let mut listing = HashMap::with_capacity(self.files.len());
        for entry in entries {
            let Ok(entry) = entry else { continue };
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if !super::is_manifest_file(name) {
                continue;
            }
            let path = entry.path();
            let stat = match std::fs::metadata(&path) {
                Ok(m) if m.is_file() => Ok(Stat::of(&m)),
                Ok(_) => continue,                                         // a directory
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue, // a dangling symlink
                Err(e) => Err(e),
            };
            let file = match self.files.get_key_value(path.as_path()) {
                Some((file, _)) => file.clone(),
                None => FileId::from(path),
            };
            listing.insert(file, stat);
        }
        self.set_dir_state(if listing.is_empty() { DirState::Empty } else { DirState::Ok });
        Some(listing)
    }

    /// Logs a change of the directory's state once, and tells the health.
    fn set_dir_state(&mut self, state: DirState) {
        if let DirState::Unreadable(reason) = &state {
            self.health
                .disconnected(format_args!("cannot read the manifest directory {}: {reason}", self.dir.display()));
        } else {
            self.health.connected();
        }
        if self.dir_state == state {
            return;
        }
        let dir = self.dir.display();
        let was_unreadable = matches!(self.dir_state, DirState::Unreadable(_));
        match &state {
            DirState::Unreadable(reason) if self.first => tracing::warn!(%dir, %reason,
                "cannot read the manifest directory; the source has not answered: serving the cached state, if any, until it can be read"),
            DirState::Unreadable(reason) => tracing::warn!(%dir, %reason,
                "cannot read the manifest directory; keeping the state last read from it until it can be read again"),
            _ if was_unreadable => tracing::info!(%dir, empty = (state == DirState::Empty),
                "manifest directory is readable; its content is the state now"),
            DirState::Empty => tracing::info!(%dir, "no manifest files (*.yaml, *.yml) in the directory; waiting"),
            DirState::Ok if self.dir_state != DirState::Unknown => tracing::info!(%dir, "manifest files found"),
            DirState::Ok | DirState::Unknown => {}
        }
        self.dir_state = state;
    }
}
