//! Prometheus helpers both binaries use: bounded label values for tenants and tools, the
//! shared latency buckets, and text encoding of a registry for `/metrics`.

use std::collections::HashSet;
use std::sync::Mutex;

use prometheus::{Encoder, Registry, TextEncoder};

/// Label value for tenants and tools past the budget.
pub const OTHER: &str = "_other";

/// Latency buckets in seconds, from a warm millisecond run to the longest allowed run.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Gives the first `max` distinct (tenant, tool) pairs their own label values and folds the
/// rest into `_other`, so a flood of new tools cannot blow up the series count.
#[derive(Debug)]
pub struct ToolLabels {
    max: usize,
    seen: Mutex<HashSet<(String, String)>>,
}

impl ToolLabels {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            seen: Mutex::new(HashSet::new()),
        }
    }

    /// The label values to use for this pair.
    pub fn labels(&self, tenant: &str, tool: &str) -> (String, String) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let key = (tenant.to_owned(), tool.to_owned());
        if seen.contains(&key) {
            return key;
        }
        if seen.len() < self.max {
            seen.insert(key.clone());
            return key;
        }
        (OTHER.to_owned(), OTHER.to_owned())
    }
}

/// The registry in Prometheus' text format.
pub fn encode(registry: &Registry) -> String {
    let mut buffer = Vec::new();
    let encoder = TextEncoder::new();
    if let Err(error) = encoder.encode(&registry.gather(), &mut buffer) {
        tracing::error!(error = %error, "cannot encode metrics");
    }
    String::from_utf8(buffer).unwrap_or_default()
}

/// A registry with the process collector (CPU, resident memory, open files) registered.
pub fn registry() -> Registry {
    let registry = Registry::new();
    let _ = registry.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ));
    registry
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_past_the_budget_fold_into_other() {
        let labels = ToolLabels::new(2);
        assert_eq!(labels.labels("a", "x"), ("a".into(), "x".into()));
        assert_eq!(labels.labels("a", "y"), ("a".into(), "y".into()));
        assert_eq!(labels.labels("b", "z"), (OTHER.into(), OTHER.into()));
        assert_eq!(
            labels.labels("a", "x"),
            ("a".into(), "x".into()),
            "known pairs keep theirs"
        );
    }
}
