//! The dispatcher's counters, per service port. The families are registered
//! once; a port's handles are resolved when its first request arrives and
//! kept with the port's state, so a request costs atomic additions only.
//! The `service` label is the one the proxy gave the port (bounded by
//! `metrics.maxServices`); a port's series go when its last pool does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use edgemesh_metrics::{Counter, Family, OTHER, Registry};
use edgemesh_proxy::metrics::ServicePort;

/// Every family of the dispatcher.
#[derive(Debug, Default)]
pub struct DispatchMetrics {
    retries: Family<ServicePort, Counter>,
    budget_exhausted: Family<ServicePort, Counter>,
    opened: Family<ServicePort, Counter>,
    /// Pools holding each series (the two families of a dual-stack port
    /// share them).
    users: Mutex<HashMap<ServicePort, usize>>,
}

impl DispatchMetrics {
    /// Registers the families into `registry` (the agent's `edgemesh_`
    /// registry), under `http_`.
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let m = Arc::new(Self::default());
        let http = registry.sub_registry_with_prefix("http");
        http.register("retries", "HTTP requests sent again to an endpoint after a failed try", m.retries.clone());
        http.register(
            "retry_budget_exhausted",
            "Retries not sent because the service port's retry budget was spent",
            m.budget_exhausted.clone(),
        );
        http.register(
            "upstream_connections_opened",
            "Connections (or tunnel streams) opened to endpoints by the HTTP dispatcher",
            m.opened.clone(),
        );
        m
    }

    /// The handles of one service port.
    pub fn port(self: &Arc<Self>, service: Arc<str>, port: u16) -> PortCounters {
        let labels = ServicePort { service, port };
        *self.users().entry(labels.clone()).or_default() += 1;
        PortCounters {
            retries: self.retries.get_or_create_owned(&labels),
            budget_exhausted: self.budget_exhausted.get_or_create_owned(&labels),
            opened: self.opened.get_or_create_owned(&labels),
            labels,
            owner: self.clone(),
        }
    }

    fn users(&self) -> std::sync::MutexGuard<'_, HashMap<ServicePort, usize>> {
        self.users.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A service port's handles; dropping the last of a port removes its series
/// (but `other`'s, which other services count into).
#[derive(Debug)]
pub struct PortCounters {
    pub retries: Counter,
    pub budget_exhausted: Counter,
    pub opened: Counter,
    labels: ServicePort,
    owner: Arc<DispatchMetrics>,
}

impl Drop for PortCounters {
    fn drop(&mut self) {
        let mut users = self.owner.users();
        let Some(n) = users.get_mut(&self.labels) else { return };
        *n -= 1;
        if *n > 0 {
            return;
        }
        users.remove(&self.labels);
        if &*self.labels.service != OTHER {
            for family in [&self.owner.retries, &self.owner.budget_exhausted, &self.owner.opened] {
                family.remove(&self.labels);
            }
        }
    }
}
