//! The control topic: how replicas share state with nothing but Kafka.
//!
//! Every replica writes its control records to `GATEWAY_CONTROL_TOPIC` and reads the whole topic
//! from its beginning, so each one holds the same state, and one that starts late rebuilds it
//! before it is ready (readiness gate `control`: every partition read up to the high watermark
//! it had when the replica started). Records are keyed by what they describe and a removal is a
//! tombstone, so a compacted topic keeps exactly the state in force (`cleanup.policy=compact`).
//!
//! It carries user-scoped room memberships ([`Membership`]), the sessions of clients that send no
//! cursor and the replicas' beats ([`crate::hub::handoff`]), presence ([`crate::hub::presence`]),
//! revocations ([`crate::hub::revocations`]) and disconnect orders (`["disconnect", id]`, applied
//! by the replicas that read them within [`DISCONNECT_VALID`], then tombstoned).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::health::Readiness;
use crate::hub::handoff::{Beat, Handoffs, Session};
use crate::hub::memberships::{Membership, UserRooms};
use crate::hub::presence::{Change, Presence};
use crate::hub::registry::Registry;
use crate::hub::revocations::{Revocation, Revocations, Target};
use crate::hub::router::Router;
use crate::telemetry::Stats;

/// What the control records are applied to.
pub struct Shared {
    pub rooms: Arc<UserRooms>,
    pub handoffs: Arc<Handoffs>,
    pub presence: Arc<Presence>,
    pub revocations: Arc<Revocations>,
    pub registry: Arc<Registry>,
    pub router: Arc<Router>,
    pub stats: Arc<Stats>,
    /// Presence transitions are announced to sessions: set once the control topic has been read
    /// up to where it stood at start (before that, nobody is connected here to tell, and the
    /// read-back would fill the history with the past).
    pub announce: AtomicBool,
}

/// A disconnect order read later than this after it was written is not applied (a replica
/// reading the topic back at start has no session it could mean).
pub const DISCONNECT_VALID: Duration = Duration::from_secs(30);

/// `POST /api/disconnect`: close a user's sessions everywhere, revoking nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disconnect {
    pub user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<String>,
    pub code: u16,
    pub reason: String,
    /// The replica that wrote it (it applied it already).
    pub replica: String,
    pub at_ms: u64,
}

impl Disconnect {
    pub fn key_of(id: &str) -> String {
        serde_json::json!(["disconnect", id]).to_string()
    }

    fn is_key(key: &str) -> bool {
        serde_json::from_str::<(String, String)>(key).is_ok_and(|(kind, _)| kind == "disconnect")
    }

    /// Closes the matching sessions here; how many.
    pub fn apply(&self, router: &Router) -> usize {
        router.kick_where(
            Some(&self.user),
            // Not a session that connected after the order (it may have reconnected already).
            |p| {
                p.admitted_ms <= self.at_ms
                    && (self.workspace.is_none() || p.workspace.as_deref() == self.workspace.as_deref())
            },
            self.code,
            &self.reason,
        )
    }
}

/// Closes the sessions a revocation covers, here; how many.
pub fn close_revoked(router: &Router, target: &Target, revocation: &Revocation) -> usize {
    let covers = |p: &crate::hub::registry::Profile| {
        revocation.covers(&crate::hub::revocations::Token {
            user: &p.user,
            jti: p.jti.as_deref(),
            issued_at: p.issued_at,
        })
    };
    match target {
        Target::User(user) => router.kick_where(
            Some(user),
            covers,
            crate::protocol::close::UNAUTHORIZED,
            "revoked",
        ),
        Target::Jti(jti) => router.kick_where(
            None,
            |p| p.jti.as_deref() == Some(jti.as_str()) && covers(p),
            crate::protocol::close::UNAUTHORIZED,
            "revoked",
        ),
    }
}
use crate::ingest::kafka::{client_config, producer_config};

const PART: &str = "control";

/// Writes control records.
pub struct Control {
    producer: FutureProducer,
    topic: String,
}

