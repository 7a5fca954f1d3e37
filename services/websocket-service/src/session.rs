//! One WebSocket connection: upgrade, authenticate, then one task that writes what the fan-out
//! queued, answers the client, pings it and closes it when it must.
//!
//! Authentication happens after the upgrade completes: browsers cannot read the HTTP status of a
//! failed upgrade, so a bad token gets a socket that is closed at once with 4001 and a reason.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{AggregatedMessage, AggregatedMessageStream, CloseCode, CloseReason, ProtocolError, Session};
use bytestring::ByteString;
use tokio::time::Instant;

use crate::auth::AuthError;
use crate::protocol::{close, now_rfc3339, ClientEnvelope, ServerMessage};
use crate::registry::Mailbox;
use crate::AppState;

/// How long a close frame may take to be queued before the connection is simply dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /ws`: the upgrade.
pub async fn ws_route(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> actix_web::Result<HttpResponse> {
    if state.draining.load(std::sync::atomic::Ordering::SeqCst) {
        state.stats.connection_rejected("draining");
        return Ok(HttpResponse::ServiceUnavailable()
            .insert_header(("Retry-After", "1"))
            .json(serde_json::json!({"error": "shutting down"})));
    }
    let token = token_from(&req);
    let (response, session, stream) = actix_ws::handle(&req, body)?;
    let identity = match token {
        Some(token) => state.auth.verify(&token).await,
        None => Err(AuthError::Missing),
    };
    let identity = match identity {
        Ok(identity) => identity,
        Err(error) => {
            let peer = req.peer_addr().map(|a| a.to_string());
            state.stats.auth_failed(&error, peer.as_deref());
            close_now(session, close::UNAUTHORIZED, &format!("unauthorized: {error}")).await;
            return Ok(response);
        }
    };
    let mailbox = match state.registry.register(&identity.user_id) {
        Ok(mailbox) => mailbox,
        Err(limit) => {
            state.stats.connection_rejected(match limit {
                crate::registry::LimitHit::Total => "limit_total",
                crate::registry::LimitHit::PerUser => "limit_per_user",
            });
            tracing::info!(user_id = %identity.user_id, %limit, "websocket session refused");
            close_now(session, limit.close_code(), &limit.to_string()).await;
            return Ok(response);
        }
    };
    let stream = stream
        .max_frame_size(state.settings.server.max_frame_bytes)
        .aggregate_continuations()
        .max_continuation_size(state.settings.server.max_frame_bytes);
    let conn = Connection {
        state: state.into_inner(),
        user_id: identity.user_id,
        expires_at: identity.expires_at,
        mailbox,
        session,
    };
    actix_web::rt::spawn(conn.run(stream));
    Ok(response)
}

/// The token from `?token=` (what existing clients send) or `Authorization: Bearer`.
fn token_from(req: &HttpRequest) -> Option<String> {
    let from_query = req.query_string().split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == "token").then(|| percent_decode(value))
    });
    let from_header = || {
        let value = req
            .headers()
            .get(actix_web::http::header::AUTHORIZATION)?
            .to_str()
            .ok()?;
        let (scheme, token) = value.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_string())
    };
    from_query.filter(|t| !t.is_empty()).or_else(from_header)
}

