//! The redb file: one table of objects (key `Kind/namespace/name`, value
//! the object in [`codec`]'s binary form) and one of metadata (format version, time of the
//! last write). Every batch of changes is one write transaction, so a kill
//! at any moment leaves the previous or the new state, never a torn one.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use edgemesh_core::{Clock, Object, ObjectKey, ObjectKind, SourceEvent};
use redb::{Builder, Database, DatabaseError, ReadableDatabase, ReadableTable, TableDefinition};

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

impl Store {
    /// Opens (or creates) `dir/cache.redb` and reads it. A file that cannot
    /// be read (corrupt, truncated, another format) is moved aside to
    /// `cache.redb.broken-<unix time>` and replaced by an empty one; the
    /// returned message says so, for the log and the admin endpoint.
    ///
    /// `source` names the source feeding the agent; state another source
    /// wrote is dropped rather than served.
    pub fn open(dir: &Path, source: &str) -> Result<(Store, Loaded, Option<String>), CacheError> {
        std::fs::create_dir_all(dir).map_err(|source| CacheError::Dir { dir: dir.to_owned(), source })?;
        let path = dir.join(FILE_NAME);
        match Self::try_open(&path, source) {
            Ok((store, loaded)) => Ok((store, loaded, None)),
            Err(e @ CacheError::Locked { .. }) => Err(e),
            Err(e) if path.exists() => {
                let unix = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
                let aside = dir.join(format!("{FILE_NAME}.broken-{unix}"));
                std::fs::rename(&path, &aside)
                    .map_err(|source| CacheError::MoveAside { path: path.clone(), source })?;
                let note = format!("{e}; moved it to {} and started an empty cache", aside.display());
                let (store, loaded) = Self::try_open(&path, source)?;
                Ok((store, loaded, Some(note)))
            }
            Err(e) => Err(e),
        }
    }

    fn try_open(path: &Path, source: &str) -> Result<(Store, Loaded), CacheError> {
        let bad = |reason: String| CacheError::Unreadable { path: path.to_owned(), reason };
        let db = Builder::new().set_cache_size(CACHE_BYTES).create(path).map_err(|e| match e {
            DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch => {
                CacheError::Locked { path: path.to_owned() }
            }
            other => bad(other.to_string()),
        })?;
        let store = Store { db, path: path.to_owned(), clock: Clock::system() };
        // Make sure both tables exist and the format is ours.
        let txn = store.db.begin_write().map_err(|e| bad(e.to_string()))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| bad(e.to_string()))?;
            let format = meta.get("format").map_err(|e| bad(e.to_string()))?.map(|v| v.value());
            match format {
                None | Some(FORMAT_JSON) => {
                    meta.insert("format", FORMAT).map_err(|e| bad(e.to_string()))?;
                }
                Some(FORMAT) => {}
                Some(other) => {
                    return Err(bad(format!(
                        "cache format {other}, this agent reads formats {FORMAT_JSON} and {FORMAT}"
                    )));
                }
            }
            txn.open_table(OBJECTS).map_err(|e| bad(e.to_string()))?;
        }
        let replaced_source = {
            let mut owner = txn.open_table(SOURCE).map_err(|e| bad(e.to_string()))?;
            let previous = owner.get("id").map_err(|e| bad(e.to_string()))?.map(|v| v.value().to_owned());
            if previous.as_deref() != Some(source) {
                owner.insert("id", source).map_err(|e| bad(e.to_string()))?;
            }
            previous.filter(|p| p != source)
        };
        if replaced_source.is_some() {
            txn.delete_table(OBJECTS).map_err(|e| bad(e.to_string()))?;
            txn.open_table(OBJECTS).map_err(|e| bad(e.to_string()))?;
            txn.open_table(META).map_err(|e| bad(e.to_string()))?.remove("saved_at").map_err(|e| bad(e.to_string()))?;
        }
        txn.commit().map_err(|e| bad(e.to_string()))?;

        let read = store.db.begin_read().map_err(|e| bad(e.to_string()))?;
        let meta = read.open_table(META).map_err(|e| bad(e.to_string()))?;
        let saved_at = meta
            .get("saved_at")
            .map_err(|e| bad(e.to_string()))?
            .map(|v| UNIX_EPOCH + Duration::from_millis(v.value()));
        let table = read.open_table(OBJECTS).map_err(|e| bad(e.to_string()))?;
        let mut objects = Vec::new();
        for entry in table.iter().map_err(|e| bad(e.to_string()))? {
            let (key, value) = entry.map_err(|e| bad(e.to_string()))?;
            let object = codec::decode(value.value())
                .map_err(|e| bad(format!("entry {:?} does not decode: {e}", key.value())))?;
            if key_string(&object.key()) != key.value() {
                return Err(bad(format!("entry {:?} holds another object", key.value())));
            }
            objects.push(object);
        }
        drop((table, meta, read));
        Ok((store, Loaded { objects, saved_at, replaced_source }))
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
        let failed = |e: String| CacheError::Write { path: self.path.clone(), reason: e };
        let now = self.clock.now();
        let txn = self.db.begin_write().map_err(|e| failed(e.to_string()))?;
        {
            let mut table = txn.open_table(OBJECTS).map_err(|e| failed(e.to_string()))?;
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
                        table.insert(key.as_str(), bytes.as_slice()).map_err(|e| failed(e.to_string()))?;
                    }
                    None => {
                        table.remove(key.as_str()).map_err(|e| failed(e.to_string()))?;
                    }
                }
            }
            let mut meta = txn.open_table(META).map_err(|e| failed(e.to_string()))?;
            let millis = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
            meta.insert("saved_at", millis).map_err(|e| failed(e.to_string()))?;
        }
        txn.commit().map_err(|e| failed(e.to_string()))?;
        Ok(now)
    }
}

/// `Kind/namespace/name`, the kind as its `Debug` form has always spelt it.
fn key_string(k: &ObjectKey) -> String {
    let kind = match k.kind {
        ObjectKind::Service => "Service",
        ObjectKind::EndpointSlice => "EndpointSlice",
        ObjectKind::Endpoints => "Endpoints",
        ObjectKind::Node => "Node",
    };
    let mut s = String::with_capacity(kind.len() + k.namespace.len() + k.name.len() + 2);
    for part in [kind, "/", &k.namespace, "/", &k.name] {
        s.push_str(part);
    }
    s
}
