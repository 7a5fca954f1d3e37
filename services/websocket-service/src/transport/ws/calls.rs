//! A session's messages to backends: `rpc`, `publish` and legacy request types.
//!
//! Each is checked here at once (shape, size, authorization that needs no backend, the
//! session's in-flight and publication limits) and answered with an error when it fails; else a
//! task does the work and sends exactly one answer frame back to the session, which writes it in
//! its loop. The session keeps reading, writing events and answering pings meanwhile.

use std::sync::Arc;

use bytestring::ByteString;
use serde_json::value::RawValue;

use super::{error, Connection};
use crate::protocol::{ClientEnvelope, ErrorBody, LegacyAnswer, PublishedData, ServerMessage};
use crate::upstream::routes::{valid_method, Legacy, Policy};
use crate::upstream::{Caller, Failure, RESERVED_TYPES};

/// A session's calls to backends, made at its first one.
pub(super) struct Calls {
    answers: tokio::sync::mpsc::Sender<ByteString>,
    pub(super) inbox: tokio::sync::mpsc::Receiver<ByteString>,
    /// Calls and publications not answered yet: at most `RPC_MAX_IN_FLIGHT`, the channel's
    /// capacity, so an answer never waits for room.
    pub(super) in_flight: usize,
    /// `CLIENT_PUBLISH_PER_SEC`.
    publishes: Option<governor::DefaultDirectRateLimiter>,
}

/// Longest client `id`, in bytes of JSON.
const MAX_ID_BYTES: usize = 130;

fn valid_id(id: &RawValue) -> bool {
    let text = id.get();
    text.len() <= MAX_ID_BYTES && (text.starts_with('"') || text.parse::<f64>().is_ok())
}

fn rpc_error(id: &RawValue, failure: &Failure) -> ByteString {
    ServerMessage::RpcError {
        id,
        error: ErrorBody {
            code: &failure.code,
            message: &failure.message,
        },
    }
    .to_text()
}

fn error_with_id(code: &str, message: &str, id: Option<&RawValue>) -> ByteString {
    ServerMessage::Error { code, message, id }.to_text()
}

const NULL: &str = "null";

/// The answer to a message refused before it was read (the session's message rate): an `rpc`
/// still gets its `rpc_error` and a `publish` its `error` with its `id`, so a client can tell
/// which one failed.
pub(crate) fn refused(text: &str, code: &str, message: &str) -> ByteString {
    let envelope = serde_json::from_str::<ClientEnvelope<'_>>(text).ok();
    let id = envelope.as_ref().and_then(|e| e.id.filter(|id| valid_id(id)));
    match (envelope.as_ref().map(|e| e.kind.as_ref()), id) {
        (Some("rpc"), Some(id)) => rpc_error(id, &Failure::new(code, message)),
        (Some("publish"), id) => error_with_id(code, message, id),
        _ => error(code, message),
    }
}

impl Connection {
    /// Who calls, from the verified token; `None` for an anonymous session (it calls nothing).
    fn caller(&self) -> Option<Caller> {
        let slot = &self.slot.slot;
        let profile = self.state.registry.profile_of(slot.id())?;
        (!profile.anonymous).then_some(Caller {
            user: profile.user,
            session: profile.session,
            workspace: profile.workspace,
            roles: profile.roles,
        })
    }

    /// The session's calls, made at the first one.
    fn calls(&mut self) -> &mut Calls {
        let upstream = &self.state.settings.upstream;
        self.calls.get_or_insert_with(|| {
            let (answers, inbox) = tokio::sync::mpsc::channel(upstream.max_in_flight);
            Box::new(Calls {
                answers,
                inbox,
                in_flight: 0,
                publishes: crate::transport::admission::limiter(
                    upstream.publish_per_sec,
                    upstream.publish_burst,
                ),
            })
        })
    }

    /// A slot for one more call, or the failure to answer with.
    fn reserve(&mut self) -> Result<tokio::sync::mpsc::Sender<ByteString>, Failure> {
        let max = self.state.settings.upstream.max_in_flight;
        let calls = self.calls();
        if calls.in_flight >= max {
            return Err(Failure::new(
                "too_many_requests",
                format!("{max} calls are waiting already (RPC_MAX_IN_FLIGHT)"),
            ));
        }
        calls.in_flight += 1;
        Ok(calls.answers.clone())
    }

