//! The cache file as the relay writes it, and what happens while it cannot
//! be written (a full or read-only state directory).
//!
//! While writes work, every batch is written before it is passed on. When
//! one fails, the agent keeps serving from memory: batches are passed on at
//! once and their changes kept ([`Changes`]: the last value per key), the
//! failure is logged once and shown in the status, and the file is opened
//! again and the kept changes written in one transaction after a back-off
//! (1 s doubling to 30 s). redb refuses every operation on a database after
//! an I/O error, so a retry always reopens the file. Once that works the
//! file holds the full current state again, not just what changed after.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use edgemesh_core::SourceEvent;
use tokio::time::Instant;

use crate::error::CacheError;
use crate::status::CacheStatus;
use crate::store::{Changes, Loaded, Store};

/// First wait before writing again after a failure; doubles up to [`RETRY_MAX`].
pub const RETRY_FIRST: Duration = Duration::from_secs(1);
pub const RETRY_MAX: Duration = Duration::from_secs(30);

/// The relay's cache file: writable, or failing with the changes kept.
pub(crate) struct Writer {
    dir: PathBuf,
    source: String,
    state: State,
    status: Arc<CacheStatus>,
}

enum State {
    Writable(Arc<Store>),
    Failing(Failing),
}

struct Failing {
    /// Changes passed on but not in the file.
    unwritten: Changes,
    /// The file is not known to hold the state the changes apply to (it
    /// could not be read at start): they are the whole state and replace
    /// its content.
    replace_all: bool,
    since: SystemTime,
    retry_at: Instant,
    backoff: Duration,
}

impl Writer {
    /// Opens the cache in `dir`. When it cannot be opened for writing, what
    /// the file holds is still read (without writing) and served, and the
    /// writer starts failing. Blocking.
    pub(crate) fn open(dir: &Path, source: &str, status: Arc<CacheStatus>) -> (Writer, Loaded) {
        let (dir, source) = (dir.to_owned(), source.to_owned());
        match Store::open(&dir, &source) {
            Ok((store, loaded, note)) => {
                let store = store.with_clock(status.clock.clone());
                if let Some(note) = &note {
                    tracing::warn!(problem = %note, "the cache file was unusable and has been rebuilt");
                }
                let file = store.path().display().to_string();
                status.update(|i| {
                    i.file = Some(file);
                    i.problem = note;
                });
                (Writer { dir, source, state: State::Writable(Arc::new(store)), status }, loaded)
            }
            Err(error) => {
                let (loaded, read) = match Store::read_only(&dir, &source) {
                    Ok(loaded) => (loaded, true),
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot read the cache file either");
                        (Loaded::default(), false)
                    }
                };
                let file = dir.join(crate::store::FILE_NAME).display().to_string();
                status.update(|i| i.file = Some(file));
                // Without the file's content the kept changes must be the whole state.
                let failing = Failing::start(&status, &[], &error, !read || loaded.objects.is_empty());
                (Writer { dir, source, state: State::Failing(failing), status }, loaded)
            }
        }
    }

    /// The store to write the next batch to, while writes work.
    pub(crate) fn store(&self) -> Option<Arc<Store>> {
        match &self.state {
            State::Writable(store) => Some(store.clone()),
            State::Failing(_) => None,
        }
    }

    /// When the next retry is due, while writes fail.
    pub(crate) fn retry_at(&self) -> Option<Instant> {
        match &self.state {
            State::Writable(_) => None,
            State::Failing(f) => Some(f.retry_at),
        }
    }

    /// Takes note of a batch written (or not) to the store; a failure
    /// starts keeping the changes.
    pub(crate) fn written(&mut self, events: &[SourceEvent], result: Result<(), CacheError>) {
        self.status.writes.count(&result);
        match (&mut self.state, result) {
            (State::Writable(_), Ok(())) => {}
            (State::Writable(_), Err(e)) => self.fail(events, &e, false),
            // Written by a store opened before the failure: the kept
            // changes are written again, in order, with these on top.
            (State::Failing(f), _) => f.unwritten.add(events),
        }
    }

    /// Keeps the changes of a batch passed on without writing it.
    pub(crate) fn keep(&mut self, events: &[SourceEvent]) {
        if let State::Failing(f) = &mut self.state {
            f.unwritten.add(events);
        }
    }

    fn fail(&mut self, events: &[SourceEvent], error: &CacheError, replace_all: bool) {
        self.state = State::Failing(Failing::start(&self.status, events, error, replace_all));
    }

    /// Opens the file again and writes the kept changes; on success writes
    /// work again, else the next retry waits twice as long (at most
    /// [`RETRY_MAX`]). Runs on the blocking pool.
    pub(crate) async fn retry(&mut self) {
        let State::Failing(f) = &mut self.state else { return };
        let changes = std::mem::take(&mut f.unwritten);
        let replace_all = f.replace_all;
        let (dir, source, clock) = (self.dir.clone(), self.source.clone(), self.status.clock.clone());
        let attempt = tokio::task::spawn_blocking(move || {
            let written = Store::reopen(&dir, &source).and_then(|(store, dropped)| {
                let store = store.with_clock(clock);
                store.write_changes(&changes, replace_all)?;
                Ok((store, dropped))
            });
            (changes, written)
        })
        .await;
        let Ok((changes, written)) = attempt else { return }; // the runtime is shutting down
        self.status.writes.count(&written);
        match written {
            Ok((store, dropped)) => {
                let failing_for = self.status.clock.now().duration_since(f.since).unwrap_or_default();
                tracing::info!(after = ?failing_for, written = changes.len(),
                    "the cache can be written again; it holds the current state");
                if dropped && !replace_all {
                    tracing::warn!(file = %store.path().display(),
                        "the cache file was rebuilt while it could not be written; until the source's next full view after a restart it holds only the changes since then");
                }
                let file = store.path().display().to_string();
                self.status.update(|i| {
                    i.degraded = None;
                    i.file = Some(file);
                });
                self.state = State::Writable(Arc::new(store));
            }
            Err(error) => {
                tracing::debug!(%error, "the cache still cannot be written");
                f.unwritten = changes;
                f.backoff = (f.backoff * 2).min(RETRY_MAX);
                f.retry_at = Instant::now() + f.backoff;
                let error = error.to_string();
                self.status.update(|i| {
                    if let Some((_, e)) = &mut i.degraded {
                        *e = error;
                    }
                });
            }
        }
    }
}

impl Failing {
    /// Starts keeping changes (those of `events` first): logged once, and
    /// shown in the status until writes work again.
    fn start(status: &CacheStatus, events: &[SourceEvent], error: &CacheError, replace_all: bool) -> Failing {
        let since = status.clock.now();
        let mut unwritten = Changes::default();
        unwritten.add(events);
        tracing::warn!(%error, retry_in = ?RETRY_FIRST,
            "cannot write the cache; the agent keeps serving from memory and retries (a restart before it recovers starts from older state)");
        let error = error.to_string();
        status.update(|i| i.degraded = Some((since, error)));
        Failing { unwritten, replace_all, since, retry_at: Instant::now() + RETRY_FIRST, backoff: RETRY_FIRST }
    }
}
