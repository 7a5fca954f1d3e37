//! One WebSocket connection: upgrade, authenticate, then one task that writes what the fan-out
//! queued, answers the client, pings it and closes it when it must.
//!
//! Authentication happens after the upgrade completes: browsers cannot read the HTTP status of a
//! failed upgrade, so a bad token gets a socket that is closed at once with 4001 and a reason.
//!
//! What the client sends passes through [`frames`] first: frame headers over the bounds are
//! refused before their payload is read, and fragments are joined in one buffer.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{AggregatedMessage, CloseCode, CloseReason, ProtocolError, Session};
use bytestring::ByteString;
use futures_util::future::OptionFuture;
use futures_util::FutureExt as _;
use tokio::time::Instant;

use crate::hub::registry::Slot;
use task_events::valid_room_name;

use crate::auth::grants::RoomPattern;
use crate::hub::registry::Queued;
use crate::hub::registry::{FilterChange, FilterRefused, JoinRefused, LimitHit};
use crate::protocol::{close, now_rfc3339, ClientEnvelope, FilterData, RoomData, ServerMessage};
use crate::transport::admission::{self, Request, Resumed};
use crate::transport::feed::{Feed, Next};
use crate::transport::refusals::{self, Refused};
use crate::AppState;
use calls::Calls;

pub(crate) mod calls;
mod frames;

/// Most queued messages written per turn of the session's loop before it looks at the client's
/// messages and its timer again.
const DRAIN_PER_TURN: usize = 32;

/// How long a close frame may take to be queued before the connection is simply dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /ws`: the upgrade.
///
/// Refusals follow [`refusals`](super::refusals): a token refused for good is told so after the
/// upgrade the first time, and refused at the upgrade (401, 403, 429) when it comes back within
/// `REFUSAL_MEMORY_SECS`; transient refusals (draining, full) are closes after the upgrade.
pub async fn ws_route(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> actix_web::Result<HttpResponse> {
    // Counted before the drain check, so a drain that starts right after it waits for this one.
    let upgrading = Upgrading::new(state.clone().into_inner());
    let request = Request {
        catch_up: true,
        counts_in_presence: true,
        ..Request::from_http(&req, None)
    };
    let refusal_key = state.refusals.key(
        request.token.as_deref(),
        request.peer.as_deref(),
        request.workspace.as_deref(),
        &request.rooms,
    );
    if let Some(refused) = state.refusals.check(refusal_key) {
        state.stats.connection_rejected("refused_again");
        return Ok(refused_again(refused, state.settings.server.refusal_memory_secs));
    }
    let body = frames::guard(&req, body, state.settings.server.max_frame_bytes).await?;
    let (response, session, stream) = actix_ws::handle(&req, body)?;
    if state.draining.load(std::sync::atomic::Ordering::SeqCst) {
        // Transient: a close after open (a client that counts failed tries keeps its count),
        // after a short jittered pause so the reconnects reach the other replicas spread out.
        state.stats.connection_rejected("draining");
        let pause = refusals::paced(Duration::from_millis(500));
        actix_web::rt::spawn(async move {
            let _upgrading = upgrading;
            tokio::time::sleep(pause).await;
            close_now(session, close::GOING_AWAY, "server shutting down: reconnect").await;
        });
        return Ok(response);
    }
    if !admission::connect_allowed(&state) {
        // Transient, as a full replica: accepted, then 1013 after a jittered pause (a client
        // that counts failed tries keeps its count; the storm is spread out).
        drop(upgrading);
        close_paced(
            state.settings.server.overload_close_delay_ms,
            session,
            "try again later: too many new connections (CONNECT_RATE_PER_SEC)",
        );
        return Ok(response);
    }
    let admitted = match admission::admit(&state, &request).await {
        Ok(admitted) => admitted,
        Err(refused) => {
            let remember = |code: u16, reason: &'static str| {
                state.refusals.remember(refusal_key, Refused { code, reason });
            };
            let delay = state.settings.server.overload_close_delay_ms;
            match refused {
                admission::Refused::Token(error) => {
                    remember(close::UNAUTHORIZED, error.label());
                    close_now(session, close::UNAUTHORIZED, &format!("unauthorized: {error}")).await;
                }
                // This replica could not load its keys: the same token may pass in a moment.
                admission::Refused::KeysUnavailable(error) => {
                    close_paced(delay, session, &format!("try again later: {error}"));
                }
                admission::Refused::Forbidden(why) => {
                    remember(close::FORBIDDEN, "forbidden");
                    close_now(session, close::FORBIDDEN, &format!("forbidden: {why}")).await;
                }
                admission::Refused::TooMany(what) => {
                    close_now(session, close::FORBIDDEN, &format!("forbidden: too many {what}")).await;
                }
                admission::Refused::Limit(limit @ LimitHit::PerUser) => {
                    remember(close::TOO_MANY_CONNECTIONS, "too_many_connections");
                    close_now(session, limit.close_code(), &limit.to_string()).await;
                }
                admission::Refused::Limit(limit @ (LimitHit::Total | LimitHit::Anonymous)) => {
                    close_paced(delay, session, &format!("try again later: {limit}"));
                }
                admission::Refused::Limit(LimitHit::Draining) => {
                    close_now(session, close::GOING_AWAY, "server shutting down: reconnect").await;
                }
                admission::Refused::Starting => {
                    close_paced(
                        delay,
                        session,
                        &format!("try again later: {}", admission::STARTING),
                    );
                }
            }
            return Ok(response);
        }
    };
    drop(upgrading);
    let max_frame_bytes = state.settings.server.max_frame_bytes;
    let stream = frames::Messages::new(stream.max_frame_size(max_frame_bytes), max_frame_bytes);
    let limits = &state.settings.cluster;
    let limiter = admission::limiter(limits.client_messages_per_sec, limits.client_messages_burst);
    let conn = Connection {
        state: state.into_inner(),
        valid_until: admitted.identity.valid_until,
        room_grants: admitted.room_grants,
        workspace: admitted.workspace,
        heartbeats: request.since.is_some(),
        resumed: admitted.resumed,
        feed: admitted.feed,
        slot: SlotGuard::new(admitted.slot),
        session,
        recorded: None,
        limiter,
        refused: 0,
        refused_since: None,
        calls: None,
    };
    actix_web::rt::spawn(conn.run(stream));
    Ok(response)
}

