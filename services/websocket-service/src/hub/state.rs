//! State events: the current value of a key, per audience.
//!
//! A generic event with a `key` is a state event. The store keeps, per (audience, key), the
//! latest value routed (its history entry). A value identical to the one held (the same JSON,
//! whatever the order of its fields) is not delivered at all: the compare-before-send that the
//! backends' polling loops did, done once here. A newer value marks the one it replaces as
//! superseded, so a session that has not written the old one yet skips it (conflation: a slow
//! session gets the latest value of each key, not every intermediate one). `data: null` removes
//! the key. A key without an update for `STATE_TTL_SECS` is forgotten, and at most
//! `STATE_MAX_KEYS` are held (beyond, a new key is delivered but not remembered).
//!
//! Every replica decides the same: each reads the same log in the same order per partition (the
//! producer keys every value of one key alike), and one that starts reads back the last
//! `max(HISTORY_MAX_AGE_SECS, STATE_TTL_SECS)` of the log before it is ready, which rebuilds
//! every key still alive. No extra topic: a key that was not updated within its TTL is gone
//! anyway.
//!
//! No actix here: unit-testable without a network.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::Value;
use task_events::{Event, GenericEvent, Payload};

use crate::hub::history::Entry;

/// What a state event does to the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not a state event.
    Plain,
    /// The same value as the one held: not delivered.
    Unchanged,
    /// A new value (or a removal): delivered.
    Changed,
}

struct Held {
    entry: Arc<Entry>,
    /// Hash of the canonical JSON of its data.
    digest: u64,
    updated: Instant,
}

#[derive(Default)]
struct Inner {
    slots: HashMap<Box<str>, Held>,
    unchanged: u64,
    refused: u64,
}

pub struct StateStore {
    inner: Mutex<Inner>,
    ttl: Duration,
    max_keys: usize,
}

/// The slot of a state event: its audience and key.
pub fn slot_of(event: &GenericEvent) -> Option<String> {
    let key = event.key.as_deref()?;
    let to = serde_json::to_string(&event.to).unwrap_or_default();
    Some(format!("{to}\u{0}{key}"))
}

