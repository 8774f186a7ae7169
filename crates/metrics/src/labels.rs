//! Labels whose values come from the cluster, bounded.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The value a label takes once its cap is reached.
pub const OTHER: &str = "other";

/// Admits up to `cap` distinct values of one label (services, nodes); any
/// value past the cap is reported as [`OTHER`], so one cluster with
/// thousands of services cannot blow up the scrape. Admitted values keep
/// their slot until [`BoundedLabels::release`] (when the service or node is
/// gone), so a series never changes its label while it lives.
///
/// Registers `edgemesh_<label>_label_folded_values`: how many distinct
/// values are reported as `other` right now.
#[derive(Debug)]
pub struct BoundedLabels {
    cap: usize,
    sets: Mutex<Sets>,
    folded: Gauge,
}

#[derive(Debug, Default)]
struct Sets {
    admitted: HashSet<Arc<str>>,
    folded: HashSet<Arc<str>>,
}

impl BoundedLabels {
    /// `registry` is the `edgemesh_` registry; `label` names the label
    /// (`service`, `node`) in the fold gauge.
    pub fn new(label: &str, cap: usize, registry: &mut Registry) -> Arc<Self> {
        let folded = Gauge::default();
        registry.register(
            format!("{label}_label_folded_values"),
            format!("Distinct {label} label values reported as \"{OTHER}\" because the label is at its cap of {cap}"),
            folded.clone(),
        );
        Arc::new(Self { cap, sets: Mutex::default(), folded })
    }

    /// The label value to report for `value`: itself while under the cap
    /// (or already admitted), else [`OTHER`]. Called when a service or peer
    /// first appears, not per packet.
    pub fn label(&self, value: &str) -> Arc<str> {
        let mut sets = self.sets();
        if let Some(admitted) = sets.admitted.get(value) {
            return admitted.clone();
        }
        if sets.admitted.len() < self.cap {
            let admitted: Arc<str> = value.into();
            sets.admitted.insert(admitted.clone());
            return admitted;
        }
        if sets.folded.insert(value.into()) {
            self.folded.set(crate::gauge_value(sets.folded.len()));
        }
        OTHER.into()
    }

    /// `value` is gone from the cluster: its slot is free for another. The
    /// caller removes its series.
    pub fn release(&self, value: &str) {
        let mut sets = self.sets();
        if !sets.admitted.remove(value) && sets.folded.remove(value) {
            self.folded.set(crate::gauge_value(sets.folded.len()));
        }
    }

    fn sets(&self) -> MutexGuard<'_, Sets> {
        self.sets.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_past_the_cap_fold_into_other_and_are_counted() {
        let mut registry = Registry::default();
        let labels = BoundedLabels::new("service", 2, &mut registry);
        assert_eq!(&*labels.label("a/one"), "a/one");
        assert_eq!(&*labels.label("a/two"), "a/two");
        assert_eq!(&*labels.label("a/three"), OTHER);
        assert_eq!(&*labels.label("a/three"), OTHER);
        assert_eq!(&*labels.label("a/one"), "a/one", "an admitted value keeps its slot");
        assert_eq!(labels.folded.get(), 1);
        labels.release("a/one");
        assert_eq!(&*labels.label("a/four"), "a/four", "a released slot is reused");
        labels.release("a/three");
        assert_eq!(labels.folded.get(), 0);
    }
}