/// The answer at the upgrade to a token refused for good a moment ago.
fn refused_again(refused: Refused, window_secs: u64) -> HttpResponse {
    let status = actix_web::http::StatusCode::from_u16(refused.status())
        .unwrap_or(actix_web::http::StatusCode::UNAUTHORIZED);
    let mut response = HttpResponse::build(status);
    if refused.status() == 429 {
        response.insert_header(("Retry-After", window_secs.to_string()));
    }
    response.json(serde_json::json!({
        "error": "refused",
        "close_code": refused.code,
        "reason": refused.reason,
        "detail": format!(
            "this token was refused less than {window_secs} s ago (close code {}); connect with a new token",
            refused.code
        ),
    }))
}

/// A transient refusal: 1013 with a retry hint, held a jittered moment first so a storm of
/// reconnecting clients is spread out.
fn close_paced(delay_ms: u64, session: Session, reason: &str) {
    let pause = refusals::paced(Duration::from_millis(delay_ms));
    let reason = format!("{reason} (retry in {} s)", pause.as_secs().max(1));
    actix_web::rt::spawn(async move {
        tokio::time::sleep(pause).await;
        close_now(session, close::TRY_AGAIN_LATER, &reason).await;
    });
}

/// Counts an upgrade from acceptance until it is admitted or refused.
struct Upgrading(Arc<AppState>);

impl Upgrading {
    fn new(state: Arc<AppState>) -> Self {
        state.upgrading.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Upgrading(state)
    }
}

