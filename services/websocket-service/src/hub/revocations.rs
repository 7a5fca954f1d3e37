//! Revoked tokens, cluster-wide.
//!
//! `POST /api/revoke` writes a record to the control topic (key `["revoke","user",U]` or
//! `["revoke","jti",J]`); every replica reads it, closes the matching sessions with 4001
//! `revoked`, and refuses the matching tokens at connect until the record expires: when the
//! tokens it names would have expired anyway (the request's `exp`, else `REVOCATION_TTL_SECS`
//! after the revocation). A replica that starts later reads the records in force before it is
//! ready. Expired records are tombstoned by one replica (the janitor), so a compacted topic
//! keeps only those in force.
//!
//! - by user: the user's tokens issued before `issued_before` (Unix seconds; the revocation's
//!   own time when not given, so a login after it works). A token without `iat` is taken as
//!   issued before any time.
//! - by `jti`: that token, whoever it names.

use std::collections::HashMap;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

/// What a revocation names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    User(String),
    Jti(String),
}

impl Target {
    pub fn key(&self) -> String {
        match self {
            Target::User(u) => serde_json::json!(["revoke", "user", u]).to_string(),
            Target::Jti(j) => serde_json::json!(["revoke", "jti", j]).to_string(),
        }
    }

    pub fn from_key(key: &str) -> Option<Target> {
        let (kind, what, value): (String, String, String) = serde_json::from_str(key).ok()?;
        match (kind.as_str(), what.as_str()) {
            ("revoke", "user") => Some(Target::User(value)),
            ("revoke", "jti") => Some(Target::Jti(value)),
            _ => None,
        }
    }
}

/// A revocation record's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// By user: tokens issued (`iat`) before this Unix second are revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_before: Option<u64>,
    /// Unix ms after which the record is forgotten (the tokens it names have expired).
    pub until_ms: u64,
}

/// The token facts a revocation is checked against.
#[derive(Debug, Clone, Copy)]
pub struct Token<'a> {
    pub user: &'a str,
    pub jti: Option<&'a str>,
    pub issued_at: Option<u64>,
}

impl Revocation {
    /// Whether it revokes `token` (the target already matched).
    pub fn covers(&self, token: &Token<'_>) -> bool {
        match self.issued_before {
            Some(before) => token.issued_at.is_none_or(|iat| iat < before),
            None => true,
        }
    }

    /// Two revocations of the same target: the wider one, kept the longer.
    fn merge(self, other: Revocation) -> Revocation {
        Revocation {
            issued_before: match (self.issued_before, other.issued_before) {
                (Some(a), Some(b)) => Some(a.max(b)),
                _ => None,
            },
            until_ms: self.until_ms.max(other.until_ms),
        }
    }
}

#[derive(Default)]
pub struct Revocations {
    inner: RwLock<HashMap<Target, Revocation>>,
}

impl Revocations {
    /// Adds (or widens) one; returns what is now in force for the target.
    pub fn insert(&self, target: Target, revocation: Revocation) -> Revocation {
        let mut inner = self.inner.write();
        let merged = match inner.get(&target) {
            Some(old) => old.merge(revocation),
            None => revocation,
        };
        inner.insert(target, merged);
        merged
    }

    /// A record read from the control topic: merged with what is held; a tombstone removes an
    /// expired one only (a janitor's tombstone must not undo a newer revocation of the same
    /// target that this replica already holds).
    pub fn apply(&self, target: Target, revocation: Option<Revocation>, now_ms: u64) {
        let mut inner = self.inner.write();
        match revocation {
            Some(r) => {
                let merged = inner.get(&target).map_or(r, |old| old.merge(r));
                inner.insert(target, merged);
            }
            None => {
                if inner.get(&target).is_some_and(|r| r.until_ms <= now_ms) {
                    inner.remove(&target);
                }
            }
        }
    }

