//! The Dapr pub/sub path: the sidecar discovers the subscription at `GET /dapr/subscribe` and
//! delivers events to `POST <DAPR_ROUTE>` (`docs/dapr-contract.md`).
//!
//! The answers follow the sidecar's rules: `SUCCESS` once an event is routed (whether or not its
//! user is connected here), `DROP` for what can never succeed. A bad event is never answered with
//! an error status: the sidecar would retry it forever and block its partition. `RETRY` is never
//! sent: routing only queues into bounded mailboxes and cannot fail for a passing reason.

use actix_web::http::header::HeaderMap;
use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, value::RawValue, Value};
use subtle::ConstantTimeEq;

use crate::ingest::Origin;
use crate::AppState;

/// Largest delivery body read (a bulk delivery holds up to `DAPR_BULK_MAX_MESSAGES` events).
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

const SUCCESS: &str = "SUCCESS";
const DROP: &str = "DROP";

/// `GET /dapr/subscribe`: the programmatic subscription, or `[]` when the deployment declares a
/// Subscription resource instead (`DAPR_SUBSCRIBE=false`).
pub async fn subscribe(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let d = &state.settings.dapr;
    if !d.enabled {
        warn_once(
            &SUBSCRIBE_WHILE_OFF,
            "a Dapr sidecar asked for subscriptions but DAPR_ENABLED is false: answering none",
        );
        return HttpResponse::Ok().json(json!([]));
    }
    if let Some(refused) = refuse_without_app_token(&req, &state) {
        return refused;
    }
    if !d.subscribe {
        return HttpResponse::Ok().json(json!([]));
    }
    let mut subscription = json!({
        "pubsubname": d.pubsub_name,
        "topic": d.topic,
        // `route` for sidecars that predate `routes`; `routes.default` wins where both exist.
        "route": d.route,
        "routes": {"default": d.route},
    });
    if let Some(topic) = d.dead_letter_topic.as_deref().filter(|t| !t.is_empty()) {
        subscription["deadLetterTopic"] = json!(topic);
    }
    if d.bulk_subscribe {
        subscription["bulkSubscribe"] = json!({
            "enabled": true,
            "maxMessagesCount": d.bulk_max_messages,
            "maxAwaitDurationMs": d.bulk_max_await_ms,
        });
    }
    HttpResponse::Ok().json(json!([subscription]))
}

/// `POST <DAPR_ROUTE>`: one event (CloudEvent, raw payload, or a bare envelope), or a bulk
/// delivery.
pub async fn deliver(req: HttpRequest, body: web::Bytes, state: web::Data<AppState>) -> HttpResponse {
    if !state.settings.dapr.enabled {
        // Never 404 (the sidecar would drop the event for good) and never SUCCESS (nothing is
        // delivered): 503, which the sidecar retries until the operator turns delivery on.
        warn_once(
            &DELIVERY_WHILE_OFF,
            "a Dapr delivery arrived but DAPR_ENABLED is false: answering 503 so the sidecar retries",
        );
        state.stats.dapr_answer("DISABLED");
        return HttpResponse::ServiceUnavailable()
            .insert_header(("Retry-After", "5"))
            .json(json!({"error": "dapr delivery is not enabled on this gateway (DAPR_ENABLED)"}));
    }
    if let Some(refused) = refuse_without_app_token(&req, &state) {
        return refused;
    }
    let origin = origin_from(req.headers());
    note_keyless(&state, req.headers());
    let mut router = Routing(&state);
    match answer(&body, origin, &mut router) {
        Answer::Bulk(answers) => {
            let statuses: Vec<Value> = answers.into_iter().flatten().collect();
            HttpResponse::Ok().json(json!({ "statuses": statuses }))
        }
        Answer::One(answer) => status(&state, answer),
    }
}

/// The gateway's side of a delivery: its router, its counters.
struct Routing<'s>(&'s AppState);

impl Deliver for Routing<'_> {
    fn route(&mut self, bytes: &[u8], origin: Origin<'_>) -> &'static str {
        match self.0.router.route_bytes(bytes, origin) {
            Ok(_) => SUCCESS,
            Err(_) => DROP,
        }
    }

    fn malformed(&mut self, origin: &Origin<'_>, reason: &dyn std::fmt::Display) {
        self.0.stats.event_malformed(origin, reason);
    }

    fn answered(&mut self, answer: &'static str) {
        count(self.0, answer);
    }
}

