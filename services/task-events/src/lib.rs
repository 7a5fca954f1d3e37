//! The task-update event envelope, shared by the gateway (which reads it) and the publisher
//! (which writes it), so that producer and consumer cannot drift apart.
//!
//! The wire shape is fixed by the producers that already exist (`docs/wire-contract.md`):
//!
//! ```json
//! {"event_type": "task.created", "user_id": "42", "task": {"id": 7, "title": "..."}}
//! ```
//!
//! This crate adds two optional fields, `id` (a unique event id) and `occurred_at` (RFC 3339),
//! which old producers simply leave out. A Kafka record may also hold the same envelope wrapped in
//! a CloudEvent 1.0 (`specversion` + `data`), which is what a Dapr publisher writes to the topic;
//! [`TaskEvent::from_json`] accepts both.
//!
//! The JSON Schema of the record value is `schemas/task-event.schema.json`.
//!
//! ```
//! use task_events::TaskEvent;
//!
//! // What an existing producer writes straight to Kafka...
//! let bare = TaskEvent::from_json(br#"{"event_type":"task.created","user_id":"42","task":{"id":7}}"#)?;
//! assert_eq!((bare.user_id.as_str(), bare.task.get()), ("42", r#"{"id":7}"#));
//!
//! // ...and what a Dapr publisher writes: the same envelope as CloudEvent data.
//! let wrapped = TaskEvent::from_json(
//!     br#"{"specversion":"1.0","id":"ce-1","source":"tasks","type":"com.dapr.event.sent",
//!          "data":{"event_type":"task.created","user_id":"42","task":{"id":7}}}"#,
//! )?;
//! assert_eq!(wrapped.id.as_deref(), Some("ce-1"));
//!
//! // A record that is not a task event says why.
//! let err = TaskEvent::from_json(br#"{"event_type":"task.created","task":{}}"#).unwrap_err();
//! assert_eq!(err.to_string(), "missing field `user_id`");
//! # Ok::<(), task_events::DecodeError>(())
//! ```

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The event types the task apps emit today. Others may come; they are carried as they are.
pub const KNOWN_EVENT_TYPES: [&str; 4] = ["task.created", "task.updated", "task.deleted", "task.completed"];

/// What happened to the task. The four the apps emit today have names; anything else is
/// carried as [`EventType::Custom`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EventType {
    Created,
    Updated,
    Deleted,
    Completed,
    Custom(String),
}

impl EventType {
    /// The wire name, e.g. `task.created`.
    pub fn as_str(&self) -> &str {
        match self {
            EventType::Created => "task.created",
            EventType::Updated => "task.updated",
            EventType::Deleted => "task.deleted",
            EventType::Completed => "task.completed",
            EventType::Custom(name) => name,
        }
    }
}

impl std::str::FromStr for EventType {
    type Err = std::convert::Infallible;

    /// Accepts the wire names and the short forms (`created`); anything else is custom.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "task.created" | "created" => EventType::Created,
            "task.updated" | "updated" => EventType::Updated,
            "task.deleted" | "deleted" => EventType::Deleted,
            "task.completed" | "completed" => EventType::Completed,
            other => EventType::Custom(other.to_string()),
        })
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One task-update event, as producers write it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskEvent {
    /// Unique event id. Set by the publisher crate (time-ordered); absent from older producers'
    /// records, in which case a consumer derives one from where the record was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// What happened, e.g. `task.created`. Free-form beyond [`KNOWN_EVENT_TYPES`].
    pub event_type: String,
    /// The user the event is addressed to; every session of that user receives it.
    pub user_id: String,
    /// The task object, carried through untouched (never re-parsed into a tree).
    pub task: Box<RawValue>,
    /// When the event happened (RFC 3339), set by the producer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub occurred_at: Option<String>,
}

/// Why a record value is not a task event. Messages are lowercase and name the field at fault.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The bytes are not a JSON object (or a field has the wrong JSON type).
    #[error("invalid json: {0}")]
    Json(String),
    /// A required field is absent.
    #[error("missing field `{0}`")]
    Missing(&'static str),
    /// A field is present but empty or of the wrong shape.
    #[error("invalid field `{field}`: {reason}")]
    Invalid {
        field: &'static str,
        reason: &'static str,
    },
}

/// Every field either shape may carry, read in one pass. Unknown fields are ignored: producers
/// may add to the envelope.
#[derive(Deserialize)]
struct AnyShape {
    // CloudEvent attributes.
    specversion: Option<String>,
    time: Option<String>,
    data: Option<Box<RawValue>>,
    // Envelope fields (also the CloudEvent's own `id`).
    id: Option<String>,
    event_type: Option<String>,
    user_id: Option<String>,
    task: Option<Box<RawValue>>,
    occurred_at: Option<String>,
}

impl TaskEvent {
    /// Decodes a record value: a bare envelope, or a CloudEvent whose `data` is the envelope (as
    /// an object, or as a JSON string holding the object).
    ///
    /// For a CloudEvent, the envelope's own `id` and `occurred_at` win; the CloudEvent's `id` and
    /// `time` fill them in when absent, so the same event read through Kafka or through Dapr keeps
    /// one id.
    pub fn from_json(bytes: &[u8]) -> Result<Self, DecodeError> {
        let outer: AnyShape = parse(bytes)?;
        if outer.specversion.is_none() {
            return Self::from_fields(outer);
        }
        let data = outer.data.ok_or(DecodeError::Missing("data"))?;
        let raw = data.get();
        // `data` may be a JSON string holding the envelope when the publisher labelled it text.
        let owned;
        let inner_bytes = if raw.starts_with('"') {
            owned = serde_json::from_str::<String>(raw).map_err(|e| DecodeError::Json(e.to_string()))?;
            owned.as_bytes()
        } else {
            raw.as_bytes()
        };
        let inner: AnyShape = parse(inner_bytes)?;
        let mut event = Self::from_fields(inner)?;
        if event.id.is_none() {
            event.id = outer.id.filter(|id| !id.is_empty());
        }
        if event.occurred_at.is_none() {
            event.occurred_at = outer.time;
        }
        Ok(event)
    }

