//! From a decoded event to the sessions of its audience: the one path every source (Kafka,
//! Dapr, the HTTP publish API) goes through, so a client gets the same message whichever way
//! the event came.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use task_events::{Audience, DecodeError, Event, GenericEvent, TaskEvent};

use crate::hub::dedup::Dedup;
use crate::hub::registry::{Delivery, Registry};
use crate::ingest::Origin;
use crate::protocol::{EventMessage, ServerMessage};
use crate::telemetry::Stats;

/// What routing one event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routed {
    /// Offered to the user's sessions on this instance (none is fine).
    Delivered(Delivery),
    /// Seen within the de-duplication window: not delivered again.
    Duplicate,
}

/// When the event happened: its `occurred_at`, else the record's timestamp.
fn event_time(event: &Event, origin: &Origin<'_>) -> Option<SystemTime> {
    if let Some(at) = event.occurred_at() {
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

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Decodes a record value and routes it. A malformed value is logged with where it came
    /// from, counted, and skipped.
    pub fn route_bytes(&self, payload: &[u8], origin: Origin<'_>) -> Result<Routed, DecodeError> {
        match Event::from_json(payload) {
            Ok(event) => Ok(self.route(&event, origin)),
            Err(error) => {
                self.stats.event_malformed(&origin, &error);
                Err(error)
            }
        }
    }

    /// Queues the event to every session of its audience on this instance, unless its id was
    /// seen within the de-duplication window. When nobody of the audience is connected here this
    /// costs the de-duplication check and the index lookups: the message is not even built.
    pub fn route(&self, event: &Event, origin: Origin<'_>) -> Routed {
        let id = match event.id().map(str::to_string).or_else(|| origin.fallback_id()) {
            Some(id) => id,
            None => uuid::Uuid::now_v7().to_string(),
        };
        if !self.dedup.first_time(&id) {
            self.stats.duplicate();
            tracing::debug!(id, %origin, "duplicate event not delivered again");
            return Routed::Duplicate;
        }
        self.stats.observe_latency(event_time(event, &origin));
        let timestamp = || {
            event
                .occurred_at()
                .map_or_else(|| origin.fallback_timestamp(), str::to_string)
        };
        let delivery = match event {
            Event::Task(task) => self.route_task(task, &id, timestamp),
            Event::Generic(generic) => self.registry.deliver(&generic.to, &generic.event_type, |room| {
                generic_message(generic, &id, &timestamp(), room)
            }),
        };
        if delivery.dropped > 0 {
            self.stats
                .messages_dropped("slow_consumer", delivery.dropped as u64);
        }
        Routed::Delivered(delivery)
    }

    fn route_task(&self, task: &TaskEvent, id: &str, timestamp: impl Fn() -> String) -> Delivery {
        let to = Audience {
            user: Some(task.user_id.clone()),
            ..Audience::default()
        };
        self.registry.deliver(&to, &task.event_type, |_| {
            ServerMessage::TaskUpdate {
                event: &task.event_type,
                task: &task.task,
                id,
                timestamp: &timestamp(),
            }
            .to_text()
        })
    }
}

/// The message of a generic event: `{"type":T,"event":T,"data":..,"id","timestamp"}` plus the
/// room it reached the session through and its workspace; or, for a verbatim `message`, that
/// object unchanged.
fn generic_message(
    event: &GenericEvent,
    id: &str,
    timestamp: &str,
    room: Option<&str>,
) -> bytestring::ByteString {
    match &event.payload {
        task_events::Payload::Message(message) => message.get().to_string().into(),
        task_events::Payload::Data(data) => EventMessage {
            kind: &event.event_type,
            event: &event.event_type,
            data,
            id,
            timestamp,
            room,
            workspace_id: event.to.workspace.as_deref(),
        }
        .to_text(),
    }
}
