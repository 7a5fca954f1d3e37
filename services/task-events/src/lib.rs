//! The event envelopes, shared by the gateway (which reads them) and the publisher (which writes
//! them), so that producer and consumer cannot drift apart.
//!
//! **The task envelope** is fixed by the task app's producers (`docs/wire-contract.md`); it goes
//! to every session of `user_id`:
//!
//! ```json
//! {"event_type": "task.created", "user_id": "42", "task": {"id": 7, "title": "..."}}
//! ```
//!
//! **The generic envelope** carries any event type to an audience ([`Audience`]):
//!
//! ```json
//! {"event_type": "ticket.created", "data": {"id": 7}, "to": {"all": true}}
//! ```
//!
//! Both take two optional fields, `id` (a unique event id) and `occurred_at` (RFC 3339), which
//! old producers simply leave out. A Kafka record may also hold either envelope wrapped in a
//! CloudEvent 1.0 (`specversion` + `data`), which is what a Dapr publisher writes to the topic;
//! [`Event::from_json`] accepts all of these.
//!
//! The JSON Schema of the record value is `schemas/task-event.schema.json`.
//!
//! ```
//! use task_events::{Event, TaskEvent};
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
//! // A generic event for the agents of a helpdesk.
//! let Event::Generic(ticket) = Event::from_json(
//!     br#"{"event_type":"ticket.created","data":{"id":9},"to":{"all":true,"roles":["agent"]}}"#,
//! )? else { unreachable!() };
//! assert_eq!(ticket.to.roles, ["agent"]);
//!
//! // A record that is not an event says why.
//! let err = TaskEvent::from_json(br#"{"event_type":"task.created","task":{}}"#).unwrap_err();
//! assert_eq!(err.to_string(), "missing field `user_id`");
//! let err = Event::from_json(br#"{"event_type":"x","data":{},"to":{"rom":"a"}}"#).unwrap_err();
//! assert!(err.to_string().starts_with("invalid field `to`: unknown field `rom`"));
//! # Ok::<(), task_events::DecodeError>(())
//! ```

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

mod generic;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

pub use generic::{
    valid_room_name, Audience, GenericEvent, Payload, Sender, MAX_AUDIENCE_LIST, MAX_MESSAGE_BYTES,
    MAX_NAME_BYTES, MAX_ROOM_BYTES,
};

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
    /// A field does not parse (the reason is the parser's, e.g. an unknown audience key).
    #[error("invalid field `{field}`: {reason}")]
    Field { field: &'static str, reason: String },
}

/// Any event the gateway routes: the task envelope the task apps already write, or the generic
/// envelope addressed with `to`.
///
/// Not boxed: most events are generic, and each lives once in the history (an `Arc` entry), so
/// a box would add an allocation per event and save nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Event {
    Task(TaskEvent),
    Generic(GenericEvent),
}

impl Event {
    /// Decodes a record value: either envelope, bare or as a CloudEvent's `data`. The generic
    /// envelope is recognised by its `to` (or by `data`/`message` without `task`); anything else
    /// is read as a task event, with the errors the task envelope has always given.
    ///
    /// For a CloudEvent, the envelope's own `id` and `occurred_at` win; the CloudEvent's `id`
    /// and `time` fill them in when absent, so the same event read through Kafka or through
    /// Dapr keeps one id.
    pub fn from_json(bytes: &[u8]) -> Result<Self, DecodeError> {
        let outer: AnyShape = parse(bytes)?;
        if outer.specversion.is_none() {
            return Self::from_fields(outer);
        }
        let (ce_id, ce_time) = (outer.id, outer.time);
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
        let mut event = Self::from_fields(parse(inner_bytes)?)?;
        let (id, occurred_at) = match &mut event {
            Event::Task(e) => (&mut e.id, &mut e.occurred_at),
            Event::Generic(e) => (&mut e.id, &mut e.occurred_at),
        };
        if id.is_none() {
            *id = ce_id.filter(|id| !id.is_empty());
        }
        if occurred_at.is_none() {
            *occurred_at = ce_time;
        }
        Ok(event)
    }

    fn from_fields(shape: AnyShape) -> Result<Self, DecodeError> {
        let generic =
            shape.to.is_some() || (shape.task.is_none() && (shape.data.is_some() || shape.message.is_some()));
        if !generic {
            return TaskEvent::from_fields(shape).map(Event::Task);
        }
        let to = shape.to.ok_or(DecodeError::Missing("to"))?;
        GenericEvent::from_parts(generic::Parts {
            id: shape.id,
            event_type: shape.event_type,
            data: shape.data,
            message: shape.message,
            to,
            occurred_at: shape.occurred_at,
            key: shape.key,
            from: shape.from,
            ephemeral: shape.ephemeral,
        })
        .map(Event::Generic)
    }

    /// The producer's (or CloudEvent's) id, if any.
    pub fn id(&self) -> Option<&str> {
        match self {
            Event::Task(e) => e.id.as_deref(),
            Event::Generic(e) => e.id.as_deref(),
        }
    }

    pub fn event_type(&self) -> &str {
        match self {
            Event::Task(e) => &e.event_type,
            Event::Generic(e) => &e.event_type,
        }
    }

    pub fn occurred_at(&self) -> Option<&str> {
        match self {
            Event::Task(e) => e.occurred_at.as_deref(),
            Event::Generic(e) => e.occurred_at.as_deref(),
        }
    }

    /// The Kafka record key (Dapr `partitionKey`) that keeps order where it matters.
    pub fn partition_key(&self) -> String {
        match self {
            Event::Task(e) => e.partition_key(),
            Event::Generic(e) => e.partition_key(),
        }
    }
}

impl TaskEvent {
    /// The record key: the user id, so one user's events share a partition and keep their order.
    pub fn partition_key(&self) -> String {
        self.user_id.clone()
    }
}

