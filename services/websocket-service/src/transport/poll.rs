//! Long polling: `GET /events/poll?since=<cursor>&wait=<seconds>`, for clients that can hold
//! neither a WebSocket nor an event stream.
//!
//! The same admission and audience as the other transports (`token`, `workspace_id`, `rooms`,
//! `event_types`). It answers `{"events":[...],"cursor":"...","recovered":bool}` at once when
//! something is there, else when an event arrives or `wait` (at most `POLL_MAX_WAIT_SECS`)
//! passes. The next poll passes the answer's `cursor` as `since`, and gets exactly what came
//! after, from any replica. `since` may also be a Unix time in seconds (fractional: the budget
//! app's kind): events that happened after it, as far as the history reaches. Without `since`,
//! the poll starts now. `recovered: false` (with `reason`) says the position could not be
//! honoured: the client reloads its state and goes on from the answer's cursor.

use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};

use crate::transport::admission::{self, Request, Resumed};
use crate::transport::feed::Next;
use crate::AppState;

/// `GET /events/poll`.
pub async fn poll(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let settings = &state.settings;
    let mut request = Request::from_http(&req, settings.sse.token_cookie.as_deref());
    // A Unix time: turned into the cursor of the events that happened up to then.
    if let Some(at) = request.since.as_deref().and_then(|s| s.parse::<f64>().ok()) {
        let millis = (at * 1000.0).max(0.0) as u64;
        request.since = Some(state.router.cursor_at_time(millis).to_string());
    }
    let wait = admission::query_param(&req, "wait")
        .and_then(|w| w.parse::<f64>().ok())
        .filter(|w| w.is_finite())
        .unwrap_or(0.0)
        .clamp(0.0, settings.poll.max_wait_secs as f64);
    if state.draining.load(std::sync::atomic::Ordering::SeqCst) {
        return HttpResponse::ServiceUnavailable()
            .insert_header(("Retry-After", "1"))
            .json(serde_json::json!({"error": "shutting down", "retry_after": 1}));
    }
    if !admission::connect_allowed(&state) {
        return HttpResponse::ServiceUnavailable()
            .insert_header(("Retry-After", "1"))
            .json(serde_json::json!({"error": "too many new connections", "retry_after": 1}));
    }
    let mut admitted = match admission::admit(&state, &request).await {
        Ok(admitted) => admitted,
        Err(refused) => return refusal(refused),
    };
    let router = state.router.clone();
    let registry = state.registry.clone();
    let mailbox = admitted.slot.mailbox().clone();
    let max = settings.poll.max_events;
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(wait);
    let mut events: Vec<String> = Vec::new();
    loop {
        while events.len() < max {
            match admitted.feed.next(&router, &registry) {
                Next::Item(item) => {
                    admitted.feed.written(&item, &router);
                    events.push(item.0.to_string());
                }
                Next::Empty => break,
                Next::Evicted => break,
            }
        }
        // A drain (or any kick) answers a waiting poll at once: the client polls again elsewhere.
        if !events.is_empty() || tokio::time::Instant::now() >= deadline || mailbox.kicked().is_some() {
            break;
        }
        if tokio::time::timeout_at(deadline, mailbox.changed())
            .await
            .is_err()
        {
            continue;
        }
    }
    let cursor = admitted.feed.cursor(&router);
    let (recovered, reason) = match admitted.resumed {
        Some(Resumed::Not(reason)) => (false, Some(reason)),
        _ => (true, None),
    };
    state.stats.session_closed("poll_answered");
    // The messages are JSON already: written as they are, not parsed again.
    let mut body = String::with_capacity(64 + events.iter().map(String::len).sum::<usize>());
    body.push_str("{\"events\":[");
    body.push_str(&events.join(","));
    body.push_str("],\"cursor\":");
    body.push_str(&serde_json::to_string(&*cursor).unwrap_or_default());
    body.push_str(",\"recovered\":");
    body.push_str(if recovered { "true" } else { "false" });
    if let Some(reason) = reason {
        body.push_str(",\"reason\":");
        body.push_str(&serde_json::to_string(reason).unwrap_or_default());
    }
    body.push('}');
    HttpResponse::Ok()
        .content_type("application/json")
        .insert_header(("Cache-Control", "no-store"))
        .body(body)
}

fn refusal(refused: admission::Refused) -> HttpResponse {
    let body = |error: &str, reason: String| serde_json::json!({"error": error, "reason": reason});
    match refused {
        admission::Refused::Token(error) => {
            HttpResponse::Unauthorized().json(body("unauthorized", error.to_string()))
        }
        admission::Refused::Forbidden(why) => HttpResponse::Forbidden().json(body("forbidden", why)),
        admission::Refused::TooMany(what) => {
            HttpResponse::BadRequest().json(body("too_many", format!("too many {what}")))
        }
        admission::Refused::KeysUnavailable(error) => HttpResponse::ServiceUnavailable()
            .insert_header(("Retry-After", "2"))
            .json(body("unavailable", error.to_string())),
        admission::Refused::Starting => HttpResponse::ServiceUnavailable()
            .insert_header(("Retry-After", "1"))
            .json(body("unavailable", admission::STARTING.to_string())),
        admission::Refused::Limit(limit) => HttpResponse::ServiceUnavailable()
            .insert_header(("Retry-After", "2"))
            .json(body("unavailable", limit.to_string())),
    }
}