    /// `{"type":"rpc","id":..,"method":M,"data":..}`.
    pub(super) fn rpc(&mut self, envelope: &ClientEnvelope<'_>) -> Option<ByteString> {
        let Some(id) = envelope.id.filter(|id| valid_id(id)) else {
            return Some(error(
                "invalid_message",
                "rpc needs an `id`: a string or a number, at most 128 characters",
            ));
        };
        let stats = self.state.stats.clone();
        let fail = |code: &str, message: &str| {
            stats.rpc_call("none", code, Default::default());
            Some(rpc_error(id, &Failure::new(code, message)))
        };
        let Some(method) = envelope.method.as_deref().filter(|m| valid_method(m)) else {
            return fail(
                "invalid_request",
                "rpc needs a `method`: 1 to 128 letters, digits or _ - . : /",
            );
        };
        let data = envelope.data.map_or(NULL, RawValue::get);
        if data.len() > self.state.settings.upstream.max_data_bytes {
            return fail(
                "request_too_large",
                "`data` is larger than UPSTREAM_MAX_DATA_BYTES",
            );
        }
        let Some(caller) = self.caller() else {
            return fail("forbidden", "an anonymous session cannot call backends");
        };
        if self.state.upstream.routes().backend(method).is_none() {
            return fail("unknown_method", "no backend answers this method");
        }
        let answers = match self.reserve() {
            Ok(answers) => answers,
            Err(failure) => return fail(&failure.code, &failure.message),
        };
        let upstream = self.state.upstream.clone();
        let (id, method) = (id.to_owned(), method.to_string());
        let data = RawValue::from_string(data.to_string()).expect("a part of valid JSON is valid JSON");
        actix_web::rt::spawn(async move {
            let frame = match upstream.call(&caller, &method, &data).await {
                Ok(answer) => ServerMessage::RpcResult {
                    id: &id,
                    data: &answer,
                }
                .to_text(),
                Err(failure) => rpc_error(&id, &failure),
            };
            // Never full: the channel holds as many answers as calls may wait. A session that
            // ended has no one to tell.
            let _ = answers.try_send(frame);
        });
        None
    }

    /// A legacy request type: the whole message is the data of the mapped method, and the
    /// answer is `{"type": answer_type, "event": answer_type, "data": ..}`.
    pub(super) fn legacy(&mut self, legacy: &Legacy, text: &str) -> Option<ByteString> {
        if text.len() > self.state.settings.upstream.max_data_bytes {
            return Some(error(
                "request_too_large",
                "the message is larger than UPSTREAM_MAX_DATA_BYTES",
            ));
        }
        let Some(caller) = self.caller() else {
            return Some(error("forbidden", "an anonymous session cannot call backends"));
        };
        let answers = match self.reserve() {
            Ok(answers) => answers,
            Err(failure) => return Some(error(&failure.code, &failure.message)),
        };
        let upstream = self.state.upstream.clone();
        let legacy = legacy.clone();
        let data = RawValue::from_string(text.to_string()).expect("a parsed message is valid JSON");
        actix_web::rt::spawn(async move {
            let frame = match upstream.call(&caller, &legacy.method, &data).await {
                Ok(answer) => serde_json::to_string(&LegacyAnswer {
                    kind: &legacy.answer_type,
                    event: &legacy.answer_type,
                    data: &answer,
                })
                .expect("an answer serialises")
                .into(),
                Err(failure) => error(&failure.code, &failure.message),
            };
            let _ = answers.try_send(frame);
        });
        None
    }

