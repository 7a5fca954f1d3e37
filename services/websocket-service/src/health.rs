//! Readiness: each source (Kafka, JWKS, ...) reports whether it works, and why not.
//!
//! `/ready` answers 200 only when every registered source is ready; liveness (`/health`) never
//! depends on this.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Shared, cheap to clone.
#[derive(Clone, Default)]
pub struct Readiness {
    /// Source name -> `None` when ready, or the reason it is not.
    sources: Arc<Mutex<BTreeMap<&'static str, Option<String>>>>,
}

impl Readiness {
    pub fn set_ready(&self, source: &'static str) {
        self.sources.lock().expect("readiness lock").insert(source, None);
    }

    pub fn set_not_ready(&self, source: &'static str, reason: impl Into<String>) {
        self.sources
            .lock()
            .expect("readiness lock")
            .insert(source, Some(reason.into()));
    }

    /// The reasons of every source that is not ready; empty when ready.
    pub fn problems(&self) -> BTreeMap<&'static str, String> {
        self.sources
            .lock()
            .expect("readiness lock")
            .iter()
            .filter_map(|(k, v)| v.clone().map(|v| (*k, v)))
            .collect()
    }
}
