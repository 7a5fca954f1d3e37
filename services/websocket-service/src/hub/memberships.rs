//! Rooms that belong to the user rather than to one session.
//!
//! A room matching `ROOMS_USER_SCOPED` is joined by the user: every session of that user (in the
//! same workspace), on every replica, now and after reconnects, is in it until the user leaves
//! it, or until `USER_ROOMS_TTL_SECS` after the user's last session ended. The helpdesk client
//! joins its room once and never again; with per-session rooms its room events would stop after
//! every deploy.
//!
//! The cluster shares memberships through the control topic (`ingest::control`): a join is a
//! record keyed by the membership, a leave its tombstone, so a compacted topic keeps exactly the
//! memberships in force, and a replica that starts rebuilds them by reading it. Replicas holding
//! a session of the user refresh its memberships before they expire (each record carries its
//! expiry), so a membership outlives the user's last session by at most the TTL. Without Kafka
//! the memberships live in this replica's memory: they survive reconnects to the same replica.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::auth::grants::RoomPattern;
use crate::hub::registry::Registry;

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// User-scoped rooms applied to this replica's sessions.
pub struct UserRooms {
    pub registry: Arc<Registry>,
    pub memberships: Memberships,
    /// Rooms per session (`MAX_ROOMS_PER_SESSION`).
    pub max_rooms: usize,
}

impl UserRooms {
    /// A membership joined (or refreshed) anywhere: every local session of the user joins.
    pub fn apply_join(&self, m: &Membership) {
        if self.memberships.join(m, unix_now()) {
            self.registry
                .join_user(m.workspace.as_deref(), &m.user, &m.room, self.max_rooms);
        }
    }

    /// A membership left anywhere: every local session of the user leaves.
    pub fn apply_leave(&self, m: &Membership) {
        self.memberships.leave(m);
        self.registry.leave_user(m.workspace.as_deref(), &m.user, &m.room);
    }

    /// A session just admitted: it joins the user's rooms.
    pub fn admit(&self, id: crate::hub::registry::SessionId, workspace: Option<&str>, user: &str) {
        for room in self.memberships.rooms_of(workspace, user, unix_now()) {
            let _ = self.registry.join(id, &room, self.max_rooms);
        }
    }

    /// A membership for `user` in `room`, lasting the TTL from now.
    pub fn membership(&self, workspace: Option<&str>, user: &str, room: &str) -> Membership {
        Membership {
            workspace: workspace.map(String::from),
            user: user.to_string(),
            room: room.to_string(),
            expires_at: unix_now() + self.memberships.ttl_secs,
        }
    }

    /// Refreshes the memberships of users with a session here before they lapse (`publish`
    /// writes each refresh for the other replicas) and drops the lapsed ones.
    pub fn maintain(&self, publish: impl Fn(&Membership)) {
        let now = unix_now();
        let due = self
            .memberships
            .due(now, |ws, user| self.registry.has_sessions(ws, user));
        for m in &due {
            self.apply_join(m);
            publish(m);
        }
        for m in self.memberships.expire(now) {
            self.registry.leave_user(m.workspace.as_deref(), &m.user, &m.room);
        }
    }
}

/// One user-scoped membership.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    pub workspace: Option<String>,
    pub user: String,
    pub room: String,
    /// Unix seconds after which it lapses unless refreshed.
    pub expires_at: u64,
}

impl Membership {
    /// The control record key: one per membership, so compaction keeps its latest state.
    pub fn key(&self) -> String {
        serde_json::json!(["membership", self.workspace, self.user, self.room]).to_string()
    }

    /// The membership a key names (for a tombstone, whose value is empty).
    pub fn from_key(key: &str) -> Option<Membership> {
        let (kind, workspace, user, room): (String, Option<String>, String, String) =
            serde_json::from_str(key).ok()?;
        (kind == "membership").then_some(Membership {
            workspace,
            user,
            room,
            expires_at: 0,
        })
    }
}

type UserKey = (Option<Arc<str>>, Arc<str>);

/// Memberships in force, by (workspace, user).
pub struct Memberships {
    users: Mutex<HashMap<UserKey, HashMap<Arc<str>, u64>>>,
    patterns: Vec<RoomPattern>,
    /// How long a membership lasts without a refresh.
    pub ttl_secs: u64,
    /// Most memberships per user (the per-session room limit).
    max_per_user: usize,
}

impl Memberships {
    pub fn new(patterns: Vec<RoomPattern>, ttl_secs: u64, max_per_user: usize) -> Self {
        Memberships {
            users: Mutex::new(HashMap::new()),
            patterns,
            ttl_secs,
            max_per_user,
        }
    }

    /// Whether user-scoped rooms are configured at all.
    pub fn enabled(&self) -> bool {
        !self.patterns.is_empty()
    }

