//! Who is connected, and who receives an event.
//!
//! Every open session has an entry (its user, workspace, roles, joined rooms and event filter)
//! and a bounded mailbox. Sessions are indexed by user, workspace, role and room, so routing an
//! event costs in proportion to its audience on this replica, not to the number of connections
//! ([`Registry::deliver`]); only an `all` broadcast walks every session.
//!
//! The fan-out never waits for a client: it pushes into each session's mailbox and moves on. A
//! full mailbox is a decision, not a wait: the session stops receiving pushes and catches up
//! from the shared history at its own pace (its cost: a position, not a copy of the backlog);
//! without a history it is kicked with 4008 (slow consumer). Either way one stalled client
//! costs at most `SESSION_QUEUE_CAPACITY` messages of memory and delays nobody else.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;

use bytestring::ByteString;
use parking_lot::{Mutex, RwLock};
use tokio::sync::Notify;

use task_events::{Audience, Event};

use crate::hub::history::Entry;
use crate::hub::presence::Presence;
use crate::protocol::close;

/// A session's outbound queue plus the way to tell it to close.
///
/// One wake-up for both "a message was queued" and "close now". It is `notify_one`, which stores
/// a permit when the session is not waiting, and the session only ever waits for it in one
/// place, after which it looks at both the queue and the kick flag again: so no wake-up is lost,
/// and none can be consumed by a wait that does not re-check the queue.
/// A queued message and the history entry it is for (its position, its cursor).
pub type Queued = (ByteString, Arc<Entry>);

/// `lag` value of a session that is live (receives pushes).
const LIVE: u64 = u64::MAX;

pub struct Mailbox {
    /// Messages waiting to be written; never longer than `capacity`.
    queue: Mutex<VecDeque<Queued>>,
    /// `LIVE`, or the seq of the first history entry the session has not been offered: while it
    /// catches up from the history, pushes skip it (it finds them in the history).
    lag: AtomicU64,
    /// Whether a full queue means "catch up from the history" (else: kicked with 4008).
    catch_up: bool,
    /// Something changed: a message was queued, or the session was kicked.
    wake: Notify,
    /// Close code the session must close with, 0 while it may live.
    kicked: AtomicU16,
    /// The replica's position when the session was kicked, taken under the routing lock: what
    /// was routed before was offered to it, nothing after is (see [`Mailbox::kicked_at`]).
    kicked_at: Mutex<Option<Arc<str>>>,
    capacity: usize,
    /// The seq of the oldest message offered to the session and not written yet (`LIVE`: none):
    /// how far every session of this replica has surely been written (its beat).
    unwritten: AtomicU64,
}

impl Mailbox {
    fn new(capacity: usize, catch_up: bool, lag: Option<u64>) -> Self {
        Mailbox {
            queue: Mutex::new(VecDeque::new()),
            lag: AtomicU64::new(lag.unwrap_or(LIVE)),
            catch_up,
            wake: Notify::new(),
            kicked: AtomicU16::new(0),
            kicked_at: Mutex::new(None),
            capacity,
            unwritten: AtomicU64::new(LIVE),
        }
    }

    /// Queues a message. A session catching up from the history is skipped (it will find the
    /// entry there). When the queue is full the session starts catching up from this entry;
    /// without a history it is kicked instead, and the error holds how many messages were
    /// dropped (the queued ones and this one).
    fn push(&self, msg: ByteString, entry: &Arc<Entry>) -> Result<Pushed, usize> {
        if self.lag.load(Ordering::Acquire) != LIVE {
            // No wake: a session catching up never waits for its mailbox. It reads the history
            // until it is live again (going live is decided under the routing lock, so nothing
            // routed meanwhile is missed), or it waits for room in its transport. A wake per
            // event per lagging session was most of the cost of a fan-out to many slow ones.
            return Ok(Pushed::Deferred);
        }
        let mut queue = self.queue.lock();
        if queue.len() >= self.capacity {
            if self.catch_up {
                self.lag.store(entry.seq, Ordering::Release);
                drop(queue);
                self.wake.notify_one();
                return Ok(Pushed::Deferred);
            }
            let dropped = queue.len() + 1;
            queue.clear();
            drop(queue);
            self.kick(close::SLOW_CONSUMER);
            return Err(dropped);
        }
        queue.push_back((msg, entry.clone()));
        self.unwritten.fetch_min(entry.seq, Ordering::AcqRel);
        drop(queue);
        self.wake.notify_one();
        Ok(Pushed::Queued)
    }

    /// Messages taken from the history from `seq` on wait to be written.
    pub fn pending_from(&self, seq: u64) {
        self.unwritten.fetch_min(seq, Ordering::AcqRel);
    }

    /// What was written: the oldest message still waiting is the first of the queue, or
    /// `taken` (the oldest the session holds outside the queue).
    pub fn settle(&self, taken: Option<u64>) {
        let queue = self.queue.lock();
        let oldest = queue.front().map(|q| q.1.seq).into_iter().chain(taken).min();
        self.unwritten.store(oldest.unwrap_or(LIVE), Ordering::Release);
    }

    /// The oldest seq this session has not been written: the first it has not been offered
    /// while it catches up, or the oldest message waiting.
    fn not_written(&self) -> Option<u64> {
        let oldest = self
            .lag
            .load(Ordering::Acquire)
            .min(self.unwritten.load(Ordering::Acquire));
        (oldest != LIVE).then_some(oldest)
    }

    /// The seq the session catches up from, if it is not live.
    pub fn lag(&self) -> Option<u64> {
        match self.lag.load(Ordering::Acquire) {
            LIVE => None,
            seq => Some(seq),
        }
    }

    /// Records how far a catching-up session has been offered the history.
    pub fn set_lag(&self, seq: u64) {
        self.lag.store(seq, Ordering::Release);
    }

    /// The session is live again (called under the router's lock, at the history's head).
    pub fn set_live(&self) {
        self.lag.store(LIVE, Ordering::Release);
    }

    /// Tells the session to close with `code`. The first kick wins.
    pub fn kick(&self, code: u16) {
        self.kick_at(code, None);
    }

