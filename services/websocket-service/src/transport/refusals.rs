//! How refusals reach clients that reconnect after every close.
//!
//! The existing frontends reconnect after every close whatever its code, reset their retry
//! counter when a socket opens, back off 1 s, 2 s, 4 s ... and give up after five failed tries
//! (`docs/wire-contract.md`). Two things follow:
//!
//! - **A permanent refusal** (a bad token: 4001; a workspace not granted: 4003; too many
//!   sessions for the user: 4029) must not be a close after open every time, or such a client
//!   loops at its first backoff step forever. The first refusal of a token is a close after the
//!   upgrade, so every client (ours too) learns the exact code and reason. The same token coming
//!   back within `REFUSAL_MEMORY_SECS` is refused at the upgrade with an HTTP status (401, 403,
//!   429) and a JSON body: that counts as a failed try, so such a client stops within its five
//!   tries (six connection attempts in all). A refreshed token is a different token.
//! - **A transient refusal** (this replica is full: 1013; it is draining: 1001) is a close after
//!   the upgrade, never an HTTP error: a failed try would make such a client give up for good
//!   during a deploy or a storm. Overload closes are paced (held a jittered moment first), so a
//!   storm of reconnecting clients is spread instead of amplified.
//!
//! Memory is bounded: at most `REFUSAL_MEMORY_CAPACITY` refusals are remembered, as 64-bit keyed
//! hashes of (token, workspace asked for), oldest forgotten first.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::protocol::close;

/// A permanent refusal, as remembered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// The close code the first attempt got.
    pub code: u16,
    /// Why, as a short label for the JSON answer and the metric.
    pub reason: &'static str,
}

impl Refused {
    /// The HTTP status that carries this refusal at the upgrade.
    pub fn status(&self) -> u16 {
        match self.code {
            close::UNAUTHORIZED => 401,
            close::FORBIDDEN => 403,
            _ => 429,
        }
    }
}

pub struct Refusals {
    inner: Mutex<Inner>,
    hasher: std::collections::hash_map::RandomState,
    window: Duration,
    capacity: usize,
}

#[derive(Default)]
struct Inner {
    refused: HashMap<u64, (Instant, Refused)>,
    order: VecDeque<(Instant, u64)>,
}

impl Refusals {
    pub fn new(window: Duration, capacity: usize) -> Self {
        Refusals {
            inner: Mutex::new(Inner::default()),
            hasher: std::collections::hash_map::RandomState::new(),
            window,
            capacity,
        }
    }

    /// The key of an attempt: its token (or, without one, its peer address) and what it asks
    /// for (workspace, rooms), so that asking for something else is a new attempt.
    pub fn key(
        &self,
        token: Option<&str>,
        peer: Option<&str>,
        workspace: Option<&str>,
        rooms: &[String],
    ) -> u64 {
        self.hasher
            .hash_one((token.is_some(), token.or(peer), workspace, rooms))
    }

    /// The refusal this key got within the window, if any.
    pub fn check(&self, key: u64) -> Option<Refused> {
        self.check_at(key, Instant::now())
    }

    fn check_at(&self, key: u64, now: Instant) -> Option<Refused> {
        let inner = self.inner.lock();
        let (at, refused) = inner.refused.get(&key)?;
        (now.duration_since(*at) < self.window).then_some(*refused)
    }

    /// Remembers a permanent refusal of `key`.
    pub fn remember(&self, key: u64, refused: Refused) {
        self.remember_at(key, refused, Instant::now());
    }

    fn remember_at(&self, key: u64, refused: Refused, now: Instant) {
        if self.capacity == 0 {
            return;
        }
        let mut inner = self.inner.lock();
        while let Some((at, old)) = inner.order.front().copied() {
            if now.duration_since(at) < self.window && inner.order.len() < self.capacity {
                break;
            }
            inner.order.pop_front();
            // Only forget the entry if it was not refreshed since.
            if inner.refused.get(&old).is_some_and(|(seen, _)| *seen == at) {
                inner.refused.remove(&old);
            }
        }
        inner.refused.insert(key, (now, refused));
        inner.order.push_back((now, key));
    }

    /// Refusals remembered now.
    pub fn len(&self) -> usize {
        self.inner.lock().refused.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How long an overload close is held: `base` jittered to between half and one and a half times
/// it, so that clients refused together do not come back together.
pub fn paced(base: Duration) -> Duration {
    if base.is_zero() {
        return base;
    }
    let jitter = uuid::Uuid::new_v4().as_u128() as u64 % 1000;
    base / 2 + base * jitter as u32 / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    const BAD: Refused = Refused {
        code: close::UNAUTHORIZED,
        reason: "expired",
    };

    #[test]
    fn a_refused_token_is_refused_again_within_the_window_only() {
        let r = Refusals::new(Duration::from_secs(60), 10);
        let t0 = Instant::now();
        let key = r.key(Some("tok"), None, None, &[]);
        assert_eq!(r.check_at(key, t0), None);
        r.remember_at(key, BAD, t0);
        assert_eq!(r.check_at(key, t0 + Duration::from_secs(59)), Some(BAD));
        assert_eq!(r.check_at(key, t0 + Duration::from_secs(61)), None);
        assert_ne!(
            r.key(Some("tok"), None, Some("w"), &[]),
            key,
            "the workspace is part of it"
        );
        assert_ne!(
            r.key(Some("other"), None, None, &[]),
            key,
            "a new token is a new key"
        );
        assert_ne!(
            r.key(Some("tok"), None, None, &["room".into()]),
            key,
            "a room the token may not grant does not refuse the token without it"
        );
        assert_eq!(BAD.status(), 401);
    }

    #[test]
    fn memory_is_bounded_oldest_first() {
        let r = Refusals::new(Duration::from_secs(3600), 3);
        let t0 = Instant::now();
        for n in 0..5u64 {
            r.remember_at(n, BAD, t0);
        }
        assert_eq!(r.len(), 3);
        assert_eq!(r.check_at(0, t0), None, "the oldest was forgotten");
        assert_eq!(r.check_at(4, t0), Some(BAD));
    }

    #[test]
    fn pacing_is_jittered_around_the_base() {
        let base = Duration::from_millis(2000);
        for _ in 0..100 {
            let d = paced(base);
            assert!(d >= base / 2 && d <= base * 3 / 2, "{d:?}");
        }
        assert_eq!(paced(Duration::ZERO), Duration::ZERO);
    }
}
