//! Logging: text or JSON lines on stderr, through a filter that can be
//! replaced while the agent runs (`PUT /logging`, a reload of `logLevel`).

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

/// How log lines are written (`logFormat`, `--log-format`).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, target, fields), for
    /// log collectors.
    Json,
}

/// Targets that are too loud at `info` for an agent (hickory-server logs
/// every TCP query, libp2p-swarm its peer ID): quietened unless a filter
/// names them.
const QUIET: &[(&str, &str)] = &[("hickory_server", "warn"), ("libp2p_swarm", "warn")];

/// The filter in force and the means to replace it; cheap to clone.
#[derive(Clone)]
pub struct LogControl {
    handle: Option<reload::Handle<EnvFilter, Registry>>,
    /// The filter in force, as given (with the quiet targets added).
    current: Arc<Mutex<String>>,
    /// `RUST_LOG` was set at start: it wins over `logLevel`, at start and
    /// on reloads (`PUT /logging` still changes it).
    env_wins: bool,
}

impl LogControl {
    /// Installs the global subscriber: `RUST_LOG` if set, else `level`; an
    /// invalid level falls back to `info` with a message on stderr.
    pub fn init(level: &str, format: LogFormat) -> LogControl {
        let from_env = std::env::var("RUST_LOG").ok().filter(|v| !v.trim().is_empty());
        let env_wins = from_env.is_some();
        let wanted = from_env.unwrap_or_else(|| with_quiet_targets(level));
        let (filter, current) = match EnvFilter::try_new(&wanted) {
            Ok(filter) => (filter, wanted),
            Err(e) => {
                eprintln!("edgemesh: invalid log level {wanted:?} ({e}); using info");
                (EnvFilter::new(with_quiet_targets("info")), with_quiet_targets("info"))
            }
        };
        let (filter, handle) = reload::Layer::new(filter);
        let registry = tracing_subscriber::registry().with(filter);
        use std::io::IsTerminal;
        let installed = match format {
            LogFormat::Text => registry
                .with(
                    tracing_subscriber::fmt::layer()
                        .with_ansi(std::io::stderr().is_terminal())
                        .with_writer(std::io::stderr),
                )
                .try_init(),
            LogFormat::Json => registry
                .with(tracing_subscriber::fmt::layer().json().flatten_event(true).with_writer(std::io::stderr))
                .try_init(),
        };
        let handle = installed.is_ok().then_some(handle);
        LogControl { handle, current: Arc::new(Mutex::new(current)), env_wins }
    }

    /// A control that changes nothing (an agent in a test, whose process
    /// has its own subscriber or none).
    pub fn detached(level: &str) -> LogControl {
        LogControl { handle: None, current: Arc::new(Mutex::new(with_quiet_targets(level))), env_wins: false }
    }

    /// The filter in force.
    pub fn current(&self) -> String {
        self.current.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether `RUST_LOG` decides the filter rather than `logLevel`.
    pub fn env_wins(&self) -> bool {
        self.env_wins
    }

    /// Replaces the filter; an invalid one is refused with why, and the
    /// filter in force stays.
    pub fn set(&self, filter: &str) -> Result<String, String> {
        if filter.trim().is_empty() {
            return Err("the filter is empty; give a level (error, warn, info, debug, trace) or directives".into());
        }
        let wanted = with_quiet_targets(filter);
        let parsed = EnvFilter::try_new(&wanted).map_err(|e| format!("invalid log filter {filter:?}: {e}"))?;
        if let Some(handle) = &self.handle {
            handle.reload(parsed).map_err(|e| format!("cannot replace the log filter: {e}"))?;
        }
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = wanted.clone();
        tracing::info!(filter = %wanted, "log filter changed");
        Ok(wanted)
    }
}

/// `filter` with the loud targets quietened, unless it names them itself.
fn with_quiet_targets(filter: &str) -> String {
    let mut out = filter.trim().to_owned();
    for (target, level) in QUIET {
        if !out.contains(target) {
            out.push_str(&format!(",{target}={level}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_filter_is_refused_and_the_old_one_stays() {
        let control = LogControl::detached("info");
        assert_eq!(control.current(), "info,hickory_server=warn,libp2p_swarm=warn");
        let err = control.set("info,edgemesh=loud").unwrap_err();
        assert!(err.contains("edgemesh=loud"), "{err}");
        assert_eq!(control.current(), "info,hickory_server=warn,libp2p_swarm=warn");
        assert_eq!(control.set("debug,hickory_server=info").unwrap(), "debug,hickory_server=info,libp2p_swarm=warn");
        assert!(control.set("  ").is_err());
    }
}
