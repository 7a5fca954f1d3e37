//! Logging set-up and the service's counters.
//!
//! Each noteworthy event has one method here that logs it and counts it together, so the log and
//! the figure never drift apart.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use tracing_subscriber::EnvFilter;

use crate::auth::AuthError;

/// Installs the global tracing subscriber: `RUST_LOG` filters (default `info`), `format` is
/// `text` or `json`.
pub fn init_logging(format: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let result = if format == "json" {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
    // Already installed (tests start several gateways in one process): keep the first.
    let _ = result;
}

/// Counters since start. Read by tests and the benchmark; exported by `/metrics` later.
#[derive(Default, Debug)]
pub struct Stats {
    /// Sessions accepted (authenticated and admitted).
    pub sessions_opened: AtomicU64,
    /// Upgrades refused for a bad token (closed with 4001).
    pub auth_failures: AtomicU64,
    /// Upgrades refused by a connection limit.
    pub limit_rejections: AtomicU64,
    /// Sessions closed because their outbound queue overflowed (4008).
    pub slow_client_disconnects: AtomicU64,
    /// Messages queued to a session.
    pub messages_delivered: AtomicU64,
    /// Kafka records read.
    pub records_consumed: AtomicU64,
    /// Records or deliveries skipped as not a task event, from any source.
    pub records_malformed: AtomicU64,
    /// Events routed (decoded and offered to the registry), from any source.
    pub events_routed: AtomicU64,
    /// Events not delivered again: their id was seen within the de-duplication window.
    pub duplicates: AtomicU64,
    /// Dapr deliveries answered SUCCESS (per event; a bulk delivery counts each entry).
    pub dapr_success: AtomicU64,
    /// Dapr deliveries answered DROP.
    pub dapr_drop: AtomicU64,
    /// Dapr requests refused for a missing or wrong app token.
    pub dapr_unauthorized: AtomicU64,
}

impl Stats {
    pub fn auth_failed(&self, error: &AuthError, peer: Option<&str>) {
        self.auth_failures.fetch_add(1, Relaxed);
        tracing::info!(reason = error.label(), peer, "websocket auth failed");
    }

    /// A record or delivery that is not a task event: counted, logged with where it came from.
    pub fn event_malformed(&self, origin: &crate::router::Origin<'_>, error: &dyn std::fmt::Display) {
        self.records_malformed.fetch_add(1, Relaxed);
        match *origin {
            crate::router::Origin::Kafka {
                topic,
                partition,
                offset,
                ..
            } => {
                tracing::warn!(topic, partition, offset, %error, "malformed kafka record skipped")
            }
            crate::router::Origin::Dapr {
                topic,
                partition,
                offset,
                ..
            } => {
                tracing::warn!(topic, partition, offset, %error, "malformed dapr event dropped")
            }
        }
    }

    pub fn slow_client(&self, user_id: &str) {
        self.slow_client_disconnects.fetch_add(1, Relaxed);
        tracing::warn!(user_id, "slow client disconnected: outbound queue full");
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Relaxed)
    }
}
