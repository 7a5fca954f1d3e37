//! Publish task-update events, straight to Kafka or through a Dapr sidecar, in the envelope the
//! gateway reads (the types are shared through `task-events`, so the two cannot drift apart).
//!
//! # Layout
//! - [`new_event`]: builds a [`TaskEvent`] with a time-ordered unique id (UUID v7) and
//!   `occurred_at`.
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
//! Building an event needs no broker:
//!
//! ```
//! use publisher::{new_event, EventType};
//!
//! let event = new_event(EventType::Completed, "42", serde_json::json!({"id": 7})).unwrap();
//! assert_eq!(event.event_type, "task.completed");
//! assert!(event.id.is_some() && event.occurred_at.is_some());
//! assert!(new_event(EventType::Created, "42", serde_json::json!([1])).is_err(), "task must be an object");
//! ```

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

mod dapr;
mod kafka;

use std::time::SystemTime;

pub use dapr::DaprPublisher;
pub use kafka::KafkaPublisher;
pub use task_events::{EventType, TaskEvent};

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
        occurred_at: Some(humantime::format_rfc3339_millis(SystemTime::now()).to_string()),
    })
}

/// The two backends behind one interface.
pub enum Publisher {
    Kafka(KafkaPublisher),
    Dapr(DaprPublisher),
}

impl Publisher {
    /// Publishes one event and returns once it is durably accepted (the broker's ack, or the
    /// sidecar's 204).
    pub async fn publish(&self, event: &TaskEvent) -> Result<(), PublishError> {
        match self {
            Publisher::Kafka(p) => p.publish(event).await,
            Publisher::Dapr(p) => p.publish(event).await,
        }
    }
}

fn to_json(event: &TaskEvent) -> Result<Vec<u8>, PublishError> {
    serde_json::to_vec(event).map_err(|e| PublishError::InvalidEvent(e.to_string()))
}
