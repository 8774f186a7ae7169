//! The redb file: one table of objects (key `Kind/namespace/name`, value
//! the object in [`codec`]'s binary form) and one of metadata (format version, time of the
//! last write). Every batch of changes is one write transaction, so a kill
//! at any moment leaves the previous or the new state, never a torn one.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use edgemesh_core::{Clock, Object, ObjectKey, ObjectKind, SourceEvent};
use redb::backends::InMemoryBackend;
use redb::{Builder, Database, DatabaseError, ReadableDatabase, ReadableTable, StorageBackend, TableDefinition};

use crate::codec;
use crate::error::CacheError;

const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Which source wrote the objects (e.g. `manifests:/etc/edgemesh/manifests`).
const SOURCE: TableDefinition<&str, &str> = TableDefinition::new("source");
/// Bumped when the stored encoding changes incompatibly; a file of another
/// version is moved aside and rebuilt. Format 2 writes values in
/// [`codec`]'s binary form; a format 1 file (JSON values) is still read,
/// and becomes format 2 when opened.
pub const FORMAT: u64 = 2;
/// The older format this agent still reads.
const FORMAT_JSON: u64 = 1;
/// The file's name inside the state directory.
pub const FILE_NAME: &str = "cache.redb";
/// redb's page cache. Its default (1 GiB) keeps every page written since
/// start resident: 13 MiB at 10,000 services, for a file that is read once
/// at start and otherwise only written. Pages not cached are read back from
/// the OS page cache when a write needs them. The cache fills to this size
/// and stays so while the agent idles; 256 KiB (64 pages) holds the upper
/// levels of the trees a batch of writes walks.
const CACHE_BYTES: usize = 256 << 10;

/// What the cache held at start.
#[derive(Debug, Default)]
pub struct Loaded {
    pub objects: Vec<Object>,
    /// When a source last changed the cache.
    pub saved_at: Option<SystemTime>,
    /// The file held another source's state, which was dropped: serving it
    /// would answer for services this source never had.
    pub replaced_source: Option<String>,
}

/// An open cache file.
pub struct Store {
    db: Database,
    path: PathBuf,
    /// Stamps each write (the age `/readyz` reports after a restart).
    clock: Clock,
}

/// Changes not written yet: the last value per key (`None`: deleted), in
/// the key order they are written in, in [`codec`]'s form. What the relay
/// keeps while the cache cannot be written.
#[derive(Debug, Default)]
pub struct Changes(BTreeMap<String, Option<Vec<u8>>>);