impl Control {
    /// Writes a membership (join or refresh), or its tombstone (leave). Errors are logged: the
    /// local state is already applied, and a refresh will write a join again.
    pub fn publish_membership(self: &Arc<Self>, m: &Membership, join: bool) {
        let value = join.then(|| serde_json::to_string(m).unwrap_or_default());
        self.publish(m.key(), value);
    }

    /// Writes a session of a client without a cursor (open or ended), or its tombstone
    /// (`gone`: it was taken over or expired).
    pub fn publish_session(self: &Arc<Self>, s: &Session, gone: bool) {
        let value = (!gone).then(|| serde_json::to_string(s).unwrap_or_default());
        self.publish(s.key(), value);
    }

    /// Tombstones a session record.
    pub fn forget_session(self: &Arc<Self>, workspace: Option<&str>, user: &str, id: &str) {
        self.publish(Session::key_of(workspace, user, id), None);
    }

    fn publish(self: &Arc<Self>, key: String, value: Option<String>) {
        let this = self.clone();
        tokio::spawn(async move { this.send(key, value).await });
    }

    async fn send(&self, key: String, value: Option<String>) {
        if let Err(error) = self.write(&key, value.as_deref()).await {
            tracing::warn!(%error, key, "control record not written");
        }
    }

    /// Writes one record and waits for the broker's acknowledgement (the server API answers
    /// only once every replica can read it).
    pub async fn write(&self, key: &str, value: Option<&str>) -> Result<(), String> {
        let mut record = FutureRecord::to(&self.topic).key(key);
        if let Some(value) = value {
            record = record.payload(value);
        }
        self.producer
            .send(record, Duration::from_secs(10))
            .await
            .map(|_| ())
            .map_err(|(error, _)| error.to_string())
    }
}

/// Writes this replica's beat every `CATCHUP_HEARTBEAT_MS` until `shutdown`, then its tombstone
/// (it left on purpose: its sessions ended with exact positions of their own).
///
/// A beat carries a position every open session of this replica has been written up to: the
/// frontier of one beat before (a live session writes what it is offered within a beat), or
/// where the furthest-behind session catching up from the history stands, when that is older.
pub async fn beat(
    control: Arc<Control>,
    handoffs: Arc<Handoffs>,
    router: Arc<crate::hub::router::Router>,
    registry: Arc<crate::hub::registry::Registry>,
    shutdown: CancellationToken,
) {
    let key = Beat::key_of(&handoffs.replica);
    let mut previous = (router.history().next_seq(), router.current_cursor());
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(handoffs.timing.beat) => {}
        }
        let now = (router.history().next_seq(), router.current_cursor());
        // A session not written up to the frontier of one beat ago (queued, stuck, catching
        // up): the beat says where it stands instead.
        let behind = registry.oldest_not_written().filter(|seq| *seq < previous.0);
        let cursor = behind
            .and_then(|seq| {
                let last = router.history().range(seq.checked_sub(1)?, 1).pop()?;
                Some(router.history().cursor_of(&last, router.instance()))
            })
            .unwrap_or_else(|| previous.1.clone());
        let beat = Beat {
            cursor: cursor.to_string(),
            at_ms: crate::hub::handoff::unix_ms(),
        };
        control.publish(key.clone(), serde_json::to_string(&beat).ok());
        previous = now;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), control.send(key, None)).await;
}

/// The periodic upkeep of memberships (refresh, expiry): every quarter of the TTL, at most a
/// minute.
pub async fn maintain(shared: Arc<Shared>, control: Option<Arc<Control>>, shutdown: CancellationToken) {
    let period = Duration::from_secs((shared.rooms.memberships.ttl_secs / 4).clamp(1, 60));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(period) => {
                shared.rooms.maintain(|m| {
                    if let Some(control) = &control {
                        control.publish_membership(m, true);
                    }
                });
                let expired = shared
                    .handoffs
                    .expire(crate::hub::handoff::unix_ms(), std::time::Instant::now());
                if let Some(control) = &control {
                    for (workspace, user, id) in expired {
                        control.forget_session(workspace.as_deref(), &user, &id);
                    }
                }
            }
        }
    }
}