    /// What would be in force for `target` with `revocation` added (nothing is changed).
    pub fn merged(&self, target: &Target, revocation: Revocation) -> Revocation {
        self.inner
            .read()
            .get(target)
            .map_or(revocation, |old| old.merge(revocation))
    }

    /// Whether `token` is revoked at `now_ms`. Cheap when nothing is revoked (the usual case).
    pub fn is_revoked(&self, token: &Token<'_>, now_ms: u64) -> bool {
        let inner = self.inner.read();
        if inner.is_empty() {
            return false;
        }
        let check = |target: Target| {
            inner
                .get(&target)
                .is_some_and(|r| r.until_ms > now_ms && r.covers(token))
        };
        check(Target::User(token.user.to_string()))
            || token.jti.is_some_and(|j| check(Target::Jti(j.to_string())))
    }

    /// Forgets the expired ones; returns them (for the janitor's tombstones).
    pub fn expire(&self, now_ms: u64) -> Vec<Target> {
        let mut inner = self.inner.write();
        let expired: Vec<Target> = inner
            .iter()
            .filter(|(_, r)| r.until_ms <= now_ms)
            .map(|(t, _)| t.clone())
            .collect();
        for target in &expired {
            inner.remove(target);
        }
        expired
    }

    pub fn len(&self) -> usize {
        self.inner.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token<'a>(user: &'a str, jti: Option<&'a str>, iat: Option<u64>) -> Token<'a> {
        Token {
            user,
            jti,
            issued_at: iat,
        }
    }

    #[test]
    fn by_user_before_a_time_by_jti_and_expiry() {
        let r = Revocations::default();
        assert!(!r.is_revoked(&token("u", None, Some(10)), 0));
        r.insert(
            Target::User("u".into()),
            Revocation {
                issued_before: Some(100),
                until_ms: 1_000_000,
            },
        );
        assert!(r.is_revoked(&token("u", None, Some(99)), 0));
        assert!(
            !r.is_revoked(&token("u", None, Some(100)), 0),
            "issued after: a new login"
        );
        assert!(
            r.is_revoked(&token("u", None, None), 0),
            "no iat: issued before anything"
        );
        assert!(!r.is_revoked(&token("v", None, Some(1)), 0));
        r.insert(
            Target::Jti("j".into()),
            Revocation {
                issued_before: None,
                until_ms: 2_000_000,
            },
        );
        assert!(r.is_revoked(&token("v", Some("j"), Some(500)), 0));
        assert!(!r.is_revoked(&token("v", Some("k"), Some(500)), 0));
        // A later revocation of the same user widens it.
        r.insert(
            Target::User("u".into()),
            Revocation {
                issued_before: Some(200),
                until_ms: 5,
            },
        );
        assert!(r.is_revoked(&token("u", None, Some(150)), 0));
        // Expiry: each goes when its tokens would have expired anyway.
        assert_eq!(r.expire(1_500_000), vec![Target::User("u".into())]);
        assert!(!r.is_revoked(&token("u", None, Some(150)), 1_500_000));
        assert!(r.is_revoked(&token("v", Some("j"), None), 1_500_000));
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn keys_round_trip() {
        for t in [Target::User("a\"b".into()), Target::Jti("x".into())] {
            assert_eq!(Target::from_key(&t.key()), Some(t));
        }
        assert_eq!(Target::from_key(r#"["presence","a",null,"u"]"#), None);
    }

    #[test]
    fn a_tombstone_removes_only_what_expired() {
        let r = Revocations::default();
        let t = Target::User("u".into());
        let rev = |until_ms| Revocation {
            issued_before: Some(10),
            until_ms,
        };
        r.apply(t.clone(), Some(rev(100)), 0);
        r.apply(t.clone(), None, 50);
        assert_eq!(
            r.len(),
            1,
            "still in force: the tombstone was for an older record"
        );
        r.apply(t, None, 100);
        assert!(r.is_empty());
    }
}
