//! The map writer's pure part: from what the maps hold and a service
//! port's new backends, the ordered map operations that get there without
//! ever exposing an empty or half-written service to a hook that runs in
//! between:
//!
//! - slots are written before the count is raised (a raised count only
//!   ever covers written slots);
//! - the count is lowered before slots are deleted (a lowered count never
//!   covers deleted slots);
//! - a service goes before its slots.
//!
//! Backends keep their slot while they stay, so an update rewrites only
//! the slots that change; a removed backend's slot is refilled first.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};

/// A transport protocol, numbered as in IP headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Protocol {
    Tcp = 6,
    Udp = 17,
}

impl Protocol {
    pub fn from_number(n: u8) -> Option<Protocol> {
        match n {
            6 => Some(Protocol::Tcp),
            17 => Some(Protocol::Udp),
            _ => None,
        }
    }
}

/// A service port: the address clients connect to (a cluster IP or VIP),
/// its port and protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServicePort {
    pub addr: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
}

impl ServicePort {
    pub fn tcp(addr: SocketAddr) -> ServicePort {
        ServicePort { addr: addr.ip(), port: addr.port(), protocol: Protocol::Tcp }
    }

    pub fn udp(addr: SocketAddr) -> ServicePort {
        ServicePort { addr: addr.ip(), port: addr.port(), protocol: Protocol::Udp }
    }
}

/// One operation on the maps, in the order a plan lists them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapOp {
    /// Backend slot `slot` of service `id` now holds `backend`.
    PutSlot {
        id: u32,
        slot: u32,
        backend: SocketAddr,
    },
    /// The service port maps to `id` with `count` backends.
    PutService {
        port: ServicePort,
        id: u32,
        count: u16,
    },
    DeleteService {
        port: ServicePort,
    },
    DeleteSlot {
        id: u32,
        slot: u32,
    },
}

/// What the maps hold, as far as this process knows: the mirror that
/// plans are made against. Rebuilt from the maps when pinned state is
/// adopted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceTable {
    services: HashMap<ServicePort, (u32, u16)>,
    slots: BTreeMap<u32, BTreeMap<u32, SocketAddr>>,
}

/// Too many backends for one service port (the count is 16 bits).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("service {port:?} has {count} backends; the fast path takes at most {max}", max = u16::MAX)]
pub struct TooManyBackends {
    pub port: ServicePort,
    pub count: usize,
}

impl ServiceTable {
    /// The backends `port` has in the maps, in slot order (those under its
    /// count).
    pub fn backends(&self, port: &ServicePort) -> Vec<SocketAddr> {
        let Some(&(id, count)) = self.services.get(port) else { return Vec::new() };
        let slots = self.slots.get(&id);
        (0..u32::from(count)).filter_map(|s| slots.and_then(|m| m.get(&s)).copied()).collect()
    }

    pub fn len(&self) -> usize {
        self.services.len()
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// The operations that give `port` exactly `backends` (duplicates
    /// ignored); none gives it no entry, so its address is left alone.
    pub fn plan(&self, port: ServicePort, backends: &[SocketAddr]) -> Result<Vec<MapOp>, TooManyBackends> {
        let wanted: BTreeSet<SocketAddr> = backends.iter().copied().collect();
        let n = u16::try_from(wanted.len()).map_err(|_| TooManyBackends { port, count: wanted.len() })?;
        let existing = self.services.get(&port).copied();
        if n == 0 {
            return Ok(existing.map(|(id, _)| self.plan_delete(port, id)).unwrap_or_default());
        }
        let (id, count) = existing.unwrap_or((self.next_id(), 0));
        let empty = BTreeMap::new();
        let old = self.slots.get(&id).unwrap_or(&empty);

        // Keep each staying backend in its slot; fill the holes with the rest.
        let mut layout: Vec<Option<SocketAddr>> =
            (0..u32::from(n)).map(|s| old.get(&s).copied().filter(|b| wanted.contains(b))).collect();
        let placed: BTreeSet<SocketAddr> = layout.iter().flatten().copied().collect();
        let mut rest = wanted.difference(&placed).copied();
        for slot in layout.iter_mut().filter(|s| s.is_none()) {
            *slot = rest.next();
        }

        let mut ops: Vec<MapOp> = layout
            .iter()
            .enumerate()
            .filter_map(|(s, b)| {
                let (slot, backend) = (s as u32, b.expect("every slot under the count is filled"));
                (old.get(&slot) != Some(&backend)).then_some(MapOp::PutSlot { id, slot, backend })
            })
            .collect();
        if count != n || existing.is_none() {
            ops.push(MapOp::PutService { port, id, count: n });
        }
        ops.extend(old.keys().filter(|&&s| s >= u32::from(n)).map(|&slot| MapOp::DeleteSlot { id, slot }));
        Ok(ops)
    }

    /// The operations that remove `port` and its slots.
    pub fn plan_remove(&self, port: ServicePort) -> Vec<MapOp> {
        self.services.get(&port).map(|&(id, _)| self.plan_delete(port, id)).unwrap_or_default()
    }

    fn plan_delete(&self, port: ServicePort, id: u32) -> Vec<MapOp> {
        let slots = self.slots.get(&id).into_iter().flat_map(|m| m.keys());
        std::iter::once(MapOp::DeleteService { port })
            .chain(slots.map(|&slot| MapOp::DeleteSlot { id, slot }))
            .collect()
    }

    /// An id no service and no slot uses.
    fn next_id(&self) -> u32 {
        let used = self.services.values().map(|&(id, _)| id).chain(self.slots.keys().copied());
        used.max().map_or(1, |m| m + 1)
    }

    /// Records an operation the maps have taken.
    pub fn record(&mut self, op: &MapOp) {
        match *op {
            MapOp::PutSlot { id, slot, backend } => {
                self.slots.entry(id).or_default().insert(slot, backend);
            }
            MapOp::PutService { port, id, count } => {
                self.services.insert(port, (id, count));
            }
            MapOp::DeleteService { port } => {
                self.services.remove(&port);
            }
            MapOp::DeleteSlot { id, slot } => {
                if let Some(m) = self.slots.get_mut(&id) {
                    m.remove(&slot);
                    if m.is_empty() {
                        self.slots.remove(&id);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
