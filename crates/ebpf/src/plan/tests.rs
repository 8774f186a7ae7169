use super::*;
use crate::service::FastBackend;
use proptest::prelude::*;
use std::time::Duration;

fn svc() -> ServicePort {
    ServicePort::tcp("10.96.0.10:80".parse().unwrap())
}

fn be(n: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 1, n], 8080))
}

/// A round robin service of these backends, all reachable from pods.
fn direct(backends: &[SocketAddr]) -> FastService {
    FastService { backends: backends.iter().map(|&b| FastBackend::direct(b)).collect(), ..FastService::default() }
}

/// The entry of a round robin service (ids 1 and 2) with `count` backends
/// in both lists.
fn rr(count: u16) -> ServiceRecord {
    ServiceRecord {
        all: SlotList { id: 1, count },
        netns: SlotList { id: 2, count },
        pick: Pick::RoundRobin,
        affinity_secs: 0,
        agent: None,
    }
}

/// Applies `ops` one by one, checking after each that the service is
/// never half-written: every slot under each list's count holds a backend
/// of the old or the new set, and a service without an agent address
/// never has an empty `all` list (an empty `netns` list is asked for: only
/// host-only backends).
fn apply_checked(table: &mut ServiceTable, port: ServicePort, ops: &[MapOp], old: &[SocketAddr], new: &[SocketAddr]) {
    for op in ops {
        table.record(op);
        if let Some(record) = table.services.get(&port) {
            assert!(
                record.all.count > 0 || record.agent.is_some(),
                "after {op:?}: a service with no backend is exposed"
            );
            for list in [record.all, record.netns] {
                for slot in 0..u32::from(list.count) {
                    let b = table.slots.get(&list.id).and_then(|m| m.get(&slot));
                    let b =
                        b.unwrap_or_else(|| panic!("after {op:?}: slot {slot} under count {} is empty", list.count));
                    assert!(old.contains(b) || new.contains(b), "after {op:?}: slot {slot} holds {b}, in neither set");
                }
            }
        }
    }
}

fn update(table: &mut ServiceTable, old: &[SocketAddr], new: &[SocketAddr]) -> Vec<MapOp> {
    let ops = table.plan(svc(), &direct(new)).unwrap();
    apply_checked(table, svc(), &ops, old, new);
    let mut got = table.backends(&svc());
    got.sort();
    let mut want: Vec<_> = new.to_vec();
    want.sort();
    want.dedup();
    assert_eq!(got, want);
    ops
}

#[test]
fn a_new_service_writes_its_slots_before_its_count() {
    let mut t = ServiceTable::default();
    let ops = update(&mut t, &[], &[be(1), be(2)]);
    assert_eq!(
        ops,
        vec![
            MapOp::PutSlot { id: 1, slot: 0, backend: be(1) },
            MapOp::PutSlot { id: 1, slot: 1, backend: be(2) },
            MapOp::PutSlot { id: 2, slot: 0, backend: be(1) },
            MapOp::PutSlot { id: 2, slot: 1, backend: be(2) },
            MapOp::PutService { port: svc(), record: rr(2) },
        ]
    );
}

#[test]
fn a_shrinking_service_lowers_its_count_before_deleting_slots_and_refills_the_removed_slot() {
    let mut t = ServiceTable::default();
    update(&mut t, &[], &[be(1), be(2), be(3)]);
    // be(1) in slot 0 goes: be(3) moves into its slot, then the count drops.
    let ops = update(&mut t, &[be(1), be(2), be(3)], &[be(2), be(3)]);
    assert_eq!(
        ops,
        vec![
            MapOp::PutSlot { id: 1, slot: 0, backend: be(3) },
            MapOp::PutSlot { id: 2, slot: 0, backend: be(3) },
            MapOp::PutService { port: svc(), record: rr(2) },
            MapOp::DeleteSlot { id: 1, slot: 2 },
            MapOp::DeleteSlot { id: 2, slot: 2 },
        ]
    );
}