impl Drop for Upgrading {
    fn drop(&mut self) {
        self.0.upgrading.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

async fn close_now(session: Session, code: u16, reason: &str) {
    let reason = CloseReason {
        code: CloseCode::Other(code),
        description: Some(reason.to_string()),
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, session.close(Some(reason))).await;
}

/// The session's registry slot plus how it ended, for the close counter. Dropped however the
/// session task ends: a panic unregisters the session too, and is counted as such.
struct SlotGuard {
    slot: Slot,
    stats: Option<Arc<crate::telemetry::Stats>>,
    ended: &'static str,
}

impl SlotGuard {
    fn new(slot: Slot) -> Self {
        SlotGuard {
            slot,
            stats: None,
            ended: "",
        }
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let Some(stats) = &self.stats else { return };
        let ended = match self.ended {
            "" if std::thread::panicking() => {
                tracing::error!(user_id = %self.slot.user(), "websocket session task panicked");
                "panic"
            }
            // The task was dropped before it ended (the server stopped its worker).
            "" => "cancelled",
            ended => ended,
        };
        stats.session_closed(ended);
    }
}

/// An admitted session.
/// Changes of rooms or filter of a cursor-less session written to the control topic at once.
const CHANGES_WRITTEN_AT_ONCE: u8 = 16;

struct Connection {
    state: Arc<AppState>,
    /// Until when the token is accepted (its `exp` plus the leeway), as a Unix time: the session
    /// closes with 4002 then.
    valid_until: u64,
    /// The rooms the token grants (names or `prefix*`), when it grants any; public rooms come
    /// from the configuration.
    room_grants: Option<Box<[RoomPattern]>>,
    /// The workspace the session is bound to.
    workspace: Option<Arc<str>>,
    /// The client asked for resume positions (`since=`): it gets `heartbeat` messages.
    heartbeats: bool,
    /// What came of a resume, for the `connected` message.
    resumed: Option<Resumed>,
    /// What to write next: the queue, the history, live.
    feed: Feed,
    slot: SlotGuard,
    session: Session,
    /// A cursor-less session: how many times its record was rewritten for a change of rooms or
    /// filter, and whether one is pending. The first changes are written at once (a client
    /// joins its rooms right after it connects), later ones at the next heartbeat, so a client
    /// cannot turn join/leave loops into a flood of control records.
    recorded: Option<(u8, bool)>,
    /// `CLIENT_MESSAGES_PER_SEC`, when set.
    limiter: Option<governor::DefaultDirectRateLimiter>,
    /// Messages refused by the limiter since `refused_since` (a window of `REFUSAL_WINDOW`).
    refused: u32,
    refused_since: Option<Instant>,
    /// Calls and publications waiting for a backend; made at the first one (an idle session
    /// pays a pointer).
    calls: Option<Box<Calls>>,
}

/// The next answer of a call, or never when there is none.
async fn next_answer(calls: &mut Option<Box<Calls>>) -> ByteString {
    match calls {
        Some(calls) if calls.in_flight > 0 => match calls.inbox.recv().await {
            Some(answer) => answer,
            None => std::future::pending().await,
        },
        _ => std::future::pending().await,
    }
}

/// A session refused more than `CLIENT_MESSAGES_BURST` messages within this window is closed
/// (4009): it is not slowing down.
const REFUSAL_WINDOW: Duration = Duration::from_secs(10);

/// Why the loop ended.
enum End {
    /// Close with this code and reason.
    Close(u16, String),
    /// The peer closed or vanished: nothing to send.
    Gone,
}

impl Connection {
    /// The session's life. Its future is what an idle connection costs beyond the HTTP stack's
    /// buffers, so what happens once (the greeting, the close) is built outside it or boxed.
    ///
    /// Not an `async fn`: one would copy its arguments into its state a second time (the
    /// connection and the stream, about 480 bytes), while an `async move` block uses what it
    /// captured in place.
    #[allow(clippy::manual_async_fn)]
    fn run(mut self, mut stream: frames::Messages) -> impl std::future::Future<Output = ()> {
        async move {
            let hello = self.hello();
            let end = match self.write(hello).await {
                Ok(()) => self.serve(&mut stream).await,
                Err(end) => end,
            };
            drop(stream);
            Box::pin(self.finish(end)).await;
        }
    }

    /// The `connected` message; records a cursor-less session.
    fn hello(&mut self) -> ByteString {
        self.slot.stats = Some(self.state.stats.clone());
        let connection_id = self.slot.slot.session();
        let now = now_rfc3339();
        let cursor = self.feed.cursor(&self.state.router);
        let hello = ServerMessage::Connected {
            event: "connected",
            connection_id: &connection_id,
            user_id: self.slot.slot.user(),
            workspace_id: self.workspace.as_deref(),
            server_time: &now,
            timestamp: &now,
            cursor: &cursor,
            recovered: self.resumed.map(|r| matches!(r, Resumed::Replaying(_))),
            replayed: match self.resumed {
                Some(Resumed::Replaying(n)) => Some(n),
                _ => None,
            },
            reason: match self.resumed {
                Some(Resumed::Not(reason)) => Some(reason),
                _ => None,
            },
        }
        .to_text();
        self.record_session(false);
        hello
    }

    /// Leaves the registry, then writes the close (if any).
    async fn finish(mut self, end: End) {
        self.slot.ended = match &end {
            End::Gone => "client_gone",
            End::Close(code, _) => close_label(*code),
        };
        self.record_session(true);
        let Connection {
            state, slot, session, ..
        } = self;
        let user_id = slot.slot.user().clone();
        // Out of the registry before the close is written: a peer that never reads its close
        // no longer counts against any limit.
        drop(slot);
        if let End::Close(code, reason) = end {
            if code == close::SLOW_CONSUMER {
                state.stats.slow_client(&user_id);
            }
            tracing::debug!(%user_id, code, reason, "websocket session closed");
            close_now(session, code, &reason).await;
        }
    }

    /// A session of a client that sends no cursor: while it is open (`ended: false`, again
    /// whenever its rooms or filter change) and when it ends, it is recorded for the next
    /// session of the user (on any replica, through the control topic) to take over from.
    fn record_session(&mut self, ended: bool) {
        let state = &self.state;
        let user = self.slot.slot.user();
        if self.heartbeats || !state.handoffs.enabled() || user.starts_with("anonymous:") {
            return;
        }
        let (rooms, event_types) = state.registry.choices_of(self.slot.slot.id());
        let session = crate::hub::handoff::Session {
            id: format!("{}-{}", state.handoffs.replica, self.slot.slot.id()),
            replica: state.handoffs.replica.clone(),
            workspace: self.workspace.as_deref().map(String::from),
            user: user.to_string(),
            cursor: ended.then(|| self.feed.cursor(&state.router).to_string()),
            rooms,
            event_types,
            at_ms: crate::hub::handoff::unix_ms(),
        };
        let changes = self.recorded.map_or(0, |(changes, _)| changes);
        self.recorded = Some((changes, false));
        if !state.handoffs.record(session.clone()) {
            state.stats.catchup("unrecorded");
            return;
        }
        if let Some(control) = &state.control {
            control.publish_session(&session, false);
        }
    }

    /// Its rooms or filter changed: the open record follows.
    fn choices_changed(&mut self) {
        match self.recorded {
            Some((changes, _)) if changes < CHANGES_WRITTEN_AT_ONCE => {
                self.record_session(false);
                self.recorded = Some((changes + 1, false));
            }
            Some((changes, _)) => self.recorded = Some((changes, true)),
            None => {}
        }
    }

    /// The session's loop. Every write has a deadline (`WRITE_TIMEOUT_SECS`), so a peer that
    /// stops reading can block it for that long at most, and the heartbeat, idle timeout and
    /// token expiry keep their meaning.
    async fn serve(&mut self, stream: &mut frames::Messages) -> End {
        let settings = &self.state.settings;
        let heartbeat = settings.heartbeat_interval();
        let client_timeout = settings.client_timeout();
        let write_timeout = settings.write_timeout();
        let expiry = expiry_instant(self.valid_until);
        let mailbox = self.slot.slot.mailbox().clone();
        let router = self.state.router.clone();
        let registry = self.state.registry.clone();
        let mut last_seen = Instant::now();
        let mut next_ping = Instant::now() + heartbeat;
        // Since when a message has been waiting for room in the transport. Events are written
        // inside the `select!`, so the timer below still fires while a write is stuck, and it
        // enforces the deadline without a timer per write.
        let mut stuck_since: Option<Instant> = None;
        // One timer for the heartbeat, the token's expiry and the write deadline.
        let timer = tokio::time::sleep_until(next_ping.min(expiry));
        tokio::pin!(timer);
        loop {
            if let Some(code) = mailbox.kicked() {
                let reason = registry.take_reason(self.slot.slot.id());
                return End::Close(
                    code,
                    reason.map_or_else(|| kick_reason(code).into(), String::from),
                );
            }
            // Write what the channel takes right now, without waiting: the usual path, one wake
            // per event. Bounded per turn, so the client's messages and the timer get their turn.
            let mut more = true;
            for _ in 0..DRAIN_PER_TURN {
                let item = match self.feed.next(&router, &registry) {
                    Next::Item(item) => item,
                    Next::Empty => {
                        more = false;
                        break;
                    }
                    Next::Evicted => {
                        return End::Close(
                            close::SLOW_CONSUMER,
                            "slow consumer: fell behind the history window; resume with your cursor".into(),
                        )
                    }
                };
                match self.session.text(item.0.clone()).now_or_never() {
                    Some(Ok(())) => {
                        stuck_since = None;
                        self.feed.written(&item, &router);
                        self.state.stats.message_delivered();
                    }
                    Some(Err(_)) => return End::Gone,
                    // The channel is full and nothing was sent: the message goes back to the
                    // front, and the `select!` below waits for room.
                    None => {
                        self.feed.put_back(item);
                        more = false;
                        break;
                    }
                }
            }
            let blocked = self.feed.blocked();
            if blocked && stuck_since.is_none() {
                let since = Instant::now();
                stuck_since = Some(since);
                if since + write_timeout < timer.deadline() {
                    timer.as_mut().reset(since + write_timeout);
                }
            }
            tokio::select! {
                // In this order, so a flood of events cannot keep the client's messages or the
                // timer waiting (the writes happen above, a bounded number per turn).
                biased;
                frame = stream.recv() => {
                    last_seen = Instant::now();
                    match frame {
                        Some(Ok(msg)) => {
                            // Boxed, as the write below: the idle session's future keeps
                            // room for neither (memory per idle connection).
                            if let Some(end) = Box::pin(self.on_message(msg)).await {
                                return end;
                            }
                        }
                        Some(Err(error)) => return protocol_error(error),
                        None => return End::Gone,
                    }
                }
                answer = next_answer(&mut self.calls) => {
                    if let Some(calls) = self.calls.as_mut() {
                        calls.in_flight -= 1;
                    }
                    if let Err(end) = self.write(answer).await {
                        return end;
                    }
                }
                () = &mut timer => {
                    let now = Instant::now();
                    if now >= expiry {
                        return End::Close(close::TOKEN_EXPIRED, "token expired: reconnect with a fresh token".into());
                    }
                    if now.duration_since(last_seen) >= client_timeout {
                        return End::Close(close::IDLE_TIMEOUT, "idle timeout".into());
                    }
                    if stuck_since.is_some_and(|since| now >= since + write_timeout) {
                        return write_timed_out();
                    }
                    if now >= next_ping {
                        if let Err(end) = Box::pin(self.heartbeat(&router)).await {
                            return end;
                        }
                        if matches!(self.recorded, Some((_, true))) {
                            // The changes that were held back.
                            self.record_session(false);
                        }
                        next_ping = now + heartbeat;
                    }
                    let mut next = next_ping.min(expiry);
                    if let Some(since) = stuck_since {
                        next = next.min(since + write_timeout);
                    }
                    timer.as_mut().reset(next);
                }
                // The only wait for the mailbox: a message queued or a kick. Either way the loop
                // looks at both again, so a stored wake-up is never spent without effect.
                () = mailbox.changed() => {}
                // The channel was full: wait for room for the message in line, which is taken
                // out of the feed only once written.
                Some(written) = OptionFuture::from(
                    blocked.then(|| Box::pin(write_head(&mut self.session, &mut self.feed)))
                ), if blocked => {
                    match written {
                        Ok(Some(item)) => {
                            stuck_since = None;
                            self.feed.written(&item, &router);
                            self.state.stats.message_delivered();
                        }
                        Ok(None) => {}
                        Err(end) => return end,
                    }
                }
                // More to write than one turn takes: go round again once the above had a look.
                () = std::future::ready(()), if more => {}
            }
        }
    }

    /// A ping, and for a client that resumes with cursors, a `heartbeat` with its position.
    async fn heartbeat(&mut self, router: &crate::hub::router::Router) -> Result<(), End> {
        self.control(Control::Ping).await?;
        if self.heartbeats && !self.feed.blocked() {
            let cursor = self.feed.cursor(router);
            let beat = ServerMessage::Heartbeat {
                cursor: &cursor,
                server_time: &now_rfc3339(),
            }
            .to_text();
            self.write(beat).await?;
        }
        Ok(())
    }

    /// Writes one text message within the write deadline.
    async fn write(&mut self, msg: ByteString) -> Result<(), End> {
        self.control(Control::Text(msg)).await
    }

    /// Writes a frame the session itself decided to send (a reply, a ping, a pong), within the
    /// write deadline. Boxed: these are rare, and the session's future stays small without
    /// their state (memory per idle connection).
    async fn control(&mut self, frame: Control) -> Result<(), End> {
        let deadline = self.state.settings.write_timeout();
        let session = &mut self.session;
        let write = Box::pin(async move {
            match frame {
                Control::Text(msg) => session.text(msg).await,
                Control::Ping => session.ping(b"").await,
                Control::Pong(bytes) => session.pong(&bytes).await,
            }
        });
        match tokio::time::timeout(deadline, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::Gone),
            Err(_) => Err(write_timed_out()),
        }
    }

    async fn on_message(&mut self, msg: AggregatedMessage) -> Option<End> {
        match msg {
            AggregatedMessage::Text(text) => {
                if let Some(limiter) = &self.limiter {
                    if limiter.check().is_err() {
                        let stats = &self.state.stats;
                        stats.rate_limited("message");
                        let now = Instant::now();
                        if self
                            .refused_since
                            .is_none_or(|since| now.duration_since(since) > REFUSAL_WINDOW)
                        {
                            self.refused_since = Some(now);
                            self.refused = 0;
                        }
                        self.refused += 1;
                        // Told once per message refused; more than a burst's worth of refusals
                        // within the window: closed.
                        if self.refused > self.state.settings.cluster.client_messages_burst {
                            stats.rate_limited("message_close");
                            return Some(End::Close(
                                close::RATE_LIMITED,
                                "rate limited: too many messages".into(),
                            ));
                        }
                        let reply = calls::refused(
                            &text,
                            "rate_limited",
                            "too many messages (CLIENT_MESSAGES_PER_SEC): this one was not handled",
                        );
                        return self.write(reply).await.err();
                    }
                }
                match self.reply_to(&text) {
                    Some(reply) => self.write(reply).await.err(),
                    // Answered later, when the backend has.
                    None => None,
                }
            }
            AggregatedMessage::Binary(_) => Some(End::Close(
                close::UNSUPPORTED_DATA,
                "binary frames are not supported".into(),
            )),
            AggregatedMessage::Ping(bytes) => self.control(Control::Pong(bytes)).await.err(),
            AggregatedMessage::Pong(_) => None,
            AggregatedMessage::Close(_) => Some(End::Close(1000, "bye".into())),
        }
    }
}

/// A frame the session sends on its own account.
enum Control {
    Text(ByteString),
    Ping,
    Pong(actix_web::web::Bytes),
}

/// Writes the message in line once the transport has room, and only then takes it out of the
/// feed. Abandoned by the `select!` before it completes, nothing was sent and the message is
/// still first in line: actix-ws waits for room in its channel (`PollSender::poll_ready`, the
/// only point where this future can be pending) and then hands the message over and flushes
/// within the same poll.
async fn write_head(session: &mut Session, feed: &mut Feed) -> Result<Option<Queued>, End> {
    let Some(item) = feed.take_head() else {
        return Ok(None);
    };
    let text = item.0.clone();
    // Put back until written, so an abandoned write loses nothing.
    feed.put_back(item);
    match session.text(text).await {
        Ok(()) => Ok(feed.take_head()),
        Err(_) => Err(End::Gone),
    }
}

/// A write that waited `WRITE_TIMEOUT_SECS`: the peer is not reading.
fn write_timed_out() -> End {
    End::Close(close::SLOW_CONSUMER, "slow consumer: write timed out".into())
}

impl Connection {
    /// The answer to a client text message (each one gets exactly one): now, or `None` when a
    /// backend is asked and its answer will come through the session's calls.
    fn reply_to(&mut self, text: &str) -> Option<ByteString> {
        let envelope: ClientEnvelope<'_> = match serde_json::from_str(text) {
            Ok(envelope) => envelope,
            Err(e) if e.is_syntax() || e.is_eof() => {
                return Some(error("invalid_json", "message is not valid JSON"))
            }
            Err(_) => {
                return Some(error(
                    "invalid_message",
                    "message must be a JSON object with a string `type` (and, for rooms, a string \
                     `room`; for filters, a list of strings `event_types`; for rpc, a string \
                     `method`; for publish, a string `room` and `data`)",
                ))
            }
        };
        match envelope.kind.as_ref() {
            "rpc" => self.rpc(&envelope),
            "publish" => self.publish(&envelope),
            other => match self.state.upstream.routes().legacy(other) {
                Some(legacy) => {
                    let legacy = legacy.clone();
                    self.legacy(&legacy, text)
                }
                None => Some(self.reply_now(envelope)),
            },
        }
    }

