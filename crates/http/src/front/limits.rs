//! The limits on clients of HTTP ports, and what happens when one is hit:
//! counted in `edgemesh_http_limit_hits_total{limit}` every time, logged at
//! most once per [`LOG_EVERY`] per limit, so that a flood of bad clients
//! cannot flood the log either.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use edgemesh_metrics::{Counter, Family};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};

/// At most one log line per limit this often.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// A limit on clients (the `limit` label).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Limit {
    /// A request head larger than `http.maxHeaderBytes` (answered 431).
    HeaderSize,
    /// More headers than `http.maxHeaders` (answered 431).
    HeaderCount,
    /// A request head not complete within `http.requestHeadTimeout`.
    HeadTimeout,
    /// No request in flight for `http.idleTimeout`.
    IdleTimeout,
    /// An HTTP/2 connection at `http.maxConcurrentStreams`.
    Streams,
    /// Over `http.maxConnections` (refused).
    Connections,
}

impl Limit {
    pub const ALL: [Limit; 6] = [
        Limit::HeaderSize,
        Limit::HeaderCount,
        Limit::HeadTimeout,
        Limit::IdleTimeout,
        Limit::Streams,
        Limit::Connections,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Limit::HeaderSize => "header_size",
            Limit::HeaderCount => "header_count",
            Limit::HeadTimeout => "head_timeout",
            Limit::IdleTimeout => "idle_timeout",
            Limit::Streams => "streams",
            Limit::Connections => "connections",
        }
    }

    /// What the operator reads in the log, and the key that sets the limit.
    fn message(self) -> &'static str {
        match self {
            Limit::HeaderSize => "a client sent a request head over http.maxHeaderBytes; answered 431",
            Limit::HeaderCount => "a client sent more headers than http.maxHeaders; answered 431",
            Limit::HeadTimeout => {
                "a client did not complete its request head within http.requestHeadTimeout (slowloris?); closed"
            }
            Limit::IdleTimeout => "a client connection had no request for http.idleTimeout; closed",
            Limit::Streams => "a client's HTTP/2 connection reached http.maxConcurrentStreams; further streams refused",
            Limit::Connections => "client connections to HTTP ports reached http.maxConnections; new ones refused",
        }
    }
}

impl EncodeLabelValue for Limit {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

/// The `limit` label set.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabel {
    pub limit: Limit,
}

/// Counts and logs limit hits; shared by every client connection.
#[derive(Debug)]
pub struct LimitHits {
    counters: [Counter; 6],
    /// Per limit: when it was last logged, in ms since `epoch` (0: never).
    logged: [AtomicU64; 6],
    epoch: Instant,
}

impl LimitHits {
    /// Hits counted into `family`'s series, one per limit (all exported
    /// from the start, at 0).
    pub fn new(family: &Family<LimitLabel, Counter>) -> Self {
        Self {
            counters: Limit::ALL.map(|limit| family.get_or_create_owned(&LimitLabel { limit })),
            logged: Default::default(),
            epoch: Instant::now(),
        }
    }

    /// `limit` was hit (by a client at `peer`, when known).
    pub fn hit(&self, limit: Limit, peer: Option<std::net::SocketAddr>) {
        self.counters[limit as usize].inc();
        if self.should_log(limit) {
            match limit {
                // Closing idle keep-alive connections is their normal end.
                Limit::IdleTimeout => tracing::debug!(limit = limit.as_str(), ?peer, "{}", limit.message()),
                _ => tracing::warn!(limit = limit.as_str(), ?peer, "{} (logged at most every 10 s)", limit.message()),
            }
        }
    }

    /// Hits of `limit` counted so far.
    pub fn count(&self, limit: Limit) -> u64 {
        self.counters[limit as usize].get()
    }

    fn should_log(&self, limit: Limit) -> bool {
        // +1: 0 means never logged.
        let now = edgemesh_core::duration::millis(self.epoch.elapsed()).saturating_add(1);
        let last = &self.logged[limit as usize];
        let previous = last.load(Ordering::Relaxed);
        if previous != 0 && now < previous.saturating_add(edgemesh_core::duration::millis(LOG_EVERY)) {
            return false;
        }
        last.compare_exchange(previous, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_hit_counts_but_only_the_first_in_ten_seconds_logs() {
        let family = Family::default();
        let hits = LimitHits::new(&family);
        assert!(hits.should_log(Limit::HeadTimeout));
        assert!(!hits.should_log(Limit::HeadTimeout), "again within 10 s");
        assert!(hits.should_log(Limit::HeaderSize), "each limit has its own window");
        hits.hit(Limit::Streams, None);
        hits.hit(Limit::Streams, None);
        assert_eq!(hits.count(Limit::Streams), 2);
        assert_eq!(family.get_or_create(&LimitLabel { limit: Limit::Streams }).get(), 2);
        for (limit, i) in Limit::ALL.iter().zip(0..) {
            assert_eq!(*limit as usize, i, "counters[] is indexed by the discriminant");
        }
    }
}
