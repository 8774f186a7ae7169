//! The proxy settings a config reload may change while connections run:
//! the connect, idle and duration timeouts and the connection and UDP
//! session limits. Each is
//! one atomic, read where it is used (a relaxed load per connection or
//! session, no lock), written only by [`LiveSettings::apply`].
//!
//! The other settings (workers, the transparent port, the mark) shape
//! sockets and threads made at start and need a restart.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crate::ProxyConfig;

/// See the module docs; shared by the proxy and whoever reloads it.
#[derive(Debug)]
pub struct LiveSettings {
    connect_timeout_nanos: AtomicU64,
    idle_timeout_nanos: AtomicU64,
    max_duration_nanos: AtomicU64,
    max_connections: AtomicUsize,
    max_connections_per_service: AtomicUsize,
    max_udp_sessions: AtomicUsize,
}

impl LiveSettings {
    /// The live settings of `config` ([`ProxyConfig::resolved`]: a
    /// `maxConnections` of 0 is derived from the open-files limit).
    pub fn new(config: &ProxyConfig) -> Self {
        let live = Self {
            connect_timeout_nanos: AtomicU64::new(0),
            idle_timeout_nanos: AtomicU64::new(0),
            max_duration_nanos: AtomicU64::new(0),
            max_connections: AtomicUsize::new(0),
            max_connections_per_service: AtomicUsize::new(0),
            max_udp_sessions: AtomicUsize::new(0),
        };
        live.apply(config);
        live
    }

    /// Puts `config`'s live settings in force for new connections and
    /// sessions; established ones keep going (a lower limit only refuses
    /// new connections until enough have ended).
    pub fn apply(&self, config: &ProxyConfig) {
        let config = config.clone().resolved();
        let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.connect_timeout_nanos.store(nanos(config.connect_timeout), Ordering::Relaxed);
        self.idle_timeout_nanos.store(nanos(config.idle_timeout), Ordering::Relaxed);
        self.max_duration_nanos.store(nanos(config.max_connection_duration), Ordering::Relaxed);
        self.max_connections.store(config.max_connections, Ordering::Relaxed);
        self.max_connections_per_service.store(config.max_connections_per_service, Ordering::Relaxed);
        self.max_udp_sessions.store(config.max_udp_sessions, Ordering::Relaxed);
    }

    /// How long to wait for one endpoint to accept.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_nanos(self.connect_timeout_nanos.load(Ordering::Relaxed))
    }

    /// How long a forwarded connection may live: `proxy.idleTimeout` and
    /// `proxy.maxConnectionDuration`.
    pub(crate) fn lifetime(&self) -> crate::connection::Lifetime {
        crate::connection::Lifetime {
            idle: Duration::from_nanos(self.idle_timeout_nanos.load(Ordering::Relaxed)),
            max: Duration::from_nanos(self.max_duration_nanos.load(Ordering::Relaxed)),
        }
    }

    /// Connections allowed at once.
    pub fn max_connections(&self) -> usize {
        self.max_connections.load(Ordering::Relaxed)
    }

    /// Connections allowed at once to one service (0: no limit of its own).
    pub fn max_connections_per_service(&self) -> usize {
        self.max_connections_per_service.load(Ordering::Relaxed)
    }

    /// UDP sessions allowed at once.
    pub fn max_udp_sessions(&self) -> usize {
        self.max_udp_sessions.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_changes_every_live_setting_and_derives_a_zero_limit() {
        let config =
            ProxyConfig { connect_timeout: Duration::from_millis(250), max_connections: 7, ..Default::default() };
        let live = LiveSettings::new(&config);
        assert_eq!(live.connect_timeout(), Duration::from_millis(250));
        assert_eq!(live.max_connections(), 7);
        live.apply(&ProxyConfig { connect_timeout: Duration::from_secs(3), max_udp_sessions: 9, ..config.clone() });
        assert_eq!(live.connect_timeout(), Duration::from_secs(3));
        assert_eq!(live.max_udp_sessions(), 9);
        assert_eq!(live.lifetime().idle, crate::DEFAULT_IDLE_TIMEOUT);
        live.apply(&ProxyConfig {
            idle_timeout: Duration::ZERO,
            max_connection_duration: Duration::from_secs(5),
            ..config.clone()
        });
        assert_eq!(live.lifetime(), crate::connection::Lifetime { idle: Duration::ZERO, max: Duration::from_secs(5) });
        live.apply(&ProxyConfig { max_connections: 0, ..config });
        assert!(live.max_connections() > 0, "0 is derived from the open-files limit, never a limit of none");
    }
}