    /// The messages answered at once.
    fn reply_now(&mut self, envelope: ClientEnvelope<'_>) -> ByteString {
        match envelope.kind.as_ref() {
            "ping" => {
                let cursor = self.feed.cursor(&self.state.router);
                ServerMessage::Pong {
                    server_time: now_rfc3339(),
                    cursor: Some(&cursor),
                }
                .to_text()
            }
            "join_room" => match envelope.room.as_deref() {
                Some(room) => self.join(room),
                None => error("invalid_message", "join_room needs a string `room`"),
            },
            "leave_room" => match envelope.room.as_deref() {
                Some(room) => {
                    let registry = self.slot.slot.registry().clone();
                    registry.leave(self.slot.slot.id(), room);
                    self.user_scoped(room, false);
                    self.choices_changed();
                    ServerMessage::LeftRoom {
                        data: RoomData { room },
                    }
                    .to_text()
                }
                None => error("invalid_message", "leave_room needs a string `room`"),
            },
            "subscribe" | "unsubscribe" => {
                let subscribe = envelope.kind == "subscribe";
                self.change_filter(subscribe, envelope.event_types)
            }
            "presence" => self.presence(envelope.room.as_deref()),
            other => {
                let message = format!(
                    "unknown message type `{}`",
                    other.chars().take(64).collect::<String>()
                );
                error("unknown_type", &message)
            }
        }
    }