/// Creates the producer and returns the consume loop, which the caller runs under supervision.
pub fn start(
    settings: &Settings,
    state: Arc<Shared>,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> anyhow::Result<(Arc<Control>, crate::supervise::Restartable)> {
    let topic = settings.kafka.control_topic.clone();
    let producer: FutureProducer =
        producer_config(settings, "websocket-service-control", Duration::from_secs(10)).create()?;
    let consumer: Arc<StreamConsumer> = Arc::new(client_config(&settings.kafka).create()?);
    let admin = if settings.kafka.create_topics {
        Some(Arc::new(
            client_config(&settings.kafka).create::<AdminClient<DefaultClientContext>>()?,
        ))
    } else {
        None
    };
    readiness.gate(PART, "reading the control topic");
    let control = Arc::new(Control {
        producer,
        topic: topic.clone(),
    });
    let run: crate::supervise::Restartable = Box::new(move || {
        let (consumer, state, readiness, shutdown, topic, admin) = (
            consumer.clone(),
            state.clone(),
            readiness.clone(),
            shutdown.clone(),
            topic.clone(),
            admin.clone(),
        );
        Box::pin(async move { consume(consumer, topic, admin, state, readiness, shutdown).await })
    });
    Ok((control, run))
}

/// Assigns every partition of the control topic from its beginning, reads it, and opens the
/// readiness gate once it reached the watermarks it found at assignment.
async fn consume(
    consumer: Arc<StreamConsumer>,
    topic: String,
    admin: Option<Arc<AdminClient<DefaultClientContext>>>,
    state: Arc<Shared>,
    readiness: Readiness,
    shutdown: CancellationToken,
) {
    // A restarted loop reads the topic from its beginning again: what it replays is the past,
    // not news to announce, and expiry waits until it is caught up.
    state.announce.store(false, Ordering::Release);
    let mut pause = Duration::from_millis(100);
    // Target offset per partition: caught up once every position reaches it.
    let mut targets: HashMap<i32, i64> = loop {
        if let Some(admin) = &admin {
            let new = NewTopic::new(&topic, 1, TopicReplication::Fixed(1)).set("cleanup.policy", "compact");
            let _ = admin.create_topics(&[new], &AdminOptions::new()).await;
        }
        let c = consumer.clone();
        let t = topic.clone();
        let found = tokio::task::spawn_blocking(move || assign_from_start(&c, &t)).await;
        match found {
            Ok(Ok(targets)) => {
                readiness.recover(PART);
                break targets;
            }
            // A missing control topic must not keep the replica out of the Service for good:
            // it serves, with user-scoped rooms and catch-up kept to itself, and says so.
            Ok(Err(reason)) => {
                readiness.open(PART);
                readiness.degrade(PART, reason);
            }
            Err(error) => readiness.problem(PART, format!("control assignment task failed: {error}")),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_secs(5));
    };
    targets.retain(|_, high| *high > 0);
    if targets.is_empty() {
        state.announce.store(true, Ordering::Release);
        readiness.open(PART);
    }
    loop {
        let received = tokio::select! {
            () = shutdown.cancelled() => return,
            received = consumer.recv() => received,
        };
        let msg = match received {
            Ok(msg) => msg,
            Err(error) => {
                tracing::warn!(%error, "control topic receive failed");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(500)) => continue,
                }
            }
        };
        apply(&state, msg.key(), msg.payload());
        if !targets.is_empty() {
            if targets
                .get(&msg.partition())
                .is_some_and(|high| msg.offset() + 1 >= *high)
            {
                targets.remove(&msg.partition());
            }
            if targets.is_empty() {
                tracing::info!(
                    memberships = state.rooms.memberships.len(),
                    catchup_sessions = state.handoffs.len(),
                    online_users = state.presence.counts().0,
                    revocations = state.revocations.len(),
                    "control topic caught up"
                );
                state.announce.store(true, Ordering::Release);
                readiness.open(PART);
            }
        }
    }
}

