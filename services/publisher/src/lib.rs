//! Publish events, straight to Kafka or through a Dapr sidecar, in the envelopes the gateway
//! reads (the types are shared through `task-events`, so the two cannot drift apart).
//!
//! # Layout
//! - [`new_event`]: builds a [`TaskEvent`] (to one user's sessions), [`new_generic_event`],
//!   [`new_state_event`] (a keyed current value) and [`new_message_event`] a [`GenericEvent`] (to an [`Audience`]: users, rooms, a workspace,
//!   roles, everyone), each with a time-ordered unique id (UUID v7) and `occurred_at`.
//! - [`Envelope`]: what both kinds share for publishing: the JSON and the record key.
//! - [`Publisher`]: one interface, two backends: [`KafkaPublisher`] (rdkafka; record key = user id,
//!   idempotent, waits for the broker's ack) and [`DaprPublisher`] (the sidecar's publish API,
//!   bounded retries on 5xx and connection errors).
//! - [`PublishError`]: what a caller must decide on.
//!
//! # Example
//!
//! ```no_run
//! use publisher::{new_event, DaprPublisher, EventType, Publisher};
//! use serde_json::json;
//!
//! # async fn run() -> Result<(), publisher::PublishError> {
//! // Through the sidecar at localhost:$DAPR_HTTP_PORT (token from DAPR_API_TOKEN, if set).
//! let publisher = Publisher::Dapr(DaprPublisher::from_env("taskpubsub", "task-updates")?);
//! let event = new_event(EventType::Created, "42", json!({"id": 7, "title": "write the docs"}))?;
//! publisher.publish(&event).await?;
//! println!("published {}", event.id.as_deref().unwrap_or_default());
//! # Ok(())
//! # }
//! ```
//!
//! A helpdesk broadcast to every agent, through the same publisher:
//!
//! ```no_run
//! # use publisher::{new_generic_event, Audience, Publisher};
//! # async fn run(publisher: Publisher) -> Result<(), publisher::PublishError> {
//! let to = Audience { all: true, roles: vec!["agent".into()], ..Audience::default() };
//! let event = new_generic_event("ticket.created", serde_json::json!({"id": 42}), to)?;
//! publisher.publish(&event).await?;
//! # Ok(())
//! # }
//! ```
//!
//! Building an event needs no broker:
//!
//! ```
//! use publisher::{new_event, EventType};
//!
//! let event = new_event(EventType::Completed, "42", serde_json::json!({"id": 7})).unwrap();
//! assert_eq!(event.event_type, "task.completed");
//! assert!(event.id.is_some() && event.occurred_at.is_some());
//! assert!(new_event(EventType::Created, "42", serde_json::json!([1])).is_err(), "task must be an object");
//!
//! let to = publisher::Audience { room: Some("support:7".into()), ..Default::default() };
//! let event = publisher::new_generic_event("ticket.updated", serde_json::json!({"id": 7}), to).unwrap();
//! assert_eq!(publisher::Envelope::partition_key(&event), "room:/support:7");
//! let nobody = publisher::new_generic_event("x", serde_json::json!({}), Default::default());
//! assert!(nobody.is_err(), "an audience must name someone");
//!
//! // State: the dashboard's current figures, published every few seconds, changed or not.
//! let everyone = publisher::Audience { all: true, ..Default::default() };
//! let stats = publisher::new_state_event("dashboard.update", "stats", serde_json::json!({"open": 3}), everyone).unwrap();
//! assert_eq!(stats.key.as_deref(), Some("stats"));
//! assert_eq!(publisher::Envelope::partition_key(&stats), "state:broadcast:stats");
//! ```

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

mod dapr;
mod kafka;

use std::time::SystemTime;

pub use dapr::DaprPublisher;
pub use kafka::KafkaPublisher;
pub use task_events::{Audience, EventType, GenericEvent, Payload, TaskEvent};

/// Why an event was not published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The event itself is not valid (never retried).
    #[error("invalid event: {0}")]
    InvalidEvent(String),
    /// Configuration is missing or wrong (e.g. no brokers).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The Kafka producer failed (broker unreachable within the timeout, record rejected, ...).
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The sidecar refused the event with a 4xx; `error_code` is Dapr's (`ERR_PUBSUB_NOT_FOUND`, ...).
    #[error("dapr rejected the event ({status} {}): {message}", error_code.as_deref().unwrap_or("no error code"))]
    Rejected {
        status: u16,
        error_code: Option<String>,
        message: String,
    },
    /// The sidecar kept failing (5xx or connection errors) through every attempt.
    #[error("dapr unavailable after {attempts} attempts: {last_error}")]
    Unavailable { attempts: u32, last_error: String },
}

/// Builds an event with a fresh time-ordered id and the current time as `occurred_at`.
pub fn new_event(
    event_type: EventType,
    user_id: impl Into<String>,
    task: serde_json::Value,
) -> Result<TaskEvent, PublishError> {
    let user_id = user_id.into();
    if user_id.is_empty() {
        return Err(PublishError::InvalidEvent("user id is empty".into()));
    }
    if !task.is_object() {
        return Err(PublishError::InvalidEvent("task must be a JSON object".into()));
    }
    let task =
        serde_json::value::to_raw_value(&task).map_err(|e| PublishError::InvalidEvent(e.to_string()))?;
    Ok(TaskEvent {
        id: Some(uuid::Uuid::now_v7().to_string()),
        event_type: event_type.as_str().to_string(),
        user_id,
        task,
        occurred_at: Some(now()),
    })
}