/// JWTs are URL-safe, but a client may still percent-encode the query value.
fn percent_decode(s: &str) -> String {
    if !s.contains('%') {
        return s.to_string();
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn close_now(session: Session, code: u16, reason: &str) {
    let reason = CloseReason {
        code: CloseCode::Other(code),
        description: Some(reason.to_string()),
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, session.close(Some(reason))).await;
}

/// An admitted session.
struct Connection {
    state: Arc<AppState>,
    user_id: Arc<str>,
    /// Token expiry (seconds since the epoch): the session closes with 4001 then.
    expires_at: u64,
    mailbox: Arc<Mailbox>,
    session: Session,
}

/// Why the loop ended.
enum End {
    /// Close with this code and reason.
    Close(u16, String),
    /// The peer closed or vanished: nothing to send.
    Gone,
}

impl Connection {
    async fn run(mut self, mut stream: AggregatedMessageStream) {
        let connection_id = uuid::Uuid::new_v4().to_string();
        let hello = ServerMessage::Connected {
            connection_id: &connection_id,
            user_id: &self.user_id,
            server_time: now_rfc3339(),
        }
        .to_text();
        let end = match self.session.text(hello).await {
            Ok(()) => self.serve(&mut stream).await,
            Err(_) => End::Gone,
        };
        self.state.registry.unregister(&self.user_id, &self.mailbox);
        self.state.stats.session_closed(match &end {
            End::Gone => "client_gone",
            End::Close(code, _) => close_label(*code),
        });
        if let End::Close(code, reason) = end {
            if code == close::SLOW_CONSUMER {
                self.state.stats.slow_client(&self.user_id);
            }
            tracing::debug!(user_id = %self.user_id, code, reason, "websocket session closed");
            close_now(self.session, code, &reason).await;
        }
    }

    async fn serve(&mut self, stream: &mut AggregatedMessageStream) -> End {
        let heartbeat = self.state.settings.heartbeat_interval();
        let client_timeout = self.state.settings.client_timeout();
        let expiry = expiry_instant(self.expires_at);
        let mut last_seen = Instant::now();
        let mut next_ping = Instant::now() + heartbeat;
        // One timer for both the heartbeat and the token's expiry.
        let timer = tokio::time::sleep_until(next_ping.min(expiry));
        tokio::pin!(timer);
        loop {
            tokio::select! {
                () = self.mailbox.notified() => {
                    if let Some(end) = self.flush().await {
                        return end;
                    }
                }
                frame = stream.recv() => {
                    last_seen = Instant::now();
                    match frame {
                        Some(Ok(msg)) => {
                            if let Some(end) = self.on_message(msg).await {
                                return end;
                            }
                        }
                        Some(Err(error)) => return protocol_error(error),
                        None => return End::Gone,
                    }
                }
                () = &mut timer => {
                    let now = Instant::now();
                    if now >= expiry {
                        return End::Close(close::UNAUTHORIZED, "unauthorized: token expired".into());
                    }
                    if now.duration_since(last_seen) >= client_timeout {
                        return End::Close(close::IDLE_TIMEOUT, "idle timeout".into());
                    }
                    if now >= next_ping {
                        if self.session.ping(b"").await.is_err() {
                            return End::Gone;
                        }
                        next_ping = now + heartbeat;
                    }
                    timer.as_mut().reset(next_ping.min(expiry));
                }
            }
        }
    }

    /// Writes everything queued. Returns when the queue is empty, or how the session must end.
    async fn flush(&mut self) -> Option<End> {
        loop {
            if let Some(code) = self.mailbox.kicked() {
                return Some(End::Close(code, kick_reason(code).into()));
            }
            let msg = self.mailbox.pop()?;
            self.state.stats.message_delivered();
            if let Err(end) = self.send(msg).await {
                return Some(end);
            }
        }
    }

    /// Sends one message; a kick while the write is blocked (a stalled client) wins.
    async fn send(&mut self, msg: ByteString) -> Result<(), End> {
        let send = self.session.text(msg);
        tokio::pin!(send);
        loop {
            tokio::select! {
                result = &mut send => return result.map_err(|_| End::Gone),
                () = self.mailbox.notified() => {
                    if let Some(code) = self.mailbox.kicked() {
                        return Err(End::Close(code, kick_reason(code).into()));
                    }
                }
            }
        }
    }

    async fn on_message(&mut self, msg: AggregatedMessage) -> Option<End> {
        match msg {
            AggregatedMessage::Text(text) => {
                let reply = reply_to(&text);
                self.send(reply).await.err()
            }
            AggregatedMessage::Binary(_) => Some(End::Close(
                close::UNSUPPORTED_DATA,
                "binary frames are not supported".into(),
            )),
            AggregatedMessage::Ping(bytes) => {
                if self.session.pong(&bytes).await.is_err() {
                    return Some(End::Gone);
                }
                None
            }
            AggregatedMessage::Pong(_) => None,
            AggregatedMessage::Close(_) => Some(End::Close(1000, "bye".into())),
        }
    }
}

/// The answer to a client text message.
fn reply_to(text: &str) -> ByteString {
    let error = |code, message: &str| ServerMessage::Error { code, message }.to_text();
    let envelope: ClientEnvelope<'_> = match serde_json::from_str(text) {
        Ok(envelope) => envelope,
        Err(e) if e.is_syntax() || e.is_eof() => return error("invalid_json", "message is not valid JSON"),
        Err(_) => {
            return error(
                "invalid_message",
                "message must be a JSON object with a string `type`",
            )
        }
    };
    match envelope.kind.as_ref() {
        "ping" => ServerMessage::Pong {
            server_time: now_rfc3339(),
        }
        .to_text(),
        "join_room" | "leave_room" | "subscribe" | "unsubscribe" => error(
            "unsupported",
            "rooms and event filters are not supported by this release",
        ),
        other => {
            let message = format!(
                "unknown message type `{}`",
                other.chars().take(64).collect::<String>()
            );
            error("unknown_type", &message)
        }
    }
}

fn protocol_error(error: ProtocolError) -> End {
    match error {
        ProtocolError::Overflow => End::Close(close::MESSAGE_TOO_BIG, "frame too large".into()),
        ProtocolError::Io(e) if e.to_string().contains("continuation size") => {
            End::Close(close::MESSAGE_TOO_BIG, "message too large".into())
        }
        // The connection broke (reset, EOF without a close frame): nobody to answer.
        ProtocolError::Io(_) => End::Gone,
        other => {
            tracing::debug!(error = %other, "websocket protocol error");
            End::Close(1002, "protocol error".into())
        }
    }
}

/// The `reason` label of a session closed with `code`.
fn close_label(code: u16) -> &'static str {
    match code {
        1000 => "client_closed",
        close::GOING_AWAY => "shutdown",
        close::UNSUPPORTED_DATA => "binary_frame",
        close::MESSAGE_TOO_BIG => "message_too_big",
        close::IDLE_TIMEOUT => "idle_timeout",
        close::UNAUTHORIZED => "token_expired",
        close::SLOW_CONSUMER => "slow_consumer",
        _ => "protocol_error",
    }
}

