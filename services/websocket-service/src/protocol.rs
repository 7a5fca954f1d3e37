//! The WebSocket protocol: what clients send and what the service sends them.
//!
//! The shapes existing frontends rely on are in `docs/wire-contract.md`; the full protocol is
//! described by `schemas/ws-client-message.schema.json` and `schemas/ws-server-message.schema.json`.

use std::time::SystemTime;

use bytestring::ByteString;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Close codes the service uses. 4001 is contract: the frontends do not reconnect on it.
pub mod close {
    /// Going away: server shutting down; reconnect (to another replica).
    pub const GOING_AWAY: u16 = 1001;
    /// A frame that breaks RFC 6455 (reserved bits or opcodes, an unmasked frame, a bad
    /// control or close frame, a continuation out of place).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A binary frame: the protocol is JSON text.
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// A text message that is not valid UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// A frame or message over `MAX_FRAME_BYTES`.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// Instance at `MAX_CONNECTIONS`: try again later (another replica).
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// No frame (not even a pong) within `CLIENT_TIMEOUT_SECS`.
    pub const IDLE_TIMEOUT: u16 = 4000;
    /// Missing, invalid or expired token at connect. Clients must not retry with the same token.
    pub const UNAUTHORIZED: u16 = 4001;
    /// The token expired during the session: reconnect with a fresh token.
    pub const TOKEN_EXPIRED: u16 = 4002;
    /// The client did not read fast enough: it fell out of the history window, its writes made
    /// no progress for `WRITE_TIMEOUT_SECS`, or (history off) its queue filled.
    pub const SLOW_CONSUMER: u16 = 4008;
    /// The user already has `MAX_CONNECTIONS_PER_USER` sessions on this instance.
    pub const TOO_MANY_CONNECTIONS: u16 = 4029;
    /// The token does not grant the workspace asked for with `?workspace_id=`.
    pub const FORBIDDEN: u16 = 4003;
    /// The client kept sending messages faster than `CLIENT_MESSAGES_PER_SEC` after being told
    /// (`rate_limited` errors): reconnecting is allowed.
    pub const RATE_LIMITED: u16 = 4009;
    /// Closed by the application (`POST /api/disconnect` without a code): reconnecting is
    /// allowed.
    pub const DISCONNECTED: u16 = 4010;
}

/// A message from the client: its `type`, and the fields the known types take. Unknown fields
/// are ignored (clients may send more than we read).
#[derive(Deserialize)]
pub struct ClientEnvelope<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: std::borrow::Cow<'a, str>,
    /// `join_room`, `leave_room`.
    #[serde(default, borrow)]
    pub room: Option<std::borrow::Cow<'a, str>>,
    /// `subscribe`, `unsubscribe`.
    #[serde(default)]
    pub event_types: Option<Vec<String>>,
    /// `rpc` (required), `publish` (optional): the client's id, echoed in the answer.
    #[serde(default, borrow)]
    pub id: Option<&'a RawValue>,
    /// `rpc`.
    #[serde(default, borrow)]
    pub method: Option<std::borrow::Cow<'a, str>>,
    /// `rpc`, `publish`.
    #[serde(default, borrow)]
    pub data: Option<&'a RawValue>,
    /// `publish`: the type the room's members get (default `message`).
    #[serde(default, borrow)]
    pub event_type: Option<std::borrow::Cow<'a, str>>,
    /// `publish`: delivered live only, never replayed (typing indicators).
    #[serde(default)]
    pub ephemeral: bool,
}

/// `{"room": R}` under `data`.
#[derive(Serialize)]
pub struct RoomData<'a> {
    pub room: &'a str,
}

/// `{"event_types": [...]}` under `data`: the session's filter after the change; empty means
/// every type.
#[derive(Serialize)]
pub struct FilterData<'a> {
    pub event_types: &'a [Box<str>],
}

