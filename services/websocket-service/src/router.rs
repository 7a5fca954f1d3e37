//! From a decoded event to the sessions of its user: the one path every source (Kafka today,
//! Dapr next) goes through, so a client gets the same message whichever way the event came.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use task_events::{DecodeError, TaskEvent};

use crate::protocol::{now_rfc3339, rfc3339, ServerMessage};
use crate::registry::{Delivery, Registry};
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
}

impl Origin<'_> {
    /// A stable id for an event whose producer set none: the same record always gets the same
    /// id, so clients (and a later de-duplication) can recognise a repeat.
    fn fallback_id(&self) -> String {
        match self {
            Origin::Kafka {
                topic,
                partition,
                offset,
                ..
            } => format!("kafka:{topic}:{partition}:{offset}"),
        }
    }

    fn fallback_timestamp(&self) -> String {
        match self {
            Origin::Kafka {
                timestamp_ms: Some(ms),
                ..
            } if *ms >= 0 => rfc3339(UNIX_EPOCH + Duration::from_millis(*ms as u64)),
            Origin::Kafka { .. } => now_rfc3339(),
        }
    }
}

pub struct Router {
    registry: Arc<Registry>,
    stats: Arc<Stats>,
}

impl Router {
    pub fn new(registry: Arc<Registry>, stats: Arc<Stats>) -> Self {
        Router { registry, stats }
    }

    pub fn record_consumed(&self) {
        self.stats.records_consumed.fetch_add(1, Relaxed);
    }

    /// Decodes a record value and routes it. A malformed value is logged with where it came
    /// from, counted, and skipped.
    pub fn route_bytes(&self, payload: &[u8], origin: Origin<'_>) -> Result<Delivery, DecodeError> {
        match TaskEvent::from_json(payload) {
            Ok(event) => Ok(self.route(&event, origin)),
            Err(error) => {
                let Origin::Kafka {
                    topic,
                    partition,
                    offset,
                    ..
                } = origin;
                self.stats.record_malformed(topic, partition, offset, &error);
                Err(error)
            }
        }
    }

    /// Queues the event to every session of its user on this instance. For a user with no
    /// session here this is one hash lookup: the message is not even built.
    pub fn route(&self, event: &TaskEvent, origin: Origin<'_>) -> Delivery {
        self.stats.events_routed.fetch_add(1, Relaxed);
        self.registry.deliver(&event.user_id, || {
            let id = event.id.clone().unwrap_or_else(|| origin.fallback_id());
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
        })
    }
}
