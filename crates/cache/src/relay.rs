//! The relay task between a source and the registry, and the status it
//! publishes for `/readyz` and `/services`.

use std::collections::{HashSet, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use edgemesh_core::{Clock, Connection, EventSink, EventStream, ObjectKey, SourceEvent, SourceReport};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::store::{Loaded, Store};

/// Events the relay's batch keeps room for between bursts.
const BATCH_KEPT: usize = 64;

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
    /// Reads the time for the ages reported and the cache's stamps.
    clock: Clock,
}

#[derive(Debug, Clone)]
struct Inner {
    origin: Origin,
    /// When the cached state was written (by a live source).
    cached_at: Option<SystemTime>,
    /// When the state last changed: the source's last batch, or the cache's time.
    updated_at: Option<SystemTime>,
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
    /// Seconds since the source last changed the state (from the cache: since
    /// the cached state was written).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_seconds: Option<u64>,
    /// Whether the state served is not kept up to date: from the cache, or
    /// live once but the source has been disconnected since.
    pub stale: bool,
    /// The source's connection, when the source reports one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_file: Option<String>,
    /// Why the cache is disabled, or what was wrong with it at start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_problem: Option<String>,
}

impl StateReport {
    /// Adds the source's connection (and whether that makes the state stale).
    pub fn with_source(mut self, source: SourceReport) -> Self {
        self.stale |= self.origin == Origin::Live && source.connection == Connection::Disconnected;
        self.source = Some(source);
        self
    }

    /// One line for `/readyz`: `live`, `stale: source disconnected for 42s:
    /// <error>; serving state last updated 43s ago`, or `from cache, 42s old`.
    pub fn describe(&self) -> String {
        let outage = self.source.as_ref().and_then(SourceReport::describe_outage);
        match (self.origin, self.age_seconds, outage) {
            (Origin::Live, _, None) => "live".into(),
            (Origin::Live, _, Some(outage)) => match self.updated_seconds {
                Some(age) => format!("stale: {outage}; serving state last updated {age}s ago"),
                None => format!("stale: {outage}"),
            },
            (Origin::Cache, age, outage) => {
                let mut s = match age {
                    Some(age) => format!("from cache, {age}s old; the source has not answered yet"),
                    None => "from cache; the source has not answered yet".into(),
                };
                if let Some(outage) = outage {
                    s = format!("{s} ({outage})");
                }
                s
            }
            (Origin::Starting, _, _) => "starting".into(),
        }
    }
}

impl CacheStatus {
    pub fn new() -> Arc<Self> {
        Self::with_clock(Clock::system())
    }

    /// Ages read from `clock`, which also stamps the cache's writes.
    pub fn with_clock(clock: Clock) -> Arc<Self> {
        let inner = Inner { origin: Origin::Starting, cached_at: None, updated_at: None, file: None, problem: None };
        Arc::new(Self { inner: Mutex::new(inner), clock })
    }

