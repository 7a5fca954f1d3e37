//! Who is online, cluster-wide.
//!
//! Each replica publishes, through the control topic, one record per user it serves: key
//! `["presence", replica, workspace, user]`, value the rooms that user's sessions there are in.
//! It writes one when the user's first session there opens (or the rooms change) and a tombstone
//! `PRESENCE_GRACE_SECS` after the last one closed, unless one opened again meanwhile (a reload).
//! Every replica reads every record, so each holds the same view: a user is online while some
//! live replica has a record of them. From that view each replica tells its own sessions of the
//! transitions (`user.online`, `user.offline`): a second tab, a tab on another replica, or a
//! reload within the grace changes nothing, so nothing is sent.
//!
//! A replica that dies without tombstones: its records stand until its beats (the control
//! topic's `["replica", id]` records) have been silent for `PRESENCE_LEASE_SECS`; its users then
//! go offline, unless they reconnected elsewhere meanwhile (then nothing changes for anyone). A
//! replica that drained says so (its beat's tombstone): its records go after the grace, the time
//! its clients have to reconnect elsewhere.
//!
//! The records are per user and replica, not per session, and written at most once per flush
//! period for a user: a reconnect storm of many sessions over few users writes one record per
//! user that was offline on that replica, and announces only the users that were offline in
//! the whole cluster.
//!
//! No actix here: unit-testable without a network.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// (workspace, user).
pub type UserKey = (Option<Arc<str>>, Arc<str>);

/// A presence record's value: the user has sessions on the replica that wrote it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The rooms those sessions are in (at most `PRESENCE_MAX_ROOMS`).
    #[serde(default)]
    pub rooms: Vec<String>,
    /// Unix ms when written.
    #[serde(default)]
    pub at_ms: u64,
}

pub fn key_of(replica: &str, workspace: Option<&str>, user: &str) -> String {
    serde_json::json!(["presence", replica, workspace, user]).to_string()
}

/// The (replica, workspace, user) a key names.
pub fn from_key(key: &str) -> Option<(String, Option<String>, String)> {
    let (kind, replica, workspace, user): (String, String, Option<String>, String) =
        serde_json::from_str(key).ok()?;
    (kind == "presence").then_some((replica, workspace, user))
}

/// A user came online or went offline, cluster-wide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub workspace: Option<Arc<str>>,
    pub user: Arc<str>,
    pub online: bool,
}

/// A record to write (`None`: its tombstone).
pub type Write = (String, Option<Record>);

/// What a replica's entries may still be judged by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Its last beat was read at this instant.
    Beat(Instant),
    /// It said goodbye (drained) at this instant.
    Gone(Instant),
    /// No beat of it is known.
    Unknown,
}

/// This replica's sessions of one user.
#[derive(Default)]
struct Local {
    sessions: u32,
    /// Room -> how many of the user's sessions here are in it.
    rooms: HashMap<Arc<str>, u32>,
    /// The last session closed: the tombstone is due then.
    ending: Option<Instant>,
    /// The record must be (re)written.
    dirty: bool,
}

/// One replica's record of a user, as read.
struct Held {
    rooms: Box<[Arc<str>]>,
    /// When it was read (for a replica with no beat known).
    read: Instant,
}

#[derive(Default)]
struct Inner {
    local: HashMap<UserKey, Local>,
    /// Tombstones to write again (the last write failed, or was lost).
    retomb: HashSet<UserKey>,
    /// Per user, per replica.
    cluster: HashMap<UserKey, HashMap<Arc<str>, Held>>,
    records_written: u64,
}

pub struct Presence {
    inner: Mutex<Inner>,
    /// This replica's id (as in its beats).
    pub replica: Arc<str>,
    pub grace: Duration,
    pub lease: Duration,
    max_rooms: usize,
    enabled: bool,
}

