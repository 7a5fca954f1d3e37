//! Catch-up for clients that never send a cursor.
//!
//! The existing frontends reconnect after every network blip, deploy and replica kill, but never
//! pass `since`: without help, whatever was produced while they were away is lost. So every
//! replica keeps, for each session of such a client in the cluster, a [`Session`] record (through
//! the control topic, so every replica holds the same ones):
//!
//! - while it is open, a *live* record: who it is (user, workspace), its rooms and filter, and the
//!   replica that serves it;
//! - when it ends (the client went away, a drain closed it), an *ended* record: the same, plus
//!   its exact position (the cursor after the last event written to it).
//!
//! Each replica also writes a [`Beat`] every `CATCHUP_HEARTBEAT_MS`: the position its live
//! sessions have all been written up to. A replica whose beats stop is dead (killed, crashed, cut
//! off), and its live records stand for sessions that ended where its last beat says.
//!
//! When a session of the same user (and workspace) connects without a cursor within
//! `CATCHUP_WINDOW_SECS`, on any replica, it takes over the oldest ended session of that user,
//! else the oldest live session on a dead replica: it resumes from its position, in its rooms,
//! with its filter, exactly as if it had sent `since`. The record is then removed everywhere (a
//! tombstone), so it is taken once.
//!
//! Exactness. An ended record is exact: no gap, no duplicate. A dead replica's last beat is up to
//! two beats old, and what it wrote after that beat is known to nobody but the clients (a client
//! that sends no cursor cannot say), so the sessions it served replay from that beat: no gap,
//! and at most the events of the last two beats again (at least once). A client that sends
//! cursors is exact in every case.
//!
//! A user with several tabs: tabs are not told apart (they send nothing that could), so the first
//! to reconnect takes the first to have ended, and so on. The tabs of one user mostly see the
//! same events (the same user, the same user-scoped rooms), so whichever position a tab takes
//! covers the same ground within a few events; the replay itself has no gap and no duplicate at
//! its seam with live delivery.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// A session of a client that sends no cursor: open (`cursor` is `None`) or ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Unique in the cluster: `<replica>-<session>`.
    pub id: String,
    /// The replica that serves (or served) it.
    pub replica: String,
    pub workspace: Option<String>,
    pub user: String,
    /// Where it stood when it ended; none while it is open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// Rooms it was in (per session), re-joined by the one that takes over (if still granted).
    #[serde(default)]
    pub rooms: Vec<String>,
    /// Its event filter.
    #[serde(default)]
    pub event_types: Vec<String>,
    /// Unix milliseconds: when it ended, or when it was opened (or its rooms last changed).
    pub at_ms: u64,
}

impl Session {
    /// The control record key: one per session.
    pub fn key(&self) -> String {
        Self::key_of(self.workspace.as_deref(), &self.user, &self.id)
    }

    pub fn key_of(workspace: Option<&str>, user: &str, id: &str) -> String {
        serde_json::json!(["session", workspace, user, id]).to_string()
    }

    /// The (workspace, user, id) a key names, for a tombstone.
    pub fn from_key(key: &str) -> Option<(Option<String>, String, String)> {
        let (kind, workspace, user, id): (String, Option<String>, String, String) =
            serde_json::from_str(key).ok()?;
        (kind == "session").then_some((workspace, user, id))
    }

    fn live(&self) -> bool {
        self.cursor.is_none()
    }
}

/// A replica's heartbeat: every session open on it has been written everything up to `cursor`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Beat {
    pub cursor: String,
    /// Unix ms when it was written (a beat read back at start is judged by its age, so a replica
    /// long gone does not look alive).
    #[serde(default)]
    pub at_ms: u64,
}

impl Beat {
    pub fn key_of(replica: &str) -> String {
        serde_json::json!(["replica", replica]).to_string()
    }

    pub fn from_key(key: &str) -> Option<String> {
        let (kind, replica): (String, String) = serde_json::from_str(key).ok()?;
        (kind == "replica").then_some(replica)
    }
}

/// What a connecting client without a cursor gets.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// Take over this session (its `cursor` is where to resume).
    Take(Session),
    /// A replica that served the user has missed beats but is not yet known dead: ask again after
    /// this long.
    Wait(Duration),
    /// Nothing to take over: start live.
    Nothing,
}