/// The JSON of `value` with every object's keys sorted, so field order does not matter.
fn canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                canonical(&map[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

fn digest(event: &GenericEvent) -> (u64, bool) {
    let raw = match &event.payload {
        Payload::Data(data) => data.get(),
        Payload::Message(message) => message.get(),
    };
    let value: Value = serde_json::from_str(raw).unwrap_or(Value::Null);
    let removal = matches!(event.payload, Payload::Data(_)) && value.is_null();
    let mut text = String::with_capacity(raw.len());
    canonical(&value, &mut text);
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut hasher);
    matches!(event.payload, Payload::Message(_)).hash(&mut hasher);
    (hasher.finish(), removal)
}

impl StateStore {
    pub fn new(ttl: Duration, max_keys: usize) -> Self {
        StateStore {
            inner: Mutex::new(Inner::default()),
            ttl,
            max_keys,
        }
    }

    /// Decides on `event` before it is routed: unchanged (skip it), or changed (the caller
    /// routes it, then calls [`StateStore::hold`] with its entry).
    pub fn check(&self, event: &Event) -> Verdict {
        let Event::Generic(generic) = event else {
            return Verdict::Plain;
        };
        let Some(slot) = slot_of(generic) else {
            return Verdict::Plain;
        };
        let (digest, removal) = digest(generic);
        let mut inner = self.inner.lock();
        let same = match inner.slots.get(slot.as_str()) {
            Some(held) => held.digest == digest && held.updated.elapsed() < self.ttl,
            // Removing what is not held changes nothing.
            None => removal,
        };
        if same {
            inner.unchanged += 1;
            return Verdict::Unchanged;
        }
        Verdict::Changed
    }

    /// Holds `entry` as the latest value of its slot (or removes the slot, for `data: null`);
    /// the value it replaces is superseded.
    pub fn hold(&self, entry: &Arc<Entry>) {
        let Event::Generic(generic) = &entry.event else {
            return;
        };
        let Some(slot) = slot_of(generic) else {
            return;
        };
        let (digest, removal) = digest(generic);
        let mut inner = self.inner.lock();
        let old = if removal {
            inner.slots.remove(slot.as_str())
        } else if inner.slots.len() >= self.max_keys && !inner.slots.contains_key(slot.as_str()) {
            inner.refused += 1;
            None
        } else {
            inner.slots.insert(
                slot.into_boxed_str(),
                Held {
                    entry: entry.clone(),
                    digest,
                    updated: Instant::now(),
                },
            )
        };
        if let Some(old) = old {
            old.entry.supersede();
        }
    }

    /// The latest values that `wanted` accepts, oldest update first, at most `max`.
    pub fn snapshot(&self, max: usize, mut wanted: impl FnMut(&Entry) -> bool) -> Vec<Arc<Entry>> {
        let inner = self.inner.lock();
        let mut found: Vec<&Held> = inner
            .slots
            .values()
            .filter(|h| h.updated.elapsed() < self.ttl && wanted(&h.entry))
            .collect();
        found.sort_by_key(|h| h.entry.seq);
        found.into_iter().take(max).map(|h| h.entry.clone()).collect()
    }

    /// Forgets the keys not updated within the TTL; how many.
    pub fn expire(&self) -> usize {
        let mut inner = self.inner.lock();
        let before = inner.slots.len();
        let ttl = self.ttl;
        inner.slots.retain(|_, h| h.updated.elapsed() < ttl);
        before - inner.slots.len()
    }

    /// Keys held, values not delivered as unchanged, new keys refused at `STATE_MAX_KEYS`.
    pub fn counts(&self) -> (usize, u64, u64) {
        let inner = self.inner.lock();
        (inner.slots.len(), inner.unchanged, inner.refused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, json: &str) -> Arc<Entry> {
        let event = Event::from_json(json.as_bytes()).unwrap();
        Arc::new(Entry::new(seq, None, seq, event, format!("id{seq}"), "t".into()))
    }

    fn route(store: &StateStore, seq: u64, json: &str) -> (Verdict, Arc<Entry>) {
        let e = entry(seq, json);
        let verdict = store.check(&e.event);
        if verdict == Verdict::Changed {
            store.hold(&e);
        }
        (verdict, e)
    }

    const A: &str = r#"{"event_type":"dashboard.update","key":"stats","data":{"a":1,"b":[1,{"x":2,"y":3}]},"to":{"all":true}}"#;
    const A_REORDERED: &str = r#"{"event_type":"dashboard.update","key":"stats","data":{"b":[1,{"y":3,"x":2}],"a":1},"to":{"all":true}}"#;
    const B: &str = r#"{"event_type":"dashboard.update","key":"stats","data":{"a":2},"to":{"all":true}}"#;
    const OTHER_AUDIENCE: &str =
        r#"{"event_type":"dashboard.update","key":"stats","data":{"a":2},"to":{"room":"r"}}"#;
    const REMOVE: &str = r#"{"event_type":"dashboard.update","key":"stats","data":null,"to":{"all":true}}"#;
    const PLAIN: &str = r#"{"event_type":"x","data":1,"to":{"all":true}}"#;

    #[test]
    fn identical_values_are_skipped_whatever_the_field_order() {
        let s = StateStore::new(Duration::from_secs(60), 10);
        assert_eq!(route(&s, 1, A).0, Verdict::Changed);
        assert_eq!(route(&s, 2, A_REORDERED).0, Verdict::Unchanged);
        assert_eq!(route(&s, 3, PLAIN).0, Verdict::Plain);
        let (v, _) = route(&s, 4, B);
        assert_eq!(v, Verdict::Changed);
        // Another audience is another slot.
        assert_eq!(route(&s, 5, OTHER_AUDIENCE).0, Verdict::Changed);
        assert_eq!(s.counts(), (2, 1, 0));
    }

    #[test]
    fn a_newer_value_supersedes_and_a_tombstone_removes() {
        let s = StateStore::new(Duration::from_secs(60), 10);
        let (_, first) = route(&s, 1, A);
        let (_, second) = route(&s, 2, B);
        assert!(first.superseded() && !second.superseded());
        assert_eq!(
            s.snapshot(10, |_| true).iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![2]
        );
        let (v, _) = route(&s, 3, REMOVE);
        assert_eq!(v, Verdict::Changed);
        assert!(second.superseded());
        assert!(s.snapshot(10, |_| true).is_empty());
        // Removing it again changes nothing.
        assert_eq!(route(&s, 4, REMOVE).0, Verdict::Unchanged);
    }

    #[test]
    fn keys_are_bounded_and_expire() {
        let s = StateStore::new(Duration::from_millis(50), 1);
        route(&s, 1, A);
        assert_eq!(route(&s, 2, OTHER_AUDIENCE).0, Verdict::Changed, "delivered");
        assert_eq!(s.counts(), (1, 0, 1), "not remembered beyond STATE_MAX_KEYS");
        std::thread::sleep(Duration::from_millis(60));
        assert!(s.snapshot(10, |_| true).is_empty());
        assert_eq!(s.expire(), 1);
        assert_eq!(route(&s, 3, A).0, Verdict::Changed, "an expired key is new again");
    }

    #[test]
    fn a_snapshot_is_bounded_oldest_update_first() {
        let s = StateStore::new(Duration::from_secs(60), 10);
        route(&s, 1, A);
        route(&s, 2, OTHER_AUDIENCE);
        let seqs: Vec<u64> = s.snapshot(1, |_| true).iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![1]);
        assert_eq!(s.snapshot(10, |_| true).len(), 2);
    }
}