    /// Tells the session to close with `code`, noting `position`: the replica's cursor at this
    /// moment, taken under the routing lock (`Router::kick`). The first kick wins.
    pub fn kick_at(&self, code: u16, position: Option<Arc<str>>) {
        if self
            .kicked
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            *self.kicked_at.lock() = position;
        }
        self.wake.notify_one();
    }

    /// Where the replica stood when the session was kicked, if that was noted. Once kicked it is
    /// offered nothing more, so a session that has written everything offered to it stands
    /// here, not at the replica's frontier (which moves on without it).
    pub fn kicked_at(&self) -> Option<Arc<str>> {
        self.kicked_at.lock().clone()
    }

    /// The close code if the session was kicked.
    pub fn kicked(&self) -> Option<u16> {
        match self.kicked.load(Ordering::Acquire) {
            0 => None,
            code => Some(code),
        }
    }

    /// Removes the oldest message. Gives memory back once a burst has drained.
    pub fn pop(&self) -> Option<Queued> {
        let mut queue = self.queue.lock();
        let msg = queue.pop_front();
        if queue.is_empty() && queue.capacity() > 16 {
            queue.shrink_to(0);
        }
        msg
    }

    pub fn is_empty(&self) -> bool {
        self.queue.lock().is_empty()
    }

    /// Waits until a message is queued or the session kicked (or either happened since the
    /// last wait). The caller must look at the queue and [`Mailbox::kicked`] afterwards.
    pub async fn changed(&self) {
        self.wake.notified().await
    }
}

/// A connection limit that refused a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LimitHit {
    #[error("server at connection capacity")]
    Total,
    #[error("too many connections for this user")]
    PerUser,
    #[error("too many anonymous connections")]
    Anonymous,
    #[error("server shutting down")]
    Draining,
}

impl LimitHit {
    pub fn close_code(self) -> u16 {
        match self {
            LimitHit::Total | LimitHit::Anonymous => close::TRY_AGAIN_LATER,
            LimitHit::PerUser => close::TOO_MANY_CONNECTIONS,
            LimitHit::Draining => close::GOING_AWAY,
        }
    }
}

/// What a push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// The session catches up from the history (it was, or its queue just filled).
    Deferred,
}

/// What one delivery did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// Sessions the message was queued to.
    pub queued: usize,
    /// Sessions that will find it in the history (catching up).
    pub deferred: usize,
    /// Sessions kicked because their queue was full.
    pub overflowed: usize,
    /// Messages those sessions lost (their queues and this one).
    pub dropped: usize,
}

/// A session's identity, fixed when it is admitted.
#[derive(Debug, Clone)]
pub struct Profile {
    /// The token's `sub` (for an anonymous session, a name no producer can address).
    pub user: Arc<str>,
    /// The workspace the session is bound to, if any.
    pub workspace: Option<Arc<str>>,
    /// The token's roles.
    pub roles: Box<[Arc<str>]>,
    /// An anonymous session: only `all` broadcasts and public rooms reach it, and never a
    /// presence event.
    pub anonymous: bool,
    /// The token's `jti` and `iat`, which a revocation may name.
    pub jti: Option<Arc<str>>,
    pub issued_at: Option<u64>,
    /// The session counts in presence (WebSocket and SSE sessions of a signed-in user; a poll
    /// does not).
    pub presence: bool,
    /// Unix ms of its admission: a disconnect order closes only sessions admitted before it.
    pub admitted_ms: u64,
    /// The session's public id (a random UUID v4, never reused): its `connection_id`, what
    /// `to.session` names, what backends see.
    pub session: u128,
}

impl Profile {
    pub fn user(user: &str) -> Self {
        Profile {
            user: user.into(),
            workspace: None,
            roles: Box::new([]),
            anonymous: false,
            jti: None,
            issued_at: None,
            presence: false,
            admitted_ms: 0,
            session: uuid::Uuid::new_v4().as_u128(),
        }
    }
}

/// Presence events: never to an anonymous session (it appears nowhere in presence and sees no
/// one in it).
pub fn is_presence_event(event_type: &str) -> bool {
    matches!(event_type, "user.online" | "user.offline")
}

pub type SessionId = u64;

/// A room is named within a workspace: sessions bound to workspace A and to workspace B that
/// join a room of the same name are in two different rooms.
type RoomKey = (Option<Arc<str>>, Arc<str>);

/// A session's entry: its profile, mailbox, and what it chose (rooms, filter).
struct SessionEntry {
    profile: Profile,
    mailbox: Arc<Mailbox>,
    /// Rooms joined, at most `max_rooms`.
    rooms: Vec<Arc<str>>,
    /// Event types the session wants; `None` means every type.
    filter: Option<Box<[Box<str>]>>,
}

impl SessionEntry {
    fn wants(&self, event_type: &str) -> bool {
        self.filter
            .as_ref()
            .is_none_or(|types| types.iter().any(|t| &**t == event_type))
    }
}

/// The sessions and their indexes; always changed together, under one lock.
#[derive(Default)]
struct Index {
    sessions: HashMap<SessionId, SessionEntry>,
    by_user: HashMap<Arc<str>, Vec<SessionId>>,
    by_workspace: HashMap<Arc<str>, HashSet<SessionId>>,
    by_role: HashMap<Arc<str>, HashSet<SessionId>>,
    by_room: HashMap<RoomKey, HashSet<SessionId>>,
    by_session: HashMap<u128, SessionId>,
    anonymous: usize,
}

fn unindex<K: std::hash::Hash + Eq>(map: &mut HashMap<K, HashSet<SessionId>>, key: &K, id: SessionId) {
    if let Some(set) = map.get_mut(key) {
        set.remove(&id);
        if set.is_empty() {
            map.remove(key);
        }
    }
}

/// Why a join was refused by the registry (authorization is decided before).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinRefused {
    /// The session already holds `max_rooms` rooms.
    Limit,
    /// The session is gone.
    Gone,
}

