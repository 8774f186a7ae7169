//! The reloader: on SIGHUP, or when the config file's content changes
//! (read every [`POLL_INTERVAL`]), reads the file again, applies the
//! command line's flags over it as at start, completes and validates it,
//! then puts the live settings in force ([`super::keys::LIVE_KEYS`]) and
//! reports the restart-only ones that changed. A config that cannot be
//! read, parsed or validated is refused whole: the config in force stays.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use edgemesh_core::LbStrategy;
use edgemesh_dns::DnsLiveSettings;
use edgemesh_proxy::LiveSettings;
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::Lifecycle;
use super::keys::{self, Change};
use crate::cli::flags::SettingFlags;
use crate::config::{Config, ConfigError};
use crate::host::Host;

/// How often the config file is read to see whether it changed. Reading a
/// small file once a second costs nothing, and catches changes that an
/// mtime would miss (a ConfigMap's symlink swap, same-second writes).
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Where the config comes from: the file (none: defaults) and the flags
/// applied over it, as resolved at start.
#[derive(Clone, Debug, Default)]
pub struct ReloadSource {
    pub file: Option<PathBuf>,
    pub flags: SettingFlags,
}

/// What `/reload` shows.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReloadStatus {
    /// The file reloads read (none: the agent runs on flags and defaults).
    pub config_file: Option<PathBuf>,
    /// Reloads tried since start.
    pub reloads: u64,
    /// The last one, if any.
    pub last: Option<ReloadReport>,
    /// Restart-only settings whose configured value is not in force: each
    /// takes effect at the next start.
    pub pending_restart: Vec<Change>,
}

/// One reload.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReloadReport {
    /// Unix time, seconds.
    pub at: u64,
    /// `SIGHUP` or `file changed`.
    pub trigger: &'static str,
    pub result: ReloadResult,
    /// Live settings put in force.
    pub applied: Vec<Change>,
    /// Why the new config was refused (file and line where known).
    pub errors: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReloadResult {
    /// Live settings changed (restart-only ones may be pending too).
    Applied,
    /// No live setting changed.
    Unchanged,
    /// The new config is invalid; nothing changed.
    Refused,
}

/// What the live settings of the components are put in force through.
pub(crate) struct Components {
    pub(crate) proxy: Arc<LiveSettings>,
    /// `None` in tests of the reloader alone.
    pub(crate) dns: Option<DnsLiveSettings>,
    /// The registry's default strategy (`proxy.defaultStrategy`).
    pub(crate) strategy: watch::Sender<LbStrategy>,
}

/// Reads and applies the config; see the module docs.
pub(crate) struct Reloader {
    source: ReloadSource,
    host: Arc<dyn Host>,
    lifecycle: Arc<Lifecycle>,
    components: Components,
    /// The file's content when last read, to see whether it changed.
    seen: Option<Vec<u8>>,
}

impl Reloader {
    pub(crate) fn new(
        source: ReloadSource,
        host: Arc<dyn Host>,
        lifecycle: Arc<Lifecycle>,
        components: Components,
    ) -> Self {
        let seen = source.file.as_ref().and_then(|f| std::fs::read(f).ok());
        lifecycle.update_status(|s| s.config_file = source.file.clone());
        Reloader { source, host, lifecycle, components, seen }
    }