    /// `presence`: the users online in the session's workspace, or in one of its rooms,
    /// cluster-wide.
    fn presence(&self, room: Option<&str>) -> ByteString {
        let presence = &self.state.presence;
        if !presence.enabled() {
            return error("unavailable", "presence is off (PRESENCE_ENABLED=false)");
        }
        if self.slot.slot.user().starts_with("anonymous:") {
            return error("forbidden", "an anonymous session sees no presence");
        }
        if let Some(room) = room {
            let (rooms, _) = self.state.registry.choices_of(self.slot.slot.id());
            if !rooms.iter().any(|r| r == room) {
                return error("forbidden", "join the room first");
            }
        }
        let max = self.state.settings.cluster.presence_max_listed;
        let (users, truncated) = presence.online(self.workspace.as_deref(), room, max);
        ServerMessage::Presence {
            data: crate::protocol::PresenceData {
                users: &users,
                workspace_id: self.workspace.as_deref(),
                room,
                truncated,
            },
        }
        .to_text()
    }

    /// `join_room`: allowed by the token's `rooms` claim or a public pattern, within the
    /// per-session limit. A refused join joins nothing.
    fn join(&mut self, room: &str) -> ByteString {
        if !valid_room_name(room) {
            return error(
                "invalid_room",
                "a room name is 1 to 128 letters, digits or _ - . : @ /",
            );
        }
        let public = &self.state.public_rooms;
        let granted = self.room_grants.as_deref().unwrap_or_default();
        if !granted.iter().chain(public.iter()).any(|p| p.matches(room)) {
            return error(
                "forbidden",
                "this room is not granted by the token and is not public",
            );
        }
        let registry = self.slot.slot.registry().clone();
        let max = self.state.settings.rooms.max_per_session;
        match registry.join(self.slot.slot.id(), room, max) {
            Ok(()) => {
                self.user_scoped(room, true);
                self.choices_changed();
                // The room's current state, after the answer.
                let snapshot = crate::transport::feed::snapshot_for(
                    &self.state.router,
                    &registry,
                    self.slot.slot.id(),
                    self.state.settings.state.snapshot_max,
                    |e| state_for_room(e, room),
                );
                self.feed.push_snapshot(snapshot);
                ServerMessage::JoinedRoom {
                    data: RoomData { room },
                }
                .to_text()
            }
            Err(JoinRefused::Limit) => error(
                "limit",
                "this session is in the most rooms allowed (MAX_ROOMS_PER_SESSION)",
            ),
            Err(JoinRefused::Gone) => error("gone", "the session is closing"),
        }
    }