/// How replicas are judged from their beats.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// How long an ended session waits to be taken over (0: catch-up is off).
    pub window: Duration,
    /// Beat period.
    pub beat: Duration,
    /// How late a beat may arrive on top of its period (the control consumer's fetch wait).
    pub slack: Duration,
    /// A silent replica is remembered at least this long (presence judges its records by it).
    pub keep: Duration,
}

impl Timing {
    /// Up to here since its last beat a replica is alive.
    fn alive_within(&self) -> Duration {
        self.beat * 2 + self.slack
    }

    /// From here on it is dead.
    fn dead_after(&self) -> Duration {
        self.beat * 4 + self.slack
    }
}

type UserKey = (Option<Arc<str>>, Arc<str>);

/// Unix milliseconds.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

struct Seen {
    cursor: String,
    at: Instant,
    /// It said goodbye (its beat was tombstoned after a drain).
    gone: bool,
}

#[derive(Default)]
struct Inner {
    sessions: HashMap<UserKey, VecDeque<Session>>,
    total: usize,
    replicas: HashMap<String, Seen>,
}

/// The sessions of clients without a cursor, cluster-wide, and the replicas' beats.
pub struct Handoffs {
    inner: Mutex<Inner>,
    pub timing: Timing,
    /// This replica's id (its sessions are never dead to itself).
    pub replica: String,
    /// Most remembered per user (the oldest are forgotten first).
    per_user: usize,
    /// Most remembered in all (beyond, new records are not kept).
    max_total: usize,
}

impl Handoffs {
    pub fn new(timing: Timing, replica: String, per_user: usize, max_total: usize) -> Self {
        Handoffs {
            inner: Mutex::new(Inner::default()),
            timing,
            replica,
            per_user,
            max_total,
        }
    }

    pub fn enabled(&self) -> bool {
        !self.timing.window.is_zero()
    }

    /// Whether a session of `user` is recorded (taken or not): a client without a cursor may
    /// have somewhere to take over from.
    pub fn has(&self, workspace: Option<&str>, user: &str) -> bool {
        self.inner
            .lock()
            .sessions
            .contains_key(&Self::key(workspace, user))
    }

    fn key(workspace: Option<&str>, user: &str) -> UserKey {
        (workspace.map(Arc::from), Arc::from(user))
    }

    /// Remembers a session (from this replica or the control topic); a record for the same id
    /// replaces the one before. Returns false when it was not kept (the total bound).
    pub fn record(&self, s: Session) -> bool {
        let mut inner = self.inner.lock();
        let Inner { sessions, total, .. } = &mut *inner;
        let key = Self::key(s.workspace.as_deref(), &s.user);
        if let Some(list) = sessions.get_mut(&key) {
            if let Some(old) = list.iter_mut().find(|x| x.id == s.id) {
                // A session goes from open to ended, never back (an open record read back
                // late from the topic does not undo the end).
                if !s.live() || old.live() {
                    *old = s;
                }
                return true;
            }
        }
        if *total >= self.max_total {
            return false;
        }
        let list = sessions.entry(key).or_default();
        list.push_back(s);
        *total += 1;
        while list.len() > self.per_user {
            let oldest = (0..list.len()).min_by_key(|&i| list[i].at_ms).unwrap_or(0);
            list.remove(oldest);
            *total -= 1;
        }
        true
    }

    /// Forgets one (it was taken over, or expired, somewhere).
    pub fn remove(&self, workspace: Option<&str>, user: &str, id: &str) {
        let mut inner = self.inner.lock();
        let Inner { sessions, total, .. } = &mut *inner;
        let key = Self::key(workspace, user);
        if let Some(list) = sessions.get_mut(&key) {
            let before = list.len();
            list.retain(|e| e.id != id);
            *total -= before - list.len();
            if list.is_empty() {
                sessions.remove(&key);
            }
        }
    }

