//! Wall-clock time, injectable: the ages the agent reports (how old the
//! cached state is, how long the source has been disconnected) are read
//! through a [`Clock`], so tests can move time on without waiting. Timers
//! are tokio's and follow its (pausable) time instead.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

/// A source of wall-clock time; cheap to clone.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> SystemTime + Send + Sync>);

impl Clock {
    /// The system's clock.
    pub fn system() -> Self {
        Self(Arc::new(SystemTime::now))
    }

    /// A clock that reads `now` (tests: a clock they move by hand).
    pub fn from_fn(now: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        Self(Arc::new(now))
    }

    pub fn now(&self) -> SystemTime {
        (self.0)()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Clock")
    }
}
