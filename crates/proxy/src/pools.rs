//! Which pools serve each service, for reading their endpoints' passive
//! health from outside the proxy (the admin endpoint's
//! `/services/<ns>/<name>`, `edgemesh status service`).
//!
//! The listener reconciler (`listeners`) is the only writer: it publishes a
//! service's pools whenever it reconciles that service (one write lock for
//! a map insert), and nothing on the connection path reads this index.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use edgemesh_core::{Backend, Protocol, ServiceKey};
use serde::Serialize;

use crate::pool::Pool;

/// A service's pools: one per service port, protocol and family.
pub(crate) type ServicePools = Box<[(Protocol, Arc<Pool>)]>;

/// Service -> its pools.
#[derive(Debug, Default)]
pub struct PoolIndex {
    map: RwLock<HashMap<ServiceKey, ServicePools>>,
    /// Moves on with every write: what [`PoolIndex::pool`] answered holds
    /// while this stays the same (the gateway keeps the pools its routes
    /// resolved by it).
    generation: AtomicU64,
}

impl PoolIndex {
    /// `key` is served by `pools` now; none: the service is gone.
    pub(crate) fn set(&self, key: &ServiceKey, pools: ServicePools) {
        let mut map = self.map.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if pools.is_empty() {
            map.remove(key);
        } else {
            map.insert(key.clone(), pools);
        }
        self.generation.fetch_add(1, Ordering::Release);
    }

    pub(crate) fn clear(&self) {
        let mut map = self.map.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.clear();
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// The number of writes so far: read it before [`PoolIndex::pool`],
    /// and that answer holds while it stays the same.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The pool of `key`'s service port `port` for `protocol` (the IPv4
    /// one of a dual-stack service: either family's holds every endpoint
    /// of its family, and the gateway dials from IPv4 first); `None` when
    /// the proxy serves no such port.
    pub fn pool(&self, key: &ServiceKey, port: u16, protocol: Protocol) -> Option<Arc<Pool>> {
        let map = self.map.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut pools = map.get(key)?.iter().filter(|(p, pool)| *p == protocol && pool.port == port);
        let first = pools.next()?;
        if first.1.addr.is_ipv4() {
            return Some(first.1.clone());
        }
        Some(pools.find(|(_, pool)| pool.addr.is_ipv4()).unwrap_or(first).1.clone())
    }

    /// Each pool of `key` with its endpoints' passive health, in port
    /// order; `None` when the proxy serves no such service.
    pub fn service_health(&self, key: &ServiceKey) -> Option<Vec<PortHealth>> {
        let pools: Vec<(Protocol, Arc<Pool>)> =
            self.map.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(key)?.to_vec();
        let mut ports: Vec<PortHealth> = pools
            .into_iter()
            .map(|(protocol, pool)| PortHealth {
                port: pool.port,
                protocol,
                listener: pool.addr,
                endpoints: pool.endpoint_health(),
            })
            .collect();
        ports.sort_by_key(|p| (p.port, p.protocol == Protocol::Udp, p.listener.is_ipv6()));
        Some(ports)
    }
}

/// One service port's pool as seen by `service_health`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PortHealth {
    pub port: u16,
    pub protocol: Protocol,
    /// The VIP:port (or first service address) of the pool's family.
    pub listener: SocketAddr,
    /// The endpoints connections go to (ready, of the listener's family,
    /// after topology).
    pub endpoints: Vec<EndpointHealth>,
}

/// One endpoint's passive health.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointHealth {
    pub address: SocketAddr,
    pub node_name: Option<Arc<str>>,
    /// Failed connects (or refused datagrams) since its last success.
    pub consecutive_failures: u32,
    /// Skipped by new connections for this much longer (seconds); absent
    /// when it is not ejected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ejected_for_seconds: Option<f64>,
}

impl EndpointHealth {
    /// `record`: [`crate::balance::Health::state`] of `backend`.
    pub(crate) fn new(backend: &Backend, record: Option<(u32, Option<Duration>)>) -> Self {
        let (failures, ejected) = record.unwrap_or((0, None));
        EndpointHealth {
            address: backend.addr,
            node_name: backend.node_name.clone(),
            consecutive_failures: failures,
            ejected_for_seconds: ejected.map(|d| d.as_secs_f64()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::Targets;
    use edgemesh_core::LbStrategy;

    #[test]
    fn every_write_moves_the_generation_on() {
        let index = PoolIndex::default();
        let key = ServiceKey::new("shop", "web");
        let targets = Targets::new(LbStrategy::RoundRobin, Arc::from(Vec::new()));
        let pool = Arc::new(Pool::new(key.clone(), "10.96.0.1:80".parse().unwrap(), targets));
        let before = index.generation();
        index.set(&key, Box::new([(Protocol::Tcp, pool.clone())]));
        let set = index.generation();
        assert!(set > before);
        assert!(Arc::ptr_eq(&index.pool(&key, 80, Protocol::Tcp).unwrap(), &pool));
        assert_eq!(index.generation(), set, "reading does not move it");
        index.set(&key, Box::new([]));
        assert!(index.generation() > set && index.pool(&key, 80, Protocol::Tcp).is_none());
        let removed = index.generation();
        index.clear();
        assert!(index.generation() > removed);
    }
}
