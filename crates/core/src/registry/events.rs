//! How sources hand events to the registry: [`EventSink`]s, and the
//! [`EventStream`] of a sink detached from it (for the cache in between).

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::metrics::SourceMetrics;
use crate::object::SourceEvent;

/// Where a source sends its events. Cheap to clone; each source gets its own
/// from [`Registry::source`] so the registry knows when all have synced.
#[derive(Clone, Debug)]
pub struct EventSink {
    pub(super) source: usize,
    pub(super) tx: mpsc::Sender<(usize, SourceEvent)>,
    /// Counts what the source sends, when the sink is a source's own.
    pub(super) metrics: Option<Arc<SourceMetrics>>,
}

impl EventSink {
    /// Sends one event; fails only when the registry has stopped.
    pub async fn send(&self, event: SourceEvent) -> Result<(), RegistryClosed> {
        if let Some(metrics) = &self.metrics {
            metrics.record(&event);
        }
        self.tx.send((self.source, event)).await.map_err(|_| RegistryClosed)
    }

    /// Counts every event sent through this sink (and its clones) in
    /// `metrics`: the sink a source is handed.
    pub fn counted(mut self, metrics: Arc<SourceMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }
}

impl EventSink {
    /// A sink that feeds an [`EventStream`] instead of the registry, for a
    /// layer between a source and the registry (the persistent cache).
    pub fn detached(capacity: usize) -> (EventSink, EventStream) {
        let (tx, rx) = mpsc::channel(capacity);
        (EventSink { source: 0, tx, metrics: None }, EventStream { rx })
    }
}

/// What a [`EventSink::detached`] sink sends; ends when every sink is dropped.
#[derive(Debug)]
pub struct EventStream {
    pub(super) rx: mpsc::Receiver<(usize, SourceEvent)>,
}

impl EventStream {
    /// Waits for events and appends up to `limit` of them to `out`;
    /// returns 0 once every sink is gone.
    pub async fn recv_many(&mut self, out: &mut Vec<SourceEvent>, limit: usize) -> usize {
        let mut batch = Vec::with_capacity(limit.min(1024));
        let n = self.rx.recv_many(&mut batch, limit).await;
        out.extend(batch.into_iter().map(|(_, e)| e));
        n
    }
}

/// The registry task is gone (the agent is shutting down).
#[derive(Debug, thiserror::Error)]
#[error("the registry has stopped")]
pub struct RegistryClosed;
