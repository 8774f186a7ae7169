use edgemesh_core::build::{service, slice};
use edgemesh_core::{ObjectKey, ObjectKind, ServiceKey};

use super::*;

fn file(name: &str) -> FileId {
    FileId::from(Path::new(name))
}

fn objs(objects: Vec<Object>) -> Vec<ParsedObject> {
    objects.into_iter().enumerate().map(|(i, object)| ParsedObject { line: i + 1, object }).collect()
}

fn set(ix: &mut Index, f: &str, objects: Vec<Object>) -> Vec<SourceEvent> {
    let mut out = Vec::new();
    ix.set_file(&file(f), objs(objects), &mut out);
    out
}

fn key(name: &str) -> ObjectKey {
    ObjectKey { kind: ObjectKind::Service, namespace: "default".into(), name: name.into() }
}

fn applied(events: &[SourceEvent]) -> Vec<ServiceKey> {
    let mut keys: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            SourceEvent::Apply(o) => o.service_key(),
            _ => None,
        })
        .collect();
    keys.sort();
    keys
}

#[test]
fn only_changed_objects_produce_events() {
    let mut ix = Index::default();
    let a = service("default", "a").port("", 80, 80).object();
    let b = service("default", "b").port("", 80, 80).object();
    let c = service("default", "c").port("", 80, 80).object();
    let ev = set(&mut ix, "x.yaml", vec![a.clone(), b.clone(), c.clone()]);
    assert_eq!(ev.len(), 3);

    let b2 = service("default", "b").port("", 81, 81).object();
    let ev = set(&mut ix, "x.yaml", vec![a.clone(), b2.clone(), c.clone()]);
    assert_eq!(ev, vec![SourceEvent::Apply(b2.clone())]);

    let ev = set(&mut ix, "x.yaml", vec![a.clone(), b2.clone()]);
    assert_eq!(ev, vec![SourceEvent::Delete(key("c"))]);

    let ev = set(&mut ix, "x.yaml", vec![a.clone(), b2]);
    assert!(ev.is_empty());

    let mut out = Vec::new();
    ix.remove_file(&file("x.yaml"), &mut out);
    out.sort_by_key(|e| format!("{e:?}"));
    assert_eq!(out, vec![SourceEvent::Delete(key("a")), SourceEvent::Delete(key("b"))]);
    assert_eq!(ix.len(), 0);
    assert_eq!(ix.files(), 0);
}

#[test]
fn duplicates_across_files_fall_back_instead_of_deleting() {
    let mut ix = Index::default();
    let in_a = service("default", "web").port("", 80, 1).object();
    let in_b = service("default", "web").port("", 80, 2).object();
    assert_eq!(set(&mut ix, "a.yaml", vec![in_a.clone()]), vec![SourceEvent::Apply(in_a.clone())]);
    // b.yaml sorts last: its definition wins.
    assert_eq!(set(&mut ix, "b.yaml", vec![in_b.clone()]), vec![SourceEvent::Apply(in_b.clone())]);
    // Changing the losing definition changes nothing.
    let in_a2 = service("default", "web").port("", 80, 3).object();
    assert!(set(&mut ix, "a.yaml", vec![in_a2.clone()]).is_empty());
    // Removing the winner re-applies the other file's version.
    assert_eq!(set(&mut ix, "b.yaml", vec![]), vec![SourceEvent::Apply(in_a2.clone())]);
    // Only when the last holder goes is the object deleted.
    let mut out = Vec::new();
    ix.remove_file(&file("a.yaml"), &mut out);
    assert_eq!(out, vec![SourceEvent::Delete(key("web"))]);
}

#[test]
fn a_losing_file_that_is_removed_changes_nothing() {
    let mut ix = Index::default();
    let in_a = service("default", "web").port("", 80, 1).object();
    let in_b = service("default", "web").port("", 80, 2).object();
    set(&mut ix, "b.yaml", vec![in_b.clone()]);
    // a.yaml sorts first: it loses, so no event.
    assert!(set(&mut ix, "a.yaml", vec![in_a]).is_empty());
    let mut out = Vec::new();
    ix.remove_file(&file("a.yaml"), &mut out);
    assert!(out.is_empty());
    assert_eq!(ix.len(), 1);
}

