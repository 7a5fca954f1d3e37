//! From a decoded event to the sessions of its audience: the one path every source (Kafka,
//! Dapr, the HTTP publish API) goes through, so a client gets the same message whichever way
//! the event came.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytestring::ByteString;
use parking_lot::Mutex;
use task_events::{DecodeError, Event};

use crate::hub::cursor::{Cursor, CursorError, Frontier, PartitionId, MAX_PARTITIONS};
use crate::hub::dedup::Dedup;
use crate::hub::history::{Entry, History, Unrecoverable, CHECKPOINT_EVERY};
use crate::hub::registry::{Delivery, LimitHit, Profile, Registry, Slot};
use crate::hub::replies::{self, Replies, Taken};
use crate::hub::state::{StateStore, Verdict};
use crate::ingest::Origin;
use crate::protocol::{EventMessage, ServerMessage};
use crate::telemetry::Stats;

/// What routing one event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routed {
    /// Offered to the user's sessions on this instance (none is fine).
    Delivered(Delivery),
    /// Seen within the de-duplication window: not delivered again.
    Duplicate,
    /// A state event identical to the value held for its key: not delivered.
    Unchanged,
    /// An RPC answer addressed to a session: handed to the call waiting for it (on the replica
    /// that has it), never delivered as an event nor kept in the history.
    Reply(Taken),
}

/// When the event happened: its `occurred_at`, else the record's timestamp.
fn event_time(event: &Event, origin: &Origin<'_>) -> Option<SystemTime> {
    if let Some(at) = event.occurred_at() {
        return humantime::parse_rfc3339_weak(at).ok();
    }
    let ms = origin.timestamp_ms().filter(|ms| *ms >= 0)?;
    Some(UNIX_EPOCH + Duration::from_millis(ms as u64))
}

/// Routing state, changed under one lock: an event is pushed to its sessions, appended to the
/// history and counted in the frontier as one step, so the cursor a session is given (the
/// frontier after the last event it got, or when it is idle the current one) never claims an
/// event it has not been offered, and never omits one it was.
struct Core {
    /// Per partition, the next offset to route.
    frontier: Frontier,
    /// The encoded frontier, while it has not moved.
    encoded: Option<Arc<str>>,
    /// The seq of the next history entry.
    next_seq: u64,
    /// Events routed without a log position, so far.
    local: u64,
}

impl Core {
    /// Covers `offset` on `partition`, whatever came of the event there. A partition seen for
    /// the first time (not assigned by the Kafka source: a Dapr delivery) starts here, in the
    /// history too, whose record of it is complete from here. Past [`MAX_PARTITIONS`] (a Dapr
    /// delivery's headers can name any) a new one is not tracked: false, and logged once; the
    /// event is then delivered but not resumable, as one published without Kafka.
    fn place(&mut self, history: &History, partition: PartitionId, offset: i64, origin: &Origin<'_>) -> bool {
        if self.frontier.get(partition).is_none() {
            if !self.frontier.admits(partition) {
                UNTRACKED_PARTITION.call_once(|| {
                    tracing::warn!(
                        %origin,
                        max = MAX_PARTITIONS,
                        "events on more partitions than a cursor can name: those on the others are \
                         delivered but not resumable"
                    )
                });
                return false;
            }
            self.frontier.start(partition, offset);
            history.start_partition(partition, offset);
        }
        self.frontier.advance(partition, offset);
        self.encoded = None;
        true
    }
}

pub struct Router {
    registry: Arc<Registry>,
    stats: Arc<Stats>,
    dedup: Dedup,
    history: History,
    /// The latest value of every state key.
    state: StateStore,
    core: Mutex<Core>,
    /// This process, in cursors: events without a log position resume on it only.
    instance: u64,
    /// RPC calls waiting for an answer through the log.
    replies: Arc<Replies>,
}