/// A change to a session's event filter.
#[derive(Debug, Clone)]
pub enum FilterChange {
    Add(Vec<String>),
    /// These types, or (`None`) all of them.
    Remove(Option<Vec<String>>),
}

/// Why a filter change was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterRefused {
    /// The result would hold more than the allowed number of types.
    Limit,
    /// The session is gone.
    Gone,
}

/// A session's place in the registry. Dropping it unregisters the session, however the session
/// task ends (a panic included), so a slot can never leak.
pub struct Slot {
    registry: Arc<Registry>,
    id: SessionId,
    user: Arc<str>,
    mailbox: Arc<Mailbox>,
    session: u128,
}

impl Slot {
    pub fn mailbox(&self) -> &Arc<Mailbox> {
        &self.mailbox
    }

    pub fn user(&self) -> &Arc<str> {
        &self.user
    }

    /// The public session id ([`Profile::session`]) as a UUID string.
    pub fn session(&self) -> String {
        uuid::Uuid::from_u128(self.session).to_string()
    }

    pub fn id(&self) -> SessionId {
        self.id
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.registry.unregister(self.id);
    }
}

/// The bounds of the registry.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_total: usize,
    pub max_per_user: usize,
    pub max_anonymous: usize,
    pub queue_capacity: usize,
    /// A full queue makes the session catch up from the history (else it is kicked, 4008).
    pub catch_up: bool,
}

/// All sessions of this instance.
pub struct Registry {
    index: RwLock<Index>,
    next_id: AtomicU64,
    /// Set when the drain starts: no session is admitted after it, so none can miss its 1001.
    closed: AtomicBool,
    limits: Limits,
    /// Told of every presence-counted session that opens or closes, and of its rooms.
    presence: std::sync::OnceLock<Arc<Presence>>,
    /// Why a session was kicked, when the code alone does not say (a revocation, a disconnect
    /// through the server API). Taken by the session when it closes.
    reasons: parking_lot::Mutex<HashMap<SessionId, Box<str>>>,
}

impl Registry {
    pub fn new(limits: Limits) -> Self {
        Registry {
            index: RwLock::new(Index::default()),
            next_id: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            limits,
            presence: std::sync::OnceLock::new(),
            reasons: parking_lot::Mutex::new(HashMap::new()),
        }
    }

    /// Reports sessions to `presence` from now on.
    pub fn track_presence(&self, presence: Arc<Presence>) {
        let _ = self.presence.set(presence);
    }

    /// Kicks every session of `user` (every session, when `None`) whose profile `matches`, with
    /// `code` and `reason`, noting `position` (see [`Mailbox::kick_at`]). Returns how many.
    pub fn kick_where(
        &self,
        user: Option<&str>,
        matches: impl Fn(&Profile) -> bool,
        code: u16,
        reason: &str,
        position: Arc<str>,
    ) -> usize {
        let index = self.index.read();
        let ids: Vec<SessionId> = match user {
            Some(user) => index.by_user.get(user).cloned().unwrap_or_default(),
            None => index.sessions.keys().copied().collect(),
        };
        let mut kicked = 0;
        for id in ids {
            let Some(entry) = index.sessions.get(&id) else {
                continue;
            };
            if !matches(&entry.profile) || entry.mailbox.kicked().is_some() {
                continue;
            }
            self.reasons.lock().insert(id, reason.into());
            entry.mailbox.kick_at(code, Some(position.clone()));
            kicked += 1;
        }
        kicked
    }

    /// The reason a session was kicked with [`Registry::kick_where`], once.
    pub fn take_reason(&self, id: SessionId) -> Option<Box<str>> {
        self.reasons.lock().remove(&id)
    }

    /// Admits a session and returns its slot, or says which limit refused it.
    pub fn admit(self: &Arc<Self>, profile: Profile) -> Result<Slot, LimitHit> {
        self.admit_from(profile, None)
    }