/// Where a delivery's records go once its body is read: the router in the gateway, a decoder
/// in tests and fuzz targets. Keeps the reading of bodies free of the gateway's state.
pub(crate) trait Deliver {
    /// Routes one record value; `SUCCESS` or `DROP`.
    fn route(&mut self, bytes: &[u8], origin: Origin<'_>) -> &'static str;
    /// Counts a body, entry or record that is not an event.
    fn malformed(&mut self, origin: &Origin<'_>, reason: &dyn std::fmt::Display);
    /// Counts a bulk entry's answer (a single delivery's is counted by the caller).
    fn answered(&mut self, _answer: &'static str) {}
}

/// What a delivery is answered with.
#[derive(Debug)]
pub(crate) enum Answer {
    /// A single delivery: `{"status": ..}`.
    One(&'static str),
    /// A bulk delivery: per entry, in order, its `{"entryId": .., "status": ..}`, or `None` for
    /// an entry that cannot be answered (not an object, or no `entryId`).
    Bulk(Vec<Option<Value>>),
}

/// Reads a delivery body (a CloudEvent, a raw payload, a bare envelope or a bulk delivery) and
/// hands each record it holds to `to`.
pub(crate) fn answer(body: &[u8], origin: Origin<'_>, to: &mut impl Deliver) -> Answer {
    let Ok(probe) = serde_json::from_slice::<Probe<'_>>(body) else {
        to.malformed(&origin, &"body is not a JSON object");
        return Answer::One(DROP);
    };
    if probe.kind.as_deref() == Some(BULK_TYPE) {
        if let Some(entries) = probe.entries {
            return Answer::Bulk(entries.into_iter().map(|raw| bulk_entry(raw, to)).collect());
        }
    }
    Answer::One(match probe.data_base64 {
        // Raw payload: the record bytes themselves, base64-encoded.
        Some(encoded) if probe.data.is_none() => route_raw(to, &encoded, origin),
        _ => to.route(body, origin),
    })
}

const BULK_TYPE: &str = "com.dapr.event.sent.bulk";

/// A delivery of a Kafka record without a key (`__partition` present, `__key` absent): counted
/// like one read from Kafka, and warned about once.
fn note_keyless(state: &AppState, headers: &HeaderMap) {
    if headers.contains_key("__partition") && !headers.contains_key("__key") {
        // The label is the subscribed topic or `other`: a header's value is not a label, as
        // every new one would be a series kept for good.
        let topic = match headers.get("__topic").and_then(|v| v.to_str().ok()) {
            Some(topic) if topic == state.settings.dapr.topic => topic,
            Some(_) => "other",
            None => "unknown",
        };
        state.stats.kafka_keyless(topic);
        warn_once(
            &KEYLESS_DELIVERY,
            "a Dapr delivery of a Kafka record without a key: one user's events may be spread over \
             partitions and arrive out of order; publish with ?metadata.partitionKey=<user id>",
        );
    }
}

/// Answers a POST to a path this listener does not serve. One that looks like a Dapr delivery
/// gets 503, which the sidecar retries: a 404 would make it drop the event for good. Logged
/// once per path (at most 32 paths).
pub async fn unknown_route(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let headers = req.headers();
    let from_dapr = req.method() == actix_web::http::Method::POST
        && (headers.contains_key("pubsubname")
            || headers.contains_key("dapr-api-token")
            || headers
                .get(actix_web::http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|ct| ct.starts_with("application/cloudevents")));
    if !from_dapr {
        return HttpResponse::NotFound().json(json!({"error": "not found"}));
    }
    let path = req.path().chars().take(256).collect::<String>();
    let first = {
        let mut seen = UNKNOWN_PATHS.lock();
        seen.len() < 32 && seen.insert(path.clone())
    };
    if first {
        tracing::warn!(
            path,
            dapr_route = %state.settings.dapr.route,
            "a Dapr delivery to a path this gateway does not serve: answering 503 so the sidecar \
             retries; point the subscription's route at DAPR_ROUTE"
        );
    }
    state.stats.dapr_answer("UNKNOWN_ROUTE");
    HttpResponse::ServiceUnavailable()
        .insert_header(("Retry-After", "5"))
        .json(json!({"error": "no Dapr delivery route here", "dapr_route": state.settings.dapr.route}))
}

static UNKNOWN_PATHS: std::sync::LazyLock<parking_lot::Mutex<std::collections::HashSet<String>>> =
    std::sync::LazyLock::new(Default::default);
static KEYLESS_DELIVERY: std::sync::Once = std::sync::Once::new();
static SUBSCRIBE_WHILE_OFF: std::sync::Once = std::sync::Once::new();
static DELIVERY_WHILE_OFF: std::sync::Once = std::sync::Once::new();

fn warn_once(once: &'static std::sync::Once, message: &'static str) {
    once.call_once(|| tracing::warn!("{message}"));
}

/// The fields that tell the delivery's shape apart; everything else is read later. Entries stay
/// raw, so that one malformed entry is answered on its own instead of failing the body.
#[derive(Deserialize)]
struct Probe<'a> {
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    data_base64: Option<String>,
    #[serde(borrow)]
    entries: Option<Vec<&'a RawValue>>,
}

/// One bulk entry, read leniently: only a missing `entryId` makes it unanswerable.
#[derive(Deserialize)]
struct BulkEntry<'a> {
    #[serde(rename = "entryId", borrow)]
    entry_id: Option<&'a RawValue>,
    /// A CloudEvent object, or (raw payload mode) the record bytes as a base64 string.
    #[serde(borrow)]
    event: Option<&'a RawValue>,
    /// Usually an object of strings; anything else (null included) counts as empty.
    #[serde(default)]
    metadata: Value,
}

/// One bulk entry's answer, or `None` when it has no id to answer with.
fn bulk_entry(raw: &RawValue, to: &mut impl Deliver) -> Option<Value> {
    let Ok(entry) = serde_json::from_str::<BulkEntry<'_>>(raw.get()) else {
        // Not an object: there is no id to answer, and the sidecar retries what it gets no
        // answer for. A real sidecar never sends this.
        to.malformed(&Origin::dapr_unknown(), &"bulk entry is not an object");
        return None;
    };
    let Some(entry_id) = entry.entry_id.filter(|id| id.get() != "null") else {
        to.malformed(&Origin::dapr_unknown(), &"bulk entry without an entryId");
        return None;
    };
    let origin = origin_from_metadata(&entry.metadata);
    let answer = if !entry_id.get().starts_with('"') {
        // Dapr's entry ids are strings; answer the odd one with its id as given.
        to.malformed(&origin, &"bulk entryId is not a string");
        DROP
    } else {
        match entry.event.map(RawValue::get) {
            Some(raw) if raw.starts_with('"') => match serde_json::from_str::<String>(raw) {
                Ok(encoded) => route_raw(to, &encoded, origin),
                Err(_) => DROP,
            },
            Some(raw) if raw.starts_with('{') => to.route(raw.as_bytes(), origin),
            _ => {
                to.malformed(&origin, &"bulk entry without an event");
                DROP
            }
        }
    };
    to.answered(answer);
    Some(json!({"entryId": entry_id, "status": answer}))
}

