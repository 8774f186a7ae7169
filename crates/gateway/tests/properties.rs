//! Properties of hostnames and path prefixes, over generated names: what
//! the route tables rely on, checked against the definitions rather than
//! against examples.

use edgemesh_gateway::hostname::Hostname;
use edgemesh_gateway::matching::prefix_matches;
use proptest::prelude::*;

/// A DNS name of 1-4 labels from a small alphabet, so that generated
/// names often share suffixes.
fn name() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(vec!["a", "b", "shop", "example", "com"]), 1..5)
        .prop_map(|labels| labels.join("."))
}

fn pattern() -> impl Strategy<Value = Hostname> {
    prop_oneof![
        Just(Hostname::Any),
        name().prop_map(|n| Hostname::parse(&n).unwrap()),
        name().prop_map(|n| Hostname::parse(&format!("*.{n}")).unwrap()),
    ]
}

/// A path of 0-4 segments.
fn path() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(vec!["a", "ab", "b", "api", "v1"]), 0..5)
        .prop_map(|segments| format!("/{}", segments.join("/")))
}

proptest! {
    /// A host is in the intersection of two patterns exactly when it
    /// matches both: a route attached where its and the listener's
    /// hostnames meet receives every request for both, and nothing else.
    #[test]
    fn an_intersection_holds_exactly_the_hosts_both_patterns_match(a in pattern(), b in pattern(), host in name()) {
        let both = a.matches(&host) && b.matches(&host);
        let meet = a.intersect(&b);
        prop_assert_eq!(meet.as_ref().is_some_and(|m| m.matches(&host)), both, "{} ∩ {} = {:?}", a, b, meet);
        prop_assert_eq!(meet, b.intersect(&a), "symmetric");
    }

    /// `*.suffix` matches the names of one or more labels under `suffix`,
    /// never `suffix` itself.
    #[test]
    fn a_wildcard_matches_exactly_the_names_under_it(suffix in name(), host in name()) {
        let wildcard = Hostname::parse(&format!("*.{suffix}")).unwrap();
        let under = host.len() > suffix.len() + 1 && host.ends_with(&format!(".{suffix}"));
        prop_assert_eq!(wildcard.matches(&host), under);
    }

    /// `PathPrefix` compares whole segments: a prefix matches a path
    /// exactly when its segments begin the path's.
    #[test]
    fn a_prefix_matches_exactly_the_paths_its_segments_begin(prefix in path(), candidate in path()) {
        let segments = |p: &str| p.split('/').filter(|s| !s.is_empty()).map(str::to_owned).collect::<Vec<_>>();
        let (p, c) = (segments(&prefix), segments(&candidate));
        prop_assert_eq!(prefix_matches(&prefix, &candidate), c.starts_with(&p), "{} under {}", candidate, prefix);
    }
}
