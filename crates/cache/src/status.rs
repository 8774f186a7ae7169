//! The status the relay publishes for `/readyz` and `/services`: where the
//! state comes from, how old it is, and whether the cache can be written.

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use edgemesh_core::{Clock, Connection, SourceReport};
use edgemesh_metrics::prometheus_client::encoding::EncodeLabelSet;
use edgemesh_metrics::{Counter, Family, Registry};
use serde::Serialize;

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
    record: Mutex<StatusRecord>,
    /// Reads the time for the ages reported and the cache's stamps.
    pub(crate) clock: Clock,
    pub(crate) writes: Writes,
}

/// `cache_writes_total{result}`: transactions written to the cache file
/// (a batch of events, or the changes kept while writes failed), by result.
#[derive(Debug)]
pub(crate) struct Writes {
    family: Family<WriteLabels, Counter>,
    ok: Counter,
    error: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WriteLabels {
    result: &'static str,
}

impl Writes {
    fn new() -> Self {
        let family = Family::<WriteLabels, Counter>::default();
        let ok = family.get_or_create_owned(&WriteLabels { result: "ok" });
        let error = family.get_or_create_owned(&WriteLabels { result: "error" });
        Self { family, ok, error }
    }

    /// Counts one transaction's result.
    pub(crate) fn count<T, E>(&self, result: &Result<T, E>) {
        match result {
            Ok(_) => self.ok.inc(),
            Err(_) => self.error.inc(),
        };
    }
}

/// What the status says: where the state comes from, its stamps, and the cache file's health.
#[derive(Debug, Clone)]
pub(crate) struct StatusRecord {
    pub(crate) origin: Origin,
    /// When the cached state was written (by a live source).
    pub(crate) cached_at: Option<SystemTime>,
    /// When the state last changed: the source's last batch, or the cache's time.
    pub(crate) updated_at: Option<SystemTime>,
    pub(crate) file: Option<String>,
    /// What was wrong with the file at start (moved aside as broken).
    pub(crate) problem: Option<String>,
    /// Since when the cache's writes have failed, and the latest error.
    pub(crate) degraded: Option<(SystemTime, String)>,
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
    /// What was wrong with the cache file at start (moved aside as broken).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_problem: Option<String>,
    /// Whether the cache cannot be written (a full or read-only state
    /// directory): the agent serves from memory and retries the writes.
    pub cache_degraded: bool,
    /// For how long the writes have failed, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_degraded_seconds: Option<u64>,
    /// Why the writes fail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_write_error: Option<String>,
}

impl StateReport {
    /// Adds the source's connection (and whether that makes the state stale).
    pub fn with_source(mut self, source: SourceReport) -> Self {
        self.stale |= self.origin == Origin::Live && source.connection == Connection::Disconnected;
        self.source = Some(source);
        self
    }

    /// One line for `/readyz`: `live`, `stale: source disconnected for 42s:
    /// <error>; serving state last updated 43s ago`, or `from cache, 42s old`;
    /// then a warning while the cache cannot be written.
    pub fn describe(&self) -> String {
        let mut s = self.describe_origin();
        if self.cache_degraded {
            s.push_str(&format!(
                "; warning: the cache cannot be written (for {}s; serving from memory and retrying): {}",
                self.cache_degraded_seconds.unwrap_or(0),
                self.cache_write_error.as_deref().unwrap_or("unknown error"),
            ));
        }
        s
    }

    fn describe_origin(&self) -> String {
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
        Arc::new(Self {
            record: Mutex::new(StatusRecord {
                origin: Origin::Starting,
                cached_at: None,
                updated_at: None,
                file: None,
                problem: None,
                degraded: None,
            }),
            clock,
            writes: Writes::new(),
        })
    }

    /// Registers `cache_writes_total{result}` in `registry` (the agent's
    /// `edgemesh_` one).
    pub fn register_metrics(&self, registry: &mut Registry) {
        registry.register(
            "cache_writes",
            "Transactions written to the cache file, by result (ok, error)",
            self.writes.family.clone(),
        );
    }

    pub fn report(&self) -> StateReport {
        let i = self.record.lock().expect("cache status lock").clone();
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
            cache_degraded: i.degraded.is_some(),
            cache_degraded_seconds: i
                .degraded
                .as_ref()
                .map(|(t, _)| now.duration_since(*t).unwrap_or_default().as_secs()),
            cache_write_error: i.degraded.map(|(_, e)| e),
        }
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut StatusRecord)) {
        f(&mut self.record.lock().expect("cache status lock"));
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
            cache_degraded: false,
            cache_degraded_seconds: None,
            cache_write_error: None,
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
    fn a_cache_that_cannot_be_written_is_a_warning_in_the_body_and_a_field() {
        let status = CacheStatus::new();
        status.update(|i| {
            i.origin = Origin::Live;
            let since = SystemTime::now() - std::time::Duration::from_secs(12);
            i.degraded = Some((since, "cannot write the cache file /s/cache.redb: Read-only file system".into()));
        });
        let r = status.report();
        assert!(r.cache_degraded && !r.stale, "degraded, but the state is live: {r:?}");
        assert_eq!(
            r.describe(),
            "live; warning: the cache cannot be written (for 12s; serving from memory and retrying): \
             cannot write the cache file /s/cache.redb: Read-only file system"
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["cacheDegraded"], true);
        assert_eq!(json["cacheDegradedSeconds"], 12);
        assert!(json["cacheWriteError"].as_str().unwrap().contains("Read-only"));

        status.update(|i| i.degraded = None);
        let json = serde_json::to_value(status.report()).unwrap();
        assert_eq!(json["cacheDegraded"], false);
        assert!(json.get("cacheWriteError").is_none());
        assert_eq!(status.report().describe(), "live");
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
