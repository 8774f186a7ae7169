//! Which file holds which object, and the events a file change turns into.
//!
//! Pure bookkeeping, no I/O: the watcher hands it the new objects of a file
//! (or the news that the file is gone) and gets back exactly the
//! [`SourceEvent`]s that change the registry's view. Work is proportional to
//! the objects of the changed file, never to the number of files.
//!
//! The same object may be defined in several files (a warning): every holder
//! is remembered, and the definition that counts is the one from the file
//! whose path sorts last (as in `conf.d` directories, later files override
//! earlier ones), so the result does not depend on the order files were seen
//! in. Removing a definition re-applies the next holder's instead of
//! deleting the object.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::path::Path;
use std::sync::Arc;

use edgemesh_core::{Object, ObjectKey, SourceEvent};

use crate::parse::ParsedObject;

/// A file's identity in the index.
pub(crate) type FileId = Arc<Path>;

#[derive(Default)]
pub(crate) struct Index {
    /// Last good objects of each file.
    files: HashMap<FileId, HashMap<ObjectKey, Object>>,
    /// Files defining each object, sorted by path; the last one wins.
    holders: HashMap<ObjectKey, Vec<FileId>>,
}

impl Index {
    /// Number of distinct objects.
    pub(crate) fn len(&self) -> usize {
        self.holders.len()
    }

    /// Number of files holding at least one object.
    #[cfg(test)]
    pub(crate) fn files(&self) -> usize {
        self.files.len()
    }

    /// Replaces the objects of `file` with `objects`, appending the events
    /// that result to `out`.
    pub(crate) fn set_file(&mut self, file: &FileId, objects: Vec<ParsedObject>, out: &mut Vec<SourceEvent>) {
        let mut new: HashMap<ObjectKey, Object> = HashMap::with_capacity(objects.len());
        for ParsedObject { line, object } in objects {
            let key = object.key();
            if new.insert(key.clone(), object).is_some() {
                tracing::warn!(file = %file.display(), line, object = ?key, "object defined twice in the same file; the later definition is used");
            }
        }
        let old = self.files.remove(file).unwrap_or_default();

        // Objects gone from this file.
        for key in old.keys().filter(|key| !new.contains_key(*key)) {
            self.remove_holder(file, key.clone(), out);
        }

        for (key, object) in &new {
            if old.get(key) == Some(object) {
                continue;
            }
            let holders = self.holders.entry(key.clone()).or_default();
            if let Err(pos) = holders.binary_search(file) {
                holders.insert(pos, file.clone());
                if holders.len() > 1 {
                    let winner = holders.last().expect("not empty");
                    tracing::warn!(
                        file = %file.display(),
                        object = ?key,
                        others = ?holders.iter().filter(|h| *h != file).map(|h| h.display().to_string()).collect::<Vec<_>>(),
                        using = %winner.display(),
                        "object defined in more than one file; using the definition from the file that sorts last",
                    );
                }
            }
            if holders.last() == Some(file) {
                out.push(SourceEvent::Apply(object.clone()));
            }
        }
        if !new.is_empty() {
            self.files.insert(file.clone(), new);
        }
    }

    /// Forgets `file` and its objects (it was deleted).
    pub(crate) fn remove_file(&mut self, file: &FileId, out: &mut Vec<SourceEvent>) {
        if let Some(old) = self.files.remove(file) {
            for (key, _) in old {
                self.remove_holder(file, key, out);
            }
        }
    }

    /// `file` no longer defines `key` (already removed from `self.files`).
    fn remove_holder(&mut self, file: &FileId, key: ObjectKey, out: &mut Vec<SourceEvent>) {
        let Entry::Occupied(mut e) = self.holders.entry(key) else { return };
        let holders = e.get_mut();
        let Ok(pos) = holders.binary_search(file) else { return };
        let was_winner = pos + 1 == holders.len();
        holders.remove(pos);
        match holders.last() {
            None => {
                let (key, _) = e.remove_entry();
                out.push(SourceEvent::Delete(key));
            }
            Some(next) if was_winner => {
                if let Some(object) = self.files.get(next).and_then(|objects| objects.get(e.key())) {
                    out.push(SourceEvent::Apply(object.clone()));
                }
            }
            Some(_) => {}
        }
    }
}

#[cfg(test)]
mod tests;
