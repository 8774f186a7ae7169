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

mod fingerprint;

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use edgemesh_core::{Object, ObjectId, SourceEvent};

use crate::parse::ParsedObject;

/// A file's identity in the index.
pub(crate) type FileId = Arc<Path>;

/// A definition's fingerprint (`None`: unknown, always counts as changed).
type Fingerprint = Option<u64>;

#[derive(Default)]
pub(crate) struct Index {
    /// The objects of each file's last good version, sorted by key, with
    /// the fingerprint of each definition. Keys are shared with `objects`
    /// (an [`ObjectId`] is one allocation per object for both).
    files: HashMap<FileId, Vec<(ObjectId, Fingerprint)>>,
    /// The files defining each object.
    objects: HashMap<ObjectId, Holders>,
    /// Files whose definitions of multiply defined objects are not known.
    wanted: BTreeSet<FileId>,
    /// Objects whose winning definition changed to one not known yet: the
    /// registry still has the previous one.
    unapplied: HashSet<ObjectId>,
}

/// The files defining one object.
enum Holders {
    /// The usual case: one file, whose definition the registry has.
    One(FileId),
    /// Several files, sorted by path (the last one wins), with their
    /// definitions where known.
    Many(Vec<(FileId, Option<Object>)>),
}

impl Holders {
    fn winner(&self) -> &FileId {
        match self {
            Holders::One(file) => file,
            Holders::Many(all) => &all.last().expect("several holders").0,
        }
    }
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
            let print = fingerprint::of(&parsed.object);
            let key = match before {
                Some((key, was)) => {
                    let changed = print.is_none() || was != print;
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

    /// `file` newly defines `key`; returns the shared key.
    fn add_holder(&mut self, file: &FileId, key: ObjectId, object: Object, out: &mut Vec<SourceEvent>) -> ObjectId {
        let (key, holders) = match self.objects.get_key_value(&key) {
            Some((shared, _)) => {
                let shared = shared.clone();
                let holders = self.objects.get_mut(&shared).expect("just found");
                (shared, holders)
            }
            None => {
                self.objects.insert(key.clone(), Holders::One(file.clone()));
                out.push(SourceEvent::Apply(object));
                return key;
            }
        };
        // A second (or further) file: keep every definition from now on.
        if let Holders::One(only) = holders {
            self.wanted.insert(only.clone());
            *holders = Holders::Many(vec![(only.clone(), None)]);
        }
        let Holders::Many(all) = holders else { unreachable!("made Many above") };
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
        let Some(holders) = self.objects.get_mut(key) else { return };
        let wins = holders.winner() == file;
        let pending = wins && self.unapplied.remove(key);
        let object = match holders {
            Holders::One(_) => Some(object),
            Holders::Many(all) => {
                let Ok(pos) = all.binary_search_by(|(f, _)| f.cmp(file)) else { return };
                if wins && (changed || pending) {
                    all[pos].1 = Some(object.clone());
                    Some(object)
                } else {
                    all[pos].1 = Some(object);
                    None
                }
            }
        };
        if wins && (changed || pending) {
            out.extend(object.map(SourceEvent::Apply));
        }
    }

    /// `file` no longer defines `key` (already gone from `self.files`).
    fn remove_holder(&mut self, file: &FileId, key: &ObjectId, out: &mut Vec<SourceEvent>) {
        let Entry::Occupied(mut e) = self.objects.entry(key.clone()) else { return };
        let all = match e.get_mut() {
            Holders::One(only) => {
                if only == file {
                    e.remove();
                    self.unapplied.remove(key);
                    out.push(SourceEvent::Delete(key.to_key()));
                }
                return;
            }
            Holders::Many(all) => all,
        };
        let Ok(pos) = all.binary_search_by(|(f, _)| f.cmp(file)) else { return };
        let was_winner = pos + 1 == all.len();
        all.remove(pos);
        let next = if all.len() == 1 {
            // Back to one holder: its definition is the registry's once applied.
            let (only, object) = all.pop().expect("one left");
            *e.get_mut() = Holders::One(only.clone());
            if !was_winner {
                return;
            }
            (only, object)
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
