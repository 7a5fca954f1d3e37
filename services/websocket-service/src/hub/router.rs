//! From a decoded event to the sessions of its user: the one path every source (Kafka today,
//! Dapr next) goes through, so a client gets the same message whichever way the event came.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use task_events::{DecodeError, TaskEvent};

use crate::hub::dedup::Dedup;
use crate::hub::registry::{Delivery, Registry};
use crate::protocol::{now_rfc3339, rfc3339, ServerMessage};
use crate::telemetry::Stats;

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
    fn fallback_id(&self) -> Option<String> {
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
            Origin::Dapr { .. } => None,
        }
    }

    fn timestamp_ms(&self) -> Option<i64> {
        match *self {
            Origin::Kafka { timestamp_ms, .. } | Origin::Dapr { timestamp_ms, .. } => timestamp_ms,
        }
    }

    fn fallback_timestamp(&self) -> String {
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
        }
    }
}

/// What routing one event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routed {
    /// Offered to the user's sessions on this instance (none is fine).
    Delivered(Delivery),
    /// Seen within the de-duplication window: not delivered again.
    Duplicate,
}

/// When the event happened: its `occurred_at`, else the record's timestamp.
fn event_time(event: &TaskEvent, origin: &Origin<'_>) -> Option<SystemTime> {
    if let Some(at) = event.occurred_at.as_deref() {
        return humantime::parse_rfc3339_weak(at).ok();
    }
    let ms = origin.timestamp_ms().filter(|ms| *ms >= 0)?;
    Some(UNIX_EPOCH + Duration::from_millis(ms as u64))
}

pub struct Router {
    registry: Arc<Registry>,
    stats: Arc<Stats>,
    dedup: Dedup,
}

impl Router {
    pub fn new(registry: Arc<Registry>, stats: Arc<Stats>, dedup: Dedup) -> Self {
        Router {
            registry,
            stats,
            dedup,
        }
    }

    pub fn record_consumed(&self, topic: &str, partition: i32) {
        self.stats.kafka_record(topic, partition);
    }

    /// Decodes a record value and routes it. A malformed value is logged with where it came
    /// from, counted, and skipped.
    pub fn route_bytes(&self, payload: &[u8], origin: Origin<'_>) -> Result<Routed, DecodeError> {
        match TaskEvent::from_json(payload) {
            Ok(event) => Ok(self.route(&event, origin)),
            Err(error) => {
                self.stats.event_malformed(&origin, &error);
                Err(error)
            }
        }
    }

    /// Queues the event to every session of its user on this instance, unless its id was seen
    /// within the de-duplication window. For a user with no session here this costs the
    /// de-duplication check and one hash lookup: the message is not even built.
    pub fn route(&self, event: &TaskEvent, origin: Origin<'_>) -> Routed {
        let id = match event.id.clone().or_else(|| origin.fallback_id()) {
            Some(id) => id,
            None => uuid::Uuid::now_v7().to_string(),
        };
        if !self.dedup.first_time(&id) {
            self.stats.duplicate();
            tracing::debug!(id, %origin, "duplicate event not delivered again");
            return Routed::Duplicate;
        }
        self.stats.observe_latency(event_time(event, &origin));
        let delivery = self.registry.deliver(&event.user_id, || {
            let timestamp = event
                .occurred_at
                .clone()
                .unwrap_or_else(|| origin.fallback_timestamp());
            ServerMessage::TaskUpdate {
                event: &event.event_type,
                task: &event.task,
                id: &id,
                timestamp: &timestamp,
            }
            .to_text()
        });
        if delivery.dropped > 0 {
            self.stats
                .messages_dropped("slow_consumer", delivery.dropped as u64);
        }
        Routed::Delivered(delivery)
    }
}
