//! The generic envelope: any event type, addressed to an audience.
//!
//! ```json
//! {"event_type": "ticket.created", "data": {"id": 7}, "to": {"all": true, "roles": ["agent"]},
//!  "id": "optional", "occurred_at": "optional RFC 3339"}
//! ```
//!
//! Instead of `data`, `message` carries an object delivered to clients unchanged, as the frame
//! itself (for clients that read fields beside `type`); it must have a string `type`, and
//! `event_type` then defaults to it.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::DecodeError;

/// Longest `event_type`, id, user id, workspace or role name, in bytes.
pub const MAX_NAME_BYTES: usize = 256;
/// Longest room name, in bytes (the characters allowed are [`valid_room_name`]'s).
pub const MAX_ROOM_BYTES: usize = 128;
/// Most entries in one audience list (`users`, `rooms`, `exclude_users`, `roles`).
pub const MAX_AUDIENCE_LIST: usize = 1000;
/// Largest verbatim `message`, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// Who receives an event. Targets (`user`, `users`, `room`, `rooms`, `workspace`, `all`,
/// `roles`) are united; `workspace` also confines every other target to that workspace;
/// `roles` alone targets everyone holding one of them, and with other targets keeps only the
/// sessions holding one; `exclude_users` removes users. At least one target is required, and
/// unknown keys are refused (a typo must not silently reach nobody, or everybody).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Audience {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rooms: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_users: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// One session (the `connection_id` of its `connected` message): RPC replies over Kafka and
    /// pushes meant for one tab. Session ids are random (UUID v4) and never reused; a session
    /// that ended is addressed in vain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
}

impl Audience {
    /// Every user named by `user` and `users`.
    pub fn all_users(&self) -> impl Iterator<Item = &str> {
        self.user.iter().chain(&self.users).map(String::as_str)
    }

    /// Every room named by `room` and `rooms`.
    pub fn all_rooms(&self) -> impl Iterator<Item = &str> {
        self.room.iter().chain(&self.rooms).map(String::as_str)
    }

    /// Checks the bounds and that someone is addressed.
    pub fn validate(&self) -> Result<(), DecodeError> {
        let invalid = |reason| DecodeError::Invalid { field: "to", reason };
        let targets = self.user.is_some()
            || !self.users.is_empty()
            || self.room.is_some()
            || !self.rooms.is_empty()
            || self.workspace.is_some()
            || self.all
            || !self.roles.is_empty()
            || self.session.is_some();
        if !targets {
            return Err(invalid(
                "names nobody: give user, users, room, rooms, workspace, roles, session or all",
            ));
        }
        for list in [&self.users, &self.rooms, &self.exclude_users, &self.roles] {
            if list.len() > MAX_AUDIENCE_LIST {
                return Err(invalid("a list has more than 1000 entries"));
            }
        }
        let names = self
            .all_users()
            .chain(self.workspace.as_deref())
            .chain(self.session.as_deref())
            .chain(self.exclude_users.iter().map(String::as_str))
            .chain(self.roles.iter().map(String::as_str));
        for name in names {
            if name.is_empty() || name.len() > MAX_NAME_BYTES {
                return Err(invalid(
                    "a user, workspace, session or role name is empty or longer than 256 bytes",
                ));
            }
        }
        if self.all_rooms().any(|r| !valid_room_name(r)) {
            return Err(invalid(
                "a room name is empty, longer than 128 bytes, or has characters other than \
                 letters, digits and _ - . : @ /",
            ));
        }
        Ok(())
    }
}

/// Room names: 1 to 128 bytes of ASCII letters, digits and `_ - . : @ /`. `*` is not allowed,
/// so a name can never be mistaken for a pattern.
pub fn valid_room_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_ROOM_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:@/".contains(&b))
}

/// What a generic event carries to its clients.
#[derive(Debug, Clone)]
pub enum Payload {
    /// Delivered under `data` in the gateway's message.
    Data(Box<RawValue>),
    /// Delivered as the frame itself, unchanged (an object with a string `type`).
    Message(Box<RawValue>),
}

/// A generic event, as producers write it.
#[derive(Debug, Clone)]
pub struct GenericEvent {
    /// Unique event id; when absent a consumer derives one from where the record was read.
    pub id: Option<String>,
    /// The event's type: `type` and `event` of the delivered message, and what filters match.
    pub event_type: String,
    pub payload: Payload,
    /// Who receives it.
    pub to: Audience,
    /// When it happened (RFC 3339), set by the producer.
    pub occurred_at: Option<String>,
    /// A state event: the current value of `key` for this audience, which replaces the one
    /// before (`data: null` removes it). Clients get only the latest value, and a snapshot of
    /// every key in their audience when they connect or join.
    pub key: Option<String>,
    /// Who sent it, when a client published it through the gateway (stamped by the gateway from
    /// the verified token, never taken from the client): delivered as `from: {"user": ..}`, and
    /// never to the publishing session itself.
    pub from: Option<Sender>,
    /// Delivered live only: never replayed by a resume, a catch-up or a poll (typing
    /// indicators).
    pub ephemeral: bool,
}

/// The sender of a client publication.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sender {
    pub user: String,
    /// The publishing session: the one member of the room that does not get it back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
}

