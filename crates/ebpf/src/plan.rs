//! The map writer's pure part: from what the maps hold and a service
//! port's new [`FastService`], the ordered map operations that get there
//! without ever exposing an empty or half-written service to a hook that
//! runs in between:
//!
//! - slots are written before the count is raised (a raised count only
//!   ever covers written slots);
//! - the count is lowered before slots are deleted (a lowered count never
//!   covers deleted slots);
//! - a service goes before its slots.
//!
//! A service port has two slot lists: `all` (every backend, for clients
//! in the host's network namespace) and `netns` (the backends that are
//! not host-only, for clients in other namespaces). Each list keeps the
//! rules above on its own. Backends keep their slot while they stay, so
//! an update rewrites only the slots that change (and ClientIP affinity,
//! which remembers a slot, survives unrelated changes); a removed
//! backend's slot is refilled first.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};

use crate::service::{FastService, Pick};

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

/// One list of backend slots: `count` backends in slots `0..count` of `id`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotList {
    pub id: u32,
    pub count: u16,
}

/// A service port's entry in the services map (all but the kernel's
/// round robin counter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceRecord {
    /// Every backend: what host-namespace clients pick from. Its id also
    /// names the service in the affinity map.
    pub all: SlotList,
    /// The backends that are not host-only: what clients in other
    /// namespaces pick from.
    pub netns: SlotList,
    pub pick: Pick,
    /// ClientIP affinity timeout in seconds; 0: none.
    pub affinity_secs: u32,
    /// Where a client goes when its list is empty.
    pub agent: Option<SocketAddr>,
}

/// One operation on the maps, in the order a plan lists them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapOp {
    /// Backend slot `slot` of list `id` now holds `backend`.
    PutSlot {
        id: u32,
        slot: u32,
        backend: SocketAddr,
    },
    /// The service port's entry is now `record`.
    PutService {
        port: ServicePort,
        record: ServiceRecord,
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
    services: HashMap<ServicePort, ServiceRecord>,
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
    /// The backends `port` offers host-namespace clients (its `all` list),
    /// in slot order.
    pub fn backends(&self, port: &ServicePort) -> Vec<SocketAddr> {
        self.services.get(port).map(|r| self.list(r.all)).unwrap_or_default()
    }

    /// The backends in slots `0..count` of `list`.
    pub fn list(&self, list: SlotList) -> Vec<SocketAddr> {
        let slots = self.slots.get(&list.id);
        (0..u32::from(list.count)).filter_map(|s| slots.and_then(|m| m.get(&s)).copied()).collect()
    }

    /// The entry of `port`, if the maps have one.
    pub fn service(&self, port: &ServicePort) -> Option<&ServiceRecord> {
        self.services.get(port)
    }

    /// Every service port the maps hold, sorted.
    pub fn ports(&self) -> Vec<ServicePort> {
        let mut ports: Vec<ServicePort> = self.services.keys().copied().collect();
        ports.sort();
        ports
    }

    pub fn len(&self) -> usize {
        self.services.len()
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// The operations that make `port` serve `service`. A service with
    /// no backend and no agent address gets no entry, so its address is
    /// left alone; the same service again needs no operation.
    pub fn plan(&self, port: ServicePort, service: &FastService) -> Result<Vec<MapOp>, TooManyBackends> {
        let all: BTreeSet<SocketAddr> = service.backends.iter().map(|b| b.addr).collect();
        let netns: BTreeSet<SocketAddr> = service.backends.iter().filter(|b| !b.host_only).map(|b| b.addr).collect();
        let n_all = u16::try_from(all.len()).map_err(|_| TooManyBackends { port, count: all.len() })?;
        let n_netns = u16::try_from(netns.len()).expect("netns is a subset of all");
        let existing = self.services.get(&port).copied();
        if all.is_empty() && service.agent.is_none() {
            return Ok(self.plan_remove(port));
        }
        let (all_id, netns_id) = existing.map_or_else(|| self.next_ids(), |r| (r.all.id, r.netns.id));
        let record = ServiceRecord {
            all: SlotList { id: all_id, count: n_all },
            netns: SlotList { id: netns_id, count: n_netns },
            pick: service.pick,
            affinity_secs: service
                .affinity
                .map_or(0, |d| u32::try_from(d.as_secs() + u64::from(d.subsec_nanos() > 0)).unwrap_or(u32::MAX).max(1)),
            agent: service.agent,
        };
        let mut ops = self.fill(record.all, &all);
        ops.extend(self.fill(record.netns, &netns));
        if existing != Some(record) {
            ops.push(MapOp::PutService { port, record });
        }
        ops.extend(self.beyond(record.all));
        ops.extend(self.beyond(record.netns));
        Ok(ops)
    }

    /// The slot writes that give `list` exactly `wanted` in its slots
    /// `0..count`, keeping each staying backend in its slot.
    fn fill(&self, list: SlotList, wanted: &BTreeSet<SocketAddr>) -> Vec<MapOp> {
        let empty = BTreeMap::new();
        let old = self.slots.get(&list.id).unwrap_or(&empty);
        let mut layout: Vec<Option<SocketAddr>> =
            (0..u32::from(list.count)).map(|s| old.get(&s).copied().filter(|b| wanted.contains(b))).collect();
        let placed: BTreeSet<SocketAddr> = layout.iter().flatten().copied().collect();
        let mut rest = wanted.difference(&placed).copied();
        for slot in layout.iter_mut().filter(|s| s.is_none()) {
            *slot = rest.next();
        }
        layout
            .iter()
            .enumerate()
            .filter_map(|(s, b)| {
                let slot = u32::try_from(s).expect("at most 65,535 slots");
                let backend = b.expect("every slot under the count is filled");
                (old.get(&slot) != Some(&backend)).then_some(MapOp::PutSlot { id: list.id, slot, backend })
            })
            .collect()
    }

    /// Deletes of the slots of `list` at or above its count.
    fn beyond(&self, list: SlotList) -> Vec<MapOp> {
        let slots = self.slots.get(&list.id).into_iter().flat_map(|m| m.keys());
        slots.filter(|&&s| s >= u32::from(list.count)).map(|&slot| MapOp::DeleteSlot { id: list.id, slot }).collect()
    }

    /// The operations that remove `port` and its slots.
    pub fn plan_remove(&self, port: ServicePort) -> Vec<MapOp> {
        let Some(record) = self.services.get(&port) else { return Vec::new() };
        let empty = |list: SlotList| SlotList { id: list.id, count: 0 };
        std::iter::once(MapOp::DeleteService { port })
            .chain(self.beyond(empty(record.all)))
            .chain(self.beyond(empty(record.netns)))
            .collect()
    }

    /// Two ids no service and no slot uses.
    fn next_ids(&self) -> (u32, u32) {
        let used = self.services.values().flat_map(|r| [r.all.id, r.netns.id]).chain(self.slots.keys().copied());
        let next = used.max().map_or(1, |m| m + 1);
        (next, next + 1)
    }

    /// Records an operation the maps have taken.
    pub fn record(&mut self, op: &MapOp) {
        match *op {
            MapOp::PutSlot { id, slot, backend } => {
                self.slots.entry(id).or_default().insert(slot, backend);
            }
            MapOp::PutService { port, record } => {
                self.services.insert(port, record);
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