    /// A join or leave of a room that belongs to the user: applied to the user's other sessions
    /// here at once, and written to the control topic for the other replicas and for later.
    fn user_scoped(&self, room: &str, join: bool) {
        let rooms = &self.state.user_rooms;
        if !rooms.memberships.is_user_scoped(room) || self.slot.slot.user().starts_with("anonymous:") {
            return;
        }
        let m = rooms.membership(self.workspace.as_deref(), self.slot.slot.user(), room);
        if join {
            rooms.apply_join(&m);
        } else {
            rooms.apply_leave(&m);
        }
        if let Some(control) = &self.state.control {
            control.publish_membership(&m, join);
        }
    }

    /// `subscribe` adds event types to the filter, `unsubscribe` removes them (without a list it
    /// clears the filter). An empty filter means every type. Answered with the resulting list.
    fn change_filter(&mut self, subscribe: bool, types: Option<Vec<String>>) -> ByteString {
        let types = match types {
            Some(types)
                if types
                    .iter()
                    .any(|t| t.is_empty() || t.len() > task_events::MAX_NAME_BYTES) =>
            {
                return error(
                    "invalid_message",
                    "an event type is empty or longer than 256 bytes",
                )
            }
            Some(types) => Some(types),
            None if subscribe => {
                return error(
                    "invalid_message",
                    "subscribe needs a list of strings `event_types`",
                )
            }
            None => None,
        };
        let change = if subscribe {
            FilterChange::Add(types.unwrap_or_default())
        } else {
            FilterChange::Remove(types)
        };
        let max = self.state.settings.server.max_event_filters;
        let registry = self.slot.slot.registry().clone();
        let before = registry.choices_of(self.slot.slot.id()).1;
        match registry.change_filter(self.slot.slot.id(), change, max) {
            Ok(event_types) => {
                self.choices_changed();
                // The state of the types it did not take before and takes now.
                let wants = |types: &[String], t: &str| types.is_empty() || types.iter().any(|x| x == t);
                let after: Vec<String> = event_types.iter().map(|t| t.to_string()).collect();
                let snapshot = crate::transport::feed::snapshot_for(
                    &self.state.router,
                    &registry,
                    self.slot.slot.id(),
                    self.state.settings.state.snapshot_max,
                    |e| !wants(&before, e.event_type()) && wants(&after, e.event_type()),
                );
                self.feed.push_snapshot(snapshot);
                let data = FilterData {
                    event_types: &event_types,
                };
                if subscribe {
                    ServerMessage::Subscribed { data }.to_text()
                } else {
                    ServerMessage::Unsubscribed { data }.to_text()
                }
            }
            Err(FilterRefused::Limit) => error(
                "limit",
                "more event types than allowed (MAX_EVENT_FILTERS); the filter is unchanged",
            ),
            Err(FilterRefused::Gone) => error("gone", "the session is closing"),
        }
    }
}

