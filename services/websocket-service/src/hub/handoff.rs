//! Catch-up for clients that never send a cursor.
//!
//! The existing frontends reconnect after every network blip and deploy, but never pass
//! `since`: without help, whatever was produced while they were away is lost. So when a session
//! that did not ask for resume positions ends, the gateway remembers where it stood (its cursor,
//! its rooms and filter) for `CATCHUP_WINDOW_SECS`, on every replica (through the control
//! topic). When a session of the same user (and workspace) connects without a cursor within
//! that window, on any replica, it takes over the oldest such ended session: it resumes from
//! its cursor, in its rooms, with its filter, exactly as if it had sent `since`.
//!
//! A user with several tabs: tabs are not told apart (they send nothing that could), so the
//! first to reconnect takes the first to have ended, and so on. The tabs of one user mostly see
//! the same events (the same user, the same user-scoped rooms), so whichever cursor a tab takes
//! covers the same ground within a few events; the replay itself has no gap and no duplicate at
//! its seam with live delivery.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// Where an ended session stood.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ended {
    /// Unique per session: the control record's key part.
    pub id: String,
    pub workspace: Option<String>,
    pub user: String,
    pub cursor: String,
    /// Rooms it was in (per session), re-joined by the one that takes over (if still granted).
    #[serde(default)]
    pub rooms: Vec<String>,
    /// Its event filter.
    #[serde(default)]
    pub event_types: Vec<String>,
    /// Unix seconds.
    pub ended_at: u64,
}

impl Ended {
    /// The control record key: one per ended session.
    pub fn key(&self) -> String {
        serde_json::json!(["ended", self.workspace, self.user, self.id]).to_string()
    }

    /// The (workspace, user, id) a key names, for a tombstone.
    pub fn from_key(key: &str) -> Option<(Option<String>, String, String)> {
        let (kind, workspace, user, id): (String, Option<String>, String, String) =
            serde_json::from_str(key).ok()?;
        (kind == "ended").then_some((workspace, user, id))
    }
}

type UserKey = (Option<Arc<str>>, Arc<str>);

/// Ended sessions waiting to be taken over, oldest first, per (workspace, user).
pub struct Handoffs {
    ended: Mutex<HashMap<UserKey, VecDeque<Ended>>>,
    /// How long an ended session waits (0: catch-up is off).
    pub window_secs: u64,
    /// Most remembered per user (the oldest are forgotten first).
    per_user: usize,
}

impl Handoffs {
    pub fn new(window_secs: u64, per_user: usize) -> Self {
        Handoffs {
            ended: Mutex::new(HashMap::new()),
            window_secs,
            per_user,
        }
    }

    pub fn enabled(&self) -> bool {
        self.window_secs > 0
    }

    fn key(workspace: Option<&str>, user: &str) -> UserKey {
        (workspace.map(Arc::from), Arc::from(user))
    }

    /// Remembers an ended session (from this replica or the control topic).
    pub fn ended(&self, e: Ended) {
        let mut ended = self.ended.lock();
        let list = ended
            .entry(Self::key(e.workspace.as_deref(), &e.user))
            .or_default();
        if list.iter().any(|x| x.id == e.id) {
            return;
        }
        let at = list.partition_point(|x| x.ended_at <= e.ended_at);
        list.insert(at, e);
        while list.len() > self.per_user {
            list.pop_front();
        }
    }

    /// Forgets one (it was taken over somewhere).
    pub fn remove(&self, workspace: Option<&str>, user: &str, id: &str) {
        let mut ended = self.ended.lock();
        let key = Self::key(workspace, user);
        if let Some(list) = ended.get_mut(&key) {
            list.retain(|e| e.id != id);
            if list.is_empty() {
                ended.remove(&key);
            }
        }
    }

    /// Takes over the oldest session of the user that ended within the window.
    pub fn claim(&self, workspace: Option<&str>, user: &str, now: u64) -> Option<Ended> {
        let mut ended = self.ended.lock();
        let key = Self::key(workspace, user);
        let list = ended.get_mut(&key)?;
        while let Some(e) = list.pop_front() {
            if now.saturating_sub(e.ended_at) <= self.window_secs {
                if list.is_empty() {
                    ended.remove(&key);
                }
                return Some(e);
            }
        }
        ended.remove(&key);
        None
    }

    /// Drops what is older than the window.
    pub fn expire(&self, now: u64) {
        let window = self.window_secs;
        self.ended.lock().retain(|_, list| {
            list.retain(|e| now.saturating_sub(e.ended_at) <= window);
            !list.is_empty()
        });
    }

    /// Ended sessions remembered.
    pub fn len(&self) -> usize {
        self.ended.lock().values().map(VecDeque::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(id: &str, user: &str, ended_at: u64) -> Ended {
        Ended {
            id: id.into(),
            workspace: None,
            user: user.into(),
            cursor: format!("c-{id}"),
            rooms: vec![],
            event_types: vec![],
            ended_at,
        }
    }

    #[test]
    fn the_oldest_within_the_window_is_taken_first() {
        let h = Handoffs::new(60, 4);
        h.ended(e("b", "u", 110));
        h.ended(e("a", "u", 100));
        h.ended(e("a", "u", 100));
        assert_eq!(h.claim(None, "u", 120).map(|e| e.id), Some("a".into()));
        assert_eq!(h.claim(None, "u", 120).map(|e| e.id), Some("b".into()));
        assert_eq!(h.claim(None, "u", 120), None);
        h.ended(e("old", "u", 10));
        assert_eq!(h.claim(None, "u", 120), None, "outside the window");
        assert_eq!(h.claim(Some("w"), "u", 120), None, "workspaces are apart");
    }

    #[test]
    fn bounded_removable_and_expiring() {
        let h = Handoffs::new(60, 2);
        for (i, id) in ["a", "b", "c"].iter().enumerate() {
            h.ended(e(id, "u", 100 + i as u64));
        }
        assert_eq!(h.len(), 2, "the oldest was forgotten");
        h.remove(None, "u", "b");
        assert_eq!(h.len(), 1);
        h.expire(1000);
        assert!(h.is_empty());
        let key = e("x", "u/1", 1).key();
        assert_eq!(Ended::from_key(&key), Some((None, "u/1".into(), "x".into())));
    }
}
