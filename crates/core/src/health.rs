//! Whether a service source is connected to what it reads, for `/readyz`
//! and `/services`: the source writes it, the admin endpoint reads it.
//!
//! Without it, an agent whose source synced once and then lost the API
//! would still say `live` while serving state that stopped updating.

use std::fmt::Display;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::Clock;

/// The connection of a source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Connection {
    /// No answer yet, and no failure either.
    Connecting,
    /// Its last requests were answered: changes arrive.
    Connected,
    /// Failing since `since`: the state served stopped updating.
    Disconnected,
}

/// Shared connection health of one source; cheap to read.
#[derive(Debug)]
pub struct SourceHealth {
    status: Mutex<Status>,
    clock: Clock,
}

/// The connection state and, while disconnected, since when and why.
#[derive(Clone, Debug)]
struct Status {
    connection: Connection,
    /// When the source went disconnected.
    since: Option<SystemTime>,
    /// The latest error while disconnected.
    error: Option<String>,
}

/// What `/services` shows of the source, and `/readyz` describes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceReport {
    pub connection: Connection,
    /// How long the source has been disconnected, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disconnected_seconds: Option<u64>,
    /// Unix time the source went disconnected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disconnected_since: Option<u64>,
    /// The latest error while disconnected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl SourceHealth {
    pub fn new() -> Arc<Self> {
        Self::with_clock(Clock::system())
    }

    /// Outages timed by `clock`.
    pub fn with_clock(clock: Clock) -> Arc<Self> {
        let status = Mutex::new(Status { connection: Connection::Connecting, since: None, error: None });
        Arc::new(Self { status, clock })
    }

    /// Records an answer. Returns how long the outage lasted when this ends
    /// one (to log the recovery once), else `None`.
    pub fn connected(&self) -> Option<Duration> {
        let now = self.clock.now();
        let mut i = self.lock();
        let outage = match i.connection {
            Connection::Disconnected => Some(i.since.and_then(|t| now.duration_since(t).ok()).unwrap_or_default()),
            Connection::Connecting | Connection::Connected => None,
        };
        *i = Status { connection: Connection::Connected, since: None, error: None };
        outage
    }

    /// Records a failure. Returns `true` when this starts an outage (to warn
    /// once); later failures only replace the error.
    pub fn disconnected(&self, error: impl Display) -> bool {
        let now = self.clock.now();
        let mut i = self.lock();
        i.error = Some(error.to_string());
        if i.connection == Connection::Disconnected {
            return false;
        }
        i.connection = Connection::Disconnected;
        i.since = Some(now);
        true
    }

    pub fn report(&self) -> SourceReport {
        self.report_at(self.clock.now())
    }

    fn report_at(&self, now: SystemTime) -> SourceReport {
        let i = self.lock().clone();
        SourceReport {
            connection: i.connection,
            disconnected_seconds: i.since.map(|t| now.duration_since(t).unwrap_or_default().as_secs()),
            disconnected_since: i.since.map(|t| t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()),
            last_error: i.error,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Status> {
        // The state is always consistent: a panic elsewhere cannot tear it.
        self.status.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl SourceReport {
    /// `source disconnected for 42s: <error>` while disconnected.
    pub fn describe_outage(&self) -> Option<String> {
        if self.connection != Connection::Disconnected {
            return None;
        }
        let mut s = format!("source disconnected for {}s", self.disconnected_seconds.unwrap_or(0));
        if let Some(e) = &self.last_error {
            s.push_str(": ");
            s.push_str(e);
        }
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outages_start_once_keep_the_latest_error_and_end_once() {
        let h = SourceHealth::new();
        assert_eq!(h.report().connection, Connection::Connecting);
        assert_eq!(h.report().describe_outage(), None);
        assert_eq!(h.connected(), None, "the first connection is no recovery");
        assert_eq!(h.report().connection, Connection::Connected);

        assert!(h.disconnected("connection refused"), "the outage starts");
        assert!(!h.disconnected("connection refused again"), "no second start");
        let r = h.report_at(SystemTime::now() + Duration::from_secs(42));
        assert_eq!(r.connection, Connection::Disconnected);
        assert_eq!(r.disconnected_seconds, Some(42));
        assert!(r.disconnected_since.is_some());
        assert_eq!(r.last_error.as_deref(), Some("connection refused again"));
        assert_eq!(r.describe_outage().as_deref(), Some("source disconnected for 42s: connection refused again"));

        assert!(h.connected().is_some(), "the outage ends");
        assert_eq!(h.connected(), None, "and ends once");
        let r = h.report();
        assert_eq!((r.connection, r.disconnected_seconds, r.last_error), (Connection::Connected, None, None));
    }

    #[test]
    fn failing_before_any_answer_is_an_outage() {
        let h = SourceHealth::new();
        assert!(h.disconnected("connection refused"));
        let r = h.report();
        assert_eq!(r.connection, Connection::Disconnected);
        assert_eq!(r.last_error.as_deref(), Some("connection refused"));
        assert!(r.disconnected_seconds.is_some());
    }
}
