//! One shared copy of each short name that many entries repeat: node names
//! (every backend and endpoint of a service names its node), port names
//! (`http`) and service types (`ClusterIP`).

use std::collections::HashSet;
use std::sync::Arc;

/// Names unused by any entry are dropped when the set has doubled since the
/// last sweep (sweeps cost one pass over the set, not over the services).
#[derive(Debug, Default)]
pub(super) struct SharedNames {
    names: HashSet<Arc<str>>,
    sweep_at: usize,
}

/// The set is not swept below this size.
const MIN_SWEEP: usize = 1024;

impl SharedNames {
    /// The shared copy of `name`.
    pub(super) fn get(&mut self, name: &str) -> Arc<str> {
        if let Some(held) = self.names.get(name) {
            return held.clone();
        }
        if self.names.len() >= self.sweep_at.max(MIN_SWEEP) {
            // Held only here: no entry names it any more.
            self.names.retain(|n| Arc::strong_count(n) > 1);
            self.sweep_at = self.names.len() * 2;
        }
        let name: Arc<str> = Arc::from(name);
        self.names.insert(name.clone());
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_copy_per_name_and_unused_names_are_swept() {
        let mut names = SharedNames::default();
        let a = names.get("node-a");
        assert!(Arc::ptr_eq(&a, &names.get("node-a")));
        for i in 0..MIN_SWEEP {
            names.get(&format!("gone-{i}"));
        }
        names.get("trigger");
        assert!(names.names.len() < 10, "unused names swept: {}", names.names.len());
        assert!(Arc::ptr_eq(&a, &names.get("node-a")), "a name in use stays");
    }
}
