//! The agent's life after start: reloading its config (SIGHUP, or the file
//! changing), draining at SIGTERM, and its logs.
//!
//! - [`keys`]: which settings reload live and which need a restart; the
//!   difference between two configs, key by key (pure).
//! - [`reload`]: the reloader task: reads, validates and applies the
//!   config, and keeps the status `/reload` shows.
//! - [`drain`]: the stop sequence: listeners close, connections get
//!   `drainTimeout` to finish, then everything stops and node mode's table
//!   and device go last.
//! - [`logging`]: text or JSON logs through a filter replaceable at
//!   runtime (`/logging`).
//!
//! [`Lifecycle`] is what the admin endpoint reads: the config in force,
//! the reload status and the log filter.

pub mod drain;
pub mod keys;
pub mod logging;
pub mod reload;

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use edgemesh_intercept::InterceptMode;

pub use self::logging::{LogControl, LogFormat};
pub use self::reload::{ReloadSource, ReloadStatus};
use crate::config::Config;

/// The config in force, the last reload's outcome and the log filter.
/// The reloader is the only writer of the first two.
pub struct Lifecycle {
    config: ArcSwap<Config>,
    status: Mutex<ReloadStatus>,
    pub logging: LogControl,
    /// The `intercept.mode` the operator configured: after a fallback
    /// (`intercept.fallback: nftables`) the one in force differs, and a
    /// reload compares with this one.
    configured_mode: InterceptMode,
}

impl Lifecycle {
    /// `configured_mode`: the `intercept.mode` of the config as read,
    /// before any fallback changed the one in `config`.
    pub fn new(config: Arc<Config>, configured_mode: InterceptMode, logging: LogControl) -> Arc<Lifecycle> {
        let status = Mutex::new(ReloadStatus::default());
        Arc::new(Lifecycle { config: ArcSwap::new(config), status, logging, configured_mode })
    }

    /// The config in force: the one the agent started with, with the live
    /// settings of every applied reload.
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// What `/reload` shows.
    pub fn status(&self) -> ReloadStatus {
        self.status.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_config(&self, config: Arc<Config>) {
        self.config.store(config);
    }

    fn update_status(&self, f: impl FnOnce(&mut ReloadStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|p| p.into_inner()));
    }
}
