//! The polling source: scans the directory, re-reads changed files, and
//! turns each file's change into events through the [`Index`].
//!
//! Per poll the cost is one `readdir` plus one `stat` per manifest file;
//! only files whose stat changed are read, only files whose content hash
//! changed are parsed, and only objects that changed produce events.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use edgemesh_core::registry::EventSink;
use edgemesh_core::{SourceEvent, SourceHealth};
use tokio_util::sync::CancellationToken;

use crate::error::ManifestError;
use crate::index::{FileId, Index};
use crate::parse::{self, ParsedObject};

mod dir;

use dir::{DirState, Stat};

/// Reads a directory of Kubernetes manifests and follows its changes.
///
/// The directory is **polled**, not watched with inotify: a ConfigMap
/// volume is updated by atomically swapping its `..data` symlink to a new
/// directory, which inotify watches on the visible files never see (and
/// which editors' rename-on-save also defeats). Polling stats every
/// `*.yaml`/`*.yml` file (following symlinks) each `poll_interval` and reads
/// only the ones whose modification time, size or inode changed, which is
/// cheap even with thousands of files. A changed file is read once two
/// consecutive polls see the same stat, so a file being written in place is
/// not loaded half-written; changes therefore show up within about two
/// intervals. A ConfigMap swap is atomic and is picked up the same way.
///
/// Files whose modification time is within [`RACY_WINDOW`] of the scan are
/// re-read (and hashed) on the next poll too: file systems stamp times from
/// a coarse clock, so two writes of the same size in quick succession can
/// leave identical stat data.
///
/// Only a directory that can be read answers for the state: a missing or
/// unreadable one (not mounted yet, moved away, a permission error) is a
/// source that has not answered, or has stopped answering, never an empty
/// one. Until it can be read the state last read (or the cache) stays in
/// force, and [`SourceHealth`] says the source is disconnected and why. An
/// existing directory, even an empty one, is authoritative.
#[derive(Clone, Debug)]
pub struct ManifestSource {
    dir: PathBuf,
    poll_interval: Duration,
    health: Arc<SourceHealth>,
}

/// How recent a modification time must be for the stat data not to be
/// trusted yet (see [`ManifestSource`]).
pub const RACY_WINDOW: Duration = Duration::from_secs(2);

impl ManifestSource {
    pub fn new(dir: impl Into<PathBuf>, poll_interval: Duration) -> Self {
        Self { dir: dir.into(), poll_interval, health: SourceHealth::new() }
    }

    /// Reports whether the directory can be read into `health` (shared with
    /// the admin endpoint).
    pub fn with_health(mut self, health: Arc<SourceHealth>) -> Self {
        self.health = health;
        self
    }

    pub fn health(&self) -> &Arc<SourceHealth> {
        &self.health
    }