impl Changes {
    /// Adds a batch of events; a later event for a key replaces an earlier one.
    pub fn add(&mut self, events: &[SourceEvent]) {
        for event in events {
            match event {
                SourceEvent::Apply(o) => {
                    let mut bytes = Vec::with_capacity(256);
                    codec::encode(o, &mut bytes);
                    self.0.insert(key_string(&o.key()), Some(bytes));
                }
                SourceEvent::Delete(k) => {
                    self.0.insert(key_string(k), None);
                }
                SourceEvent::Synced => {}
            }
        }
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Store {
    /// Opens (or creates) `dir/cache.redb` and reads it. A file that cannot
    /// be read (corrupt, truncated, another format) is moved aside to
    /// `cache.redb.broken-<unix time>` and replaced by an empty one; the
    /// returned message says so, for the log and the admin endpoint. A file
    /// that cannot be opened for writing (a read-only or full file system)
    /// is an [`CacheError::Unwritable`], never moved aside: it may be good.
    ///
    /// `source` names the source feeding the agent; state another source
    /// wrote is dropped rather than served.
    pub fn open(dir: &Path, source: &str) -> Result<(Store, Loaded, Option<String>), CacheError> {
        Self::open_then(dir, source, |store, replaced_source| {
            let (objects, saved_at) = read_state(&store.db, &store.path)?;
            Ok(Loaded { objects, saved_at, replaced_source })
        })
    }

    /// Opens the file for writing, as [`Store::open`] does, without reading
    /// the objects; says whether the state it held was dropped (moved aside
    /// as broken, or another source's).
    pub fn reopen(dir: &Path, source: &str) -> Result<(Store, bool), CacheError> {
        let (store, replaced, note) = Self::open_then(dir, source, |_, replaced| Ok(replaced.is_some()))?;
        Ok((store, replaced || note.is_some()))
    }

    /// Opens the file, runs `then` on it, and moves a file either finds
    /// broken aside (once) before starting an empty one.
    fn open_then<T>(
        dir: &Path,
        source: &str,
        then: impl Fn(&Store, Option<String>) -> Result<T, CacheError>,
    ) -> Result<(Store, T, Option<String>), CacheError> {
        create_private_dir(dir).map_err(|source| CacheError::Dir { dir: dir.to_owned(), source })?;
        let path = dir.join(FILE_NAME);
        let attempt = || {
            create_private_file(&path);
            let (store, replaced) = Self::try_open(&path, source)?;
            let t = then(&store, replaced)?;
            Ok::<_, CacheError>((store, t))
        };
        match attempt() {
            Ok((store, t)) => Ok((store, t, None)),
            Err(e @ (CacheError::Locked { .. } | CacheError::Unwritable { .. })) => Err(e),
            Err(e) if path.exists() => {
                let unix = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
                let aside = dir.join(format!("{FILE_NAME}.broken-{unix}"));
                std::fs::rename(&path, &aside)
                    .map_err(|source| CacheError::MoveAside { path: path.clone(), source })?;
                let note = format!("{e}; moved it to {} and started an empty cache", aside.display());
                let (store, t) = attempt()?;
                Ok((store, t, Some(note)))
            }
            Err(e) => Err(e),
        }
    }

    /// Reads `dir/cache.redb` without writing to it, for a state directory
    /// that cannot be written: its state can still be served. Nothing when
    /// there is no file, or it holds another source's state. A file left
    /// by an agent that was killed needs redb's recovery, which writes: it
    /// is then recovered in a copy in memory.
    pub fn read_only(dir: &Path, source: &str) -> Result<Loaded, CacheError> {
        let path = dir.join(FILE_NAME);
        if !path.exists() {
            return Ok(Loaded::default());
        }
        let builder = {
            let mut b = Builder::new();
            b.set_cache_size(CACHE_BYTES);
            b
        };
        match builder.open_read_only(&path) {
            Ok(db) => read_owned(&db, &path, source),
            Err(e) => {
                tracing::debug!(error = %e, file = %path.display(), "reading the cache file in a copy in memory");
                let bytes = std::fs::read(&path).map_err(|e| failure(&path, e))?;
                let copy = InMemoryBackend::new();
                copy.set_len(bytes.len() as u64).and_then(|()| copy.write(0, &bytes)).map_err(|e| failure(&path, e))?;
                drop(bytes);
                let db = builder.create_with_backend(copy).map_err(|e| failure(&path, e))?;
                read_owned(&db, &path, source)
            }
        }
    }

    /// Opens the file for writing, checks its format and owner, and drops
    /// another source's state; returns that source's name.
    fn try_open(path: &Path, source: &str) -> Result<(Store, Option<String>), CacheError> {
        let bad = |e: redb::Error| failure(path, e);
        let db = Builder::new().set_cache_size(CACHE_BYTES).create(path).map_err(|e| match e {
            DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch => {
                CacheError::Locked { path: path.to_owned() }
            }
            other => failure(path, other),
        })?;
        let store = Store { db, path: path.to_owned(), clock: Clock::system() };
        // Make sure both tables exist and the format is ours.
        let txn = store.db.begin_write().map_err(|e| bad(e.into()))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| bad(e.into()))?;
            let format = meta.get("format").map_err(|e| bad(e.into()))?.map(|v| v.value());
            match format {
                None | Some(FORMAT_JSON) => {
                    meta.insert("format", FORMAT).map_err(|e| bad(e.into()))?;
                }
                Some(FORMAT) => {}
                Some(other) => {
                    return Err(CacheError::Unreadable {
                        path: path.to_owned(),
                        reason: format!("cache format {other}, this agent reads formats {FORMAT_JSON} and {FORMAT}"),
                    });
                }
            }
            txn.open_table(OBJECTS).map_err(|e| bad(e.into()))?;
        }
        let replaced_source = {
            let mut owner = txn.open_table(SOURCE).map_err(|e| bad(e.into()))?;
            let previous = owner.get("id").map_err(|e| bad(e.into()))?.map(|v| v.value().to_owned());
            if previous.as_deref() != Some(source) {
                owner.insert("id", source).map_err(|e| bad(e.into()))?;
            }
            previous.filter(|p| p != source)
        };
        if replaced_source.is_some() {
            txn.delete_table(OBJECTS).map_err(|e| bad(e.into()))?;
            txn.open_table(OBJECTS).map_err(|e| bad(e.into()))?;
            txn.open_table(META).map_err(|e| bad(e.into()))?.remove("saved_at").map_err(|e| bad(e.into()))?;
        }
        txn.commit().map_err(|e| bad(e.into()))?;
        Ok((store, replaced_source))
    }

