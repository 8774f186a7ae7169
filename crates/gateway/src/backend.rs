//! A rule's backends and their weights, and the pick of one per request.
//!
//! The pick is nginx's smooth weighted round robin: over every run of
//! `sum(weights)` requests each backend gets exactly its weight, spread
//! out rather than in bursts (weights 5:1:1 give a a b a c a a). A backend
//! that could not be resolved keeps its share: the requests it would have
//! had are answered 500, as the Gateway API requires, so that a mistake in
//! one reference does not silently move all traffic to the others.
//!
//! Each target keeps the pool it was last resolved to ([`PoolSlot`]), so
//! that a request does not look its Service up by name.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;
use edgemesh_proxy::Reach;
use edgemesh_proxy::pool::Pool;

/// A Service a route sends to: `namespace/name`, port.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceRef {
    pub namespace: String,
    pub name: String,
    pub port: u16,
}

impl std::fmt::Display for ServiceRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}:{}", self.namespace, self.name, self.port)
    }
}

/// Where a share of a rule's requests goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Service(ServiceRef),
    /// A reference that does not resolve (why): its share is answered 500.
    Invalid(String),
}

/// A Service target's pool, as resolved at one generation of the agent's
/// pools (see [`crate::ServicePools::generation`]); empty until the first
/// request, and after a compile (a new table starts with new slots).
#[derive(Default)]
pub struct PoolSlot(ArcSwapOption<Resolved>);

/// What a [`PoolSlot`] holds.
pub struct Resolved {
    pub generation: u64,
    pub pool: Arc<Pool>,
    pub reach: Reach,
}

impl PoolSlot {
    /// The pool resolved at `generation`, if that is what the slot holds.
    pub fn get(&self, generation: u64) -> Option<(Arc<Pool>, Reach)> {
        let held = self.0.load();
        let resolved = held.as_ref().filter(|r| r.generation == generation)?;
        Some((resolved.pool.clone(), resolved.reach.clone()))
    }

    /// Keeps `pool` and `reach` as resolved at `generation`.
    pub fn set(&self, generation: u64, pool: Arc<Pool>, reach: Reach) {
        self.0.store(Some(Arc::new(Resolved { generation, pool, reach })));
    }
}

impl std::fmt::Debug for PoolSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let held = self.0.load();
        f.debug_struct("PoolSlot").field("generation", &held.as_ref().map(|r| r.generation)).finish()
    }
}

/// A rule's backends with positive weights, and the pick state.
#[derive(Debug)]
pub struct Backends {
    targets: Vec<(Target, u32)>,
    /// Each target's resolved pool, in the order of `targets`.
    slots: Box<[PoolSlot]>,
    total: i64,
    /// Smooth weighted round robin's current weights, one per target.
    current: Mutex<Vec<i64>>,
}

impl Backends {
    /// `targets` with their weights; those of weight 0 are dropped.
    pub fn new(targets: Vec<(Target, u32)>) -> Backends {
        let targets: Vec<(Target, u32)> = targets.into_iter().filter(|(_, w)| *w > 0).collect();
        let total = targets.iter().map(|(_, w)| i64::from(*w)).sum();
        let current = Mutex::new(vec![0; targets.len()]);
        let slots = targets.iter().map(|_| PoolSlot::default()).collect();
        Backends { targets, slots, total, current }
    }

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    pub fn targets(&self) -> impl Iterator<Item = &(Target, u32)> {
        self.targets.iter()
    }

    /// The target of the next request, None when the rule has none (the
    /// request is then answered 500).
    pub fn pick(&self) -> Option<&Target> {
        self.pick_slot().map(|(target, _)| target)
    }

    /// [`Backends::pick`], with the target's pool slot.
    pub fn pick_slot(&self) -> Option<(&Target, &PoolSlot)> {
        let at = match self.targets.len() {
            0 => return None,
            1 => 0,
            _ => {
                let mut current = self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let mut best = 0;
                for (i, (_, weight)) in self.targets.iter().enumerate() {
                    current[i] += i64::from(*weight);
                    if current[i] > current[best] {
                        best = i;
                    }
                }
                current[best] -= self.total;
                best
            }
        };
        Some((&self.targets[at].0, &self.slots[at]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str) -> Target {
        Target::Service(ServiceRef { namespace: "shop".into(), name: name.into(), port: 80 })
    }

    fn names(backends: &Backends, n: usize) -> String {
        (0..n)
            .map(|_| match backends.pick().unwrap() {
                Target::Service(s) => s.name.clone(),
                Target::Invalid(_) => "!".into(),
            })
            .collect()
    }

    #[test]
    fn smooth_weighted_round_robin_is_exact_and_spread_out() {
        let b = Backends::new(vec![(service("a"), 5), (service("b"), 1), (service("c"), 1)]);
        assert_eq!(names(&b, 14), "aabacaaaabacaa");
        let b = Backends::new(vec![(service("a"), 90), (service("b"), 10), (service("z"), 0)]);
        let picks = names(&b, 1000);
        assert_eq!(picks.matches('a').count(), 900);
        assert_eq!(picks.matches('b').count(), 100);
        assert!(!picks.contains("bb"), "never two in a row at 9:1");
    }

    #[test]
    fn unresolved_references_keep_their_share() {
        let b = Backends::new(vec![(service("a"), 1), (Target::Invalid("no such Service".into()), 1)]);
        assert_eq!(names(&b, 4), "a!a!");
        assert!(Backends::new(vec![(service("a"), 0)]).pick().is_none());
    }
}