fn route_raw(to: &mut impl Deliver, encoded: &str, origin: Origin<'_>) -> &'static str {
    match base64::engine::general_purpose::STANDARD.decode(encoded) {
        Ok(bytes) => to.route(&bytes, origin),
        Err(error) => {
            to.malformed(&origin, &format!("data_base64: {error}"));
            DROP
        }
    }
}

fn status(state: &AppState, answer: &'static str) -> HttpResponse {
    count(state, answer);
    HttpResponse::Ok().json(json!({"status": answer}))
}

fn count(state: &AppState, answer: &str) {
    state.stats.dapr_answer(answer);
}

/// When `APP_API_TOKEN` is set, the request must carry it in `dapr-api-token` (compared in
/// constant time). Returns the 401 to answer when it does not.
fn refuse_without_app_token(req: &HttpRequest, state: &AppState) -> Option<HttpResponse> {
    let expected = state
        .settings
        .dapr
        .app_api_token
        .as_deref()
        .filter(|t| !t.is_empty())?;
    let given = req
        .headers()
        .get("dapr-api-token")
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if bool::from(given.ct_eq(expected.as_bytes())) {
        return None;
    }
    state.stats.dapr_answer("UNAUTHORIZED");
    tracing::warn!(path = req.path(), "dapr request refused: invalid app token");
    Some(HttpResponse::Unauthorized().json(json!({"error": "invalid api token"})))
}

/// The sidecar names the Kafka record in `__topic`, `__partition`, `__offset` and `__timestamp`.
fn origin_from(headers: &HeaderMap) -> Origin<'_> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    Origin::Dapr {
        topic: get("__topic"),
        partition: get("__partition").and_then(|v| v.parse().ok()),
        offset: get("__offset").and_then(|v| v.parse().ok()),
        timestamp_ms: get("__timestamp").and_then(|v| v.parse().ok()),
    }
}