    /// Whether `room` belongs to the user rather than to a session.
    pub fn is_user_scoped(&self, room: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(room))
    }

    /// Records a join (or refresh). Returns false when it is already expired or the user holds
    /// the most memberships allowed.
    pub fn join(&self, m: &Membership, now: u64) -> bool {
        if m.expires_at <= now {
            return false;
        }
        let mut users = self.users.lock();
        let rooms = users
            .entry((m.workspace.as_deref().map(Arc::from), Arc::from(m.user.as_str())))
            .or_default();
        if let Some(expires) = rooms.get_mut(m.room.as_str()) {
            *expires = (*expires).max(m.expires_at);
            return true;
        }
        if rooms.len() >= self.max_per_user {
            return false;
        }
        rooms.insert(Arc::from(m.room.as_str()), m.expires_at);
        true
    }

    /// Records a leave. Returns whether the membership was in force.
    pub fn leave(&self, m: &Membership) -> bool {
        let mut users = self.users.lock();
        let key: UserKey = (m.workspace.as_deref().map(Arc::from), Arc::from(m.user.as_str()));
        let Some(rooms) = users.get_mut(&key) else {
            return false;
        };
        let removed = rooms.remove(m.room.as_str()).is_some();
        if rooms.is_empty() {
            users.remove(&key);
        }
        removed
    }

    /// The rooms the user is in (in this workspace).
    pub fn rooms_of(&self, workspace: Option<&str>, user: &str, now: u64) -> Vec<Arc<str>> {
        let users = self.users.lock();
        let key: UserKey = (workspace.map(Arc::from), Arc::from(user));
        users.get(&key).map_or_else(Vec::new, |rooms| {
            rooms
                .iter()
                .filter(|(_, expires)| **expires > now)
                .map(|(room, _)| room.clone())
                .collect()
        })
    }

    /// Memberships of users for whom `online` holds that lapse within half the TTL: what this
    /// replica must refresh, with their new expiry.
    pub fn due(&self, now: u64, online: impl Fn(Option<&str>, &str) -> bool) -> Vec<Membership> {
        let users = self.users.lock();
        let mut due = Vec::new();
        for ((ws, user), rooms) in users.iter() {
            if !online(ws.as_deref(), user) {
                continue;
            }
            for (room, expires) in rooms {
                if *expires <= now + self.ttl_secs / 2 {
                    due.push(Membership {
                        workspace: ws.as_deref().map(String::from),
                        user: user.to_string(),
                        room: room.to_string(),
                        expires_at: now + self.ttl_secs,
                    });
                }
            }
        }
        due
    }

    /// Removes and returns the memberships that lapsed.
    pub fn expire(&self, now: u64) -> Vec<Membership> {
        let mut users = self.users.lock();
        let mut lapsed = Vec::new();
        users.retain(|(ws, user), rooms| {
            rooms.retain(|room, expires| {
                let keep = *expires > now;
                if !keep {
                    lapsed.push(Membership {
                        workspace: ws.as_deref().map(String::from),
                        user: user.to_string(),
                        room: room.to_string(),
                        expires_at: *expires,
                    });
                }
                keep
            });
            !rooms.is_empty()
        });
        lapsed
    }

    /// Memberships held.
    pub fn len(&self) -> usize {
        self.users.lock().values().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(user: &str, room: &str, expires_at: u64) -> Membership {
        Membership {
            workspace: Some("w".into()),
            user: user.into(),
            room: room.into(),
            expires_at,
        }
    }

    fn memberships() -> Memberships {
        Memberships::new(vec![RoomPattern::parse("support:*")], 100, 2)
    }

    #[test]
    fn keys_round_trip_and_name_one_membership() {
        let a = m("u/1", "support:7", 5);
        let back = Membership::from_key(&a.key()).unwrap();
        assert_eq!((back.user.as_str(), back.room.as_str()), ("u/1", "support:7"));
        assert_ne!(
            a.key(),
            m("u", "1/support:7", 5).key(),
            "no ambiguity from separators"
        );
        assert_eq!(Membership::from_key("not json"), None);
    }

    #[test]
    fn join_leave_bound_and_scope() {
        let ms = memberships();
        assert!(ms.is_user_scoped("support:7") && !ms.is_user_scoped("lobby"));
        assert!(ms.join(&m("u", "support:1", 150), 100));
        assert!(ms.join(&m("u", "support:2", 150), 100));
        assert!(!ms.join(&m("u", "support:3", 150), 100), "bounded per user");
        assert!(!ms.join(&m("v", "support:1", 90), 100), "already expired");
        assert_eq!(ms.rooms_of(Some("w"), "u", 100).len(), 2);
        assert!(ms.rooms_of(None, "u", 100).is_empty(), "workspaces are apart");
        assert!(ms.leave(&m("u", "support:1", 0)));
        assert!(!ms.leave(&m("u", "support:1", 0)));
        assert_eq!(ms.len(), 1);
    }

    #[test]
    fn refresh_while_online_expire_after() {
        let ms = memberships();
        ms.join(&m("on", "support:1", 200), 100);
        ms.join(&m("off", "support:1", 200), 100);
        // Not yet due: more than half the TTL left.
        assert!(ms.due(100, |_, _| true).is_empty());
        let due = ms.due(160, |_, user| user == "on");
        assert_eq!(due.len(), 1);
        assert_eq!((due[0].user.as_str(), due[0].expires_at), ("on", 260));
        ms.join(&due[0], 160);
        let lapsed = ms.expire(201);
        assert_eq!(lapsed.len(), 1);
        assert_eq!(lapsed[0].user, "off");
        assert_eq!(ms.rooms_of(Some("w"), "on", 201).len(), 1);
    }
}