    /// A source with the `manifests` section's settings.
    pub fn from_config(config: &crate::ManifestsConfig) -> Self {
        Self::new(config.dir.clone(), config.poll_interval)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn poll_interval(&self) -> Duration {
        self.poll_interval
    }

    /// Scans, sends every object then `SourceEvent::Synced` after the first
    /// scan that could read the directory (also when it is empty, never
    /// while it is missing or unreadable), then follows changes until
    /// `shutdown` is cancelled or the sink's registry is gone.
    ///
    /// File system work and parsing run on tokio's blocking pool. The
    /// registry being gone is noticed at the next event sent.
    pub async fn run(self, sink: EventSink, shutdown: CancellationToken) {
        // Blocking threads do not inherit the task's subscriber; hand it over.
        let dispatch = tracing::dispatcher::get_default(Clone::clone);
        let mut scanner = Some(Scanner::new(self.dir.clone(), self.health.clone()));
        let mut synced = false;
        loop {
            let mut s = scanner.take().expect("put back after every poll");
            let d = dispatch.clone();
            // Events flow out file by file while later files are parsed, so
            // the registry works while the first scan is still parsing.
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<SourceEvent>>(4);
            let mut poll = tokio::task::spawn_blocking(move || {
                let answered = tracing::dispatcher::with_default(&d, || {
                    s.poll(&mut |events| {
                        // Fails only when the task below has stopped listening.
                        let _ = tx.blocking_send(events);
                    })
                });
                (s, answered)
            });
            let mut polled = None;
            let forward = async {
                loop {
                    tokio::select! {
                        Some(events) = rx.recv() => {
                            for event in events {
                                sink.send(event).await?;
                            }
                        }
                        joined = &mut poll, if polled.is_none() => polled = Some(joined),
                        else => break,
                    }
                }
                // Everything the first poll that read the directory found is
                // sent: the registry is synced.
                let answered = matches!(polled, Some(Ok((_, true))));
                if !synced && answered {
                    sink.send(SourceEvent::Synced).await?;
                }
                Ok::<_, edgemesh_core::registry::RegistryClosed>(answered)
            };
            tokio::select! {
                sent = forward => match sent {
                    Ok(answered) => synced |= answered,
                    Err(_) => {
                        tracing::debug!(dir = %self.dir.display(), "registry stopped; manifest source exits");
                        return;
                    }
                },
                () = shutdown.cancelled() => return,
            }
            scanner = Some(match polled.expect("the poll ended") {
                Ok((s, _)) => s,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(_) => return, // the runtime is shutting down
            });
            tokio::select! {
                () = tokio::time::sleep(self.poll_interval) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }
}

/// What the scanner remembers of one file.
#[derive(Default)]
struct FileState {
    /// Stat at the last read; `None` forces a read at the next poll.
    stat: Option<Stat>,
    /// Stat at the last poll, to tell a settled change from one in progress.
    seen: Option<Stat>,
    /// Hash of the content last read, good or bad.
    hash: Option<u64>,
    /// The read and parse problems last reported, so each is reported once.
    read_problem: Option<String>,
    parse_problem: Option<String>,
}

/// The synchronous half of the source: one [`Scanner::poll`] per interval.
pub(crate) struct Scanner {
    dir: PathBuf,
    files: HashMap<FileId, FileState>,
    index: Index,
    dir_state: DirState,
    health: Arc<SourceHealth>,
    /// No listing has been read yet.
    first: bool,
}

/// A file whose content must be parsed this poll.
struct Changed {
    file: FileId,
    text: Result<String, String>,
}

impl Scanner {
    pub(crate) fn new(dir: PathBuf, health: Arc<SourceHealth>) -> Self {
        let (files, index) = (HashMap::new(), Index::default());
        Self { dir, files, index, dir_state: DirState::Unknown, health, first: true }
    }

    /// One scan: hands `emit` the events that bring the registry up to
    /// date, file by file in file order. Returns whether the directory
    /// could be read (the scan is then the whole truth); when it could not,
    /// nothing is emitted and the objects read before stay.
    pub(crate) fn poll(&mut self, emit: &mut dyn FnMut(Vec<SourceEvent>)) -> bool {
        let now = SystemTime::now();
        let mut out = Vec::new();
        let Some(listing) = self.list() else { return false };

        // Files that are gone: their objects go too.
        let gone: Vec<FileId> = self.files.keys().filter(|f| !listing.contains_key(*f)).cloned().collect();
        for file in gone {
            tracing::debug!(file = %file.display(), "manifest file removed");
            self.files.remove(&file);
            self.index.remove_file(&file, &mut out);
        }

        // Files whose stat changed: read them, keep those whose content did.
        let mut changed = Vec::new();
        for (file, stat) in listing {
            let state = self.files.entry(file.clone()).or_default();
            let stat = match stat {
                Ok(stat) if state.stat == Some(stat) => continue,
                // Changed: read it once two polls agree, so a file being
                // written in place is not read half-written. Not on the first
                // scan, which should load without delay.
                Ok(stat) if !self.first && state.seen != Some(stat) => {
                    state.seen = Some(stat);
                    continue;
                }
                Ok(stat) => stat,
                Err(e) => {
                    report(&file, &mut state.read_problem, None, format!("cannot stat file: {e}"));
                    continue;
                }
            };
            let bytes = match std::fs::read(&*file) {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue, // gone since the listing; next poll
                Err(e) => {
                    // Permissions change the ctime only: keep trying.
                    state.stat = None;
                    report(&file, &mut state.read_problem, None, format!("cannot read file: {e}"));
                    continue;
                }
            };
            if state.read_problem.take().is_some() {
                tracing::info!(file = %file.display(), "manifest file is readable again");
            }
            state.seen = Some(stat);
            state.stat = (!stat.racy(now)).then_some(stat);
            let hash = content_hash(&bytes);
            if state.hash == Some(hash) {
                continue;
            }
            state.hash = Some(hash);
            let text = String::from_utf8(bytes).map_err(|e| format!("file is not UTF-8: {e}"));
            changed.push(Changed { file, text });
        }

        // Events in file order, whatever order the directory listed.
        changed.sort_unstable_by(|a: &Changed, b| a.file.cmp(&b.file));
        if !out.is_empty() {
            emit(std::mem::take(&mut out));
        }
        parse_all(&changed, |i, result| {
            let file = &changed[i].file;
            let state = self.files.get_mut(file).expect("listed above");
            match result {
                Ok(objects) => {
                    self.index.set_file(file, objects, &mut out);
                    tracing::debug!(file = %file.display(), events = out.len(), "manifest file loaded");
                    if state.parse_problem.take().is_some() {
                        tracing::info!(file = %file.display(), "manifest file is valid again");
                    }
                    if !out.is_empty() {
                        emit(std::mem::take(&mut out));
                    }
                }
                // A new content (its hash changed), so always reported.
                Err(Failure::Manifest(e)) => {
                    state.parse_problem = None;
                    report(file, &mut state.parse_problem, Some(e.line()), e.reason());
                }
                Err(Failure::Other(reason)) => {
                    state.parse_problem = None;
                    report(file, &mut state.parse_problem, None, reason);
                }
            }
        });

        self.reload_wanted(&mut out);
        if !out.is_empty() {
            emit(out);
        }

        if self.first {
            self.first = false;
            if self.dir_state == DirState::Ok {
                tracing::info!(
                    dir = %self.dir.display(),
                    files = self.files.len(),
                    objects = self.index.len(),
                    "loaded manifests; watching for changes"
                );
            }
        }
        true
    }

    /// Reads again the files holding definitions the index needs (objects
    /// that turned up in a second file after theirs was read), provided
    /// their content is still the one last read; a file changed since is
    /// read by a later poll as usual, which also gives the index what it
    /// needs.
    fn reload_wanted(&mut self, out: &mut Vec<SourceEvent>) {
        for file in self.index.wanted_files() {
            let Some(state) = self.files.get(&file) else { continue };
            let text = match std::fs::read(&*file) {
                Ok(bytes) if Some(content_hash(&bytes)) == state.hash => String::from_utf8(bytes).ok(),
                _ => None,
            };
            match text.map(|text| parse::parse_manifest(&text)) {
                Some(Ok(objects)) => self.index.set_file(&file, objects, out),
                Some(Err(e)) => tracing::debug!(file = %file.display(), error = %e, "cannot read the file again"),
                None => {
                    tracing::debug!(file = %file.display(), "file changed since it was read; reading it at the next poll")
                }
            }
        }
    }
}

/// Whether a directory entry called `name` is a manifest file the source
/// reads: `*.yaml` and `*.yml`, but no dotfiles (ConfigMap volumes keep
/// `..data` and `..<timestamp>` there, and editors their swap files).
pub fn is_manifest_file(name: &str) -> bool {
    !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml"))
}

/// Logs a file's problem unless it is the one already reported.
fn report(file: &Path, reported: &mut Option<String>, line: Option<usize>, reason: String) {
    if reported.as_ref() == Some(&reason) {
        return;
    }
    match line {
        Some(line) => tracing::warn!(
            file = %file.display(),
            line,
            reason = %reason,
            "ignoring invalid manifest file; the objects it held before stay as they were"
        ),
        None => tracing::warn!(
            file = %file.display(),
            reason = %reason,
            "ignoring unreadable manifest file; the objects it held before stay as they were"
        ),
    }
    *reported = Some(reason);
}

fn content_hash(bytes: &[u8]) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// Why a changed file could not be used.
enum Failure {
    Manifest(ManifestError),
    Other(String),
}

/// Parses changed files (one large file on several threads, many files
/// spread over threads) and hands each result to `done` in input order, as
/// soon as it and those before it are parsed.
fn parse_all(changed: &[Changed], mut done: impl FnMut(usize, Result<Vec<ParsedObject>, Failure>)) {
    let one = |c: &Changed, threads: usize| {
        let _span = tracing::info_span!("manifest", file = %c.file.display()).entered();
        match &c.text {
            Ok(text) => parse::parse_with_threads(text, threads).map_err(Failure::Manifest),
            Err(e) => Err(Failure::Other(e.clone())),
        }
    };
    let threads = parse::available_threads();
    let bytes: usize = changed.iter().map(|c| c.text.as_ref().map_or(0, String::len)).sum();
    if changed.len() == 1 {
        let threads = if bytes >= parse::PARALLEL_MIN_BYTES { threads } else { 1 };
        return done(0, one(&changed[0], threads));
    }
    if threads <= 1 || bytes < parse::PARALLEL_MIN_BYTES {
        return changed.iter().enumerate().for_each(|(i, c)| done(i, one(c, 1)));
    }
    // Work stealing over files, one file per step; results put back in order.
    let next = AtomicUsize::new(0);
    let dispatch = tracing::dispatcher::get_default(Clone::clone);
    let mut parked: Vec<Option<_>> = (0..changed.len()).map(|_| None).collect();
    let mut next_done = 0;
    std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::channel();
        for _ in 0..threads {
            let tx = tx.clone();
            let (next, dispatch, one) = (&next, &dispatch, &one);
            s.spawn(move || {
                tracing::dispatcher::with_default(dispatch, || {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(c) = changed.get(i) else { break };
                        if tx.send((i, one(c, 1))).is_err() {
                            break;
                        }
                    }
                })
            });
        }
        drop(tx);
        // Ends when every worker is done (a panic is re-raised by the scope).
        for (i, result) in rx {
            parked[i] = Some(result);
            while let Some(result) = parked.get_mut(next_done).and_then(Option::take) {
                done(next_done, result);
                next_done += 1;
            }
        }
    });
}
