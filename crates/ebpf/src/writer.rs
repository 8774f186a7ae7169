//! Applies the map writer's plans ([`crate::plan`]) to the kernel's maps,
//! one operation at a time in the plan's order, recording each in the
//! mirror once the kernel has taken it; and destroys the connected UDP
//! sockets the programs sent to a backend that went away.

use std::collections::HashSet;
use std::net::SocketAddr;

use crate::Error;
use crate::abi::{BackendKey, BackendValue, SvcKey, SvcValue};
use crate::loader::{BACKENDS, BackendsMap, ReverseMap, SERVICES, ServicesMap};
use crate::plan::{MapOp, ServicePort, ServiceTable};
use crate::service::FastService;

pub struct MapWriter {
    services: ServicesMap,
    backends: BackendsMap,
    /// Read only: which sockets the programs translated (their cookies).
    reverse: ReverseMap,
    table: ServiceTable,
}

impl MapWriter {
    /// A writer of these maps; `read_back`: rebuild the mirror from what
    /// they hold (adopted state), else they are new and empty.
    pub(crate) fn new(
        services: ServicesMap,
        backends: BackendsMap,
        reverse: ReverseMap,
        read_back: bool,
    ) -> Result<MapWriter, Error> {
        let mut table = ServiceTable::default();
        if read_back {
            for entry in backends.iter() {
                let (k, v) = entry.map_err(|error| Error::Map { name: BACKENDS, error })?;
                table.record(&MapOp::PutSlot { id: k.id, slot: k.slot, backend: v.socket_addr() });
            }
            for entry in services.iter() {
                let (k, v) = entry.map_err(|error| Error::Map { name: SERVICES, error })?;
                match k.service_port() {
                    Some(port) => table.record(&MapOp::PutService { port, record: v.record() }),
                    None => tracing::warn!(proto = k.proto, "pinned service entry of an unknown protocol: left alone"),
                }
            }
        }
        Ok(MapWriter { services, backends, reverse, table })
    }

    /// What the maps hold.
    pub fn table(&self) -> &ServiceTable {
        &self.table
    }

    /// Makes `port` serve `service` (no backend and no agent address:
    /// removes it). The same service again changes nothing, so an adopted
    /// writer can be fed the whole snapshot without rewriting the maps.
    pub fn set(&mut self, port: ServicePort, service: &FastService) -> Result<(), Error> {
        let ops = self.table.plan(port, service)?;
        self.apply(&ops)
    }

    /// Every service port the maps hold (e.g. to remove the ones the
    /// snapshot no longer has, after adoption).
    pub fn ports(&self) -> Vec<ServicePort> {
        self.table.ports()
    }

    /// Destroys the connected UDP sockets that the programs sent to one of
    /// `backends` (their cookies are in the reverse map), in every network
    /// namespace this process can enter; returns how many. Sockets that
    /// reached those addresses some other way (a client of the pod IP, the
    /// agent's own) are left alone, unlike [`crate::destroy_udp_sockets_to`].
    /// A socket whose reverse entry the LRU map dropped is missed.
    pub fn destroy_udp_sockets_to(&self, backends: &[SocketAddr]) -> std::io::Result<usize> {
        let wanted: HashSet<SocketAddr> = backends.iter().map(crate::destroy::canonical).collect();
        let cookies: HashSet<u64> = self
            .reverse
            .keys()
            .filter_map(Result::ok)
            .filter(|k| wanted.contains(&crate::destroy::canonical(&k.target())))
            .map(|k| k.cookie)
            .collect();
        if cookies.is_empty() {
            return Ok(0);
        }
        crate::destroy::destroy_matching(backends, Some(cookies))
    }

    /// Removes `port` and its slots.
    pub fn remove(&mut self, port: ServicePort) -> Result<(), Error> {
        let ops = self.table.plan_remove(port);
        self.apply(&ops)
    }

    fn apply(&mut self, ops: &[MapOp]) -> Result<(), Error> {
        for op in ops {
            match *op {
                MapOp::PutSlot { id, slot, backend } => self
                    .backends
                    .insert(BackendKey { id, slot }, BackendValue::new(backend), 0)
                    .map_err(|error| Error::Map { name: BACKENDS, error })?,
                MapOp::PutService { port, record } => self
                    .services
                    .insert(SvcKey::new(&port), SvcValue::new(&record), 0)
                    .map_err(|error| Error::Map { name: SERVICES, error })?,
                MapOp::DeleteService { port } => remove_present(self.services.remove(&SvcKey::new(&port)))
                    .map_err(|error| Error::Map { name: SERVICES, error })?,
                MapOp::DeleteSlot { id, slot } => remove_present(self.backends.remove(&BackendKey { id, slot }))
                    .map_err(|error| Error::Map { name: BACKENDS, error })?,
            }
            self.table.record(op);
        }
        Ok(())
    }
}

/// A key already gone is removed as far as we are concerned.
fn remove_present(result: Result<(), aya::maps::MapError>) -> Result<(), aya::maps::MapError> {
    match result {
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        other => other,
    }
}