fn error(code: &str, message: &str) -> ByteString {
    ServerMessage::Error {
        code,
        message,
        id: None,
    }
    .to_text()
}

fn protocol_error(error: frames::Failure) -> End {
    match error {
        frames::Failure::Refused(refused) => refusal(refused),
        frames::Failure::Protocol(ProtocolError::Overflow) => refusal(frames::Refused::TooLarge),
        frames::Failure::Protocol(ProtocolError::Io(e)) => io_error(&e),
        frames::Failure::Protocol(other) => {
            tracing::debug!(error = %other, "websocket protocol error");
            End::Close(close::PROTOCOL_ERROR, "protocol error".into())
        }
    }
}

fn refusal(refused: frames::Refused) -> End {
    match refused {
        frames::Refused::TooLarge => End::Close(close::MESSAGE_TOO_BIG, "message too large".into()),
        frames::Refused::ControlTooLong => {
            End::Close(close::PROTOCOL_ERROR, "control frame over 125 bytes".into())
        }
        frames::Refused::InvalidUtf8 => {
            End::Close(close::INVALID_PAYLOAD, "text message is not valid UTF-8".into())
        }
    }
}

/// The errors actix-ws reports as I/O errors: most are the connection breaking, some are the
/// client's frames.
fn io_error(e: &std::io::Error) -> End {
    if let Some(refused) = frames::Refused::of(e) {
        return refusal(refused);
    }
    if e.kind() == std::io::ErrorKind::InvalidData {
        // A text frame that is not UTF-8 (RFC 6455 8.1: fail the connection; 7.4.1: 1007).
        if e.get_ref().is_some_and(|inner| inner.is::<std::str::Utf8Error>()) {
            return refusal(frames::Refused::InvalidUtf8);
        }
        // Reserved bits without an extension.
        tracing::debug!(error = %e, "websocket protocol error");
        return End::Close(close::PROTOCOL_ERROR, "protocol error".into());
    }
    // The connection broke (reset, EOF without a close frame): nobody to answer.
    End::Gone
}