/// Messages the service sends.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage<'a> {
    Connected {
        /// `connected` again, for clients that dispatch on `event`.
        event: &'static str,
        connection_id: &'a str,
        user_id: &'a str,
        workspace_id: Option<&'a str>,
        server_time: &'a str,
        timestamp: &'a str,
        /// The starting resume position.
        cursor: &'a str,
        /// For a resume (`since=`): whether everything missed is replayed (then
        /// `replayed` says how many); when false, `reason` says why and the client reloads.
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
        #[serde(skip_serializing_if = "Option::is_none")]
        replayed: Option<usize>,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'a str>,
    },
    JoinedRoom {
        data: RoomData<'a>,
    },
    LeftRoom {
        data: RoomData<'a>,
    },
    Subscribed {
        data: FilterData<'a>,
    },
    Unsubscribed {
        data: FilterData<'a>,
    },
    Pong {
        server_time: String,
        /// The session's current resume position.
        #[serde(skip_serializing_if = "Option::is_none")]
        cursor: Option<&'a str>,
    },
    Error {
        code: &'a str,
        message: &'a str,
        /// The `id` of the `publish` this error answers.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
    },
    /// The answer to an `rpc`.
    RpcResult {
        id: &'a RawValue,
        data: &'a RawValue,
    },
    /// An `rpc` that failed: `error.code` says why (see the README's RPC section).
    RpcError {
        id: &'a RawValue,
        error: ErrorBody<'a>,
    },
    /// A `publish` the broker acknowledged: it reaches the room's other members.
    Published {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
        data: PublishedData<'a>,
    },
    TaskUpdate {
        event: &'a str,
        task: &'a RawValue,
        id: &'a str,
        timestamp: &'a str,
        /// Where the client stands once it has this message (resume with `since=`).
        cursor: &'a str,
    },
    /// Sent every heartbeat to sessions that asked for resume positions: the current one.
    Heartbeat {
        cursor: &'a str,
        server_time: &'a str,
    },
    /// The answer to `{"type":"presence"}`.
    Presence {
        data: PresenceData<'a>,
    },
}

#[derive(Serialize)]
pub struct ErrorBody<'a> {
    pub code: &'a str,
    pub message: &'a str,
}

#[derive(Serialize)]
pub struct PublishedData<'a> {
    pub room: &'a str,
    /// The id the room's members get the publication with.
    pub event_id: &'a str,
}

/// The answer to a legacy request type: a generic event's shape without a position.
#[derive(Serialize)]
pub struct LegacyAnswer<'a> {
    #[serde(rename = "type")]
    pub kind: &'a str,
    pub event: &'a str,
    pub data: &'a RawValue,
}

/// Who published a client publication (stamped by the gateway).
#[derive(Serialize)]
pub struct FromData<'a> {
    pub user: &'a str,
}

/// Who is online in the session's workspace (or in one of its rooms), cluster-wide.
#[derive(Serialize)]
pub struct PresenceData<'a> {
    /// User ids, sorted, at most `PRESENCE_MAX_LISTED`.
    pub users: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workspace_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room: Option<&'a str>,
    /// More users are online than listed.
    pub truncated: bool,
}

/// A generic event as delivered: both `type` (the helpdesk frontend dispatches on it) and
/// `event` (the analytics frontend does) carry the event type, so one message serves both.
#[derive(Serialize)]
pub struct EventMessage<'a> {
    #[serde(rename = "type")]
    pub kind: &'a str,
    pub event: &'a str,
    pub data: &'a RawValue,
    pub id: &'a str,
    pub timestamp: &'a str,
    /// Absent in a snapshot's messages.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workspace_id: Option<&'a str>,
    /// A state event's key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<&'a str>,
    /// A state value sent because the session connected, joined or subscribed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<bool>,
    /// A client publication: who sent it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<FromData<'a>>,
}

impl EventMessage<'_> {
    pub fn to_text(&self) -> ByteString {
        // Serialising these types cannot fail: strings and an already valid JSON value.
        serde_json::to_string(self)
            .expect("event message serialises")
            .into()
    }
}

impl ServerMessage<'_> {
    pub fn to_text(&self) -> ByteString {
        // Serialising these types cannot fail: no maps with non-string keys, no floats.
        serde_json::to_string(self)
            .expect("server message serialises")
            .into()
    }
}

/// RFC 3339 UTC with milliseconds.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

pub fn now_rfc3339() -> String {
    rfc3339(SystemTime::now())
}
