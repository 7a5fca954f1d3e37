//! Readiness: whether this replica can serve, and what is wrong when it is degraded.
//!
//! The rule (README, "Readiness"): a replica is unready while something it needs before it can
//! serve correctly is missing (its sources have not caught up once since start, its token keys
//! have never loaded) and while it drains. A later outage of something shared by every replica,
//! such as the Kafka brokers, does not make it unready: all replicas would leave the Service at
//! once and reconnecting clients would find no endpoint, while the open sessions still work.
//! Such an outage is reported as `degraded` (the body of `/ready`, the `gateway_source_up`
//! metric, a log line on each change) instead.
//!
//! `/health` (liveness) never depends on any of this.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;

/// Shared, cheap to clone.
#[derive(Clone, Default)]
pub struct Readiness {
    inner: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    /// Conditions that keep the replica unready, by part, with the reason.
    gates: BTreeMap<&'static str, String>,
    /// Problems that do not make it unready, by part, with the reason.
    degraded: BTreeMap<&'static str, String>,
}

/// What `/ready` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub ready: bool,
    /// Why it is not ready.
    pub gates: BTreeMap<&'static str, String>,
    /// What is wrong although it is ready.
    pub degraded: BTreeMap<&'static str, String>,
}

impl Readiness {
    /// `part` must be done before the replica serves (start-up catch-up, drain).
    pub fn gate(&self, part: &'static str, reason: impl Into<String>) {
        self.inner.lock().gates.insert(part, reason.into());
    }

    /// `part` no longer holds the replica back.
    pub fn open(&self, part: &'static str) {
        self.inner.lock().gates.remove(part);
    }

    /// Whether `part` still holds the replica back.
    pub fn is_gated(&self, part: &'static str) -> bool {
        self.inner.lock().gates.contains_key(part)
    }

    /// A problem of `part`, decided under one lock: it keeps the replica unready while `part`
    /// still holds it back (start-up), and is reported as degraded afterwards.
    pub fn problem(&self, part: &'static str, reason: impl Into<String>) {
        let reason = reason.into();
        let mut state = self.inner.lock();
        if let Some(gate) = state.gates.get_mut(part) {
            *gate = reason;
            return;
        }
        let previous = state.degraded.insert(part, reason.clone());
        drop(state);
        if previous.as_deref() != Some(reason.as_str()) {
            tracing::warn!(part, reason, "degraded");
        }
    }

    /// `part` works badly; logged when the reason changes.
    pub fn degrade(&self, part: &'static str, reason: impl Into<String>) {
        let reason = reason.into();
        let previous = self.inner.lock().degraded.insert(part, reason.clone());
        if previous.as_deref() != Some(reason.as_str()) {
            tracing::warn!(part, reason, "degraded");
        }
    }

    /// `part` works again; logged when it was degraded.
    pub fn recover(&self, part: &'static str) {
        if self.inner.lock().degraded.remove(part).is_some() {
            tracing::info!(part, "recovered");
        }
    }

    pub fn report(&self) -> Report {
        let state = self.inner.lock();
        Report {
            ready: state.gates.is_empty(),
            gates: state.gates.clone(),
            degraded: state.degraded.clone(),
        }
    }

    pub fn is_ready(&self) -> bool {
        self.inner.lock().gates.is_empty()
    }

    /// Whether `part` is reported degraded.
    pub fn is_degraded(&self, part: &'static str) -> bool {
        self.inner.lock().degraded.contains_key(part)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gates_decide_readiness_degradation_does_not() {
        let r = Readiness::default();
        assert!(r.is_ready());
        r.gate("kafka", "catching up");
        assert!(!r.is_ready());
        r.open("kafka");
        r.degrade("kafka", "all brokers down");
        let report = r.report();
        assert!(report.ready, "a later outage keeps the replica in the Service");
        assert_eq!(report.degraded["kafka"], "all brokers down");
        r.recover("kafka");
        assert!(r.report().degraded.is_empty());
    }

    #[test]
    fn a_problem_gates_only_before_the_gate_opened() {
        let r = Readiness::default();
        r.gate("kafka", "connecting");
        r.problem("kafka", "all brokers down");
        assert_eq!(r.report().gates["kafka"], "all brokers down");
        r.open("kafka");
        r.problem("kafka", "all brokers down");
        assert!(r.is_ready(), "once open, a problem never closes the gate again");
        assert!(r.is_degraded("kafka"));
    }
}
