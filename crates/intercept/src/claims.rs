//! What is installed in the kernel (table elements, device addresses), per
//! service, with a count per item: two services may claim one item for a
//! moment (an address moving from one to the other), and it stays until
//! both let go.

use std::collections::HashMap;
use std::hash::Hash;

use edgemesh_core::ServiceKey;

#[derive(Debug)]
pub(crate) struct Claims<T> {
    by_service: HashMap<ServiceKey, Vec<T>>,
    count: HashMap<T, u32>,
}

impl<T> Default for Claims<T> {
    fn default() -> Self {
        Self { by_service: HashMap::new(), count: HashMap::new() }
    }
}

/// What one step changes in the kernel, and how to record it once done.
#[derive(Debug)]
pub(crate) struct Change<T> {
    /// Items no service claims any more (sorted).
    pub removed: Vec<T>,
    /// Items no service claimed before (sorted).
    pub added: Vec<T>,
    desired: Vec<(ServiceKey, Vec<T>)>,
    delta: HashMap<T, i64>,
}

impl<T: Copy + Eq + Hash + Ord> Claims<T> {
    /// The claims of every service at once (for a rebuild).
    pub fn of_all(services: impl IntoIterator<Item = (ServiceKey, Vec<T>)>) -> Self {
        let mut claims = Self::default();
        for (key, items) in services {
            for item in &items {
                *claims.count.entry(*item).or_default() += 1;
            }
            if !items.is_empty() {
                claims.by_service.insert(key, items);
            }
        }
        claims
    }

    /// What giving these services these items (and no others) changes.
    pub fn plan(&self, desired: Vec<(ServiceKey, Vec<T>)>) -> Change<T> {
        let mut delta: HashMap<T, i64> = HashMap::new();
        for (key, new) in &desired {
            for item in self.by_service.get(key).into_iter().flatten() {
                *delta.entry(*item).or_default() -= 1;
            }
            for item in new {
                *delta.entry(*item).or_default() += 1;
            }
        }
        let (mut removed, mut added) = (Vec::new(), Vec::new());
        for (item, d) in &delta {
            let before = i64::from(self.count.get(item).copied().unwrap_or(0));
            let after = before + d;
            if before == 0 && after > 0 {
                added.push(*item);
            } else if before > 0 && after <= 0 {
                removed.push(*item);
            }
        }
        removed.sort_unstable();
        added.sort_unstable();
        Change { removed, added, desired, delta }
    }

    /// Records `change` as applied.
    pub fn commit(&mut self, change: Change<T>) {
        for (item, d) in change.delta {
            let count = self.count.entry(item).or_default();
            *count = u32::try_from(i64::from(*count) + d).unwrap_or(0);
            if *count == 0 {
                self.count.remove(&item);
            }
        }
        for (key, new) in change.desired {
            if new.is_empty() {
                self.by_service.remove(&key);
            } else {
                self.by_service.insert(key, new);
            }
        }
    }

    /// Every claimed item, once.
    pub fn items(&self) -> impl Iterator<Item = &T> {
        self.count.keys()
    }

    /// Number of distinct items.
    pub fn len(&self) -> usize {
        self.count.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: &str) -> ServiceKey {
        ServiceKey::new("default", n)
    }

    #[test]
    fn an_item_stays_while_any_service_claims_it() {
        let mut claims = Claims::of_all([(key("a"), vec![1, 2])]);
        // b claims 2 as well: nothing new in the kernel but 3.
        let change = claims.plan(vec![(key("b"), vec![2, 3])]);
        assert_eq!((change.removed.clone(), change.added.clone()), (vec![], vec![3]));
        claims.commit(change);
        // a lets go of 2 (b still holds it) and of 1.
        let change = claims.plan(vec![(key("a"), vec![])]);
        assert_eq!((change.removed.clone(), change.added.clone()), (vec![1], vec![]));
        claims.commit(change);
        let mut items: Vec<i32> = claims.items().copied().collect();
        items.sort_unstable();
        assert_eq!(items, vec![2, 3]);
        // b moves from 2 to 4.
        let change = claims.plan(vec![(key("b"), vec![3, 4])]);
        assert_eq!((change.removed.clone(), change.added.clone()), (vec![2], vec![4]));
        claims.commit(change);
        assert_eq!(claims.len(), 2);
    }
}
