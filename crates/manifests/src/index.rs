//! Which file holds which object, and the events a file change turns into.
//!
//! Pure bookkeeping, no I/O: the watcher hands it the new objects of a file
//! (or the news that the file is gone) and gets back exactly the
//! [`SourceEvent`]s that change the registry's view. Work is proportional to
//! the objects of the changed file, never to the number of files.
//!
//! The index keeps a fingerprint of each definition, not the object: the
//! registry holds the one full copy. The full object is kept only for an
//! object defined in several files (a warning), where it may be needed
//! again: every holder is remembered, and the definition that counts is the
//! one from the file whose path sorts last (as in `conf.d` directories,
//! later files override earlier ones), so the result does not depend on the
//! order files were seen in. Removing a definition re-applies the next
//! holder's instead of deleting the object.
//!
//! A definition read before its object turned up in a second file was not
//! kept; its file is then [wanted](Index::wanted_files): the watcher
//! re-reads it (same content, so same objects) and hands it back through
//! [`Index::set_file`], which keeps what is now needed. Until then, should
//! the winning definition go, the registry keeps it rather than losing the
//! object.
//!
//! Memory: an object defined once (the usual case) costs a key in one set
//! and a (key, fingerprint) pair in its file's list, sharing one allocation.
//! Its file is not stored with it: when a second file defines the object (a
//! mistake, warned about), the first is found by a binary search in each
//! file's sorted list.

mod fingerprint;

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use edgemesh_core::{Object, ObjectId, SourceEvent};

use crate::parse::ParsedObject;

/// A file's identity in the index.
pub(crate) type FileId = Arc<Path>;

/// A definition's fingerprint; [`UNKNOWN`] always counts as changed.
type Fingerprint = u64;

/// The fingerprint of a definition that could not be fingerprinted.
const UNKNOWN: Fingerprint = 0;

/// `object`'s fingerprint, [`UNKNOWN`] when it has none (a real
/// fingerprint of 0 becomes 1: one more 2^-64 collision).
fn fingerprint_of(object: &Object) -> Fingerprint {
    fingerprint::of(object).map_or(UNKNOWN, |print| print.max(1))
}

#[derive(Default)]
pub(crate) struct Index {
    /// The objects of each file's last good version, sorted by key, with
    /// the fingerprint of each definition. Keys are shared with `objects`
    /// (an [`ObjectId`] is one allocation per object for both).
    files: HashMap<FileId, Vec<(ObjectId, Fingerprint)>>,
    /// Every object defined by at least one file.
    objects: HashSet<ObjectId>,
    /// Objects defined in several files: the files, sorted by path (the
    /// last one wins), with their definitions where known.
    many: HashMap<ObjectId, Vec<(FileId, Option<Object>)>>,
    /// Files whose definitions of multiply defined objects are not known.
    wanted: BTreeSet<FileId>,
    /// Objects whose winning definition changed to one not known yet: the
    /// registry still has the previous one.
    unapplied: HashSet<ObjectId>,
}

impl Index {
    /// Number of distinct objects.
    pub(crate) fn len(&self) -> usize {
        self.objects.len()
    }

    /// Number of files holding at least one object.
    #[cfg(test)]
    pub(crate) fn files(&self) -> usize {
        self.files.len()
    }

    /// Files to read again and pass to [`Index::set_file`], because they
    /// hold definitions the index needs (see the module docs).
    pub(crate) fn wanted_files(&self) -> Vec<FileId> {
        self.wanted.iter().cloned().collect()
    }

    /// Replaces the objects of `file` with `objects`, appending the events
    /// that result to `out`.
    pub(crate) fn set_file(&mut self, file: &FileId, objects: Vec<ParsedObject>, out: &mut Vec<SourceEvent>) {
        self.wanted.remove(file);
        let mut new: Vec<(ObjectId, ParsedObject)> = objects.into_iter().map(|p| (p.object.id(), p)).collect();
        // Stable: of two definitions in one file, the later one is used.
        new.sort_by(|a, b| a.0.cmp(&b.0));
        new.dedup_by(|later, earlier| {
            let same = later.0 == earlier.0;
            if same {
                tracing::warn!(file = %file.display(), line = later.1.line, object = ?later.0,
                    "object defined twice in the same file; the later definition is used");
                std::mem::swap(later, earlier);
            }
            same
        });
        let old = self.files.remove(file).unwrap_or_default();

        // Walk both sorted lists together.
        let mut kept = Vec::with_capacity(new.len());
        let mut old = old.into_iter().peekable();
        for (key, parsed) in new {
            while let Some((gone, _)) = old.next_if(|(k, _)| *k < key) {
                self.remove_holder(file, &gone, out);
            }
            let before = old.next_if(|(k, _)| *k == key);
            let print = fingerprint_of(&parsed.object);
            let key = match before {
                Some((key, was)) => {
                    let changed = print == UNKNOWN || was != print;
                    self.update_holder(file, &key, parsed.object, changed, out);
                    key
                }
                None => self.add_holder(file, key, parsed.object, out),
            };
            kept.push((key, print));
        }
        for (gone, _) in old {
            self.remove_holder(file, &gone, out);
        }
        if !kept.is_empty() {
            self.files.insert(file.clone(), kept);
        }
    }

