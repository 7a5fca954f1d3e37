//! `POST /api/publish` on the internal listener: how a backend in any language hands events to
//! the gateway with one HTTP call.
//!
//! The body is one envelope or an array of them (task or generic, as on Kafka), at most
//! `PUBLISH_MAX_EVENTS` and `PUBLISH_MAX_BODY_BYTES`. Every event is validated before any is
//! written: one bad event refuses the request (400, naming each event and field at fault).
//! Each event gets an `id` (UUID v7) and `occurred_at` when it has none.
//!
//! - With Kafka configured, the events are written to `PUBLISH_TOPIC` (idempotent producer,
//!   `acks=all`) and the answer, 202 with the ids, comes once the broker acknowledged every one
//!   of them; every replica then delivers them from the topic. The record key keeps order where
//!   it matters: a room's events share a key, and so do a user's.
//! - A broker that does not acknowledge within `PUBLISH_TIMEOUT_MS` gives 503 with
//!   `Retry-After`, the ids that were written and the indexes that were not: never a silent
//!   loss. An event retried with the same `id` is delivered once (the de-duplication window).
//! - With no Kafka, the events are delivered by this replica only, and the answer says so.

use std::time::{Duration, SystemTime};

use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, value::RawValue, Value};
use subtle::ConstantTimeEq;
use task_events::Event;

use crate::config::Settings;
use crate::ingest::Origin;
use crate::AppState;

/// The Kafka side of the publish API.
pub struct Producer {
    producer: FutureProducer,
    topic: String,
    timeout: Duration,
}

impl Producer {
    /// A producer for `PUBLISH_TOPIC`, when Kafka is configured.
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Option<Self>> {
        let Some(topic) = settings.publish_topic() else {
            return Ok(None);
        };
        let timeout = Duration::from_millis(settings.api.publish_timeout_ms);
        let config = crate::ingest::kafka::producer_config(settings, "websocket-service-publish", timeout);
        Ok(Some(Producer {
            producer: config.create()?,
            topic: topic.to_string(),
            timeout,
        }))
    }
}

/// One event ready to go: its id, record key and JSON.
pub(crate) struct Ready {
    pub(crate) id: String,
    pub(crate) key: String,
    pub(crate) json: String,
    pub(crate) event: Event,
}

/// `POST /api/publish`.
pub async fn publish(req: HttpRequest, body: web::Payload, state: web::Data<AppState>) -> HttpResponse {
    let api = &state.settings.api;
    let Some(key) = api.key.as_deref().filter(|k| !k.is_empty()) else {
        return problem(
            404,
            "publish API off",
            "set SERVER_API_KEY (or PUBLISH_API_KEY) to turn the server API on",
            None,
        );
    };
    if !authorized(&req, key) {
        state.stats.api_publish("unauthorized", 1);
        let mut response = problem(
            401,
            "unauthorized",
            "send the server API key as `Authorization: Bearer <key>` or `X-API-Key`",
            None,
        );
        response.headers_mut().insert(
            actix_web::http::header::WWW_AUTHENTICATE,
            actix_web::http::header::HeaderValue::from_static("Bearer"),
        );
        return response;
    }
    let bytes = match read_bounded(body, api.publish_max_body_bytes).await {
        Ok(bytes) => bytes,
        Err(BodyError::TooLarge) => {
            state.stats.api_publish("too_large", 1);
            return problem(
                413,
                "body too large",
                &format!(
                    "the body is larger than PUBLISH_MAX_BODY_BYTES ({})",
                    api.publish_max_body_bytes
                ),
                None,
            );
        }
        Err(BodyError::Broken(error)) => return problem(400, "unreadable body", &error, None),
    };
    let events = match decode(&bytes, api.publish_max_events) {
        Ok(events) => events,
        Err((detail, errors)) => {
            state.stats.api_publish("invalid", 1);
            let extra = (!errors.is_empty()).then(|| json!({ "errors": errors }));
            return problem(400, "invalid events", &detail, extra);
        }
    };
    let count = events.len();
    match &state.publisher {
        Some(producer) => write_to_kafka(&state, producer, events).await,
        None => {
            let ids: Vec<String> = events.iter().map(|r| r.id.clone()).collect();
            for ready in events {
                state.router.route(ready.event, Origin::Api);
            }
            state.stats.api_publish("delivered_locally", count as u64);
            HttpResponse::Accepted().json(json!({
                "ids": ids,
                "delivery": "local",
                "note": "no Kafka is configured: delivered to the sessions of this replica only",
            }))
        }
    }
}

