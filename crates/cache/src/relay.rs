//! The relay task between a source and the registry, and the status it
//! publishes for `/readyz` and `/services`.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use edgemesh_core::{EventSink, EventStream, ObjectKey, SourceEvent};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::store::{Loaded, Store};

/// Where the state the agent serves comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Origin {
    /// Neither the cache nor the source has delivered anything yet.
    Starting,
    /// Replayed from the cache; the source has not answered yet.
    Cache,
    /// The source has delivered a full view.
    Live,
}

/// Shared, cheap-to-read status of the cache and the state's origin.
#[derive(Debug)]
pub struct CacheStatus {
    inner: Mutex<Inner>,
}

#[derive(Debug, Clone)]
struct Inner {
    origin: Origin,
    /// When the cached state was written (by a live source).
    cached_at: Option<SystemTime>,
    file: Option<String>,
    problem: Option<String>,
}

/// What `/services` and `/readyz` show.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StateReport {
    pub origin: Origin,
    /// Age of the cached state in seconds, while serving from the cache.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub age_seconds: Option<u64>,
    /// Unix time of the cached state, while serving from the cache.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cached_at: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_file: Option<String>,
    /// Why the cache is disabled, or what was wrong with it at start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_problem: Option<String>,
}

impl StateReport {
    /// One line for `/readyz`: `live`, or `from cache, 42s old`.
    pub fn describe(&self) -> String {
        match (self.origin, self.age_seconds) {
            (Origin::Live, _) => "live".into(),
            (Origin::Cache, Some(age)) => format!("from cache, {age}s old; the source has not answered yet"),
            (Origin::Cache, None) => "from cache; the source has not answered yet".into(),
            (Origin::Starting, _) => "starting".into(),
        }
    }
}

impl CacheStatus {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner { origin: Origin::Starting, cached_at: None, file: None, problem: None }),
        })
    }

    pub fn report(&self) -> StateReport {
        let i = self.inner.lock().expect("cache status lock").clone();
        let cached = if i.origin == Origin::Cache { i.cached_at } else { None };
        StateReport {
            origin: i.origin,
            age_seconds: cached.map(|t| SystemTime::now().duration_since(t).unwrap_or_default().as_secs()),
            cached_at: cached.map(|t| t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()),
            cache_file: i.file,
            cache_problem: i.problem,
        }
    }

    fn update(&self, f: impl FnOnce(&mut Inner)) {
        f(&mut self.inner.lock().expect("cache status lock"));
    }
}

/// Opens the cache in `dir` (never fails: problems are logged, reported in
/// `status`, and leave the agent running without a cache), then relays
/// `upstream` to `sink` until the source ends or `shutdown`.
pub async fn relay(
    dir: &Path,
    source: &str,
    mut upstream: EventStream,
    sink: EventSink,
    status: Arc<CacheStatus>,
    shutdown: CancellationToken,
) {
    let opened = {
        let (dir, source) = (dir.to_owned(), source.to_owned());
        tokio::task::spawn_blocking(move || Store::open(&dir, &source)).await
    };
    let (store, loaded) = match opened {
        Ok(Ok((store, loaded, note))) => {
            if let Some(other) = &loaded.replaced_source {
                tracing::info!(previous = %other, current = %source, "the cache held another source's state; starting empty");
            }
            if let Some(note) = &note {
                tracing::warn!(problem = %note, "the cache file was unusable and has been rebuilt");
            }
            let file = store.path().display().to_string();
            status.update(|i| {
                i.file = Some(file);
                i.problem = note;
            });
            (Some(Arc::new(store)), loaded)
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "running without a persistent cache: a restart while the source is unreachable will start empty");
            status.update(|i| i.problem = Some(e.to_string()));
            (None, Loaded::default())
        }
        Err(e) => {
            tracing::error!(error = %e, "opening the cache failed; running without it");
            (None, Loaded::default())
        }
    };

    // Replay: the registry can serve (and report ready) before the source answers.
    let mut unconfirmed: HashSet<ObjectKey> = HashSet::with_capacity(loaded.objects.len());
    if !loaded.objects.is_empty() {
        tracing::info!(objects = loaded.objects.len(), "serving the cached state until the source answers");
        status.update(|i| {
            i.origin = Origin::Cache;
            i.cached_at = loaded.saved_at;
        });
        for object in loaded.objects {
            unconfirmed.insert(object.key());
            if sink.send(SourceEvent::Apply(object)).await.is_err() {
                return;
            }
        }
        if sink.send(SourceEvent::Synced).await.is_err() {
            return;
        }
    }

    let mut batch = Vec::with_capacity(256);
    let mut live = false;
    loop {
        batch.clear();
        let n = tokio::select! {
            n = upstream.recv_many(&mut batch, 1024) => n,
            () = shutdown.cancelled() => return,
        };
        if n == 0 {
            return; // the source ended
        }
        for event in &batch {
            match event {
                SourceEvent::Apply(o) => {
                    unconfirmed.remove(&o.key());
                }
                SourceEvent::Delete(k) => {
                    unconfirmed.remove(k);
                }
                SourceEvent::Synced => {}
            }
        }
        // The first full view: what the cache held and the source did not
        // mention is gone. Deleted before Synced is passed on.
        if !live && let Some(at) = batch.iter().position(|e| *e == SourceEvent::Synced) {
            let stale: Vec<SourceEvent> = unconfirmed.drain().map(SourceEvent::Delete).collect();
            if !stale.is_empty() {
                tracing::info!(deleted = stale.len(), "cached objects the source no longer has are removed");
            }
            batch.splice(at..at, stale);
        }
        if let Some(store) = &store {
            let s = store.clone();
            let events = std::mem::take(&mut batch);
            let (events, written) = match tokio::task::spawn_blocking(move || {
                let r = s.write(&events);
                (events, r)
            })
            .await
            {
                Ok(r) => r,
                Err(_) => return, // the runtime is shutting down
            };
            batch = events;
            if let Err(e) = written {
                tracing::warn!(error = %e, "cache write failed; the agent keeps serving, but a restart may start from older state");
                status.update(|i| i.problem = Some(e.to_string()));
            }
        }
        if !live && batch.contains(&SourceEvent::Synced) {
            live = true;
            status.update(|i| i.origin = Origin::Live);
            tracing::info!("the source has answered; serving live state");
        }
        for event in batch.drain(..) {
            if sink.send(event).await.is_err() {
                return;
            }
        }
    }
}