impl Router {
    pub fn new(
        registry: Arc<Registry>,
        stats: Arc<Stats>,
        dedup: Dedup,
        history: History,
        state: StateStore,
    ) -> Self {
        Router {
            registry,
            stats,
            dedup,
            history,
            state,
            core: Mutex::new(Core {
                frontier: Frontier::default(),
                encoded: None,
                next_seq: 0,
                local: 0,
            }),
            instance: uuid::Uuid::new_v4().as_u64_pair().0,
            replies: Arc::new(Replies::default()),
        }
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn history(&self) -> &History {
        &self.history
    }

    pub fn state(&self) -> &StateStore {
        &self.state
    }

    pub fn replies(&self) -> &Arc<Replies> {
        &self.replies
    }

    pub fn instance(&self) -> u64 {
        self.instance
    }

    /// This replica reads `partition` from `offset` on: its history is complete from there, and
    /// cursors name it.
    pub fn start_partition(&self, topic: &str, partition: i32, offset: i64) {
        let p = PartitionId::new(topic, partition);
        let mut core = self.core.lock();
        if !core.frontier.admits(p) {
            tracing::warn!(
                topic,
                partition,
                max = MAX_PARTITIONS,
                "a Kafka partition past the partitions a cursor can name: its events are \
                 delivered but not resumable"
            );
            return;
        }
        core.frontier.start(p, offset);
        core.encoded = None;
        self.history.start_partition(p, offset);
    }

    /// Decodes a record value and routes it. A malformed value is logged with where it came
    /// from, counted, and skipped.
    pub fn route_bytes(&self, payload: &[u8], origin: Origin<'_>) -> Result<Routed, DecodeError> {
        self.route_bytes_as(payload, origin, true)
    }

    /// As [`Router::route_bytes`]; with `deliver` false the event only joins the history (a
    /// replica reading back the recent log at start).
    pub fn route_bytes_as(
        &self,
        payload: &[u8],
        origin: Origin<'_>,
        deliver: bool,
    ) -> Result<Routed, DecodeError> {
        match Event::from_json(payload) {
            Ok(event) => Ok(self.route_as(event, origin, deliver)),
            Err(error) => {
                self.stats.event_malformed(&origin, &error);
                // Still covered: a cursor past a bad record is a good cursor.
                if let Some((p, offset)) = position(&origin) {
                    self.core.lock().place(&self.history, p, offset, &origin);
                }
                Err(error)
            }
        }
    }

    /// Queues the event to every session of its audience on this instance, unless its id was
    /// seen within the de-duplication window. When nobody of the audience is connected here this
    /// costs the de-duplication check, the history append and the index lookups: the message is
    /// not even built.
    pub fn route(&self, event: Event, origin: Origin<'_>) -> Routed {
        self.route_as(event, origin, true)
    }

    fn route_as(&self, event: Event, origin: Origin<'_>, deliver: bool) -> Routed {
        if let Some(taken) = self.take_reply(&event) {
            // Answers read back at start have no call waiting: not worth counting.
            if deliver {
                self.stats.rpc_reply(taken);
            }
            if let Some((p, offset)) = position(&origin) {
                self.core.lock().place(&self.history, p, offset, &origin);
            }
            return Routed::Reply(taken);
        }
        let id = match event.id().map(str::to_string).or_else(|| origin.fallback_id()) {
            Some(id) => id,
            None => uuid::Uuid::now_v7().to_string(),
        };
        let pos = position(&origin);
        if !self.dedup.first_time(&id) {
            self.stats.duplicate();
            tracing::debug!(id, %origin, "duplicate event not delivered again");
            if let Some((p, offset)) = pos {
                self.core.lock().place(&self.history, p, offset, &origin);
            }
            return Routed::Duplicate;
        }
        let verdict = self.state.check(&event);
        if verdict == Verdict::Unchanged {
            // Compare-before-send: the value held is the same. Still covered by cursors.
            self.stats.state_unchanged();
            if let Some((p, offset)) = pos {
                self.core.lock().place(&self.history, p, offset, &origin);
            }
            return Routed::Unchanged;
        }
        if deliver {
            self.stats.observe_latency(event_time(&event, &origin));
        }
        let timestamp = event
            .occurred_at()
            .map_or_else(|| origin.fallback_timestamp(), str::to_string);
        let mut core = self.core.lock();
        // Decided under the lock: past the bound an event has no place (as one without Kafka).
        let pos = pos.filter(|&(p, offset)| core.place(&self.history, p, offset, &origin));
        if pos.is_none() {
            core.local += 1;
        }
        core.encoded = None;
        let seq = core.next_seq;
        core.next_seq += 1;
        let entry = Arc::new(Entry::new(seq, pos, core.local, event, id, timestamp));
        let checkpoint = seq
            .is_multiple_of(CHECKPOINT_EVERY)
            .then(|| core.frontier.clone());
        if self.history.enabled() {
            self.history.push(entry.clone(), checkpoint);
        }
        if verdict == Verdict::Changed {
            self.state.hold(&entry);
        }
        if !deliver {
            return Routed::Delivered(Delivery::default());
        }
        let (instance, local) = (self.instance, core.local);
        let frontier = &core.frontier;
        let delivery = self.registry.deliver(&entry, |room| {
            let cursor = entry.set_cursor(|| {
                Cursor {
                    frontier: frontier.clone(),
                    local: Some((instance, local)),
                }
                .encode()
            });
            message(&entry, &cursor, room)
        });
        drop(core);
        if delivery.dropped > 0 {
            self.stats
                .messages_dropped("slow_consumer", delivery.dropped as u64);
        }
        Routed::Delivered(delivery)
    }

    /// An `rpc_result` / `rpc_error` addressed to one session and nobody else is an answer.
    fn take_reply(&self, event: &Event) -> Option<Taken> {
        let Event::Generic(g) = event else { return None };
        let kind = g.event_type.as_str();
        let to = &g.to;
        let only_session = to.user.is_none()
            && to.users.is_empty()
            && to.room.is_none()
            && to.rooms.is_empty()
            && to.workspace.is_none()
            && !to.all
            && to.roles.is_empty();
        let session = to.session.as_deref().filter(|_| only_session)?;
        if kind != replies::RESULT && kind != replies::ERROR {
            return None;
        }
        let task_events::Payload::Data(data) = &g.payload else {
            return Some(Taken::Malformed);
        };
        Some(
            self.replies
                .take(kind, crate::hub::registry::session_id(session), data),
        )
    }

    /// Tells a session to close with `code`, noting where the replica stands: under the routing
    /// lock, so every event routed before was offered to it and none after will be.
    pub fn kick(&self, mailbox: &crate::hub::registry::Mailbox, code: u16) {
        let mut core = self.core.lock();
        let position = self.encoded(&mut core);
        mailbox.kick_at(code, Some(position));
    }

    /// [`Registry::kick_where`], noting where the replica stands (as [`Router::kick`]).
    pub fn kick_where(
        &self,
        user: Option<&str>,
        matches: impl Fn(&Profile) -> bool,
        code: u16,
        reason: &str,
    ) -> usize {
        let mut core = self.core.lock();
        let position = self.encoded(&mut core);
        self.registry.kick_where(user, matches, code, reason, position)
    }

    /// The cursor of a session that has written every message offered to it: the current
    /// frontier. Taken under the routing lock, so no event is half-offered.
    pub fn current_cursor(&self) -> Arc<str> {
        let mut core = self.core.lock();
        self.encoded(&mut core)
    }

    fn encoded(&self, core: &mut Core) -> Arc<str> {
        if let Some(encoded) = &core.encoded {
            return encoded.clone();
        }
        let encoded: Arc<str> = Cursor {
            frontier: core.frontier.clone(),
            local: Some((self.instance, core.local)),
        }
        .encode()
        .into();
        core.encoded = Some(encoded.clone());
        encoded
    }

    /// The current cursor when `idle()` holds under the routing lock (the session has nothing
    /// queued and is live), else `None`.
    pub fn cursor_if(&self, idle: impl FnOnce() -> bool) -> Option<Arc<str>> {
        let mut core = self.core.lock();
        idle().then(|| self.encoded(&mut core))
    }

    /// The cursor of a client that saw every event that happened up to Unix time `millis` (the
    /// budget app polls with a time).
    pub fn cursor_at_time(&self, millis: u64) -> Arc<str> {
        self.history
            .cursor_before_time(millis, self.instance)
            .unwrap_or_else(|| self.current_cursor())
    }

    /// A catching-up session that reached `seq`: live again if nothing was routed since (taken
    /// under the routing lock, so no event slips between the history and the queue).
    pub fn go_live(&self, mailbox: &crate::hub::registry::Mailbox, seq: u64) -> bool {
        let core = self.core.lock();
        if core.next_seq == seq {
            mailbox.set_live();
            return true;
        }
        false
    }

    /// Admits a session resuming from `cursor`: it starts catching up from the first history
    /// entry it has not seen, or (when the cursor cannot be honoured) live. Returns the slot,
    /// the cursor it starts from and, for a resume, the outcome.
    pub fn admit_resuming(
        &self,
        registry: &Arc<Registry>,
        profile: Profile,
        cursor: Option<Result<Cursor, CursorError>>,
    ) -> Result<Admitted, LimitHit> {
        let mut core = self.core.lock();
        let start = match &cursor {
            None => Ok(None),
            Some(Err(_)) => Err(Unrecoverable::UnknownCursor),
            Some(Ok(cursor)) => {
                if !self.history.enabled() {
                    Err(Unrecoverable::HistoryExceeded)
                } else {
                    self.history
                        .resume_from(cursor, &core.frontier, self.instance)
                        .map(|seq| (seq < core.next_seq).then_some(seq))
                }
            }
        };
        let slot = registry.admit_from(profile, start.ok().flatten())?;
        let cursor_now = self.encoded(&mut core);
        drop(core);
        Ok(Admitted {
            slot,
            cursor: cursor_now,
            resume: cursor.map(|_| start.map(|s| s.unwrap_or(u64::MAX))),
        })
    }
}

/// A session admitted by [`Router::admit_resuming`].
pub struct Admitted {
    pub slot: Slot,
    /// The frontier when it was admitted: its position if it resumed nothing.
    pub cursor: Arc<str>,
    /// For a resume: the history seq it catches up from (`u64::MAX`: nothing to replay), or why
    /// it cannot.
    pub resume: Option<Result<u64, Unrecoverable>>,
}

static UNTRACKED_PARTITION: std::sync::Once = std::sync::Once::new();

/// An event's place in the log, when its origin names one.
fn position(origin: &Origin<'_>) -> Option<(PartitionId, i64)> {
    match *origin {
        Origin::Kafka {
            topic,
            partition,
            offset,
            ..
        }
        | Origin::Dapr {
            topic: Some(topic),
            partition: Some(partition),
            offset: Some(offset),
            ..
        } => Some((PartitionId::new(topic, partition), offset)),
        _ => None,
    }
}

/// The message of a history entry for a session it reached through `room`: a task update, a
/// generic event (`{"type":T,"event":T,"data":..,"id","timestamp","cursor"}` plus the room and
/// the workspace), or a verbatim `message` unchanged.
pub fn message(entry: &Entry, cursor: &str, room: Option<&str>) -> ByteString {
    build(entry, Some(cursor), room)
}

/// The message of a state value sent as part of a snapshot: flagged `snapshot: true`, and
/// without a cursor (it is not a position: the session's position is where it stands live).
/// A verbatim `message` is sent unchanged.
pub fn snapshot_message(entry: &Entry, room: Option<&str>) -> ByteString {
    build(entry, None, room)
}

fn build(entry: &Entry, cursor: Option<&str>, room: Option<&str>) -> ByteString {
    let cursor_or_empty = cursor.unwrap_or_default();
    match &entry.event {
        Event::Task(task) => ServerMessage::TaskUpdate {
            event: &task.event_type,
            task: &task.task,
            id: &entry.id,
            timestamp: &entry.timestamp,
            cursor: cursor_or_empty,
        }
        .to_text(),
        Event::Generic(generic) => match &generic.payload {
            task_events::Payload::Message(message) => message.get().to_string().into(),
            task_events::Payload::Data(data) => EventMessage {
                kind: &generic.event_type,
                event: &generic.event_type,
                data,
                id: &entry.id,
                timestamp: &entry.timestamp,
                cursor,
                room,
                workspace_id: generic.to.workspace.as_deref(),
                key: generic.key.as_deref(),
                snapshot: cursor.is_none().then_some(true),
                from: generic
                    .from
                    .as_ref()
                    .map(|f| crate::protocol::FromData { user: &f.user }),
            }
            .to_text(),
        },
    }
}