/// The parts of a decoded generic envelope, before validation.
pub(crate) struct Parts {
    pub id: Option<String>,
    pub event_type: Option<String>,
    pub data: Option<Box<RawValue>>,
    pub message: Option<Box<RawValue>>,
    pub to: Box<RawValue>,
    pub occurred_at: Option<String>,
    pub key: Option<String>,
    pub from: Option<Box<RawValue>>,
    pub ephemeral: Option<bool>,
}

/// The wire form, both ways.
#[derive(Serialize, Deserialize)]
pub(crate) struct Wire {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Box<RawValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<Box<RawValue>>,
    pub to: Box<RawValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub occurred_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Sender>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ephemeral: bool,
}

impl Serialize for GenericEvent {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let to = serde_json::value::to_raw_value(&self.to).map_err(serde::ser::Error::custom)?;
        let (data, message) = match &self.payload {
            Payload::Data(d) => (Some(d.clone()), None),
            Payload::Message(m) => (None, Some(m.clone())),
        };
        Wire {
            id: self.id.clone(),
            event_type: Some(self.event_type.clone()),
            data,
            message,
            to,
            occurred_at: self.occurred_at.clone(),
            key: self.key.clone(),
            from: self.from.clone(),
            ephemeral: self.ephemeral,
        }
        .serialize(serializer)
    }
}

#[derive(Deserialize)]
struct MessageType<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
}

impl GenericEvent {
    /// The record key (Dapr `partitionKey`): one room's events share a key (`room:<ws>/<room>`),
    /// then one user's (the user id); a broader audience shares its workspace's key
    /// (`workspace:<ws>`) or the broadcast key. Order holds among events with the same key.
    pub fn partition_key(&self) -> String {
        let base = self.audience_key();
        match &self.key {
            // Every value of one key (and audience) in one partition: in order.
            Some(key) => format!("state:{base}:{key}"),
            None => base,
        }
    }

    fn audience_key(&self) -> String {
        let to = &self.to;
        let ws = to.workspace.as_deref().unwrap_or("");
        let mut rooms = to.all_rooms();
        let mut users = to.all_users();
        match (rooms.next(), rooms.next(), users.next(), users.next()) {
            (Some(room), None, _, _) => format!("room:{ws}/{room}"),
            (None, _, Some(user), None) => user.to_string(),
            (None, _, None, _) if to.session.is_some() => {
                format!("session:{}", to.session.as_deref().unwrap_or_default())
            }
            _ if !ws.is_empty() => format!("workspace:{ws}"),
            _ => "broadcast".to_string(),
        }
    }

    /// Validates the fields of a decoded envelope.
    pub(crate) fn from_parts(parts: Parts) -> Result<Self, DecodeError> {
        let Parts {
            id,
            event_type,
            data,
            message,
            to,
            occurred_at,
            key,
            from,
            ephemeral,
        } = parts;
        if key
            .as_ref()
            .is_some_and(|k| k.is_empty() || k.len() > MAX_NAME_BYTES)
        {
            return Err(DecodeError::Invalid {
                field: "key",
                reason: "must be 1 to 256 bytes",
            });
        }
        let to: Audience = serde_json::from_str(to.get()).map_err(|e| DecodeError::Field {
            field: "to",
            reason: e.to_string(),
        })?;
        to.validate()?;
        let from = match from {
            None => None,
            Some(raw) if raw.get() == "null" => None,
            Some(raw) => {
                let from: Sender = serde_json::from_str(raw.get()).map_err(|e| DecodeError::Field {
                    field: "from",
                    reason: e.to_string(),
                })?;
                let bad = |s: &str| s.is_empty() || s.len() > MAX_NAME_BYTES;
                if bad(&from.user) || from.session.as_deref().is_some_and(bad) {
                    return Err(DecodeError::Invalid {
                        field: "from",
                        reason: "a user or session is empty or longer than 256 bytes",
                    });
                }
                Some(from)
            }
        };
        let (payload, default_type) = match (data, message) {
            (Some(_), Some(_)) => {
                return Err(DecodeError::Invalid {
                    field: "message",
                    reason: "give either `data` or `message`, not both",
                })
            }
            (None, None) => return Err(DecodeError::Missing("data")),
            (Some(data), None) => (Payload::Data(data), None),
            (None, Some(message)) => {
                let bad = DecodeError::Invalid {
                    field: "message",
                    reason: "must be a JSON object with a string `type`, at most 64 KiB",
                };
                if message.get().len() > MAX_MESSAGE_BYTES || !message.get().starts_with('{') {
                    return Err(bad);
                }
                let kind = serde_json::from_str::<MessageType<'_>>(message.get())
                    .map_err(|_| bad)?
                    .kind
                    .into_owned();
                (Payload::Message(message), Some(kind))
            }
        };
        let event_type = match event_type.or(default_type) {
            None => return Err(DecodeError::Missing("event_type")),
            Some(t) if t.is_empty() || t.len() > MAX_NAME_BYTES => {
                return Err(DecodeError::Invalid {
                    field: "event_type",
                    reason: "must be 1 to 256 bytes",
                })
            }
            Some(t) => t,
        };
        Ok(GenericEvent {
            id: id.filter(|id| !id.is_empty()),
            event_type,
            payload,
            to,
            occurred_at,
            key,
            from,
            ephemeral: ephemeral.unwrap_or(false),
        })
    }
}