    /// Forgets `file` and its objects (it was deleted).
    pub(crate) fn remove_file(&mut self, file: &FileId, out: &mut Vec<SourceEvent>) {
        self.wanted.remove(file);
        for (key, _) in self.files.remove(file).unwrap_or_default() {
            self.remove_holder(file, &key, out);
        }
    }

    /// A file defining `key`, other than the one being set (whose list is
    /// out of `self.files` meanwhile): a binary search per file, done only
    /// when an object turns up in a second file.
    fn other_holder(&self, key: &ObjectId) -> Option<FileId> {
        self.files
            .iter()
            .find(|(_, objects)| objects.binary_search_by(|(k, _)| k.cmp(key)).is_ok())
            .map(|(file, _)| file.clone())
    }

    /// `file` newly defines `key`; returns the shared key.
    fn add_holder(&mut self, file: &FileId, key: ObjectId, object: Object, out: &mut Vec<SourceEvent>) -> ObjectId {
        let Some(key) = self.objects.get(&key).cloned() else {
            self.objects.insert(key.clone());
            out.push(SourceEvent::Apply(object));
            return key;
        };
        // A second (or further) file: keep every definition from now on.
        if !self.many.contains_key(&key) {
            let Some(first) = self.other_holder(&key) else {
                // Every object is in its file's list; were it not, this file
                // is its only holder.
                out.push(SourceEvent::Apply(object));
                return key;
            };
            self.wanted.insert(first.clone());
            self.many.insert(key.clone(), vec![(first, None)]);
        }
        let all = self.many.get_mut(&key).expect("inserted above");
        let pos = all.binary_search_by(|(f, _)| f.cmp(file)).unwrap_or_else(|pos| pos);
        let wins = pos == all.len();
        if wins {
            self.unapplied.remove(&key);
            out.push(SourceEvent::Apply(object.clone()));
        }
        all.insert(pos, (file.clone(), Some(object)));
        let winner = &all.last().expect("not empty").0;
        tracing::warn!(
            file = %file.display(),
            object = ?key,
            others = ?all.iter().filter(|(f, _)| f != file).map(|(f, _)| f.display().to_string()).collect::<Vec<_>>(),
            using = %winner.display(),
            "object defined in more than one file; using the definition from the file that sorts last",
        );
        key
    }

    /// `file` still defines `key`, as `object`; `changed` when its
    /// fingerprint differs from the last one.
    fn update_holder(
        &mut self,
        file: &FileId,
        key: &ObjectId,
        object: Object,
        changed: bool,
        out: &mut Vec<SourceEvent>,
    ) {
        let object = match self.many.get_mut(key) {
            // The only holder: its definition is the registry's.
            None => {
                if changed || self.unapplied.remove(key) {
                    out.push(SourceEvent::Apply(object));
                }
                return;
            }
            Some(all) => {
                let Ok(pos) = all.binary_search_by(|(f, _)| f.cmp(file)) else { return };
                let wins = pos + 1 == all.len();
                let pending = wins && self.unapplied.remove(key);
                if wins && (changed || pending) {
                    all[pos].1 = Some(object.clone());
                    object
                } else {
                    all[pos].1 = Some(object);
                    return;
                }
            }
        };
        out.push(SourceEvent::Apply(object));
    }

    /// `file` no longer defines `key` (already gone from `self.files`).
    fn remove_holder(&mut self, file: &FileId, key: &ObjectId, out: &mut Vec<SourceEvent>) {
        let Entry::Occupied(mut e) = self.many.entry(key.clone()) else {
            // The only holder was `file`.
            if self.objects.remove(key) {
                self.unapplied.remove(key);
                out.push(SourceEvent::Delete(key.to_key()));
            }
            return;
        };
        let all = e.get_mut();
        let Ok(pos) = all.binary_search_by(|(f, _)| f.cmp(file)) else { return };
        let was_winner = pos + 1 == all.len();
        all.remove(pos);
        let next = if all.len() == 1 {
            // Back to one holder: its definition is the registry's once applied.
            let next = all.pop().expect("one left");
            e.remove();
            if !was_winner {
                return;
            }
            next
        } else if was_winner {
            all.last().cloned().expect("several left")
        } else {
            return;
        };
        match next {
            (_, Some(object)) => {
                self.unapplied.remove(key);
                out.push(SourceEvent::Apply(object));
            }
            (holder, None) => {
                // Not known yet: applied when its file is read again.
                self.unapplied.insert(key.clone());
                self.wanted.insert(holder);
            }
        }
    }
}

#[cfg(test)]
mod tests;