#[test]
fn endpoint_objects_are_tracked_by_their_own_key() {
    let mut ix = Index::default();
    let svc = service("default", "web").port("http", 80, 8080).object();
    let eps = slice("default", "web-1", "web").endpoint("10.0.0.1", "n1").port("http", 8080).object();
    let ev = set(&mut ix, "x.yaml", vec![svc.clone(), eps.clone()]);
    assert_eq!(applied(&ev), vec![ServiceKey::new("default", "web"); 2]);
    let ev = set(&mut ix, "x.yaml", vec![svc]);
    assert_eq!(ev, vec![SourceEvent::Delete(eps.key())]);
}

#[test]
fn a_definition_displaced_before_it_was_kept_comes_back_once_its_file_is_read_again() {
    let mut ix = Index::default();
    let in_a = service("default", "web").port("", 80, 1).object();
    let in_b = service("default", "web").port("", 80, 2).object();
    set(&mut ix, "a.yaml", vec![in_a.clone()]);
    assert!(ix.wanted_files().is_empty(), "one holder: the registry's copy is the only one");
    assert_eq!(set(&mut ix, "b.yaml", vec![in_b.clone()]), vec![SourceEvent::Apply(in_b.clone())]);
    // a.yaml's definition was not kept: the index asks for the file.
    assert_eq!(ix.wanted_files(), vec![file("a.yaml")]);
    // The winner goes before a.yaml is read again: nothing is deleted, and
    // the registry keeps b's definition meanwhile.
    assert!(set(&mut ix, "b.yaml", vec![]).is_empty());
    // Reading a.yaml again (same content) applies its definition.
    assert_eq!(set(&mut ix, "a.yaml", vec![in_a.clone()]), vec![SourceEvent::Apply(in_a.clone())]);
    assert!(ix.wanted_files().is_empty());
    // And from then on it is an ordinary single definition.
    assert!(set(&mut ix, "a.yaml", vec![in_a]).is_empty());
    assert_eq!(ix.len(), 1);
}

#[test]
fn read_again_in_time_the_fallback_is_immediate() {
    let mut ix = Index::default();
    let in_a = service("default", "web").port("", 80, 1).object();
    let in_b = service("default", "web").port("", 80, 2).object();
    let other = service("default", "other").port("", 80, 1).object();
    set(&mut ix, "a.yaml", vec![in_a.clone(), other.clone()]);
    set(&mut ix, "b.yaml", vec![in_b.clone()]);
    // The watcher reads a.yaml again: unchanged, so no events.
    assert!(set(&mut ix, "a.yaml", vec![in_a.clone(), other]).is_empty());
    assert!(ix.wanted_files().is_empty());
    let mut out = Vec::new();
    ix.remove_file(&file("b.yaml"), &mut out);
    assert_eq!(out, vec![SourceEvent::Apply(in_a)]);
}

#[test]
fn three_holders_fall_back_in_path_order() {
    let mut ix = Index::default();
    let v = |p| service("default", "web").port("", 80, p).object();
    set(&mut ix, "c.yaml", vec![v(3)]);
    assert!(set(&mut ix, "a.yaml", vec![v(1)]).is_empty(), "sorts first: loses");
    assert!(set(&mut ix, "b.yaml", vec![v(2)]).is_empty(), "sorts between: loses");
    assert_eq!(ix.wanted_files(), vec![file("c.yaml")]);
    assert!(set(&mut ix, "c.yaml", vec![v(3)]).is_empty());
    assert_eq!(set(&mut ix, "c.yaml", vec![]), vec![SourceEvent::Apply(v(2))]);
    assert_eq!(set(&mut ix, "b.yaml", vec![]), vec![SourceEvent::Apply(v(1))]);
    assert_eq!(set(&mut ix, "a.yaml", vec![]), vec![SourceEvent::Delete(key("web"))]);
    assert_eq!(ix.len(), 0);
}

#[test]
fn a_later_definition_in_the_same_file_wins() {
    let mut ix = Index::default();
    let first = service("default", "web").port("", 80, 1).object();
    let second = service("default", "web").port("", 80, 2).object();
    assert_eq!(set(&mut ix, "x.yaml", vec![first, second.clone()]), vec![SourceEvent::Apply(second)]);
}