/// One control record. Unknown or malformed records are skipped (a newer replica may write
/// kinds this one does not know).
fn apply(state: &Shared, key: Option<&[u8]>, value: Option<&[u8]>) {
    let Some(key) = key.and_then(|k| std::str::from_utf8(k).ok()) else {
        return;
    };
    if let Some(named) = Membership::from_key(key) {
        match value {
            None => state.rooms.apply_leave(&named),
            Some(bytes) => match serde_json::from_slice::<Membership>(bytes) {
                Ok(m) if m.user == named.user && m.room == named.room && m.workspace == named.workspace => {
                    state.rooms.apply_join(&m)
                }
                _ => tracing::debug!(key, "control record skipped: value does not match its key"),
            },
        }
    } else if let Some((workspace, user, id)) = Session::from_key(key) {
        match value {
            None => state.handoffs.remove(workspace.as_deref(), &user, &id),
            Some(bytes) => match serde_json::from_slice::<Session>(bytes) {
                Ok(s) if s.id == id && s.user == user && s.workspace == workspace => {
                    state.handoffs.record(s);
                }
                _ => tracing::debug!(key, "control record skipped: value does not match its key"),
            },
        }
    } else if let Some((replica, workspace, user)) = crate::hub::presence::from_key(key) {
        let record = match value.map(serde_json::from_slice::<crate::hub::presence::Record>) {
            None => None,
            Some(Ok(record)) => Some(record),
            Some(Err(_)) => {
                tracing::debug!(key, "control record skipped: not a presence record");
                return;
            }
        };
        if let Some(change) = state
            .presence
            .apply(&replica, workspace.as_deref(), &user, record)
        {
            announce(state, &[change]);
        }
    } else if let Some(target) = Target::from_key(key) {
        match value.map(serde_json::from_slice::<Revocation>) {
            None => state
                .revocations
                .apply(target, None, crate::hub::handoff::unix_ms()),
            Some(Ok(revocation)) => {
                state
                    .revocations
                    .apply(target.clone(), Some(revocation), crate::hub::handoff::unix_ms());
                if revocation.until_ms > crate::hub::handoff::unix_ms() {
                    let closed = close_revoked(&state.router, &target, &revocation);
                    state.stats.revoked_sessions(closed);
                }
            }
            Some(Err(_)) => tracing::debug!(key, "control record skipped: not a revocation"),
        }
    } else if Disconnect::is_key(key) {
        let Some(order) = value.and_then(|v| serde_json::from_slice::<Disconnect>(v).ok()) else {
            return;
        };
        let age = crate::hub::handoff::unix_ms().saturating_sub(order.at_ms);
        if order.replica != *state.presence.replica && age <= DISCONNECT_VALID.as_millis() as u64 {
            let closed = order.apply(&state.router);
            state.stats.disconnected_sessions(closed);
        }
    } else if let Some(replica) = Beat::from_key(key) {
        let beat = value.and_then(|bytes| serde_json::from_slice::<Beat>(bytes).ok());
        if value.is_some() && beat.is_none() {
            tracing::debug!(key, "control record skipped: not a beat");
            return;
        }
        state.handoffs.beat(
            &replica,
            beat,
            std::time::Instant::now(),
            crate::hub::handoff::unix_ms(),
        );
    }
}

/// Tells this replica's sessions who came online or went offline: a `user.online` or
/// `user.offline` event to the user's workspace (everyone when the user has none), except the
/// user. Routed as an event without a log position (it resumes on this replica only).
pub fn announce(state: &Shared, changes: &[Change]) {
    for change in changes {
        state.stats.presence_transition(change.online);
    }
    if !state.announce.load(Ordering::Acquire) {
        return;
    }
    for change in changes {
        let kind = if change.online {
            "user.online"
        } else {
            "user.offline"
        };
        let mut to = serde_json::json!({"exclude_users": [&*change.user]});
        match &change.workspace {
            Some(ws) => to["workspace"] = serde_json::json!(&**ws),
            None => to["all"] = serde_json::json!(true),
        }
        let event = serde_json::json!({
            "event_type": kind,
            "data": {"user_id": &*change.user},
            "to": to,
            "occurred_at": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        });
        match task_events::Event::from_json(event.to_string().as_bytes()) {
            Ok(event) => {
                state.router.route(event, crate::ingest::Origin::Api);
            }
            Err(error) => tracing::warn!(%error, "presence event not built"),
        }
    }
}