    /// Reloads on SIGHUP and when the file changes, until `shutdown`.
    pub(crate) async fn run(mut self, shutdown: CancellationToken) {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot handle SIGHUP; the config reloads only when its file changes");
                None
            }
        };
        let mut poll = tokio::time::interval(POLL_INTERVAL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                Some(()) = async { hangup.as_mut()?.recv().await } => {
                    self.reload("SIGHUP");
                }
                _ = poll.tick(), if self.source.file.is_some() => {
                    let now = self.source.file.as_ref().and_then(|f| std::fs::read(f).ok());
                    if now.is_some() && now != self.seen {
                        self.reload("file changed");
                    }
                }
            }
        }
    }

    /// One reload: read, validate, apply; logs and records the outcome.
    pub(crate) fn reload(&mut self, trigger: &'static str) -> ReloadReport {
        self.seen = self.source.file.as_ref().and_then(|f| std::fs::read(f).ok());
        let at = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let outcome = self.load().and_then(|configured| self.put_in_force(&configured).map_err(|e| vec![e]));
        let (report, pending) = match outcome {
            Ok((applied, pending)) => {
                let result = if applied.is_empty() { ReloadResult::Unchanged } else { ReloadResult::Applied };
                let keys: Vec<&str> = applied.iter().map(|c| c.key.as_str()).collect();
                tracing::info!(trigger, applied = ?keys, pending_restart = pending.len(), "config reloaded");
                (ReloadReport { at, trigger, result, applied, errors: Vec::new() }, Some(pending))
            }
            Err(errors) => {
                let file = self.file_name();
                for error in &errors {
                    tracing::error!(%file, trigger, "config reload refused; the config in force stays: {error}");
                }
                (ReloadReport { at, trigger, result: ReloadResult::Refused, applied: Vec::new(), errors }, None)
            }
        };
        self.lifecycle.update_status(|s| {
            s.reloads += 1;
            s.last = Some(report.clone());
            if let Some(pending) = pending {
                s.pending_restart = pending;
            }
        });
        report
    }

    /// Puts the live settings of `configured` in force; returns them, and
    /// the restart-only ones that differ (logged, left as they are).
    fn put_in_force(&self, configured: &Config) -> Result<(Vec<Change>, Vec<Change>), String> {
        let in_force = self.lifecycle.config();
        let forwards = self.components.dns.as_ref().is_none_or(DnsLiveSettings::forwards);
        let (applied, pending): (Vec<Change>, Vec<Change>) = keys::changes(&in_force, configured)
            .into_iter()
            // After a fallback the mode in force is not the configured one:
            // only a change of the configured one needs a restart.
            .filter(|c| c.key != "intercept.mode" || configured.intercept.mode != self.lifecycle.configured_mode)
            // Started without upstreams: forwarding is set up at the next start.
            .partition(|c| keys::is_live(&c.key) && (forwards || c.key != "dns.upstreams"));
        for change in &pending {
            tracing::warn!(key = %change.key, in_force = %change.in_force, configured = %change.configured,
                "config key changed but needs a restart; the value in force stays until then");
        }
        if applied.is_empty() {
            return Ok((applied, pending));
        }
        let next = keys::with_live_changes(&in_force, &applied)?;
        if next.log_level != in_force.log_level {
            if self.lifecycle.logging.env_wins() {
                tracing::warn!(log_level = %next.log_level, "RUST_LOG is set and wins over logLevel; use PUT /logging");
            } else {
                self.lifecycle.logging.set(&next.log_level)?;
            }
        }
        self.components.proxy.apply(&next.proxy);
        self.components.strategy.send_replace(next.proxy.default_strategy);
        if let Some(dns) = &self.components.dns {
            dns.apply(&next.dns);
        }
        self.lifecycle.set_config(Arc::new(next));
        Ok((applied, pending))
    }

    /// The file with the flags over it, completed and validated like at
    /// start; every problem, each naming the file (and line, if known).
    fn load(&self) -> Result<Config, Vec<String>> {
        let file = self.file_name();
        let mut config = match &self.source.file {
            Some(path) => Config::from_file(path).map_err(|e| vec![e.to_string()])?,
            None => Config::default(),
        };
        self.source.flags.apply(&mut config).map_err(|e| vec![e])?;
        config.complete(&*self.host);
        let mut problems = match config.validate() {
            Ok(()) => Vec::new(),
            Err(ConfigError::Invalid(problems)) => problems.into_iter().map(|p| format!("{file}: {p}")).collect(),
            Err(other) => vec![other.to_string()],
        };
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&config.log_level) {
            problems.push(format!("{file}: logLevel {:?} is not a log filter: {e}", config.log_level));
        }
        if problems.is_empty() { Ok(config) } else { Err(problems) }
    }

    fn file_name(&self) -> String {
        self.source.file.as_ref().map_or_else(|| "(no config file)".to_owned(), |f| f.display().to_string())
    }
}

#[cfg(test)]
mod tests;