async fn write_to_kafka(state: &AppState, producer: &Producer, events: Vec<Ready>) -> HttpResponse {
    let sends = events.iter().map(|ready| {
        let record = FutureRecord::to(&producer.topic)
            .key(&ready.key)
            .payload(&ready.json);
        producer.producer.send(record, producer.timeout)
    });
    let results = futures_util::future::join_all(sends).await;
    let mut accepted = Vec::new();
    let mut failed = Vec::new();
    let mut last_error = None;
    for (i, (ready, result)) in events.iter().zip(results).enumerate() {
        match result {
            Ok(_) => accepted.push(ready.id.as_str()),
            Err((error, _)) => {
                failed.push(i);
                last_error = Some(error.to_string());
            }
        }
    }
    state.stats.api_publish("written", accepted.len() as u64);
    if failed.is_empty() {
        return HttpResponse::Accepted().json(json!({
            "ids": accepted,
            "delivery": "kafka",
            "topic": producer.topic,
        }));
    }
    state.stats.api_publish("broker_failed", failed.len() as u64);
    let error = last_error.unwrap_or_default();
    tracing::warn!(
        failed = failed.len(),
        written = accepted.len(),
        error,
        "publish: the broker did not acknowledge"
    );
    // What was written and what was not: retrying only the failed ones, or all of them with the
    // same ids (de-duplicated), loses nothing and delivers nothing twice.
    let mut response = problem(
        503,
        "broker unavailable",
        &format!(
            "the broker did not acknowledge {} of {} events: {error}",
            failed.len(),
            events.len()
        ),
        Some(json!({"accepted": accepted, "failed_indexes": failed})),
    );
    response.headers_mut().insert(
        actix_web::http::header::RETRY_AFTER,
        actix_web::http::header::HeaderValue::from_static("2"),
    );
    response
}

pub(crate) fn authorized(req: &HttpRequest, key: &str) -> bool {
    let headers = req.headers();
    let bearer = headers
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let header = headers.get("x-api-key").and_then(|v| v.to_str().ok());
    let given = bearer.or(header).unwrap_or_default();
    bool::from(given.as_bytes().ct_eq(key.as_bytes()))
}

enum BodyError {
    TooLarge,
    Broken(String),
}

/// Reads at most `limit` bytes of the body.
async fn read_bounded(mut body: web::Payload, limit: usize) -> Result<web::BytesMut, BodyError> {
    let mut bytes = web::BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| BodyError::Broken(e.to_string()))?;
        if bytes.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge);
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// Decodes and completes every event, or says what is wrong with each bad one.
pub(crate) fn decode(bytes: &[u8], max_events: usize) -> Result<Vec<Ready>, (String, Vec<Value>)> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    let items: Vec<&RawValue> = match first {
        Some(b'[') => serde_json::from_slice(bytes)
            .map_err(|e| (format!("the body is not a JSON array of events: {e}"), vec![]))?,
        Some(b'{') => vec![serde_json::from_slice(bytes)
            .map_err(|e| (format!("the body is not a JSON event: {e}"), vec![]))?],
        _ => {
            return Err((
                "the body must be a JSON object (one event) or an array of them".into(),
                vec![],
            ))
        }
    };
    if items.is_empty() {
        return Err(("the array holds no event".into(), vec![]));
    }
    if items.len() > max_events {
        return Err((
            format!(
                "{} events in one request; at most {max_events} (PUBLISH_MAX_EVENTS)",
                items.len()
            ),
            vec![],
        ));
    }
    let mut ready = Vec::with_capacity(items.len());
    let mut errors = Vec::new();
    for (index, raw) in items.iter().enumerate() {
        match Event::from_json(raw.get().as_bytes()) {
            Ok(event) => ready.push(complete(event)),
            Err(error) => {
                let field = match &error {
                    task_events::DecodeError::Missing(f) => Some(*f),
                    task_events::DecodeError::Invalid { field, .. }
                    | task_events::DecodeError::Field { field, .. } => Some(*field),
                    task_events::DecodeError::Json(_) => None,
                };
                errors.push(json!({"index": index, "field": field, "detail": error.to_string()}));
            }
        }
    }
    if !errors.is_empty() {
        let detail = format!(
            "{} of {} events are invalid; none was published",
            errors.len(),
            items.len()
        );
        errors.truncate(20);
        return Err((detail, errors));
    }
    Ok(ready)
}