fn origin_from_metadata(metadata: &Value) -> Origin<'_> {
    let get = |name: &str| metadata.get(name);
    let text = |name: &str| get(name).and_then(Value::as_str);
    // The sidecar sends strings; accept numbers too.
    let number = |name: &str| {
        get(name).and_then(|v| match v {
            Value::String(s) => s.parse().ok(),
            Value::Number(n) => n.as_i64(),
            _ => None,
        })
    };
    Origin::Dapr {
        topic: text("__topic"),
        partition: number("__partition").and_then(|p| i32::try_from(p).ok()),
        offset: number("__offset"),
        timestamp_ms: number("__timestamp"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Routes by decoding, as the router does, and counts what is malformed.
    #[derive(Default)]
    struct Decode {
        malformed: Vec<String>,
        answered: usize,
    }

    impl Deliver for Decode {
        fn route(&mut self, bytes: &[u8], _origin: Origin<'_>) -> &'static str {
            match task_events::Event::from_json(bytes) {
                Ok(_) => SUCCESS,
                Err(_) => DROP,
            }
        }
        fn malformed(&mut self, _origin: &Origin<'_>, reason: &dyn std::fmt::Display) {
            self.malformed.push(reason.to_string());
        }
        fn answered(&mut self, _answer: &'static str) {
            self.answered += 1;
        }
    }

    fn read(body: &Value) -> (Answer, Decode) {
        let mut to = Decode::default();
        let answer = answer(body.to_string().as_bytes(), Origin::dapr_unknown(), &mut to);
        (answer, to)
    }

    #[test]
    fn single_deliveries() {
        let event = json!({"event_type": "task.created", "user_id": "u", "task": {}});
        let cloudevent = json!({"specversion": "1.0", "id": "ce-1", "data": event});
        let raw = json!({"specversion": "1.0", "id": "w", "data_base64":
            base64::engine::general_purpose::STANDARD.encode(event.to_string())});
        for body in [&event, &cloudevent, &raw] {
            assert!(matches!(read(body).0, Answer::One(SUCCESS)), "{body}");
        }
        let (answer, to) = read(&json!({"specversion": "1.0", "data_base64": "%%%"}));
        assert!(matches!(answer, Answer::One(DROP)));
        assert!(to.malformed[0].starts_with("data_base64"), "{:?}", to.malformed);
        let mut to = Decode::default();
        assert!(matches!(
            super::answer(b"[1]", Origin::dapr_unknown(), &mut to),
            Answer::One(DROP)
        ));
        assert_eq!(to.malformed, ["body is not a JSON object"]);
    }

    #[test]
    fn bulk_entries_are_answered_in_order_each_once() {
        let good = json!({"event_type": "task.created", "user_id": "u", "task": {}});
        let body = json!({"type": BULK_TYPE, "entries": [
            {"entryId": "e1", "event": {"specversion": "1.0", "id": "b-1", "data": good}},
            1,
            {"entryId": "e2", "event": base64::engine::general_purpose::STANDARD.encode(good.to_string())},
            {"event": good},
            {"entryId": 3, "event": good},
            {"entryId": "e4", "event": {"user_id": "u"}},
            {"entryId": "e5"},
        ]});
        let (Answer::Bulk(answers), to) = read(&body) else {
            panic!("not read as bulk")
        };
        assert_eq!(
            answers,
            [
                Some(json!({"entryId": "e1", "status": SUCCESS})),
                None,
                Some(json!({"entryId": "e2", "status": SUCCESS})),
                None,
                Some(json!({"entryId": 3, "status": DROP})),
                Some(json!({"entryId": "e4", "status": DROP})),
                Some(json!({"entryId": "e5", "status": DROP})),
            ]
        );
        assert_eq!(to.answered, 5);
        assert_eq!(to.malformed.len(), 4, "{:?}", to.malformed);
    }
}