/// An event ready to publish: its JSON and its record key.
pub trait Envelope: serde::Serialize {
    /// The Kafka record key (Dapr `partitionKey`): order holds among events with the same key.
    fn partition_key(&self) -> String;
    /// The event's id, when it has one.
    fn event_id(&self) -> Option<&str>;
}

impl Envelope for TaskEvent {
    fn partition_key(&self) -> String {
        TaskEvent::partition_key(self)
    }
    fn event_id(&self) -> Option<&str> {
        self.id.as_deref()
    }
}

impl Envelope for GenericEvent {
    fn partition_key(&self) -> String {
        GenericEvent::partition_key(self)
    }
    fn event_id(&self) -> Option<&str> {
        self.id.as_deref()
    }
}

fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// A generic event carrying `data` to the audience `to`, with a fresh id and the current time.
/// The gateway delivers it as `{"type": event_type, "event": event_type, "data": data, ...}`.
pub fn new_generic_event(
    event_type: &str,
    data: serde_json::Value,
    to: Audience,
) -> Result<GenericEvent, PublishError> {
    let data =
        serde_json::value::to_raw_value(&data).map_err(|e| PublishError::InvalidEvent(e.to_string()))?;
    generic(Some(event_type), Payload::Data(data), to)
}

/// A state event: the current value of `key` for the audience `to` (`data: null` removes it).
/// Publish it as often as the value is computed: the gateway sends it on only when it changed,
/// keeps only the latest value for slow clients, and gives it to every client that connects or
/// joins (`snapshot: true`).
pub fn new_state_event(
    event_type: &str,
    key: &str,
    data: serde_json::Value,
    to: Audience,
) -> Result<GenericEvent, PublishError> {
    if key.is_empty() || key.len() > task_events::MAX_NAME_BYTES {
        return Err(PublishError::InvalidEvent("key must be 1 to 256 bytes".into()));
    }
    let mut event = new_generic_event(event_type, data, to)?;
    event.key = Some(key.to_string());
    Ok(event)
}

/// A generic event whose `message` (an object with a string `type`) the gateway delivers as the
/// frame itself, unchanged, to the audience `to`.
pub fn new_message_event(message: serde_json::Value, to: Audience) -> Result<GenericEvent, PublishError> {
    if !message.get("type").is_some_and(serde_json::Value::is_string) {
        return Err(PublishError::InvalidEvent(
            "message must be a JSON object with a string `type`".into(),
        ));
    }
    let message =
        serde_json::value::to_raw_value(&message).map_err(|e| PublishError::InvalidEvent(e.to_string()))?;
    generic(None, Payload::Message(message), to)
}

/// Builds through the wire form, so the crate's validation (bounds, audience, message) applies.
fn generic(event_type: Option<&str>, payload: Payload, to: Audience) -> Result<GenericEvent, PublishError> {
    let mut draft = serde_json::json!({ "to": to });
    match &payload {
        Payload::Data(data) => draft["data"] = serde_json::from_str(data.get()).unwrap_or_default(),
        Payload::Message(message) => {
            draft["message"] = serde_json::from_str(message.get()).unwrap_or_default()
        }
    }
    if let Some(event_type) = event_type {
        draft["event_type"] = event_type.into();
    }
    match task_events::Event::from_json(draft.to_string().as_bytes()) {
        Ok(task_events::Event::Generic(mut event)) => {
            event.id = Some(uuid::Uuid::now_v7().to_string());
            event.occurred_at = Some(now());
            Ok(event)
        }
        Ok(task_events::Event::Task(_)) => Err(PublishError::InvalidEvent("not a generic event".into())),
        Err(error) => Err(PublishError::InvalidEvent(error.to_string())),
    }
}

/// The two backends behind one interface.
pub enum Publisher {
    Kafka(KafkaPublisher),
    Dapr(DaprPublisher),
}

/// Which backend [`Publisher::from_env`] builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// Straight to Kafka: `KAFKA_BROKERS`.
    Kafka,
    /// Through the sidecar on `localhost:$DAPR_HTTP_PORT` (default 3500), with
    /// `DAPR_API_TOKEN` when set.
    Dapr,
}

impl Publisher {
    /// A publisher configured from the environment, as the command-line tools use it: each
    /// publish is bounded by `timeout`; through Dapr, 4 attempts from 200 ms apart.
    pub fn from_env(
        via: Via,
        topic: &str,
        pubsub: &str,
        timeout: std::time::Duration,
    ) -> Result<Self, PublishError> {
        Ok(match via {
            Via::Kafka => {
                let brokers = std::env::var("KAFKA_BROKERS").unwrap_or_default();
                Publisher::Kafka(KafkaPublisher::new(&brokers, topic, timeout)?)
            }
            Via::Dapr => Publisher::Dapr(
                DaprPublisher::from_env(pubsub, topic)?
                    .with_request_timeout(timeout / 2)?
                    .with_retries(4, std::time::Duration::from_millis(200)),
            ),
        })
    }

    /// Publishes one event (a [`TaskEvent`] or a [`GenericEvent`]) and returns once it is
    /// durably accepted (the broker's ack, or the sidecar's 204).
    pub async fn publish(&self, event: &impl Envelope) -> Result<(), PublishError> {
        match self {
            Publisher::Kafka(p) => p.publish(event).await,
            Publisher::Dapr(p) => p.publish(event).await,
        }
    }
}

fn to_json(event: &impl Envelope) -> Result<Vec<u8>, PublishError> {
    serde_json::to_vec(event).map_err(|e| PublishError::InvalidEvent(e.to_string()))
}