/// The `reason` label of a session closed with `code`.
fn close_label(code: u16) -> &'static str {
    match code {
        1000 => "client_closed",
        close::GOING_AWAY => "shutdown",
        close::UNSUPPORTED_DATA => "binary_frame",
        close::MESSAGE_TOO_BIG => "message_too_big",
        close::INVALID_PAYLOAD => "invalid_utf8",
        close::IDLE_TIMEOUT => "idle_timeout",
        close::UNAUTHORIZED => "unauthorized",
        close::TOKEN_EXPIRED => "token_expired",
        close::SLOW_CONSUMER => "slow_consumer",
        close::FORBIDDEN => "forbidden",
        _ => "protocol_error",
    }
}

fn kick_reason(code: u16) -> &'static str {
    match code {
        close::SLOW_CONSUMER => "slow consumer: fell behind; resume with your cursor",
        close::GOING_AWAY => "server shutting down",
        _ => "closed by server",
    }
}

/// A Unix time as a monotonic instant (at most ten years ahead).
pub(crate) fn expiry_instant(exp: u64) -> Instant {
    let now_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let left = Duration::from_secs(exp.saturating_sub(now_unix).min(10 * 365 * 24 * 3600));
    Instant::now() + left
}

/// Whether state entry `e` is addressed to `room`.
fn state_for_room(e: &crate::hub::history::Entry, room: &str) -> bool {
    match &e.event {
        task_events::Event::Generic(g) => g.to.all_rooms().any(|r| r == room),
        task_events::Event::Task(_) => false,
    }
}