impl Presence {
    pub fn new(replica: &str, enabled: bool, grace: Duration, lease: Duration, max_rooms: usize) -> Self {
        Presence {
            inner: Mutex::new(Inner::default()),
            replica: replica.into(),
            grace,
            lease,
            max_rooms,
            enabled,
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    fn key(workspace: Option<&str>, user: &str) -> UserKey {
        (workspace.map(Arc::from), Arc::from(user))
    }

    /// A session of `user` opened here.
    pub fn opened(&self, workspace: Option<&str>, user: &str) {
        if !self.enabled {
            return;
        }
        let mut inner = self.inner.lock();
        let local = inner.local.entry(Self::key(workspace, user)).or_default();
        local.sessions += 1;
        if local.sessions == 1 && local.ending.take().is_none() {
            // New here (not a reload within the grace, whose record still stands).
            local.dirty = true;
        }
    }

    /// A session of `user` closed here, having been in `rooms`.
    pub fn closed(&self, workspace: Option<&str>, user: &str, rooms: &[Arc<str>], now: Instant) {
        if !self.enabled {
            return;
        }
        let mut inner = self.inner.lock();
        let Some(local) = inner.local.get_mut(&Self::key(workspace, user)) else {
            return;
        };
        for room in rooms {
            Self::room_count(local, room, false);
        }
        local.sessions = local.sessions.saturating_sub(1);
        if local.sessions == 0 {
            local.ending = Some(now + self.grace);
        }
    }

    /// A session of `user` here joined (`joined`) or left a room.
    pub fn room(&self, workspace: Option<&str>, user: &str, room: &str, joined: bool) {
        if !self.enabled {
            return;
        }
        let mut inner = self.inner.lock();
        if let Some(local) = inner.local.get_mut(&Self::key(workspace, user)) {
            Self::room_count(local, &Arc::from(room), joined);
        }
    }

    fn room_count(local: &mut Local, room: &Arc<str>, joined: bool) {
        if joined {
            let n = local.rooms.entry(room.clone()).or_default();
            *n += 1;
            local.dirty |= *n == 1;
        } else if let Some(n) = local.rooms.get_mut(room) {
            *n -= 1;
            if *n == 0 {
                local.rooms.remove(room);
                local.dirty = true;
            }
        }
    }

    /// Due work at `now`: the records this replica must write (new users, changed rooms, and the
    /// tombstones whose grace passed), applied to the view at once; and the transitions that
    /// made.
    pub fn flush(&self, now: Instant, now_ms: u64) -> (Vec<Write>, Vec<Change>) {
        let mut writes = Vec::new();
        let mut changes = Vec::new();
        let mut inner = self.inner.lock();
        let mut ended = Vec::new();
        let mut records = Vec::new();
        for (key, local) in inner.local.iter_mut() {
            if local.ending.is_some_and(|at| at <= now) {
                ended.push(key.clone());
            } else if local.dirty && local.sessions > 0 {
                local.dirty = false;
                let mut rooms: Vec<String> = local.rooms.keys().map(|r| r.to_string()).collect();
                rooms.sort();
                rooms.truncate(self.max_rooms);
                records.push((key.clone(), rooms));
            }
        }
        for key in ended {
            inner.local.remove(&key);
            writes.push((key_of(&self.replica, key.0.as_deref(), &key.1), None));
            changes.extend(Self::set(&mut inner, key, self.replica.clone(), None, now));
        }
        for key in std::mem::take(&mut inner.retomb) {
            if !inner.local.contains_key(&key) {
                writes.push((key_of(&self.replica, key.0.as_deref(), &key.1), None));
            }
        }
        for (key, rooms) in records {
            let held: Box<[Arc<str>]> = rooms.iter().map(|r| Arc::from(r.as_str())).collect();
            writes.push((
                key_of(&self.replica, key.0.as_deref(), &key.1),
                Some(Record { rooms, at_ms: now_ms }),
            ));
            changes.extend(Self::set(&mut inner, key, self.replica.clone(), Some(held), now));
        }
        inner.records_written += writes.len() as u64;
        (writes, changes)
    }

    /// A record read from the control topic. This replica's own are not applied: it applied
    /// them when it wrote them, and reading one back late must not undo a later change. But a
    /// tombstone of its own record while the user is still here (another replica's janitor took
    /// this one for dead: a partition, a long pause) is answered by writing the record again.
    pub fn apply(
        &self,
        replica: &str,
        workspace: Option<&str>,
        user: &str,
        record: Option<Record>,
    ) -> Option<Change> {
        if !self.enabled {
            return None;
        }
        if replica == &*self.replica {
            if record.is_none() {
                let mut inner = self.inner.lock();
                if let Some(local) = inner.local.get_mut(&Self::key(workspace, user)) {
                    local.dirty |= local.sessions > 0;
                }
            }
            return None;
        }
        let held = record.map(|r| {
            r.rooms
                .iter()
                .take(self.max_rooms)
                .map(|room| Arc::from(room.as_str()))
                .collect()
        });
        let mut inner = self.inner.lock();
        Self::set(
            &mut inner,
            Self::key(workspace, user),
            Arc::from(replica),
            held,
            Instant::now(),
        )
    }

    /// Sets (or removes) one replica's entry for a user; the transition, if any.
    fn set(
        inner: &mut Inner,
        key: UserKey,
        replica: Arc<str>,
        rooms: Option<Box<[Arc<str>]>>,
        now: Instant,
    ) -> Option<Change> {
        let before = inner.cluster.get(&key).is_some_and(|m| !m.is_empty());
        match rooms {
            Some(rooms) => {
                inner
                    .cluster
                    .entry(key.clone())
                    .or_default()
                    .insert(replica, Held { rooms, read: now });
            }
            None => {
                if let Some(map) = inner.cluster.get_mut(&key) {
                    map.remove(&replica);
                    if map.is_empty() {
                        inner.cluster.remove(&key);
                    }
                }
            }
        }
        let after = inner.cluster.contains_key(&key);
        (before != after).then_some(Change {
            workspace: key.0,
            user: key.1,
            online: after,
        })
    }

    /// Drops the entries of replicas that are dead at `now` (`liveness` says what is known of
    /// each). Returns the transitions, and the records to tombstone (when `janitor`: the replica
    /// that cleans up after dead ones).
    pub fn expire(
        &self,
        now: Instant,
        liveness: impl Fn(&str) -> Liveness,
        janitor: bool,
    ) -> (Vec<Change>, Vec<Write>) {
        let mut changes = Vec::new();
        let mut writes = Vec::new();
        let mut inner = self.inner.lock();
        let mut dead: Vec<(UserKey, Arc<str>)> = Vec::new();
        let mut verdicts: HashMap<Arc<str>, Liveness> = HashMap::new();
        for (key, replicas) in &inner.cluster {
            for (replica, held) in replicas {
                if *replica == self.replica {
                    continue;
                }
                // Asked once per replica per pass.
                let known = *verdicts
                    .entry(replica.clone())
                    .or_insert_with(|| liveness(replica));
                let is_dead = match known {
                    Liveness::Beat(at) => now.saturating_duration_since(at) >= self.lease,
                    Liveness::Gone(at) => now.saturating_duration_since(at) >= self.grace,
                    // No beat known: judged by when its record was read.
                    Liveness::Unknown => now.saturating_duration_since(held.read) >= self.lease,
                };
                if is_dead {
                    dead.push((key.clone(), replica.clone()));
                }
            }
        }
        for (key, replica) in dead {
            if janitor {
                writes.push((key_of(&replica, key.0.as_deref(), &key.1), None));
            }
            changes.extend(Self::set(&mut inner, key, replica, None, now));
        }
        (changes, writes)
    }

    /// The users online in `workspace` (in `room`, when given), sorted, at most `max`; and
    /// whether there were more.
    pub fn online(&self, workspace: Option<&str>, room: Option<&str>, max: usize) -> (Vec<String>, bool) {
        let inner = self.inner.lock();
        let mut users: Vec<String> = inner
            .cluster
            .iter()
            .filter(|((ws, _), _)| ws.as_deref() == workspace)
            .filter(|(_, replicas)| {
                room.is_none_or(|room| replicas.values().any(|h| h.rooms.iter().any(|r| &**r == room)))
            })
            .map(|((_, user), _)| user.to_string())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        users.sort();
        let more = users.len() > max;
        users.truncate(max);
        (users, more)
    }

    /// A write of this replica's record `key` failed: it is written again at the next flush (the
    /// record, or its tombstone, whichever stands then).
    pub fn write_failed(&self, key: &str) {
        let Some((_, workspace, user)) = from_key(key) else {
            return;
        };
        let user_key = Self::key(workspace.as_deref(), &user);
        let mut inner = self.inner.lock();
        match inner.local.get_mut(&user_key) {
            Some(local) if local.sessions > 0 => local.dirty = true,
            Some(_) => {}
            None => {
                inner.retomb.insert(user_key);
            }
        }
    }

    /// Users online cluster-wide (per workspace counted apart), and records written so far.
    pub fn counts(&self) -> (usize, u64) {
        let inner = self.inner.lock();
        (inner.cluster.len(), inner.records_written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(5);
    const LEASE: Duration = Duration::from_secs(15);

    fn presence(replica: &str) -> Presence {
        Presence::new(replica, true, GRACE, LEASE, 8)
    }

    fn online(c: &[Change]) -> Vec<(String, bool)> {
        c.iter().map(|c| (c.user.to_string(), c.online)).collect()
    }

    #[test]
    fn first_session_announces_second_tab_and_reload_do_not() {
        let p = presence("a");
        let t0 = Instant::now();
        p.opened(None, "u");
        p.opened(None, "u");
        let (writes, changes) = p.flush(t0, 1);
        assert_eq!(writes.len(), 1, "one record per user, not per session");
        assert_eq!(online(&changes), vec![("u".into(), true)]);
        // Both tabs close; one reopens within the grace: nothing written, nothing announced.
        p.closed(None, "u", &[], t0);
        p.closed(None, "u", &[], t0);
        p.opened(None, "u");
        let (writes, changes) = p.flush(t0 + GRACE * 2, 2);
        assert!(writes.is_empty() && changes.is_empty(), "{writes:?} {changes:?}");
        // The last closes for good: the tombstone comes after the grace.
        p.closed(None, "u", &[], t0 + GRACE * 2);
        assert!(p.flush(t0 + GRACE * 2 + GRACE / 2, 3).0.is_empty());
        let (writes, changes) = p.flush(t0 + GRACE * 3, 4);
        assert_eq!(writes, vec![(key_of("a", None, "u"), None)]);
        assert_eq!(online(&changes), vec![("u".into(), false)]);
    }

    #[test]
    fn a_user_on_two_replicas_goes_offline_only_when_both_are_gone() {
        let p = presence("a");
        let t0 = Instant::now();
        let rec = Some(Record::default());
        assert_eq!(
            p.apply("b", Some("w"), "u", rec.clone()).map(|c| c.online),
            Some(true)
        );
        p.opened(Some("w"), "u");
        assert!(p.flush(t0, 1).1.is_empty(), "already online through b");
        assert_eq!(p.apply("b", Some("w"), "u", None), None, "still here");
        p.closed(Some("w"), "u", &[], t0);
        assert_eq!(online(&p.flush(t0 + GRACE, 2).1), vec![("u".into(), false)]);
        // Its own records read back change nothing.
        assert_eq!(p.apply("a", Some("w"), "x", rec), None);
    }

    #[test]
    fn a_dead_replica_s_users_expire_after_the_lease_unless_elsewhere() {
        let p = presence("a");
        let t0 = Instant::now();
        p.apply("b", None, "stays", Some(Record::default()));
        p.apply("b", None, "moved", Some(Record::default()));
        p.opened(None, "moved");
        p.flush(t0, 1);
        let beat = |r: &str| {
            if r == "b" {
                Liveness::Beat(t0)
            } else {
                Liveness::Unknown
            }
        };
        assert!(p.expire(t0 + LEASE / 2, beat, true).0.is_empty());
        let (changes, writes) = p.expire(t0 + LEASE, beat, true);
        assert_eq!(online(&changes), vec![("stays".into(), false)]);
        assert_eq!(writes.len(), 2, "the janitor tombstones both of b's records");
        // A drained replica's users go after the grace.
        p.apply("c", None, "drained", Some(Record::default()));
        let gone = |r: &str| {
            if r == "c" {
                Liveness::Gone(t0)
            } else {
                Liveness::Unknown
            }
        };
        assert!(p.expire(t0 + GRACE / 2, gone, false).0.is_empty());
        assert_eq!(
            online(&p.expire(t0 + GRACE, gone, false).0),
            vec![("drained".into(), false)]
        );
    }

    #[test]
    fn lost_writes_and_foreign_tombstones_are_repaired() {
        let p = presence("a");
        let t0 = Instant::now();
        p.opened(None, "u");
        let (writes, _) = p.flush(t0, 1);
        // The write failed: written again.
        p.write_failed(&writes[0].0);
        assert_eq!(p.flush(t0, 2).0.len(), 1);
        // Another replica's janitor tombstoned it while the user is still here.
        assert_eq!(p.apply("a", None, "u", None), None);
        let (writes, changes) = p.flush(t0, 3);
        assert!(writes[0].1.is_some() && changes.is_empty());
        // A lost tombstone is written again.
        p.closed(None, "u", &[], t0);
        let (writes, _) = p.flush(t0 + GRACE, 4);
        p.write_failed(&writes[0].0);
        assert_eq!(p.flush(t0 + GRACE, 5).0, vec![(key_of("a", None, "u"), None)]);
    }

    #[test]
    fn rooms_are_listed_and_bounded() {
        let p = presence("a");
        let t0 = Instant::now();
        p.opened(Some("w"), "u");
        p.room(Some("w"), "u", "r1", true);
        p.apply(
            "b",
            Some("w"),
            "v",
            Some(Record {
                rooms: vec!["r2".into()],
                at_ms: 0,
            }),
        );
        p.apply("b", Some("other"), "z", Some(Record::default()));
        let (writes, _) = p.flush(t0, 1);
        assert_eq!(writes[0].1.as_ref().unwrap().rooms, vec!["r1".to_string()]);
        assert_eq!(
            p.online(Some("w"), None, 10),
            (vec!["u".into(), "v".into()], false)
        );
        assert_eq!(p.online(Some("w"), Some("r2"), 10), (vec!["v".into()], false));
        assert_eq!(p.online(Some("w"), None, 1), (vec!["u".into()], true));
        // At most `max_rooms` rooms in a record, whatever the sessions joined.
        let bounded = Presence::new("a", true, GRACE, LEASE, 2);
        bounded.opened(None, "u");
        for room in ["r1", "r2", "r3"] {
            bounded.room(None, "u", room, true);
        }
        assert_eq!(bounded.flush(t0, 1).0[0].1.as_ref().unwrap().rooms.len(), 2);
        // Leaving the room rewrites the record.
        p.room(Some("w"), "u", "r1", false);
        let (writes, changes) = p.flush(t0, 2);
        assert_eq!(writes[0].1.as_ref().unwrap().rooms, Vec::<String>::new());
        assert!(changes.is_empty());
    }
}
