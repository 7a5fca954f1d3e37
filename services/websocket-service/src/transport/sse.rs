//! Server-Sent Events: `GET /events`, for clients that cannot hold a WebSocket.
//!
//! The same sessions as WebSocket (the same admission, audience, history, slow-consumer rule),
//! written as an event stream:
//!
//! - the token from `?token=`, `Authorization: Bearer` or the cookie `SSE_TOKEN_COOKIE`; the
//!   audience from `workspace_id`, `rooms` and `event_types`; a bad token is 401 JSON before
//!   the stream starts (an `EventSource` then stops), a room or workspace not granted 403;
//! - `Last-Event-ID` (or `since=`) resumes exactly as on WebSocket;
//! - each message as `id: <cursor>` and `data: <the same JSON as on WebSocket>`, unnamed by
//!   default (an `EventSource` that only sets `onmessage` sees it; the JSON carries `type`), or
//!   with `event: <type>` when the client asks with `?named=1`;
//! - a `retry:` hint first; a heartbeat every `SSE_HEARTBEAT_SECS` as a comment plus an `id:`
//!   line, so the browser's Last-Event-ID stays current while nothing happens;
//! - proxies told not to buffer (`Cache-Control: no-cache`, `X-Accel-Buffering: no`);
//! - a transient refusal (this replica full, draining) is a 200 stream holding only a `retry:`
//!   hint, which an `EventSource` follows (an HTTP error would make it give up).

use std::sync::Arc;
use std::time::Duration;

use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::FutureExt as _;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::hub::registry::LimitHit;
use crate::protocol::{now_rfc3339, ServerMessage};
use crate::transport::admission::{self, Admitted, Request, Resumed};
use crate::transport::feed::Next;
use crate::transport::ws::expiry_instant;
use crate::AppState;

/// Frames buffered between the session task and the response body.
const CHANNEL: usize = 16;

/// `GET /events`.
pub async fn events(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let sse = &state.settings.sse;
    let mut request = Request::from_http(&req, sse.token_cookie.as_deref());
    request.counts_in_presence = true;
    if let Some(last) = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
    {
        request.since = Some(last.to_string());
    }
    let named = admission::query_param(&req, "named").is_some_and(|v| v == "1" || v == "true");
    // A client that passes `since` in the query manages its own reconnects (our browser client
    // closes the stream and reconnects with its last cursor): it needs the position as a message
    // its script can read, not only as an `id:` line. A plain `EventSource` resuming with
    // `Last-Event-ID` alone does not get it.
    let heartbeats = admission::query_param(&req, "since").is_some();
    if state.draining.load(std::sync::atomic::Ordering::SeqCst) {
        state.stats.connection_rejected("draining");
        return retry_later(sse.retry_ms, "server shutting down");
    }
    if !admission::connect_allowed(&state) {
        return retry_later(sse.retry_ms.max(1000), "too many new connections");
    }
    let admitted = match admission::admit(&state, &request).await {
        Ok(admitted) => admitted,
        Err(refused) => return refusal(refused, sse.retry_ms),
    };
    let (tx, rx) = mpsc::channel::<Bytes>(CHANNEL);
    let state = state.into_inner();
    let session = SseSession {
        tx,
        named,
        heartbeats,
        state: state.clone(),
        admitted,
    };
    actix_web::rt::spawn(session.run());
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|bytes| (Ok::<_, actix_web::Error>(bytes), rx))
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body)
}

/// A transient refusal an `EventSource` follows: a stream with a retry hint, ended at once.
fn retry_later(retry_ms: u64, why: &str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .body(format!("retry: {retry_ms}\n: {why}, retry later\n\n"))
}

fn refusal(refused: admission::Refused, retry_ms: u64) -> HttpResponse {
    let body = |error: &str, reason: String| serde_json::json!({"error": error, "reason": reason});
    match refused {
        admission::Refused::Token(error) => {
            HttpResponse::Unauthorized().json(body("unauthorized", error.to_string()))
        }
        admission::Refused::Forbidden(why) => HttpResponse::Forbidden().json(body("forbidden", why)),
        admission::Refused::TooMany(what) => {
            HttpResponse::BadRequest().json(body("too_many", format!("too many {what}")))
        }
        admission::Refused::Limit(LimitHit::PerUser) => {
            HttpResponse::TooManyRequests().json(body("too_many_connections", LimitHit::PerUser.to_string()))
        }
        admission::Refused::KeysUnavailable(error) => retry_later(retry_ms, &error.to_string()),
        admission::Refused::Starting => retry_later(retry_ms, admission::STARTING),
        admission::Refused::Limit(limit) => retry_later(retry_ms, &limit.to_string()),
    }
}

struct SseSession {
    tx: mpsc::Sender<Bytes>,
    named: bool,
    /// Heartbeats also as `heartbeat` JSON messages (`since` in the query).
    heartbeats: bool,
    state: Arc<AppState>,
    admitted: Admitted,
}

/// One event-stream frame: the id, the name when asked for, and the data (one `data:` line per
/// line of the JSON, which a verbatim message may span).
fn frame(cursor: &str, kind: Option<&str>, json: &str) -> Bytes {
    let mut out = String::with_capacity(json.len() + cursor.len() + 32);
    if !cursor.is_empty() {
        out.push_str("id: ");
        out.push_str(cursor);
        out.push('\n');
    }
    if let Some(kind) = kind {
        out.push_str("event: ");
        out.push_str(kind);
        out.push('\n');
    }
    for line in json.split('\n') {
        out.push_str("data: ");
        out.push_str(line.strip_suffix('\r').unwrap_or(line));
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
}

/// The `type` of a message, for `event:` lines.
fn kind_of(json: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Kind<'a> {
        #[serde(rename = "type", borrow)]
        kind: std::borrow::Cow<'a, str>,
    }
    serde_json::from_str::<Kind<'_>>(json)
        .ok()
        .map(|k| k.kind.replace(['\n', '\r'], " "))
}