    /// Admits a session that starts by catching up from history seq `lag` (a resume), or live.
    pub fn admit_from(self: &Arc<Self>, profile: Profile, lag: Option<u64>) -> Result<Slot, LimitHit> {
        let mut index = self.index.write();
        // Checked under the lock that `close_admission` takes: a session is either in the
        // snapshot the drain kicks, or refused here.
        if self.closed.load(Ordering::Acquire) {
            return Err(LimitHit::Draining);
        }
        if index.sessions.len() >= self.limits.max_total {
            return Err(LimitHit::Total);
        }
        if profile.anonymous && index.anonymous >= self.limits.max_anonymous {
            return Err(LimitHit::Anonymous);
        }
        if index.by_user.get(&profile.user).map_or(0, Vec::len) >= self.limits.max_per_user {
            return Err(LimitHit::PerUser);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mailbox = Arc::new(Mailbox::new(
            self.limits.queue_capacity,
            self.limits.catch_up,
            lag,
        ));
        index.by_user.entry(profile.user.clone()).or_default().push(id);
        if let Some(ws) = &profile.workspace {
            index.by_workspace.entry(ws.clone()).or_default().insert(id);
        }
        for role in profile.roles.iter() {
            index.by_role.entry(role.clone()).or_default().insert(id);
        }
        if profile.anonymous {
            index.anonymous += 1;
        }
        index.by_session.insert(profile.session, id);
        if let (true, Some(presence)) = (profile.presence, self.presence.get()) {
            presence.opened(profile.workspace.as_deref(), &profile.user);
        }
        let user = profile.user.clone();
        let session = profile.session;
        index.sessions.insert(
            id,
            SessionEntry {
                profile,
                mailbox: mailbox.clone(),
                rooms: Vec::new(),
                filter: None,
            },
        );
        Ok(Slot {
            registry: self.clone(),
            id,
            user,
            mailbox,
            session,
        })
    }

    /// Refuses every later [`Registry::admit`] (the drain has started).
    pub fn close_admission(&self) {
        let _index = self.index.write();
        self.closed.store(true, Ordering::Release);
    }

    /// Removes a session from every index.
    fn unregister(&self, id: SessionId) {
        let mut index = self.index.write();
        let Some(entry) = index.sessions.remove(&id) else {
            return;
        };
        let profile = &entry.profile;
        if let Some(ids) = index.by_user.get_mut(&profile.user) {
            ids.retain(|s| *s != id);
            if ids.is_empty() {
                index.by_user.remove(&profile.user);
            }
        }
        if let Some(ws) = &profile.workspace {
            unindex(&mut index.by_workspace, ws, id);
        }
        for role in profile.roles.iter() {
            unindex(&mut index.by_role, role, id);
        }
        for room in &entry.rooms {
            unindex(&mut index.by_room, &(profile.workspace.clone(), room.clone()), id);
        }
        if profile.anonymous {
            index.anonymous -= 1;
        }
        index.by_session.remove(&profile.session);
        if let (true, Some(presence)) = (profile.presence, self.presence.get()) {
            presence.closed(
                profile.workspace.as_deref(),
                &profile.user,
                &entry.rooms,
                std::time::Instant::now(),
            );
        }
        drop(index);
        self.reasons.lock().remove(&id);
    }

    /// Adds a room to a session (idempotent).
    pub fn join(&self, id: SessionId, room: &str, max_rooms: usize) -> Result<(), JoinRefused> {
        let mut index = self.index.write();
        let Index {
            sessions, by_room, ..
        } = &mut *index;
        let entry = sessions.get_mut(&id).ok_or(JoinRefused::Gone)?;
        if entry.rooms.iter().any(|r| &**r == room) {
            return Ok(());
        }
        if entry.rooms.len() >= max_rooms {
            return Err(JoinRefused::Limit);
        }
        let room: Arc<str> = room.into();
        if let (true, Some(presence)) = (entry.profile.presence, self.presence.get()) {
            presence.room(
                entry.profile.workspace.as_deref(),
                &entry.profile.user,
                &room,
                true,
            );
        }
        entry.rooms.push(room.clone());
        by_room
            .entry((entry.profile.workspace.clone(), room))
            .or_default()
            .insert(id);
        Ok(())
    }

    /// Removes a room from a session (idempotent).
    pub fn leave(&self, id: SessionId, room: &str) {
        let mut index = self.index.write();
        let Index {
            sessions, by_room, ..
        } = &mut *index;
        let Some(entry) = sessions.get_mut(&id) else {
            return;
        };
        let Some(at) = entry.rooms.iter().position(|r| &**r == room) else {
            return;
        };
        let room = entry.rooms.swap_remove(at);
        if let (true, Some(presence)) = (entry.profile.presence, self.presence.get()) {
            presence.room(
                entry.profile.workspace.as_deref(),
                &entry.profile.user,
                &room,
                false,
            );
        }
        unindex(by_room, &(entry.profile.workspace.clone(), room), id);
    }

    /// Changes the session's event filter and returns the resulting list (empty: every type).
    /// A change that would leave more than `max` types changes nothing.
    pub fn change_filter(
        &self,
        id: SessionId,
        change: FilterChange,
        max: usize,
    ) -> Result<Vec<Box<str>>, FilterRefused> {
        let mut index = self.index.write();
        let entry = index.sessions.get_mut(&id).ok_or(FilterRefused::Gone)?;
        let mut types: Vec<Box<str>> = entry.filter.take().map(Vec::from).unwrap_or_default();
        let before = types.clone();
        match change {
            FilterChange::Add(add) => {
                for t in add {
                    if !types.iter().any(|c| **c == *t) {
                        types.push(t.into());
                    }
                }
            }
            FilterChange::Remove(Some(remove)) => types.retain(|c| !remove.iter().any(|t| **c == **t)),
            FilterChange::Remove(None) => types.clear(),
        }
        if types.len() > max {
            entry.filter = (!before.is_empty()).then(|| before.into());
            return Err(FilterRefused::Limit);
        }
        entry.filter = (!types.is_empty()).then(|| types.clone().into());
        Ok(types)
    }

    /// Queues an event to every session of its audience on this instance, without waiting for
    /// any of them, each session at most once. `make(room)` builds the message (once per room a
    /// session matched through, and only if some session matched).
    pub fn deliver(&self, event: &Arc<Entry>, mut make: impl FnMut(Option<&str>) -> ByteString) -> Delivery {
        let to = &*event.audience();
        let event_type = event.event_type();
        let sender = event.sender_session();
        let index = self.index.read();
        let mut outcome = Delivery::default();
        let workspace = to.workspace.as_deref();
        // The message of each room variant, built on first use.
        let mut built: Vec<(Option<Box<str>>, ByteString)> = Vec::new();
        let mut offer_entry = |entry: &SessionEntry, via_room: Option<&str>, outcome: &mut Delivery| {
            if !admits(to, entry, via_room.is_some(), event_type, sender) || !entry.wants(event_type) {
                return;
            }
            if entry.mailbox.kicked().is_some() {
                return;
            }
            let room = via_room
                .or(to.room.as_deref())
                .or(to.rooms.first().map(String::as_str));
            let msg = match built.iter().find(|(r, _)| r.as_deref() == room) {
                Some((_, msg)) => msg.clone(),
                None => {
                    let msg = make(room);
                    built.push((room.map(Box::from), msg.clone()));
                    msg
                }
            };
            match entry.mailbox.push(msg, event) {
                Ok(Pushed::Queued) => outcome.queued += 1,
                Ok(Pushed::Deferred) => outcome.deferred += 1,
                Err(dropped) => {
                    outcome.overflowed += 1;
                    outcome.dropped += dropped;
                }
            }
        };
        let mut offer = |id: SessionId, via_room: Option<&str>, outcome: &mut Delivery| {
            if let Some(entry) = index.sessions.get(&id) {
                offer_entry(entry, via_room, outcome);
            }
        };
        if to.all {
            match workspace {
                Some(ws) => index
                    .by_workspace
                    .get(ws)
                    .into_iter()
                    .flatten()
                    .for_each(|id| offer(*id, None, &mut outcome)),
                None => index
                    .sessions
                    .keys()
                    .for_each(|id| offer(*id, None, &mut outcome)),
            }
            return outcome;
        }
        // Targets united; a session reached through several of them gets the event once.
        let users = to.all_users().count();
        let rooms = to.all_rooms().count();
        let session = to.session.as_deref().map(session_id);
        let named = users + rooms + usize::from(session.is_some());
        let ws_only = named == 0 && workspace.is_some();
        let roles_only = named == 0 && workspace.is_none();
        let sources = named + usize::from(ws_only) + if roles_only { to.roles.len() } else { 0 };
        let mut seen: Option<HashSet<SessionId>> = (sources > 1).then(HashSet::new);
        let mut once = |id: SessionId| seen.as_mut().is_none_or(|seen| seen.insert(id));
        // Rooms first, so a session in a room gets the room's variant of the message.
        for room in to.all_rooms() {
            let key: RoomKey = (workspace.map(Arc::from), Arc::from(room));
            for id in index.by_room.get(&key).into_iter().flatten() {
                if once(*id) {
                    offer(*id, Some(room), &mut outcome);
                }
            }
        }
        for user in to.all_users() {
            for id in index.by_user.get(user).into_iter().flatten() {
                if once(*id) {
                    offer(*id, None, &mut outcome);
                }
            }
        }
        if let Some(id) = session.and_then(|s| index.by_session.get(&s)) {
            if once(*id) {
                offer(*id, None, &mut outcome);
            }
        }
        if ws_only {
            for id in workspace
                .and_then(|ws| index.by_workspace.get(ws))
                .into_iter()
                .flatten()
            {
                if once(*id) {
                    offer(*id, None, &mut outcome);
                }
            }
        }
        if roles_only {
            for role in &to.roles {
                for id in index.by_role.get(role.as_str()).into_iter().flatten() {
                    if once(*id) {
                        offer(*id, None, &mut outcome);
                    }
                }
            }
        }
        outcome
    }

    /// The oldest history seq some session here has not been written (none: all are up to date).
    pub fn oldest_not_written(&self) -> Option<u64> {
        let index = self.index.read();
        index
            .sessions
            .values()
            .filter_map(|e| e.mailbox.not_written())
            .min()
    }

    /// A session's profile (for what it sends upstream: the identity the gateway stamps).
    pub fn profile_of(&self, id: SessionId) -> Option<Profile> {
        self.index.read().sessions.get(&id).map(|e| e.profile.clone())
    }

    /// Whether a session is in `room`.
    pub fn is_in_room(&self, id: SessionId, room: &str) -> bool {
        self.index
            .read()
            .sessions
            .get(&id)
            .is_some_and(|e| e.rooms.iter().any(|r| &**r == room))
    }

    /// The rooms a session is in and its filter (what a session that takes over from it gets).
    pub fn choices_of(&self, id: SessionId) -> (Vec<String>, Vec<String>) {
        let index = self.index.read();
        index.sessions.get(&id).map_or_else(Default::default, |e| {
            (
                e.rooms.iter().map(|r| r.to_string()).collect(),
                e.filter.iter().flatten().map(|t| t.to_string()).collect(),
            )
        })
    }

    /// Whether history entry `event` is for session `id`, as [`Registry::deliver`] would decide:
    /// `Some(room)` (the room it reaches the session through, if any) or `None`.
    pub fn offer_one(&self, id: SessionId, event: &Entry) -> Option<Option<Box<str>>> {
        let index = self.index.read();
        let entry = index.sessions.get(&id)?;
        offer_to(entry, event).map(|room| room.map(Box::from))
    }

    /// [`Registry::offer_one`] for each of `events` (one lock, one lookup): `f(event, room)` for
    /// those that are for session `id`.
    pub fn offer_each<'e>(
        &self,
        id: SessionId,
        events: &mut dyn Iterator<Item = &'e Arc<Entry>>,
        mut f: impl FnMut(&'e Arc<Entry>, Option<&str>),
    ) {
        let index = self.index.read();
        let Some(entry) = index.sessions.get(&id) else {
            return;
        };
        for event in events {
            if let Some(room) = offer_to(entry, event) {
                f(event, room);
            }
        }
    }

    /// The sessions of `user` bound to `workspace`.
    fn sessions_of(index: &Index, workspace: Option<&str>, user: &str) -> Vec<SessionId> {
        index
            .by_user
            .get(user)
            .into_iter()
            .flatten()
            .filter(|id| {
                index
                    .sessions
                    .get(id)
                    .is_some_and(|e| e.profile.workspace.as_deref() == workspace)
            })
            .copied()
            .collect()
    }

    /// Whether `user` has a session bound to `workspace` here.
    pub fn has_sessions(&self, workspace: Option<&str>, user: &str) -> bool {
        !Self::sessions_of(&self.index.read(), workspace, user).is_empty()
    }

    /// Every session of `user` in `workspace` joins `room` (within `max_rooms` each).
    pub fn join_user(&self, workspace: Option<&str>, user: &str, room: &str, max_rooms: usize) {
        let ids = Self::sessions_of(&self.index.read(), workspace, user);
        for id in ids {
            let _ = self.join(id, room, max_rooms);
        }
    }

    /// Every session of `user` in `workspace` leaves `room`.
    pub fn leave_user(&self, workspace: Option<&str>, user: &str, room: &str) {
        let ids = Self::sessions_of(&self.index.read(), workspace, user);
        for id in ids {
            self.leave(id, room);
        }
    }

    /// Every open session's mailbox, to close them in steps (drain).
    pub fn sessions(&self) -> Vec<Arc<Mailbox>> {
        let index = self.index.read();
        index.sessions.values().map(|e| e.mailbox.clone()).collect()
    }

    /// Open sessions.
    pub fn connections(&self) -> usize {
        self.index.read().sessions.len()
    }

    /// Users with at least one open session.
    pub fn users(&self) -> usize {
        self.index.read().by_user.len()
    }
}

/// Whether `entry` is in the audience `to`, once it was found through one of the audience's
/// targets: the workspace confines, the roles narrow, `exclude_users` removes, and an anonymous
/// session takes only plain `all` broadcasts and its (public) rooms.
/// Whether history entry `event` is for session `entry`: `Some(room)` (the room it reaches the
/// session through, if any) or `None`.
fn offer_to<'e>(entry: &SessionEntry, event: &'e Entry) -> Option<Option<&'e str>> {
    let profile = &entry.profile;
    let to = match &event.event {
        // A task event: its user's sessions (never an anonymous one), without building an
        // audience.
        Event::Task(task) => {
            let reached = !profile.anonymous && *task.user_id == *profile.user;
            return (reached && entry.wants(event.event_type())).then_some(None);
        }
        // Delivered live only.
        Event::Generic(generic) if generic.ephemeral => return None,
        Event::Generic(generic) => &generic.to,
    };
    let workspace = to.workspace.as_deref();
    let session = to.session.as_deref().map(session_id);
    let via_room = to
        .all_rooms()
        .find(|room| entry.rooms.iter().any(|r| &**r == *room) && profile.workspace.as_deref() == workspace);
    let named = to.all_users().next().is_some() || to.all_rooms().next().is_some() || session.is_some();
    let reached = via_room.is_some()
        || to.all
        || to.all_users().any(|u| u == &*profile.user)
        || session == Some(profile.session)
        || (!named && workspace.is_some())
        || (!named && workspace.is_none() && !to.roles.is_empty());
    if !reached
        || !admits(
            to,
            entry,
            via_room.is_some(),
            event.event_type(),
            event.sender_session(),
        )
        || !entry.wants(event.event_type())
    {
        return None;
    }
    Some(
        via_room
            .or(to.room.as_deref())
            .or(to.rooms.first().map(String::as_str)),
    )
}

