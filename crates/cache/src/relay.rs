//! The relay task between a source and the registry: replays the cache at
//! start, writes every change through, and reconciles the cache with the
//! source's first full view.

use std::collections::{HashSet, VecDeque};
use std::path::Path;
use std::sync::Arc;

use edgemesh_core::{EventSink, EventStream, ObjectKey, SourceEvent};
use tokio_util::sync::CancellationToken;

use crate::status::{CacheStatus, Origin};
use crate::store::Store;
use crate::writer::Writer;

/// Events the relay's batch keeps room for between bursts.
const BATCH_KEPT: usize = 64;

/// Opens the cache in `dir` (never fails: problems are logged, reported in
/// `status`, and leave the agent serving from memory while the cache is
/// retried), then relays `upstream` to `sink` until the source ends or
/// `shutdown`.
pub async fn relay(
    dir: &Path,
    source: &str,
    mut upstream: EventStream,
    sink: EventSink,
    status: Arc<CacheStatus>,
    shutdown: CancellationToken,
) {
    let opened = {
        let (dir, source, status) = (dir.to_owned(), source.to_owned(), status.clone());
        tokio::task::spawn_blocking(move || Writer::open(&dir, &source, status)).await
    };
    let Ok((mut writer, loaded)) = opened else { return }; // the runtime is shutting down
    if let Some(other) = &loaded.replaced_source {
        tracing::info!(previous = %other, current = %source, "the cache held another source's state; starting empty");
    }

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
    // one before. While the cache cannot be written, events are passed on
    // at once and the writer keeps their changes for its retries.
    let mut relay = Relay { live: false, unconfirmed, status, sink };
    let mut received: Vec<SourceEvent> = Vec::with_capacity(BATCH_KEPT);
    let mut pending: VecDeque<SourceEvent> = VecDeque::new();
    let mut writing: Option<tokio::task::JoinHandle<Written>> = None;
    let mut source_done = false;
    loop {
        if writing.is_none() && !pending.is_empty() {
            let events = take_batch(&mut pending);
            match writer.store() {
                Some(store) => writing = Some(write(store, events)),
                None => {
                    writer.keep(&events);
                    if relay.pass_on(events).await.is_err() {
                        return;
                    }
                    continue;
                }
            }
        }
        if source_done && writing.is_none() {
            return; // the source ended and everything it sent is passed on
        }
        let retry_at = writer.retry_at();
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
                writer.written(&events, result);
                // The next transaction starts before these are passed on.
                if !pending.is_empty() && let Some(store) = writer.store() {
                    writing = Some(write(store, take_batch(&mut pending)));
                }
                if relay.pass_on(events).await.is_err() {
                    return;
                }
            }
            () = tokio::time::sleep_until(retry_at.unwrap_or_else(tokio::time::Instant::now)),
                if retry_at.is_some() && writing.is_none() => writer.retry().await,
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

    /// Passes events on to the registry; fails when it has stopped.
    async fn pass_on(&mut self, events: Vec<SourceEvent>) -> Result<(), edgemesh_core::registry::RegistryClosed> {
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