fn kick_reason(code: u16) -> &'static str {
    match code {
        close::SLOW_CONSUMER => "slow consumer: outbound queue full",
        close::GOING_AWAY => "server shutting down",
        _ => "closed by server",
    }
}

/// The token's `exp` as a monotonic instant (far future when `exp` is absurdly large).
fn expiry_instant(exp: u64) -> Instant {
    let now_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let left = Duration::from_secs(exp.saturating_sub(now_unix).min(10 * 365 * 24 * 3600));
    Instant::now() + left
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies() {
        assert!(reply_to(r#"{"type":"ping"}"#).starts_with(r#"{"type":"pong""#));
        assert!(reply_to("{nope").contains(r#""code":"invalid_json""#));
        assert!(reply_to(r#"{"kind":1}"#).contains(r#""code":"invalid_message""#));
        assert!(reply_to(r#"{"type":"dance"}"#).contains("unknown message type `dance`"));
        assert!(reply_to(r#"{"type":"join_room","room":"x"}"#).contains(r#""code":"unsupported""#));
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a.b.c"), "a.b.c");
        assert_eq!(percent_decode("a%2Eb"), "a.b");
        assert_eq!(percent_decode("bad%zz%4"), "bad%zz%4");
        assert_eq!(percent_decode("%é%"), "%é%");
    }
}