    /// A replica's beat (`None`: its tombstone, it left after a drain), read at `now` (Unix ms
    /// `now_ms`).
    pub fn beat(&self, replica: &str, beat: Option<Beat>, now: Instant, now_ms: u64) {
        let mut inner = self.inner.lock();
        match beat {
            Some(beat) => {
                // Its age by the writer's clock, when that is older than the time it took to
                // arrive (a record read back, or a clock behind ours, counts from its stamp).
                let age = Duration::from_millis(now_ms.saturating_sub(beat.at_ms));
                let at = if beat.at_ms == 0 || age <= self.timing.alive_within() {
                    now
                } else {
                    now.checked_sub(age).unwrap_or(now)
                };
                inner.replicas.insert(
                    replica.to_string(),
                    Seen {
                        cursor: beat.cursor,
                        at,
                        gone: false,
                    },
                );
            }
            None => {
                if let Some(seen) = inner.replicas.get_mut(replica) {
                    seen.gone = true;
                    // Counted from the goodbye: what it served may reconnect elsewhere from here.
                    seen.at = now;
                }
            }
        }
    }

    /// What a client of `user` that connects without a cursor takes over: the oldest session of
    /// the user that ended within the window, else the oldest one open on a replica that died
    /// within the window (from that replica's last beat).
    pub fn claim(&self, workspace: Option<&str>, user: &str, now_ms: u64, now: Instant) -> Claim {
        let t = self.timing;
        let mut inner = self.inner.lock();
        let Inner {
            sessions,
            total,
            replicas,
        } = &mut *inner;
        let key = Self::key(workspace, user);
        let Some(list) = sessions.get_mut(&key) else {
            return Claim::Nothing;
        };
        let window_ms = t.window.as_millis() as u64;
        let mut wait = None;
        let mut best: Option<(usize, Option<String>)> = None;
        for (i, s) in list.iter().enumerate() {
            let (eligible, cursor) = match &s.cursor {
                Some(cursor) => (now_ms.saturating_sub(s.at_ms) <= window_ms, Some(cursor.clone())),
                None if s.replica == self.replica => (false, None),
                None => match replicas.get(&s.replica) {
                    // No beat of it known (yet): its sessions cannot be taken (nothing says where
                    // they stood); a record this young may be ahead of its replica's first beat.
                    None => {
                        let age = Duration::from_millis(now_ms.saturating_sub(s.at_ms));
                        if age < t.dead_after() {
                            wait = Some(wait.unwrap_or(Duration::MAX).min(t.dead_after() - age));
                        }
                        (false, None)
                    }
                    Some(seen) => {
                        let age = now.saturating_duration_since(seen.at);
                        if seen.gone || age >= t.dead_after() {
                            (age <= t.window + t.dead_after(), Some(seen.cursor.clone()))
                        } else {
                            if age > t.alive_within() {
                                wait = Some(wait.unwrap_or(Duration::MAX).min(t.dead_after() - age));
                            }
                            (false, None)
                        }
                    }
                },
            };
            if !eligible {
                continue;
            }
            // Ended records first (they are exact), then the oldest.
            let better = match &best {
                None => true,
                Some((j, _)) => {
                    let b = &list[*j];
                    (s.live(), s.at_ms) < (b.live(), b.at_ms)
                }
            };
            if better {
                best = Some((i, cursor));
            }
        }
        match best {
            Some((i, cursor)) => {
                let mut taken = list.remove(i).expect("index from the scan");
                *total -= 1;
                if list.is_empty() {
                    sessions.remove(&key);
                }
                taken.cursor = cursor;
                Claim::Take(taken)
            }
            None => wait.map_or(Claim::Nothing, Claim::Wait),
        }
    }

    /// Drops what is past the window: ended sessions older than it, open ones of replicas dead
    /// for longer, and those replicas. Returns the records that are to be tombstoned on the
    /// control topic, when this replica is the one that does it (the alive replica with the
    /// smallest id), so that the topic does not grow without end.
    pub fn expire(&self, now_ms: u64, now: Instant) -> Vec<(Option<String>, String, String)> {
        let t = self.timing;
        let window_ms = t.window.as_millis() as u64;
        let mut inner = self.inner.lock();
        let Inner {
            sessions,
            total,
            replicas,
        } = &mut *inner;
        let dead = |replica: &str| match replicas.get(replica) {
            Some(seen) => {
                let age = now.saturating_duration_since(seen.at);
                (seen.gone || age >= t.dead_after()).then_some(age)
            }
            None => None,
        };
        let mut expired = Vec::new();
        sessions.retain(|_, list| {
            list.retain(|s| {
                let keep = match &s.cursor {
                    Some(_) => now_ms.saturating_sub(s.at_ms) <= window_ms,
                    None if s.replica == self.replica => true,
                    None => match dead(&s.replica) {
                        Some(age) => age <= t.window + t.dead_after(),
                        // Never heard of, long after it was written: its replica died before
                        // this one started.
                        None => {
                            replicas.contains_key(&s.replica)
                                || now_ms.saturating_sub(s.at_ms)
                                    <= window_ms + t.dead_after().as_millis() as u64
                        }
                    },
                };
                if !keep {
                    expired.push((s.workspace.clone(), s.user.clone(), s.id.clone()));
                }
                keep
            });
            !list.is_empty()
        });
        *total -= expired.len();
        if Self::janitor_of(replicas, &self.replica, t, now) {
            expired
        } else {
            Vec::new()
        }
    }