/// Every field any shape may carry, read in one pass. Unknown fields are ignored: producers
/// may add to the envelope.
#[derive(Deserialize)]
struct AnyShape {
    // CloudEvent attributes.
    specversion: Option<String>,
    time: Option<String>,
    /// The CloudEvent's data, or the generic envelope's (`null` included: it is a value).
    #[serde(default, deserialize_with = "present")]
    data: Option<Box<RawValue>>,
    // Envelope fields (also the CloudEvent's own `id`).
    id: Option<String>,
    event_type: Option<String>,
    user_id: Option<String>,
    task: Option<Box<RawValue>>,
    occurred_at: Option<String>,
    // Generic envelope fields.
    to: Option<Box<RawValue>>,
    #[serde(default, deserialize_with = "present")]
    message: Option<Box<RawValue>>,
    key: Option<String>,
    from: Option<Box<RawValue>>,
    ephemeral: Option<bool>,
}

/// A field that is present, even as `null` (which `Option` alone would read as absent).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

impl TaskEvent {
    /// Decodes a record value that must be a task event (bare, or as a CloudEvent's `data`).
    pub fn from_json(bytes: &[u8]) -> Result<Self, DecodeError> {
        match Event::from_json(bytes)? {
            Event::Task(event) => Ok(event),
            Event::Generic(_) => Err(DecodeError::Invalid {
                field: "to",
                reason: "a generic event, not a task event",
            }),
        }
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

    fn generic(bytes: &[u8]) -> GenericEvent {
        match Event::from_json(bytes).unwrap() {
            Event::Generic(e) => e,
            Event::Task(e) => panic!("read as a task event: {e:?}"),
        }
    }

    #[test]
    fn generic_envelopes() {
        let e = generic(
            br#"{"event_type":"ticket.created","data":{"n":1},"to":{"room":"support","workspace":"w1","exclude_users":["u2"]}}"#,
        );
        assert_eq!(e.event_type, "ticket.created");
        assert_eq!(e.to.room.as_deref(), Some("support"));
        assert_eq!(e.to.workspace.as_deref(), Some("w1"));
        assert!(matches!(&e.payload, Payload::Data(d) if d.get() == r#"{"n":1}"#));

        // A verbatim message: its type is the event type unless one is given.
        let e = generic(br#"{"message":{"type":"queue_update","queue_id":3},"to":{"all":true}}"#);
        assert_eq!(e.event_type, "queue_update");
        assert!(matches!(&e.payload, Payload::Message(_)));

        // As CloudEvent data, with the CloudEvent's id and time filling in.
        let e = generic(
            br#"{"specversion":"1.0","id":"ce-7","time":"2026-01-01T00:00:00Z","data":{"event_type":"x","data":null,"to":{"user":"u"}}}"#,
        );
        assert_eq!(
            (e.id.as_deref(), e.occurred_at.as_deref()),
            (Some("ce-7"), Some("2026-01-01T00:00:00Z"))
        );

        // Serialised back to the same wire shape.
        let text = serde_json::to_string(&e).unwrap();
        assert_eq!(
            text,
            r#"{"id":"ce-7","event_type":"x","data":null,"to":{"user":"u"},"occurred_at":"2026-01-01T00:00:00Z"}"#
        );
        assert!(matches!(Event::from_json(text.as_bytes()), Ok(Event::Generic(_))));
    }

    #[test]
    fn malformed_generic_envelopes_name_the_field() {
        let cases: [(&[u8], &str); 9] = [
            (br#"{"event_type":"x","data":{}}"#, "missing field `to`"),
            (
                br#"{"event_type":"x","data":{},"to":{}}"#,
                "invalid field `to`: names nobody",
            ),
            (
                br#"{"event_type":"x","data":{},"to":{"usr":"a"}}"#,
                "invalid field `to`: unknown field `usr`",
            ),
            (
                br#"{"event_type":"x","data":{},"to":{"all":"yes"}}"#,
                "invalid field `to`: invalid type",
            ),
            (br#"{"event_type":"x","to":{"all":true}}"#, "missing field `data`"),
            (br#"{"data":{},"to":{"all":true}}"#, "missing field `event_type`"),
            (
                br#"{"event_type":"x","data":{},"message":{"type":"y"},"to":{"all":true}}"#,
                "invalid field `message`: give either",
            ),
            (
                br#"{"message":{"kind":"y"},"to":{"all":true}}"#,
                "invalid field `message`: must be a JSON object",
            ),
            (
                br#"{"event_type":"x","data":{},"to":{"room":"a*"}}"#,
                "invalid field `to`: a room name",
            ),
        ];
        for (input, want) in cases {
            let err = Event::from_json(input).unwrap_err().to_string();
            assert!(err.starts_with(want), "{}: {err}", String::from_utf8_lossy(input));
        }
        let many: Vec<String> = (0..1001).map(|i| i.to_string()).collect();
        let big = serde_json::json!({"event_type": "x", "data": {}, "to": {"users": many}});
        let err = Event::from_json(big.to_string().as_bytes())
            .unwrap_err()
            .to_string();
        assert!(err.contains("more than 1000"), "{err}");
        // A task envelope is still read as one, never as generic.
        assert!(matches!(
            Event::from_json(br#"{"event_type":"task.created","user_id":"1","task":{}}"#),
            Ok(Event::Task(_))
        ));
    }

    #[test]
    fn room_names() {
        for ok in ["lobby", "ticket:42", "org/team-a_b.c@x"] {
            assert!(valid_room_name(ok), "{ok}");
        }
        let long = "r".repeat(129);
        for bad in ["", "a b", "a*", "é", long.as_str()] {
            assert!(!valid_room_name(bad), "{bad}");
        }
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