    /// `{"type":"publish","room":R,"data":..,"event_type":T,"ephemeral":b,"id":..}`.
    pub(super) fn publish(&mut self, envelope: &ClientEnvelope<'_>) -> Option<ByteString> {
        let id = envelope.id.filter(|id| valid_id(id));
        let stats = self.state.stats.clone();
        let fail = |code: &str, message: &str| {
            stats.client_publish(code);
            Some(error_with_id(code, message, id))
        };
        let Some(room) = envelope
            .room
            .as_deref()
            .filter(|r| task_events::valid_room_name(r))
        else {
            return fail(
                "invalid_room",
                "publish needs a `room`: 1 to 128 letters, digits or _ - . : @ /",
            );
        };
        let Some(data) = envelope.data else {
            return fail("invalid_message", "publish needs `data`");
        };
        if data.get().len() > self.state.settings.upstream.max_data_bytes {
            return fail(
                "request_too_large",
                "`data` is larger than UPSTREAM_MAX_DATA_BYTES",
            );
        }
        let event_type = envelope.event_type.as_deref().unwrap_or("message");
        if !valid_method(event_type) || RESERVED_TYPES.contains(&event_type) {
            return fail(
                "invalid_message",
                "`event_type` must be 1 to 128 letters, digits or _ - . : / and not a type of the protocol",
            );
        }
        let Some(caller) = self.caller() else {
            return fail("forbidden", "an anonymous session cannot publish");
        };
        if !self.state.upstream.can_publish() {
            return fail(
                "unavailable",
                "client publications need Kafka, which this gateway does not use",
            );
        }
        let check = match self.state.upstream.routes().publish_policy(room) {
            Policy::Deny => return fail("forbidden", "publishing to this room is not allowed"),
            Policy::Members if !self.state.registry.is_in_room(self.slot.slot.id(), room) => {
                return fail("forbidden", "join the room first")
            }
            Policy::Members => None,
            Policy::Rpc(method) => Some(method.clone()),
        };
        let limited = self
            .calls()
            .publishes
            .as_ref()
            .is_some_and(|l| l.check().is_err());
        if limited {
            self.state.stats.rate_limited("publish");
            return fail(
                "rate_limited",
                "too many publications (CLIENT_PUBLISH_PER_SEC): this one was not sent",
            );
        }
        let answers = match self.reserve() {
            Ok(answers) => answers,
            Err(failure) => return fail(&failure.code, &failure.message),
        };
        let upstream = self.state.upstream.clone();
        let id = id.map(RawValue::to_owned);
        let (room, event_type) = (room.to_string(), event_type.to_string());
        let data = data.to_owned();
        let ephemeral = envelope.ephemeral;
        actix_web::rt::spawn(async move {
            let result = publish(&upstream, &caller, check, &room, &event_type, &data, ephemeral).await;
            let stats = upstream.stats();
            let frame = match result {
                Ok(event_id) => {
                    stats.client_publish("published");
                    ServerMessage::Published {
                        id: id.as_deref(),
                        data: PublishedData {
                            room: &room,
                            event_id: &event_id,
                        },
                    }
                    .to_text()
                }
                Err(failure) => {
                    stats.client_publish(&failure.code);
                    error_with_id(&failure.code, &failure.message, id.as_deref())
                }
            };
            let _ = answers.try_send(frame);
        });
        None
    }
}

/// Asks the room's backend when its policy says so, then writes the publication.
async fn publish(
    upstream: &Arc<crate::upstream::Upstream>,
    caller: &Caller,
    check: Option<String>,
    room: &str,
    event_type: &str,
    data: &RawValue,
    ephemeral: bool,
) -> Result<String, Failure> {
    if let Some(method) = check {
        let question = serde_json::json!({"room": room, "event_type": event_type, "data": data});
        let question = serde_json::value::to_raw_value(&question).expect("a question serialises");
        upstream
            .call(caller, &method, &question)
            .await
            .map_err(|f| match f.code.as_str() {
                // The backend said no: its reason, as a refusal.
                "timeout"
                | "backend_unavailable"
                | "backend_error"
                | "unknown_method"
                | "response_too_large" => f,
                _ => Failure::new("forbidden", f.message),
            })?;
    }
    upstream.publish(caller, room, event_type, data, ephemeral).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_rpc_or_publish_is_answered_with_its_id() {
        let v = |b: ByteString| serde_json::from_str::<serde_json::Value>(&b).unwrap();
        let rpc = v(refused(
            r#"{"type":"rpc","id":7,"method":"m"}"#,
            "rate_limited",
            "slow down",
        ));
        assert_eq!(rpc["type"], "rpc_error");
        assert_eq!(
            (rpc["id"].as_u64(), rpc["error"]["code"].as_str()),
            (Some(7), Some("rate_limited"))
        );
        let publish = v(refused(
            r#"{"type":"publish","id":"p","room":"r"}"#,
            "rate_limited",
            "x",
        ));
        assert_eq!(
            (publish["type"].as_str(), publish["id"].as_str()),
            (Some("error"), Some("p"))
        );
        let other = v(refused(r#"{"type":"ping"}"#, "rate_limited", "x"));
        assert_eq!((other["type"].as_str(), other.get("id")), (Some("error"), None));
        let garbage = v(refused("not json", "rate_limited", "x"));
        assert_eq!(garbage["code"], "rate_limited");
    }
}