/// Presence, revocation and state upkeep, every 200 ms: writes this replica's presence
/// records (new users, changed rooms, tombstones whose grace passed), drops the records of
/// replicas that died, and forgets revocations whose tokens have expired (the janitor writes
/// the tombstones).
pub async fn cluster(
    shared: Arc<Shared>,
    control: Option<Arc<Control>>,
    _revocation_ttl: Duration,
    shutdown: CancellationToken,
) {
    let period = Duration::from_millis(200);
    let mut ticks: u64 = 0;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(period) => {}
        }
        ticks += 1;
        if ticks.is_multiple_of(25) {
            // State keys not updated within STATE_TTL_SECS, every 5 s.
            shared.router.state().expire();
            // Replicas long gone: forgotten, and their beats tombstoned by the janitor.
            if shared.announce.load(Ordering::Acquire) {
                let now = std::time::Instant::now();
                let janitor = shared.handoffs.is_janitor(now);
                for replica in shared.handoffs.forget_silent(now) {
                    if let (true, Some(control)) = (janitor, &control) {
                        control.publish(Beat::key_of(&replica), None);
                    }
                }
            }
        }
        let now = std::time::Instant::now();
        let now_ms = crate::hub::handoff::unix_ms();
        let (writes, changes) = shared.presence.flush(now, now_ms);
        announce(&shared, &changes);
        // Until the control topic has been read up to where it stood, live replicas' beats may
        // look old: nothing is judged dead, nothing is tombstoned.
        let caught_up = shared.announce.load(Ordering::Acquire);
        let janitor = caught_up && shared.handoffs.is_janitor(now);
        let (expired, tombstones) = if caught_up {
            shared
                .presence
                .expire(now, |replica| shared.handoffs.liveness(replica), janitor)
        } else {
            (Vec::new(), Vec::new())
        };
        announce(&shared, &expired);
        let revoked = if caught_up {
            shared.revocations.expire(now_ms)
        } else {
            Vec::new()
        };
        if let Some(control) = &control {
            // This replica's records: a failed write is written again (the current value).
            for (key, record) in writes {
                let (control, presence) = (control.clone(), shared.presence.clone());
                tokio::spawn(async move {
                    let value = record.and_then(|r| serde_json::to_string(&r).ok());
                    if let Err(error) = control.write(&key, value.as_deref()).await {
                        tracing::warn!(%error, key, "presence record not written; retrying");
                        presence.write_failed(&key);
                    }
                });
            }
            for (key, _) in tombstones {
                control.publish(key, None);
            }
            if janitor {
                for target in revoked {
                    control.publish(target.key(), None);
                }
            }
        }
        shared.stats.presence_records(shared.presence.counts().1);
    }
}

/// Assigns every partition from its beginning; returns each partition's high watermark.
fn assign_from_start(consumer: &StreamConsumer, topic: &str) -> Result<HashMap<i32, i64>, String> {
    let timeout = Duration::from_secs(5);
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| format!("control topic metadata: {e}"))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(format!("control topic {topic} not found (create it, compacted)"));
    }
    let mut targets = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for partition in partitions {
        let (_, high) = consumer
            .fetch_watermarks(topic, partition, timeout)
            .map_err(|e| format!("control topic watermarks: {e}"))?;
        targets.insert(partition, high);
        tpl.add_partition_offset(topic, partition, Offset::Beginning)
            .map_err(|e| e.to_string())?;
    }
    consumer
        .assign(&tpl)
        .map_err(|e| format!("control topic assignment: {e}"))?;
    Ok(targets)
}