/// Sets the id and time an event lacks, and picks its record key: one room's events share a key,
/// then one user's; a broader audience shares the workspace's key or the broadcast key.
fn complete(mut event: Event) -> Ready {
    let now = || humantime::format_rfc3339_millis(SystemTime::now()).to_string();
    let new_id = || uuid::Uuid::now_v7().to_string();
    let (id, key, json) = match &mut event {
        Event::Task(task) => {
            let id = task.id.get_or_insert_with(new_id).clone();
            task.occurred_at.get_or_insert_with(now);
            // Serialising a decoded event cannot fail.
            let json = serde_json::to_string(task).expect("task event serialises");
            (id, task.partition_key(), json)
        }
        Event::Generic(generic) => {
            let id = generic.id.get_or_insert_with(new_id).clone();
            generic.occurred_at.get_or_insert_with(now);
            let json = serde_json::to_string(&*generic).expect("generic event serialises");
            (id, generic.partition_key(), json)
        }
    };
    Ready { id, key, json, event }
}

/// An RFC 9457 problem answer; `extra` (an object) adds fields.
pub(crate) fn problem(status: u16, title: &str, detail: &str, extra: Option<Value>) -> HttpResponse {
    let status =
        actix_web::http::StatusCode::from_u16(status).unwrap_or(actix_web::http::StatusCode::BAD_REQUEST);
    let mut body =
        json!({"type": "about:blank", "title": title, "status": status.as_u16(), "detail": detail});
    if let (Some(body), Some(Value::Object(extra))) = (body.as_object_mut(), extra) {
        body.extend(extra);
    }
    HttpResponse::build(status)
        .content_type("application/problem+json")
        .body(body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_keys_keep_a_room_or_a_user_in_order() {
        let key = |json: &str| Event::from_json(json.as_bytes()).unwrap().partition_key();
        assert_eq!(
            key(r#"{"event_type":"x","data":1,"to":{"room":"r","workspace":"w"}}"#),
            "room:w/r"
        );
        assert_eq!(
            key(r#"{"event_type":"x","data":1,"to":{"rooms":["r"],"user":"u"}}"#),
            "room:/r"
        );
        assert_eq!(key(r#"{"event_type":"x","data":1,"to":{"users":["u"]}}"#), "u");
        assert_eq!(
            key(r#"{"event_type":"x","data":1,"to":{"users":["u","v"],"workspace":"w"}}"#),
            "workspace:w"
        );
        assert_eq!(
            key(r#"{"event_type":"x","data":1,"to":{"all":true}}"#),
            "broadcast"
        );
    }

    #[test]
    fn bad_bodies_name_each_bad_event() {
        let (detail, errors) = decode(
            br#"[{"event_type":"x","data":1,"to":{"all":true}},{"event_type":"x","data":1,"to":{"romm":"a"}},{"event_type":"t","task":{}}]"#,
            10,
        )
        .err()
        .unwrap();
        assert_eq!(detail, "2 of 3 events are invalid; none was published");
        assert_eq!(errors[0]["index"], 1);
        assert_eq!(errors[0]["field"], "to");
        assert_eq!(errors[1]["field"], "user_id");
        assert!(decode(b"[]", 10).is_err());
        assert!(decode(b"\"x\"", 10).is_err());
        let many = format!(
            "[{}]",
            [r#"{"event_type":"x","data":1,"to":{"all":true}}"#; 11].join(",")
        );
        assert!(decode(many.as_bytes(), 10)
            .err()
            .unwrap()
            .0
            .contains("at most 10"));
    }

    #[test]
    fn ids_and_times_are_filled_in_and_kept() {
        let events = decode(
            br#"{"event_type":"x","data":1,"to":{"all":true},"id":"mine"}"#,
            10,
        )
        .ok()
        .unwrap();
        assert_eq!(events[0].id, "mine");
        assert!(events[0].json.contains(r#""occurred_at""#));
        let events = decode(br#"{"event_type":"task.created","user_id":"7","task":{}}"#, 10)
            .ok()
            .unwrap();
        assert_eq!(events[0].key, "7");
        assert_eq!(events[0].id.len(), 36);
    }
}