impl SseSession {
    async fn run(self) {
        let state = self.state.clone();
        self.serve().await;
        state.stats.session_closed("sse_ended");
    }

    async fn serve(mut self) {
        let state = self.state.clone();
        let router = state.router.clone();
        let registry = state.registry.clone();
        let settings = &state.settings;
        let mailbox = self.admitted.slot.mailbox().clone();
        let user = self.admitted.slot.user().clone();
        let write_timeout = settings.write_timeout();
        let heartbeat = Duration::from_secs(settings.sse.heartbeat_secs);
        let expiry = expiry_instant(self.admitted.identity.valid_until);
        // First: the retry hint and a `connected` message carrying the starting position.
        let cursor = self.admitted.feed.cursor(&router);
        let now = now_rfc3339();
        let resumed = self.admitted.resumed;
        let hello = ServerMessage::Connected {
            event: "connected",
            connection_id: &self.admitted.slot.session(),
            user_id: &user,
            workspace_id: self.admitted.workspace.as_deref(),
            server_time: &now,
            timestamp: &now,
            cursor: &cursor,
            recovered: resumed.map(|r| matches!(r, Resumed::Replaying(_))),
            replayed: match resumed {
                Some(Resumed::Replaying(n)) => Some(n),
                _ => None,
            },
            reason: match resumed {
                Some(Resumed::Not(reason)) => Some(reason),
                _ => None,
            },
        }
        .to_text();
        let mut first = format!("retry: {}\n\n", settings.sse.retry_ms).into_bytes();
        first.extend_from_slice(&frame(&cursor, self.named.then_some("connected"), &hello));
        if self.tx.send(Bytes::from(first)).await.is_err() {
            return;
        }
        let mut next_beat = Instant::now() + heartbeat;
        let mut stuck_since: Option<Instant> = None;
        let mut pending: Option<Bytes> = None;
        loop {
            if mailbox.kicked().is_some() {
                return;
            }
            let now = Instant::now();
            if now >= expiry {
                // The client reconnects (an `EventSource` does) with a fresh token, or is refused.
                return;
            }
            // Write what the channel takes now.
            let mut more = true;
            for _ in 0..32 {
                let bytes = match pending.take() {
                    Some(bytes) => bytes,
                    None => match self.admitted.feed.next(&router, &registry) {
                        Next::Item(item) => {
                            // A snapshot's value carries no `id:` (the stream's position stays).
                            let snapshot = self.admitted.feed.last_is_snapshot();
                            self.admitted.feed.written(&item, &router);
                            let cursor = if snapshot {
                                Arc::from("")
                            } else {
                                router.history().cursor_of(&item.1, router.instance())
                            };
                            let kind = if self.named { kind_of(&item.0) } else { None };
                            frame(&cursor, kind.as_deref(), &item.0)
                        }
                        Next::Empty => {
                            more = false;
                            break;
                        }
                        Next::Evicted => return,
                    },
                };
                match self.tx.try_send(bytes) {
                    Ok(()) => {
                        stuck_since = None;
                        state.stats.message_delivered();
                    }
                    Err(mpsc::error::TrySendError::Full(bytes)) => {
                        pending = Some(bytes);
                        more = false;
                        break;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                }
            }
            if pending.is_some() && stuck_since.is_none() {
                stuck_since = Some(Instant::now());
            }
            let deadline = stuck_since
                .map_or(next_beat, |since| (since + write_timeout).min(next_beat))
                .min(expiry);
            tokio::select! {
                biased;
                () = tokio::time::sleep_until(deadline) => {
                    let now = Instant::now();
                    if stuck_since.is_some_and(|since| now >= since + write_timeout) {
                        // No progress: cut, so a stalled client costs nothing more.
                        state.stats.slow_client(&user);
                        return;
                    }
                    if now >= next_beat && pending.is_none() {
                        let cursor = self.admitted.feed.cursor(&router);
                        let beat = if self.heartbeats {
                            let json = ServerMessage::Heartbeat {
                                cursor: &cursor,
                                server_time: &now_rfc3339(),
                            }
                            .to_text();
                            frame(&cursor, self.named.then_some("heartbeat"), &json)
                        } else {
                            Bytes::from(format!(": heartbeat\nid: {cursor}\n\n"))
                        };
                        if self.tx.send(beat).now_or_never().is_some_and(|r| r.is_err()) {
                            return;
                        }
                        next_beat = now + heartbeat;
                    } else if now >= next_beat {
                        next_beat = now + heartbeat;
                    }
                }
                () = mailbox.changed() => {}
                permit = self.tx.reserve(), if pending.is_some() => {
                    match permit {
                        Ok(permit) => {
                            if let Some(bytes) = pending.take() {
                                permit.send(bytes);
                                stuck_since = None;
                                state.stats.message_delivered();
                            }
                        }
                        Err(_) => return,
                    }
                }
                () = std::future::ready(()), if more => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames() {
        assert_eq!(
            &frame("c1", None, r#"{"type":"x"}"#)[..],
            b"id: c1\ndata: {\"type\":\"x\"}\n\n"
        );
        assert_eq!(
            &frame("c2", Some("x"), "{\"type\":\"x\",\n\"a\":1}")[..],
            b"id: c2\nevent: x\ndata: {\"type\":\"x\",\ndata: \"a\":1}\n\n"
        );
        assert_eq!(
            kind_of(r#"{"type":"ticket.created","data":{}}"#).as_deref(),
            Some("ticket.created")
        );
    }
}