    /// Forgets the replicas silent for longer than anything still needs their beats (catch-up
    /// windows, the presence lease); returns them (the janitor tombstones their beats, so the
    /// compacted topic does not keep a key per crashed process forever).
    pub fn forget_silent(&self, now: Instant) -> Vec<String> {
        let t = self.timing;
        let keep = (t.window + t.dead_after() * 2).max(t.keep);
        let mut inner = self.inner.lock();
        let mut gone = Vec::new();
        inner.replicas.retain(|id, seen| {
            let keep = id == &self.replica || now.saturating_duration_since(seen.at) <= keep;
            if !keep {
                gone.push(id.clone());
            }
            keep
        });
        gone
    }

    /// Whether this replica cleans up after dead ones: the alive replica with the smallest id.
    pub fn is_janitor(&self, now: Instant) -> bool {
        let inner = self.inner.lock();
        Self::janitor_of(&inner.replicas, &self.replica, self.timing, now)
    }

    fn janitor_of(replicas: &HashMap<String, Seen>, me: &str, t: Timing, now: Instant) -> bool {
        replicas
            .iter()
            .filter(|(id, seen)| {
                *id == me || (!seen.gone && now.saturating_duration_since(seen.at) < t.dead_after())
            })
            .map(|(id, _)| id.as_str())
            .chain(std::iter::once(me))
            .min()
            == Some(me)
    }

    /// What is known of `replica` from its beats.
    pub fn liveness(&self, replica: &str) -> crate::hub::presence::Liveness {
        use crate::hub::presence::Liveness;
        let inner = self.inner.lock();
        match inner.replicas.get(replica) {
            Some(seen) if seen.gone => Liveness::Gone(seen.at),
            Some(seen) => Liveness::Beat(seen.at),
            None => Liveness::Unknown,
        }
    }