fn admits(
    to: &Audience,
    entry: &SessionEntry,
    via_room: bool,
    event_type: &str,
    sender: Option<u128>,
) -> bool {
    let profile = &entry.profile;
    // A client publication goes to the others.
    if sender == Some(profile.session) {
        return false;
    }
    if let Some(ws) = to.workspace.as_deref() {
        if profile.workspace.as_deref() != Some(ws) {
            return false;
        }
    }
    if !to.roles.is_empty() && !profile.roles.iter().any(|r| to.roles.iter().any(|t| t == &**r)) {
        return false;
    }
    if to.exclude_users.iter().any(|u| u.as_str() == &*profile.user) {
        return false;
    }
    // Anonymous: its (public) rooms and plain `all` broadcasts only, and never presence.
    let plain_broadcast = to.all && to.workspace.is_none();
    if profile.anonymous && (is_presence_event(event_type) || !(via_room || plain_broadcast)) {
        return false;
    }
    true
}

/// A session id as written in `to.session` or `from.session` (a UUID); one that does not parse
/// names no session (0 is never given out).
pub fn session_id(text: &str) -> u128 {
    uuid::Uuid::parse_str(text).map_or(0, |u| u.as_u128())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(max_total: usize, max_per_user: usize, queue: usize) -> Arc<Registry> {
        Arc::new(Registry::new(Limits {
            max_total,
            max_per_user,
            max_anonymous: 2,
            queue_capacity: queue,
            catch_up: false,
        }))
    }

    /// A history entry of a generic event to `to`.
    fn ev(to: &Audience, event_type: &str) -> Arc<Entry> {
        let json = serde_json::json!({"event_type": event_type, "data": {}, "to": to}).to_string();
        let event = task_events::Event::from_json(json.as_bytes()).unwrap();
        Arc::new(Entry::new(7, None, 0, event, "id".into(), "t".into()))
    }

    fn to_user(user: &str) -> Audience {
        Audience {
            user: Some(user.into()),
            ..Default::default()
        }
    }

    fn msg(_: Option<&str>) -> ByteString {
        ByteString::from_static("m")
    }

    fn profile(user: &str, ws: Option<&str>, roles: &[&str]) -> Profile {
        Profile {
            user: user.into(),
            workspace: ws.map(Arc::from),
            roles: roles.iter().map(|r| Arc::from(*r)).collect(),
            ..Profile::user(user)
        }
    }

    #[test]
    fn limits_per_user_and_total() {
        let r = registry(3, 2, 4);
        let a1 = r.admit(Profile::user("a")).unwrap();
        let _a2 = r.admit(Profile::user("a")).unwrap();
        assert_eq!(r.admit(Profile::user("a")).err(), Some(LimitHit::PerUser));
        let _b1 = r.admit(Profile::user("b")).unwrap();
        assert_eq!(r.admit(Profile::user("b")).err(), Some(LimitHit::Total));
        drop(a1);
        assert_eq!(r.connections(), 2);
        assert!(r.admit(Profile::user("b")).is_ok());
    }

    #[test]
    fn anonymous_sessions_have_their_own_limit() {
        let r = registry(10, 10, 4);
        let anon = |n: u32| Profile {
            anonymous: true,
            ..Profile::user(&format!("anonymous:{n}"))
        };
        let _a = r.admit(anon(1)).unwrap();
        let _b = r.admit(anon(2)).unwrap();
        assert_eq!(r.admit(anon(3)).err(), Some(LimitHit::Anonymous));
        assert!(
            r.admit(Profile::user("u")).is_ok(),
            "named sessions are not counted there"
        );
    }

    #[test]
    fn no_admission_after_the_drain_started() {
        let r = registry(10, 10, 4);
        let before = r.admit(Profile::user("u")).unwrap();
        r.close_admission();
        assert_eq!(r.admit(Profile::user("u")).err(), Some(LimitHit::Draining));
        assert_eq!(LimitHit::Draining.close_code(), close::GOING_AWAY);
        assert_eq!(
            r.sessions().len(),
            1,
            "the earlier session is in the drain's snapshot"
        );
        drop(before);
        assert_eq!(r.connections(), 0);
    }

    #[tokio::test]
    async fn a_panicking_session_task_gives_its_slot_back() {
        let r = registry(10, 1, 4);
        let slot = r.admit(Profile::user("u")).unwrap();
        r.join(slot.id(), "room", 10).unwrap();
        let task = tokio::spawn(async move {
            let _slot = slot;
            panic!("session bug");
        });
        assert!(task.await.unwrap_err().is_panic());
        assert_eq!(r.connections(), 0);
        assert!(r.index.read().by_room.is_empty(), "no index keeps a dead session");
        assert!(
            r.admit(Profile::user("u")).is_ok(),
            "the per-user limit is free again"
        );
    }

    #[tokio::test]
    async fn a_message_queued_while_busy_is_never_lost() {
        let r = registry(10, 10, 8);
        let slot = r.admit(Profile::user("u")).unwrap();
        let mb = slot.mailbox().clone();
        // Queued while the session is not waiting: the permit is kept for its next wait.
        r.deliver(&ev(&to_user("u"), "t"), msg);
        tokio::time::timeout(std::time::Duration::from_secs(1), mb.changed())
            .await
            .expect("a stored wake-up");
        assert_eq!(mb.pop().map(|q| q.0).as_deref(), Some("m"));
        // A kick wakes the session too.
        mb.kick(close::GOING_AWAY);
        tokio::time::timeout(std::time::Duration::from_secs(1), mb.changed())
            .await
            .expect("a kick wakes");
        assert_eq!(mb.kicked(), Some(close::GOING_AWAY));
    }

    fn delivery(queued: usize, overflowed: usize) -> Delivery {
        // A queue of capacity 2 that overflows loses its 2 messages and the new one.
        Delivery {
            queued,
            deferred: 0,
            overflowed,
            dropped: overflowed * 3,
        }
    }

    #[test]
    fn a_full_mailbox_kicks_only_its_session() {
        let r = registry(10, 10, 2);
        let slow = r.admit(Profile::user("u")).unwrap();
        let fast = r.admit(Profile::user("u")).unwrap();
        let u = to_user("u");
        assert_eq!(r.deliver(&ev(&u, "t"), msg), delivery(2, 0));
        assert!(fast.mailbox().pop().is_some());
        assert_eq!(r.deliver(&ev(&u, "t"), msg), delivery(2, 0));
        assert!(fast.mailbox().pop().is_some());
        // slow holds 2 (its capacity): the third overflows it, fast still gets it.
        assert_eq!(r.deliver(&ev(&u, "t"), msg), delivery(1, 1));
        assert_eq!(slow.mailbox().kicked(), Some(close::SLOW_CONSUMER));
        assert!(
            slow.mailbox().pop().is_none(),
            "an overflowed queue is dropped, not kept"
        );
        assert_eq!(fast.mailbox().kicked(), None);
        assert_eq!(r.deliver(&ev(&u, "t"), msg), delivery(1, 0));
    }

    #[test]
    fn with_a_history_a_full_queue_catches_up_instead_of_being_cut() {
        let r = Arc::new(Registry::new(Limits {
            max_total: 10,
            max_per_user: 10,
            max_anonymous: 0,
            queue_capacity: 1,
            catch_up: true,
        }));
        let s = r.admit(Profile::user("u")).unwrap();
        let u = to_user("u");
        let first = ev(&u, "t");
        assert_eq!(r.deliver(&first, msg).queued, 1);
        let second = ev(&u, "t");
        let d = r.deliver(&second, msg);
        assert_eq!((d.queued, d.deferred, d.overflowed), (0, 1, 0));
        assert_eq!(
            s.mailbox().lag(),
            Some(second.seq),
            "catches up from the entry that did not fit"
        );
        assert_eq!(s.mailbox().kicked(), None);
        assert_eq!(
            r.deliver(&ev(&u, "t"), msg).deferred,
            1,
            "skipped while catching up"
        );
        let caught = r.admit_from(Profile::user("u"), Some(3)).unwrap();
        assert_eq!(caught.mailbox().lag(), Some(3), "a resume starts catching up");
    }

    #[test]
    fn nobody_in_the_audience_costs_a_lookup() {
        let r = registry(10, 10, 2);
        let _other = r.admit(Profile::user("other")).unwrap();
        let built = std::cell::Cell::new(false);
        let make = |_: Option<&str>| {
            built.set(true);
            ByteString::from_static("m")
        };
        assert_eq!(r.deliver(&ev(&to_user("nobody"), "t"), make), Delivery::default());
        assert!(!built.get(), "no message is built when no session matches");
    }

    /// Every audience rule on one set of sessions.
    #[test]
    fn audiences() {
        let r = registry(100, 10, 64);
        let alice_w1 = r.admit(profile("alice", Some("w1"), &["admin"])).unwrap();
        let bob_w1 = r.admit(profile("bob", Some("w1"), &[])).unwrap();
        let carol_w2 = r.admit(profile("carol", Some("w2"), &["admin"])).unwrap();
        let dave = r.admit(profile("dave", None, &[])).unwrap();
        let anon = r
            .admit(Profile {
                anonymous: true,
                ..Profile::user("anonymous:x")
            })
            .unwrap();
        let all = [&alice_w1, &bob_w1, &carol_w2, &dave, &anon];
        // Same room name in two workspaces, and a room with no workspace.
        for s in [&alice_w1, &carol_w2, &dave, &anon] {
            r.join(s.id(), "ops", 10).unwrap();
        }
        let got = |to: Audience| -> Vec<String> {
            let rooms = std::cell::RefCell::new(Vec::new());
            r.deliver(&ev(&to, "ev"), |room| {
                rooms.borrow_mut().push(room.map(String::from));
                ByteString::from(format!("{room:?}"))
            });
            let mut names = Vec::new();
            for s in all {
                while let Some(m) = s.mailbox().pop() {
                    names.push(format!(
                        "{}{}",
                        s.user(),
                        if &*m.0 == "None" { "" } else { "@room" }
                    ));
                }
            }
            names.sort();
            names
        };
        let aud = |f: &dyn Fn(&mut Audience)| {
            let mut a = Audience::default();
            f(&mut a);
            a
        };
        assert_eq!(
            got(aud(&|a| a.all = true)),
            ["alice", "anonymous:x", "bob", "carol", "dave"]
        );
        assert_eq!(
            got(aud(&|a| {
                a.all = true;
                a.exclude_users = vec!["bob".into()];
            })),
            ["alice", "anonymous:x", "carol", "dave"]
        );
        assert_eq!(got(aud(&|a| a.workspace = Some("w1".into()))), ["alice", "bob"]);
        assert_eq!(got(aud(&|a| a.roles = vec!["admin".into()])), ["alice", "carol"]);
        assert_eq!(
            got(aud(&|a| {
                a.all = true;
                a.roles = vec!["admin".into()];
                a.workspace = Some("w2".into());
            })),
            ["carol"]
        );
        // Rooms live in a workspace: `ops` of w1 is not `ops` of w2, nor the workspace-less one.
        assert_eq!(
            got(aud(&|a| {
                a.room = Some("ops".into());
                a.workspace = Some("w1".into());
            })),
            ["alice@room"]
        );
        assert_eq!(
            got(aud(&|a| a.room = Some("ops".into()))),
            ["anonymous:x@room", "dave@room"]
        );
        // A user addressed in a workspace is reached only there.
        assert_eq!(
            got(aud(&|a| {
                a.users = vec!["alice".into(), "carol".into()];
                a.workspace = Some("w2".into());
            })),
            ["carol"]
        );
        // Matching twice (user and room) delivers once, with the room's variant.
        assert_eq!(
            got(aud(&|a| {
                a.user = Some("dave".into());
                a.rooms = vec!["ops".into()];
            })),
            ["anonymous:x@room", "dave@room"]
        );
        // An anonymous session is never reached as a user, a role or a workspace member.
        assert_eq!(
            got(aud(&|a| a.user = Some("anonymous:x".into()))),
            Vec::<String>::new()
        );
        // Filters: only the types a session subscribed to.
        r.change_filter(dave.id(), FilterChange::Add(vec!["other".into()]), 10)
            .unwrap();
        assert_eq!(got(aud(&|a| a.user = Some("dave".into()))), Vec::<String>::new());
        r.change_filter(dave.id(), FilterChange::Remove(None), 10)
            .unwrap();
        assert_eq!(got(aud(&|a| a.user = Some("dave".into()))), ["dave"]);
        // Leaving a room stops its events.
        r.leave(dave.id(), "ops");
        assert_eq!(got(aud(&|a| a.room = Some("ops".into()))), ["anonymous:x@room"]);
    }

    #[test]
    fn filters_are_bounded_and_a_refused_change_changes_nothing() {
        let r = registry(10, 10, 4);
        let s = r.admit(Profile::user("u")).unwrap();
        let add = |types: &[&str]| FilterChange::Add(types.iter().map(|t| t.to_string()).collect());
        assert_eq!(r.change_filter(s.id(), add(&["a", "b"]), 2).unwrap().len(), 2);
        assert_eq!(r.change_filter(s.id(), add(&["c"]), 2), Err(FilterRefused::Limit));
        let kept = r.change_filter(s.id(), add(&[]), 2).unwrap();
        assert_eq!(kept, vec![Box::from("a"), Box::from("b")]);
        let rest = r
            .change_filter(s.id(), FilterChange::Remove(Some(vec!["a".into()])), 2)
            .unwrap();
        assert_eq!(rest, vec![Box::from("b")]);
    }

    #[test]
    fn rooms_per_session_are_bounded() {
        let r = registry(10, 10, 4);
        let s = r.admit(Profile::user("u")).unwrap();
        r.join(s.id(), "a", 2).unwrap();
        r.join(s.id(), "a", 2).unwrap();
        r.join(s.id(), "b", 2).unwrap();
        assert_eq!(r.join(s.id(), "c", 2), Err(JoinRefused::Limit));
        r.leave(s.id(), "a");
        assert!(r.join(s.id(), "c", 2).is_ok());
    }

    /// A session is addressed by its public id alone; a client publication reaches the room's
    /// other sessions (the publisher's other tabs too) but not the publishing session; an
    /// ephemeral one is never offered from the history.
    #[test]
    fn sessions_are_addressed_by_id_and_publications_skip_their_sender() {
        let r = registry(10, 10, 8);
        let a1 = r.admit(Profile::user("alice")).unwrap();
        let a2 = r.admit(Profile::user("alice")).unwrap();
        let b = r.admit(Profile::user("bob")).unwrap();
        assert_ne!(a1.session(), a2.session());
        let drain = |slot: &Slot| {
            let mut n = 0;
            while slot.mailbox().pop().is_some() {
                n += 1;
            }
            n
        };
        let to_session = Audience {
            session: Some(a2.session()),
            ..Default::default()
        };
        r.deliver(&ev(&to_session, "nudge"), msg);
        assert_eq!((drain(&a1), drain(&a2), drain(&b)), (0, 1, 0));
        let unknown = Audience {
            session: Some(uuid::Uuid::new_v4().to_string()),
            ..Default::default()
        };
        assert_eq!(r.deliver(&ev(&unknown, "nudge"), msg).queued, 0);
        for slot in [&a1, &a2, &b] {
            r.join(slot.id(), "typing:1", 10).unwrap();
        }
        let publication = |ephemeral: bool| {
            let json = serde_json::json!({"event_type": "typing", "data": {}, "to": {"room": "typing:1"},
                "from": {"user": "alice", "session": a1.session()}, "ephemeral": ephemeral});
            let event = task_events::Event::from_json(json.to_string().as_bytes()).unwrap();
            Arc::new(Entry::new(7, None, 0, event, "id".into(), "t".into()))
        };
        r.deliver(&publication(false), msg);
        assert_eq!((drain(&a1), drain(&a2), drain(&b)), (0, 1, 1));
        // From the history (a resume, a catch-up): the same audience, and never an ephemeral one.
        assert!(r.offer_one(a1.id(), &publication(false)).is_none());
        assert!(r.offer_one(b.id(), &publication(false)).is_some());
        assert!(r.offer_one(b.id(), &publication(true)).is_none());
        assert!(r.offer_one(a2.id(), &ev(&to_session, "nudge")).is_some());
        assert!(r.offer_one(a1.id(), &ev(&to_session, "nudge")).is_none());
    }
}