    pub fn report(&self) -> StateReport {
        let i = self.inner.lock().expect("cache status lock").clone();
        let cached = if i.origin == Origin::Cache { i.cached_at } else { None };
        let now = self.clock.now();
        StateReport {
            updated_seconds: i.updated_at.map(|t| now.duration_since(t).unwrap_or_default().as_secs()),
            stale: i.origin == Origin::Cache,
            source: None,
            origin: i.origin,
            age_seconds: cached.map(|t| now.duration_since(t).unwrap_or_default().as_secs()),
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
        let clock = status.clock.clone();
        tokio::task::spawn_blocking(move || Store::open(&dir, &source).map(|(s, l, n)| (s.with_clock(clock), l, n)))
            .await
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
            i.updated_at = loaded.saved_at;
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

    // Write-through, pipelined: events are passed on once written, and
    // while one transaction is being written the next events gather, so a
    // burst (a first full view of 100,000 objects) is written in a few
    // large transactions, each overlapping with the registry applying the
    // one before.
    let mut relay = Relay { live: false, unconfirmed, status, sink };
    let mut received: Vec<SourceEvent> = Vec::with_capacity(BATCH_KEPT);
    let mut pending: VecDeque<SourceEvent> = VecDeque::new();
    let mut writing: Option<tokio::task::JoinHandle<Written>> = None;
    let mut source_done = false;
    loop {
        if writing.is_none() && !pending.is_empty() {
            let events = take_batch(&mut pending);
            match &store {
                Some(store) => writing = Some(write(store.clone(), events)),
                None => {
                    if relay.pass_on(events, Ok(())).await.is_err() {
                        return;
                    }
                    continue;
                }
            }
        }
        if source_done && writing.is_none() {
            return; // the source ended and everything it sent is passed on
        }
        tokio::select! {
            n = upstream.recv_many(&mut received, 1024), if !source_done => {
                if n == 0 {
                    source_done = true;
                    continue;
                }
                relay.confirm(&mut received);
                pending.extend(received.drain(..));
                // Bursts grow it to 1,024 events (~200 bytes each); idle needs few.
                received.shrink_to(BATCH_KEPT);
            }
            written = async { writing.as_mut().expect("guarded").await }, if writing.is_some() => {
                writing = None;
                let Ok((events, result)) = written else { return }; // the runtime is shutting down
                // The next transaction starts before these are passed on.
                if !pending.is_empty() && let Some(store) = &store {
                    writing = Some(write(store.clone(), take_batch(&mut pending)));
                }
                if relay.pass_on(events, result).await.is_err() {
                    return;
                }
            }
            () = shutdown.cancelled() => return,
        }
    }
}

/// Most events in one transaction: a burst is written in a few of them,
/// the first of which is passed on while the next is written.
const MAX_BATCH: usize = 4096;

/// What a write task hands back: the events and whether they were written.
type Written = (Vec<SourceEvent>, Result<(), crate::CacheError>);

/// The oldest events, at most [`MAX_BATCH`]. From the front of a deque: a
/// burst of 200,000 events is not moved down by 4,096 at every batch.
fn take_batch(pending: &mut VecDeque<SourceEvent>) -> Vec<SourceEvent> {
    let batch: Vec<SourceEvent> = pending.drain(..pending.len().min(MAX_BATCH)).collect();
    if pending.is_empty() {
        // A burst grew it to thousands of events; the agent then idles.
        *pending = VecDeque::new();
    }
    batch
}

fn write(store: Arc<Store>, events: Vec<SourceEvent>) -> tokio::task::JoinHandle<Written> {
    tokio::task::spawn_blocking(move || {
        let written = store.write(&events).map(drop);
        (events, written)
    })
}

/// The relay's state between the source and the registry.
struct Relay {
    /// Whether the source has delivered its first full view.
    live: bool,
    /// Cached objects the source has not mentioned yet.
    unconfirmed: HashSet<ObjectKey>,
    status: Arc<CacheStatus>,
    sink: EventSink,
}

impl Relay {
    /// Takes note of what the source confirmed; at its first full view,
    /// adds deletions for what the cache held and the source did not mention
    /// (before the `Synced`).
    fn confirm(&mut self, batch: &mut Vec<SourceEvent>) {
        for event in batch.iter() {
            match event {
                SourceEvent::Apply(o) => {
                    self.unconfirmed.remove(&o.key());
                }
                SourceEvent::Delete(k) => {
                    self.unconfirmed.remove(k);
                }
                SourceEvent::Synced => {}
            }
        }
        // The first full view: what the cache held and the source did not
        // mention is gone. Deleted before Synced is passed on.
        if !self.live
            && let Some(at) = batch.iter().position(|e| *e == SourceEvent::Synced)
        {
            let stale: Vec<SourceEvent> = self.unconfirmed.drain().map(SourceEvent::Delete).collect();
            self.unconfirmed.shrink_to_fit(); // sized for the whole cached state
            if !stale.is_empty() {
                tracing::info!(deleted = stale.len(), "cached objects the source no longer has are removed");
            }
            batch.splice(at..at, stale);
        }
    }

    /// Passes written events on to the registry; fails when it has stopped.
    async fn pass_on(
        &mut self,
        events: Vec<SourceEvent>,
        written: Result<(), crate::CacheError>,
    ) -> Result<(), edgemesh_core::registry::RegistryClosed> {
        if let Err(e) = written {
            tracing::warn!(error = %e, "cache write failed; the agent keeps serving, but a restart may start from older state");
            self.status.update(|i| i.problem = Some(e.to_string()));
        }
        let now_live = !self.live && events.contains(&SourceEvent::Synced);
        let now = self.status.clock.now();
        self.status.update(|i| {
            i.updated_at = Some(now);
            if now_live {
                i.origin = Origin::Live;
            }
        });
        if now_live {
            self.live = true;
            tracing::info!("the source has answered; serving live state");
        }
        for event in events {
            self.sink.send(event).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(origin: Origin) -> StateReport {
        StateReport {
            origin,
            age_seconds: (origin == Origin::Cache).then_some(42),
            cached_at: None,
            updated_seconds: Some(43),
            stale: origin == Origin::Cache,
            source: None,
            cache_file: None,
            cache_problem: None,
        }
    }

    fn source(connection: Connection) -> SourceReport {
        let down = connection == Connection::Disconnected;
        SourceReport {
            connection,
            disconnected_seconds: down.then_some(42),
            disconnected_since: down.then_some(1_700_000_000),
            last_error: down.then(|| "connection refused to http://127.0.0.1:10550".to_owned()),
        }
    }

    #[test]
    fn live_with_a_connected_source_is_live() {
        let r = report(Origin::Live).with_source(source(Connection::Connected));
        assert!(!r.stale);
        assert_eq!(r.describe(), "live");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["origin"], "live");
        assert_eq!(json["stale"], false);
        assert_eq!(json["source"]["connection"], "connected");
        assert!(json["source"].get("lastError").is_none());
    }

    #[test]
    fn live_with_a_disconnected_source_is_stale() {
        let r = report(Origin::Live).with_source(source(Connection::Disconnected));
        assert!(r.stale);
        assert_eq!(
            r.describe(),
            "stale: source disconnected for 42s: connection refused to http://127.0.0.1:10550; \
             serving state last updated 43s ago"
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["stale"], true);
        assert_eq!(json["updatedSeconds"], 43);
        assert_eq!(json["source"]["connection"], "disconnected");
        assert_eq!(json["source"]["disconnectedSeconds"], 42);
        assert_eq!(json["source"]["lastError"], "connection refused to http://127.0.0.1:10550");
    }

    #[test]
    fn from_the_cache_says_why_the_source_has_not_answered() {
        let r = report(Origin::Cache).with_source(source(Connection::Disconnected));
        assert!(r.stale);
        assert_eq!(
            r.describe(),
            "from cache, 42s old; the source has not answered yet \
             (source disconnected for 42s: connection refused to http://127.0.0.1:10550)"
        );
        assert_eq!(report(Origin::Cache).describe(), "from cache, 42s old; the source has not answered yet");
        assert_eq!(report(Origin::Starting).with_source(source(Connection::Connecting)).describe(), "starting");
    }

    #[test]
    fn status_reports_when_the_state_last_changed() {
        let status = CacheStatus::new();
        assert_eq!(status.report().updated_seconds, None);
        status.update(|i| {
            i.origin = Origin::Live;
            i.updated_at = Some(SystemTime::now() - std::time::Duration::from_secs(5));
        });
        let r = status.report();
        assert!(!r.stale);
        assert!(matches!(r.updated_seconds, Some(5..=6)), "{r:?}");
    }
}
