//! "One event, one delivery": an event id seen within the window is not delivered again.
//!
//! Repeats come from a deployment that enables both Kafka and Dapr (every event arrives twice,
//! with the same id: the producer's, the CloudEvent's, or `kafka:<topic>:<partition>:<offset>`,
//! which the Dapr path derives from the sidecar's `__topic`/`__partition`/`__offset` headers too)
//! and from redeliveries.
//!
//! Ids are remembered as 64-bit keyed hashes, so memory is bounded by the number of ids whatever
//! their length (producers choose it): about 40 bytes each, 4 MB for the default 100,000. The
//! hash key is random per process, so nobody can craft two ids that collide; two distinct ids
//! colliding by chance within one window has a probability of about n²/2⁶⁵ (3·10⁻¹⁰ at the bound).

use std::collections::{HashSet, VecDeque};
use std::hash::BuildHasher;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

pub struct Dedup {
    inner: Mutex<Window>,
    hasher: std::collections::hash_map::RandomState,
    window: Duration,
    capacity: usize,
}

#[derive(Default)]
struct Window {
    ids: HashSet<u64>,
    /// Ids in the order they were first seen, to forget the oldest first.
    order: VecDeque<(Instant, u64)>,
}

impl Dedup {
    pub fn new(window: Duration, capacity: usize) -> Self {
        Dedup {
            inner: Mutex::new(Window::default()),
            hasher: std::collections::hash_map::RandomState::new(),
            window,
            capacity,
        }
    }

    /// True the first time `id` is seen within the window.
    pub fn first_time(&self, id: &str) -> bool {
        self.first_time_at(id, Instant::now())
    }

    fn first_time_at(&self, id: &str, now: Instant) -> bool {
        let id = self.hasher.hash_one(id);
        let mut w = self.inner.lock();
        while let Some((seen, _)) = w.order.front() {
            if now.duration_since(*seen) < self.window && w.order.len() < self.capacity {
                break;
            }
            if let Some((_, old)) = w.order.pop_front() {
                w.ids.remove(&old);
            }
        }
        if !w.ids.insert(id) {
            return false;
        }
        w.order.push_back((now, id));
        true
    }

    /// Ids remembered now.
    pub fn len(&self) -> usize {
        self.inner.lock().ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_within_the_window_are_refused() {
        let d = Dedup::new(Duration::from_secs(10), 100);
        let t0 = Instant::now();
        assert!(d.first_time_at("a", t0));
        assert!(!d.first_time_at("a", t0 + Duration::from_secs(9)));
        assert!(d.first_time_at("b", t0 + Duration::from_secs(9)));
        // After the window, `a` is forgotten and delivered again.
        assert!(d.first_time_at("a", t0 + Duration::from_secs(11)));
    }

    #[test]
    fn capacity_bounds_memory_oldest_forgotten_first() {
        let d = Dedup::new(Duration::from_secs(3600), 3);
        let t0 = Instant::now();
        for id in ["a", "b", "c", "d"] {
            assert!(d.first_time_at(id, t0));
        }
        assert_eq!(d.len(), 3);
        assert!(d.first_time_at("a", t0), "the oldest was forgotten at the bound");
        assert!(!d.first_time_at("d", t0));
    }
}
