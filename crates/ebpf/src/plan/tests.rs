use super::*;
use proptest::prelude::*;

fn svc() -> ServicePort {
    ServicePort::tcp("10.96.0.10:80".parse().unwrap())
}

fn be(n: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 1, n], 8080))
}

/// Applies `ops` one by one, checking after each that the service is
/// never half-written: every slot under its count holds a backend of the
/// old or the new set, and a service that keeps backends never has none.
fn apply_checked(table: &mut ServiceTable, port: ServicePort, ops: &[MapOp], old: &[SocketAddr], new: &[SocketAddr]) {
    for op in ops {
        table.record(op);
        if let Some(&(id, count)) = table.services.get(&port) {
            assert!(count > 0, "after {op:?}: a service with no backend is exposed");
            for slot in 0..u32::from(count) {
                let b = table.slots.get(&id).and_then(|m| m.get(&slot));
                let b = b.unwrap_or_else(|| panic!("after {op:?}: slot {slot} under count {count} is empty"));
                assert!(old.contains(b) || new.contains(b), "after {op:?}: slot {slot} holds {b}, in neither set");
            }
        }
    }
}

fn update(table: &mut ServiceTable, old: &[SocketAddr], new: &[SocketAddr]) -> Vec<MapOp> {
    let ops = table.plan(svc(), new).unwrap();
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
            MapOp::PutService { port: svc(), id: 1, count: 2 },
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
            MapOp::PutService { port: svc(), id: 1, count: 2 },
            MapOp::DeleteSlot { id: 1, slot: 2 },
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
        vec![MapOp::PutSlot { id: 1, slot: 2, backend: be(3) }, MapOp::PutService { port: svc(), id: 1, count: 3 }]
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
        ]
    );
    assert!(t.is_empty());
    assert_eq!(t, ServiceTable::default());
}

#[test]
fn services_get_distinct_ids_and_plan_remove_takes_one_away() {
    let mut t = ServiceTable::default();
    let udp = ServicePort::udp("10.96.0.10:80".parse().unwrap());
    for op in t.plan(svc(), &[be(1)]).unwrap() {
        t.record(&op);
    }
    let ops = t.plan(udp, &[be(2)]).unwrap();
    assert!(ops.contains(&MapOp::PutService { port: udp, id: 2, count: 1 }));
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
        (0..=u16::MAX as u32).map(|i| SocketAddr::from(([10, 1, (i >> 8) as u8, i as u8], 80))).collect();
    let err = ServiceTable::default().plan(svc(), &many).unwrap_err();
    assert_eq!(err.count, 65536);
    assert!(err.to_string().contains("at most 65535"), "{err}");
}

proptest! {
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