    /// Stamps writes with `clock`'s time instead of the system's.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Applies a batch of events in one transaction and stamps the time.
    pub fn write(&self, events: &[SourceEvent]) -> Result<SystemTime, CacheError> {
        self.transaction(false, |table| {
            // The last event for a key wins within a batch. Written in key
            // order: a first full view goes in as appends to the B-tree,
            // not as inserts scattered over pages evicted from the small
            // page cache.
            let mut last: Vec<(String, Option<&Object>)> = events
                .iter()
                .filter_map(|event| match event {
                    SourceEvent::Apply(o) => Some((key_string(&o.key()), Some(o))),
                    SourceEvent::Delete(k) => Some((key_string(k), None)),
                    SourceEvent::Synced => None,
                })
                .collect();
            // Stable: the events of one key stay in the order they came.
            last.sort_by(|a, b| a.0.cmp(&b.0));
            let mut bytes = Vec::with_capacity(256);
            for (i, (key, object)) in last.iter().enumerate() {
                if last.get(i + 1).is_some_and(|next| next.0 == *key) {
                    continue; // a later event for this key follows
                }
                match object {
                    Some(o) => {
                        bytes.clear();
                        codec::encode(o, &mut bytes);
                        table.insert(key.as_str(), bytes.as_slice())?;
                    }
                    None => {
                        table.remove(key.as_str())?;
                    }
                }
            }
            Ok(())
        })
    }

    /// Writes changes kept while the file could not be written, in one
    /// transaction; with `replace_all` they are the whole state and
    /// replace whatever the file held.
    pub fn write_changes(&self, changes: &Changes, replace_all: bool) -> Result<SystemTime, CacheError> {
        self.transaction(replace_all, |table| {
            for (key, value) in &changes.0 {
                match value {
                    Some(bytes) => table.insert(key.as_str(), bytes.as_slice()).map(drop)?,
                    None => table.remove(key.as_str()).map(drop)?,
                }
            }
            Ok(())
        })
    }

    /// One write transaction on the objects table (emptied first with
    /// `clear`), stamped with the time.
    fn transaction(
        &self,
        clear: bool,
        fill: impl FnOnce(&mut redb::Table<&str, &[u8]>) -> Result<(), redb::StorageError>,
    ) -> Result<SystemTime, CacheError> {
        let failed = |e: redb::Error| CacheError::Write { path: self.path.clone(), reason: e.to_string() };
        let now = self.clock.now();
        let txn = self.db.begin_write().map_err(|e| failed(e.into()))?;
        if clear {
            txn.delete_table(OBJECTS).map_err(|e| failed(e.into()))?;
        }
        {
            let mut table = txn.open_table(OBJECTS).map_err(|e| failed(e.into()))?;
            fill(&mut table).map_err(|e| failed(e.into()))?;
            let mut meta = txn.open_table(META).map_err(|e| failed(e.into()))?;
            let millis = edgemesh_core::duration::millis(now.duration_since(UNIX_EPOCH).unwrap_or_default());
            meta.insert("saved_at", millis).map_err(|e| failed(e.into()))?;
        }
        txn.commit().map_err(|e| failed(e.into()))?;
        Ok(now)
    }
}

/// A redb failure: an I/O error (read-only or full file system, no
/// permission) means the file could not be used there, not that it is
/// broken; a short read or anything else is a broken file.
fn failure(path: &Path, e: impl Into<redb::Error>) -> CacheError {
    let broken = |e: &std::io::Error| matches!(e.kind(), ErrorKind::UnexpectedEof | ErrorKind::InvalidData);
    match e.into() {
        redb::Error::Io(e) if !broken(&e) => CacheError::Unwritable { path: path.to_owned(), reason: e.to_string() },
        e @ redb::Error::PreviousIo => CacheError::Unwritable { path: path.to_owned(), reason: e.to_string() },
        e => CacheError::Unreadable { path: path.to_owned(), reason: e.to_string() },
    }
}