#[test]
fn staying_backends_keep_their_slots_and_unchanged_sets_need_nothing() {
    let mut t = ServiceTable::default();
    update(&mut t, &[], &[be(1), be(2)]);
    assert_eq!(update(&mut t, &[be(1), be(2)], &[be(2), be(1), be(1)]), vec![]);
    let ops = update(&mut t, &[be(1), be(2)], &[be(1), be(2), be(3)]);
    assert_eq!(
        ops,
        vec![
            MapOp::PutSlot { id: 1, slot: 2, backend: be(3) },
            MapOp::PutSlot { id: 2, slot: 2, backend: be(3) },
            MapOp::PutService { port: svc(), record: rr(3) },
        ]
    );
}

#[test]
fn no_backends_removes_the_service_before_its_slots() {
    let mut t = ServiceTable::default();
    update(&mut t, &[], &[be(1), be(2)]);
    let ops = update(&mut t, &[be(1), be(2)], &[]);
    assert_eq!(
        ops,
        vec![
            MapOp::DeleteService { port: svc() },
            MapOp::DeleteSlot { id: 1, slot: 0 },
            MapOp::DeleteSlot { id: 1, slot: 1 },
            MapOp::DeleteSlot { id: 2, slot: 0 },
            MapOp::DeleteSlot { id: 2, slot: 1 },
        ]
    );
    assert!(t.is_empty());
    assert_eq!(t, ServiceTable::default());
}

#[test]
fn services_get_distinct_ids_and_plan_remove_takes_one_away() {
    let mut t = ServiceTable::default();
    let udp = ServicePort::udp("10.96.0.10:80".parse().unwrap());
    for op in t.plan(svc(), &direct(&[be(1)])).unwrap() {
        t.record(&op);
    }
    let ops = t.plan(udp, &direct(&[be(2)])).unwrap();
    let want = ServiceRecord { all: SlotList { id: 3, count: 1 }, netns: SlotList { id: 4, count: 1 }, ..rr(1) };
    assert!(ops.contains(&MapOp::PutService { port: udp, record: want }), "{ops:?}");
    ops.iter().for_each(|o| t.record(o));
    for op in t.plan_remove(svc()) {
        t.record(&op);
    }
    assert_eq!(t.len(), 1);
    assert_eq!(t.backends(&udp), vec![be(2)]);
    assert_eq!(t.plan_remove(svc()), vec![]);
}

#[test]
fn too_many_backends_is_an_error_naming_the_service() {
    let many: Vec<SocketAddr> =
        (0..=u16::MAX).map(|i| SocketAddr::from(([10, 1, i.to_be_bytes()[0], i.to_be_bytes()[1]], 80))).collect();
    let err = ServiceTable::default().plan(svc(), &direct(&many)).unwrap_err();
    assert_eq!(err.count, 65536);
    assert!(err.to_string().contains("at most 65535"), "{err}");
}

#[test]
fn host_only_backends_are_in_the_host_list_only() {
    let mut t = ServiceTable::default();
    let lo = SocketAddr::from(([127, 0, 0, 2], 8080));
    let service = FastService {
        backends: vec![FastBackend::host_only(lo), FastBackend::direct(be(1))],
        agent: Some("10.96.0.10:80".parse().unwrap()),
        ..FastService::default()
    };
    t.plan(svc(), &service).unwrap().iter().for_each(|op| t.record(op));
    let record = *t.service(&svc()).unwrap();
    assert_eq!(t.list(record.all), vec![be(1), lo]);
    assert_eq!(t.list(record.netns), vec![be(1)]);
    // Only host-only backends: clients in other namespaces have none and
    // go to the agent; the pod backend's netns slot goes after the count drops.
    let only_lo = FastService { backends: vec![FastBackend::host_only(lo)], ..service.clone() };
    let ops = t.plan(svc(), &only_lo).unwrap();
    let put = ops.iter().position(|op| matches!(op, MapOp::PutService { .. })).unwrap();
    let delete = ops.iter().position(|op| *op == MapOp::DeleteSlot { id: 2, slot: 0 }).unwrap();
    assert!(put < delete, "{ops:?}");
    ops.iter().for_each(|op| t.record(op));
    let record = *t.service(&svc()).unwrap();
    assert_eq!((t.list(record.all), record.netns.count), (vec![lo], 0));
    assert_eq!(t.plan(svc(), &only_lo).unwrap(), vec![], "the same service again is a no-op");
}

