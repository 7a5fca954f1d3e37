//! Ingest: bytes in from outside, decoded events out to the [`hub`](crate::hub).
//!
//! - [`kafka`]: the direct Kafka source (every partition of every topic, no consumer group).
//! - [`dapr`]: the Dapr pub/sub path: subscription discovery, delivery route, app token.
//! - [`publish`]: `POST /api/publish`, the HTTP way for backends (to Kafka, or local).
//! - [`control`]: the control topic the replicas share state through (user-scoped rooms, the
//!   sessions of cursor-less clients and the replicas' beats, for catch-up).

pub mod control;
pub mod dapr;
pub mod kafka;
pub mod publish;

use std::time::{Duration, UNIX_EPOCH};

use crate::protocol::{now_rfc3339, rfc3339};

/// Where an event was read: used for its fallback id and timestamp, and in error logs.
#[derive(Debug, Clone, Copy)]
pub enum Origin<'a> {
    Kafka {
        topic: &'a str,
        partition: i32,
        offset: i64,
        /// The record's timestamp, when it has one.
        timestamp_ms: Option<i64>,
    },
    /// Delivered by a Dapr sidecar. For Kafka components it names the record in `__topic`,
    /// `__partition`, `__offset` and `__timestamp` headers.
    Dapr {
        topic: Option<&'a str>,
        partition: Option<i32>,
        offset: Option<i64>,
        timestamp_ms: Option<i64>,
    },
    /// `POST /api/publish` delivered locally (no Kafka): every event has its id and time.
    Api,
}

impl Origin<'static> {
    /// A Dapr delivery that names no record.
    pub fn dapr_unknown() -> Self {
        Origin::Dapr {
            topic: None,
            partition: None,
            offset: None,
            timestamp_ms: None,
        }
    }
}

impl Origin<'_> {
    /// A stable id for an event whose producer set none: the same record always gets the same
    /// id, whichever path it came by, so clients and the de-duplication recognise a repeat.
    /// `None` when nothing names the record (a Dapr delivery from a non-Kafka component).
    pub fn fallback_id(&self) -> Option<String> {
        match *self {
            Origin::Kafka {
                topic,
                partition,
                offset,
                ..
            }
            | Origin::Dapr {
                topic: Some(topic),
                partition: Some(partition),
                offset: Some(offset),
                ..
            } => Some(format!("kafka:{topic}:{partition}:{offset}")),
            Origin::Dapr { .. } | Origin::Api => None,
        }
    }

    pub fn timestamp_ms(&self) -> Option<i64> {
        match *self {
            Origin::Kafka { timestamp_ms, .. } | Origin::Dapr { timestamp_ms, .. } => timestamp_ms,
            Origin::Api => None,
        }
    }

    pub fn fallback_timestamp(&self) -> String {
        match self.timestamp_ms() {
            Some(ms) if ms >= 0 => rfc3339(UNIX_EPOCH + Duration::from_millis(ms as u64)),
            _ => now_rfc3339(),
        }
    }
}

impl std::fmt::Display for Origin<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Kafka { .. } => f.write_str("kafka"),
            Origin::Dapr { .. } => f.write_str("dapr"),
            Origin::Api => f.write_str("api"),
        }
    }
}