/// The state in `db` if `source` wrote it (else nothing, and who did).
fn read_owned(db: &impl ReadableDatabase, path: &Path, source: &str) -> Result<Loaded, CacheError> {
    let read = db.begin_read().map_err(|e| failure(path, e))?;
    let format = read.open_table(META).and_then(|t| Ok(t.get("format")?.map(|v| v.value())));
    let owner = read.open_table(SOURCE).and_then(|t| Ok(t.get("id")?.map(|v| v.value().to_owned())));
    let (format, owner) = (format.map_err(|e| failure(path, e))?, owner.map_err(|e| failure(path, e))?);
    if !matches!(format, Some(FORMAT | FORMAT_JSON)) {
        return Err(CacheError::Unreadable { path: path.to_owned(), reason: format!("cache format {format:?}") });
    }
    if owner.as_deref() != Some(source) {
        return Ok(Loaded { replaced_source: owner, ..Loaded::default() });
    }
    drop(read);
    let (objects, saved_at) = read_state(db, path)?;
    Ok(Loaded { objects, saved_at, replaced_source: None })
}

/// The objects and the time of the last write, checked entry by entry.
fn read_state(db: &impl ReadableDatabase, path: &Path) -> Result<(Vec<Object>, Option<SystemTime>), CacheError> {
    let bad = |e: redb::Error| failure(path, e);
    let read = db.begin_read().map_err(|e| bad(e.into()))?;
    let meta = read.open_table(META).map_err(|e| bad(e.into()))?;
    let saved_at =
        meta.get("saved_at").map_err(|e| bad(e.into()))?.map(|v| UNIX_EPOCH + Duration::from_millis(v.value()));
    let table = read.open_table(OBJECTS).map_err(|e| bad(e.into()))?;
    let mut objects = Vec::new();
    for entry in table.iter().map_err(|e| bad(e.into()))? {
        let (key, value) = entry.map_err(|e| bad(e.into()))?;
        let unreadable = |reason: String| CacheError::Unreadable { path: path.to_owned(), reason };
        let object = codec::decode(value.value())
            .map_err(|e| unreadable(format!("entry {:?} does not decode: {e}", key.value())))?;
        if key_string(&object.key()) != key.value() {
            return Err(unreadable(format!("entry {:?} holds another object", key.value())));
        }
        objects.push(object);
    }
    Ok((objects, saved_at))
}

/// `Kind/namespace/name`, the kind as its `Debug` form has always spelt it.
fn key_string(k: &ObjectKey) -> String {
    let kind = match k.kind {
        ObjectKind::Service => "Service",
        ObjectKind::EndpointSlice => "EndpointSlice",
        ObjectKind::Endpoints => "Endpoints",
        ObjectKind::Node => "Node",
        ObjectKind::DestinationRule => "DestinationRule",
        ObjectKind::Routing(kind) => kind.label(),
    };
    let mut s = String::with_capacity(kind.len() + k.namespace.len() + k.name.len() + 2);
    for part in [kind, "/", &k.namespace, "/", &k.name] {
        s.push_str(part);
    }
    s
}

/// Creates `dir` and its missing parents readable by the owner only (0700);
/// directories that exist keep their mode (the operator's, or systemd's
/// `StateDirectoryMode`).
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// Makes sure the cache file is the owner's only (0600) before redb opens
/// it: created so when missing (redb would use the umask's 0644), tightened
/// when an older agent left it readable by others. Best effort: a file
/// that cannot be created or changed here fails, with its reason, when
/// redb opens it.
fn create_private_file(path: &Path) {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    match std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(path) {
        Ok(file) => {
            let loose = file.metadata().map(|m| m.permissions().mode() & 0o077 != 0).unwrap_or(false);
            if loose && let Err(error) = file.set_permissions(std::fs::Permissions::from_mode(0o600)) {
                tracing::debug!(file = %path.display(), %error, "cannot make the cache file private (chmod 600)");
            }
        }
        Err(error) => tracing::debug!(file = %path.display(), %error, "cannot create the cache file 0600"),
    }
}