#[test]
fn an_agent_only_service_has_an_entry_without_backends_and_settings_change_only_the_entry() {
    let mut t = ServiceTable::default();
    let agent: SocketAddr = "10.96.0.10:80".parse().unwrap();
    let ops = t.plan(svc(), &FastService::via_agent(agent)).unwrap();
    let record = ServiceRecord { all: SlotList { id: 1, count: 0 }, netns: SlotList { id: 2, count: 0 }, ..rr(0) };
    assert_eq!(ops, vec![MapOp::PutService { port: svc(), record: ServiceRecord { agent: Some(agent), ..record } }]);
    ops.iter().for_each(|op| t.record(op));

    update(&mut t, &[], &[be(1)]);
    let sticky = FastService { pick: Pick::Random, affinity: Some(Duration::from_millis(1500)), ..direct(&[be(1)]) };
    let ops = t.plan(svc(), &sticky).unwrap();
    let want = ServiceRecord { pick: Pick::Random, affinity_secs: 2, ..rr(1) };
    assert_eq!(ops, vec![MapOp::PutService { port: svc(), record: want }], "affinity rounds up to whole seconds");
}

proptest! {
    /// Any sequence of services mixing host-only and pod backends, with or
    /// without an agent address: every intermediate state of every plan
    /// is whole, and each ends at the asked-for lists.
    #[test]
    fn every_step_of_every_mixed_update_is_whole(
        steps in proptest::collection::vec((proptest::collection::vec((1u8..10, any::<bool>()), 0..8), any::<bool>()), 1..8)
    ) {
        let mut t = ServiceTable::default();
        let mut old: Vec<SocketAddr> = Vec::new();
        for (backends, with_agent) in steps {
            let service = FastService {
                backends: backends.iter().map(|&(n, host_only)| FastBackend { addr: be(n), host_only }).collect(),
                agent: with_agent.then(|| "10.96.0.10:80".parse().unwrap()),
                ..FastService::default()
            };
            let new: Vec<SocketAddr> = service.backends.iter().map(|b| b.addr).collect();
            let ops = t.plan(svc(), &service).unwrap();
            apply_checked(&mut t, svc(), &ops, &old, &new);
            let netns: BTreeSet<SocketAddr> = service.backends.iter().filter(|b| !b.host_only).map(|b| b.addr).collect();
            match t.service(&svc()) {
                Some(r) => {
                    prop_assert_eq!(t.list(r.all).into_iter().collect::<BTreeSet<_>>(), new.iter().copied().collect());
                    prop_assert_eq!(t.list(r.netns).into_iter().collect::<BTreeSet<_>>(), netns);
                    let listed: BTreeSet<u32> = t.slots.keys().copied().collect();
                    prop_assert!(listed.is_subset(&[r.all.id, r.netns.id].into()), "no slot left behind: {:?}", t.slots);
                }
                None => prop_assert!(new.is_empty() && !with_agent && t.slots.is_empty()),
            }
            prop_assert_eq!(t.plan(svc(), &service).unwrap(), vec![]);
            old = new;
        }
    }


    /// Any sequence of backend sets: each step's plan keeps the service
    /// whole at every intermediate operation and ends at the new set.
    #[test]
    fn every_step_of_every_update_is_whole(steps in proptest::collection::vec(proptest::collection::vec(1u8..12, 0..8), 1..8)) {
        let mut t = ServiceTable::default();
        let mut old: Vec<SocketAddr> = Vec::new();
        for step in steps {
            let new: Vec<SocketAddr> = step.iter().map(|&n| be(n)).collect();
            update(&mut t, &old, &new);
            old = new;
        }
    }
}