    /// Sessions remembered.
    pub fn len(&self) -> usize {
        self.inner.lock().total
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEAT: Duration = Duration::from_millis(100);

    fn handoffs(per_user: usize) -> Handoffs {
        let timing = Timing {
            window: Duration::from_secs(60),
            beat: BEAT,
            slack: Duration::ZERO,
            keep: Duration::ZERO,
        };
        Handoffs::new(timing, "me".into(), per_user, 100)
    }

    fn ended(id: &str, user: &str, at_s: u64) -> Session {
        Session {
            id: id.into(),
            replica: "r".into(),
            workspace: None,
            user: user.into(),
            cursor: Some(format!("c-{id}")),
            rooms: vec![],
            event_types: vec![],
            at_ms: at_s * 1000,
        }
    }

    fn live(id: &str, replica: &str, at_s: u64) -> Session {
        Session {
            replica: replica.into(),
            cursor: None,
            ..ended(id, "u", at_s)
        }
    }

    fn beat(cursor: &str) -> Beat {
        Beat {
            cursor: cursor.into(),
            at_ms: 0,
        }
    }

    #[test]
    fn a_beat_read_back_long_after_counts_from_its_stamp() {
        let h = handoffs(4);
        let now = Instant::now() + Duration::from_secs(3600);
        h.beat(
            "old",
            Some(Beat {
                cursor: "c".into(),
                at_ms: 1_000,
            }),
            now,
            1_000_000,
        );
        h.record(live("s", "old", 1));
        assert_eq!(
            h.claim(None, "u", 1_000_000, now),
            Claim::Nothing,
            "dead for longer than the window"
        );
    }

    fn taken(claim: Claim) -> Option<(String, Option<String>)> {
        match claim {
            Claim::Take(s) => Some((s.id, s.cursor)),
            _ => None,
        }
    }

    #[test]
    fn the_oldest_ended_within_the_window_is_taken_first() {
        let h = handoffs(4);
        let now = Instant::now();
        h.record(ended("b", "u", 110));
        h.record(ended("a", "u", 100));
        h.record(ended("a", "u", 100));
        assert_eq!(h.len(), 2, "one record per id");
        let claim = |h: &Handoffs, ws: Option<&str>| taken(h.claim(ws, "u", 120_000, now)).map(|t| t.0);
        assert_eq!(claim(&h, None), Some("a".into()));
        assert_eq!(claim(&h, None), Some("b".into()));
        assert_eq!(claim(&h, None), None);
        h.record(ended("old", "u", 10));
        assert_eq!(claim(&h, None), None, "outside the window");
        h.record(ended("w", "u", 110));
        assert_eq!(claim(&h, Some("w")), None, "workspaces are apart");
    }

    #[test]
    fn an_open_session_is_taken_only_once_its_replica_is_dead_and_from_its_last_beat() {
        let h = handoffs(4);
        let t0 = Instant::now();
        h.beat("a", Some(beat("beat-1")), t0, 0);
        h.record(live("s", "a", 100));
        h.record(live("mine", "me", 99));
        // Alive: its session is a tab of the same user, not to be taken.
        assert_eq!(h.claim(None, "u", 101_000, t0 + BEAT), Claim::Nothing);
        // Late beats: not yet known dead, wait until it is.
        assert_eq!(h.claim(None, "u", 101_000, t0 + BEAT * 3), Claim::Wait(BEAT));
        // Dead: taken, from the last beat.
        let claim = taken(h.claim(None, "u", 101_000, t0 + BEAT * 4));
        assert_eq!(claim, Some(("s".into(), Some("beat-1".into()))));
        assert_eq!(h.claim(None, "u", 101_000, t0 + BEAT * 4), Claim::Nothing, "once");
        assert_eq!(h.len(), 1, "this replica's own session stays");
    }

    #[test]
    fn ended_records_go_before_open_ones_and_a_drained_replica_is_dead_at_once() {
        let h = handoffs(4);
        let t0 = Instant::now();
        h.beat("a", Some(beat("beat")), t0, 0);
        h.beat("a", None, t0, 0);
        h.record(live("open", "a", 90));
        h.record(ended("closed", "u", 100));
        let first = taken(h.claim(None, "u", 101_000, t0));
        assert_eq!(first, Some(("closed".into(), Some("c-closed".into()))));
        let second = taken(h.claim(None, "u", 101_000, t0));
        assert_eq!(second, Some(("open".into(), Some("beat".into()))));
    }

    #[test]
    fn bounded_removable_and_expiring() {
        let h = handoffs(2);
        let now = Instant::now();
        for (i, id) in ["a", "b", "c"].iter().enumerate() {
            h.record(ended(id, "u", 100 + i as u64));
        }
        assert_eq!(h.len(), 2, "the oldest was forgotten");
        h.remove(None, "u", "b");
        assert_eq!(h.len(), 1);
        let gone = h.expire(1_000_000, now);
        assert_eq!(
            gone,
            vec![(None, "u".into(), "c".into())],
            "alone: this replica tombstones"
        );
        assert!(h.is_empty());
        let key = ended("x", "u/1", 1).key();
        assert_eq!(Session::from_key(&key), Some((None, "u/1".into(), "x".into())));
        assert_eq!(Beat::from_key(&Beat::key_of("r1")), Some("r1".into()));

        let small = Handoffs::new(h.timing, "me".into(), 4, 2);
        assert!(small.record(ended("1", "u1", 1)));
        assert!(small.record(ended("2", "u2", 1)));
        assert!(!small.record(ended("3", "u3", 1)), "the total bound");
        assert!(
            small.record(ended("2", "u2", 2)),
            "a replacement is not a new record"
        );
    }

    #[test]
    fn only_the_alive_replica_with_the_smallest_id_tombstones() {
        let h = handoffs(4);
        let now = Instant::now();
        h.beat("a-smaller", Some(beat("x")), now, 0);
        h.record(ended("old", "u", 1));
        assert!(h.expire(1_000_000, now).is_empty(), "another replica does it");
        assert!(h.is_empty(), "but it is forgotten here too");
    }
}