    fn from_fields(shape: AnyShape) -> Result<Self, DecodeError> {
        let event_type = non_empty(shape.event_type, "event_type")?;
        let user_id = non_empty(shape.user_id, "user_id")?;
        let task = shape.task.ok_or(DecodeError::Missing("task"))?;
        if !task.get().starts_with('{') {
            return Err(DecodeError::Invalid {
                field: "task",
                reason: "must be a JSON object",
            });
        }
        Ok(TaskEvent {
            id: shape.id.filter(|id| !id.is_empty()),
            event_type,
            user_id,
            task,
            occurred_at: shape.occurred_at,
        })
    }
}

fn parse(bytes: &[u8]) -> Result<AnyShape, DecodeError> {
    let trimmed = bytes.trim_ascii_start();
    if !trimmed.starts_with(b"{") {
        return Err(DecodeError::Json("expected a JSON object".into()));
    }
    serde_json::from_slice(bytes).map_err(|e| DecodeError::Json(e.to_string()))
}

fn non_empty(value: Option<String>, field: &'static str) -> Result<String, DecodeError> {
    match value {
        None => Err(DecodeError::Missing(field)),
        Some(v) if v.is_empty() => Err(DecodeError::Invalid {
            field,
            reason: "must not be empty",
        }),
        Some(v) => Ok(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_envelope_from_existing_producers() {
        let e = TaskEvent::from_json(
            br#"{"event_type":"task.created","user_id":"42","task":{"id":1,"title":"x"}}"#,
        )
        .unwrap();
        assert_eq!(e.event_type, "task.created");
        assert_eq!(e.user_id, "42");
        assert_eq!(e.task.get(), r#"{"id":1,"title":"x"}"#);
        assert_eq!(e.id, None);
    }

    #[test]
    fn cloudevent_fills_id_and_time_from_attributes() {
        let e = TaskEvent::from_json(
            br#"{"specversion":"1.0","id":"ce-1","source":"app","type":"com.dapr.event.sent",
                 "time":"2026-01-01T00:00:00Z","datacontenttype":"application/json",
                 "data":{"event_type":"task.updated","user_id":"7","task":{}}}"#,
        )
        .unwrap();
        assert_eq!(e.id.as_deref(), Some("ce-1"));
        assert_eq!(e.occurred_at.as_deref(), Some("2026-01-01T00:00:00Z"));
        assert_eq!(e.user_id, "7");
    }

    #[test]
    fn envelope_id_wins_over_cloudevent_id() {
        let e = TaskEvent::from_json(
            br#"{"specversion":"1.0","id":"ce-1","data":{"id":"ev-9","event_type":"t","user_id":"7","task":{}}}"#,
        )
        .unwrap();
        assert_eq!(e.id.as_deref(), Some("ev-9"));
    }

    #[test]
    fn cloudevent_data_as_json_string() {
        let e = TaskEvent::from_json(
            br#"{"specversion":"1.0","id":"a","data":"{\"event_type\":\"t\",\"user_id\":\"u\",\"task\":{}}"}"#,
        )
        .unwrap();
        assert_eq!(e.user_id, "u");
    }

    #[test]
    fn malformed_records_say_what_is_wrong() {
        let cases: [(&[u8], &str); 8] = [
            (b"not json", "invalid json: expected a JSON object"),
            (b"[1,2]", "invalid json: expected a JSON object"),
            (br#"{"event_type":"t","task":{}}"#, "missing field `user_id`"),
            (
                br#"{"event_type":"t","user_id":"","task":{}}"#,
                "invalid field `user_id`: must not be empty",
            ),
            (br#"{"user_id":"u","task":{}}"#, "missing field `event_type`"),
            (
                br#"{"event_type":"t","user_id":"u","task":[1]}"#,
                "invalid field `task`: must be a JSON object",
            ),
            (br#"{"event_type":"t","user_id":"u"}"#, "missing field `task`"),
            (br#"{"specversion":"1.0","id":"x"}"#, "missing field `data`"),
        ];
        for (input, want) in cases {
            let err = TaskEvent::from_json(input).unwrap_err();
            assert_eq!(err.to_string(), want, "input {}", String::from_utf8_lossy(input));
        }
        let wrong_type = TaskEvent::from_json(br#"{"event_type":"t","user_id":42,"task":{}}"#).unwrap_err();
        assert!(
            wrong_type.to_string().contains("expected a string"),
            "{wrong_type}"
        );
    }

    #[test]
    fn event_types_round_trip() {
        for name in KNOWN_EVENT_TYPES {
            let t: EventType = name.parse().unwrap();
            assert!(!matches!(t, EventType::Custom(_)), "{name}");
            assert_eq!(t.as_str(), name);
        }
        assert_eq!("created".parse::<EventType>().unwrap(), EventType::Created);
        assert_eq!(
            "task.archived".parse::<EventType>().unwrap().as_str(),
            "task.archived"
        );
    }

    #[test]
    fn serializes_back_to_the_wire_shape() {
        let e =
            TaskEvent::from_json(br#"{"event_type":"task.deleted","user_id":"1","task":{"id":3}}"#).unwrap();
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"event_type":"task.deleted","user_id":"1","task":{"id":3}}"#
        );
    }
}
