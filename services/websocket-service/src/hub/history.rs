//! Recent events, shared by every session of this replica: what resumes replay and what a
//! session that fell behind catches up from (its cost is a position, not a copy of the backlog).
//!
//! Entries are kept in routing order, numbered by a replica-local sequence, within
//! `HISTORY_MAX_EVENTS`, `HISTORY_MAX_BYTES` and `HISTORY_MAX_AGE_SECS` (the oldest go first).
//! For each partition the history knows from which offset it is complete (`covered_from`): a
//! cursor below that cannot be honoured (`history_exceeded`).
//!
//! The cursor of an entry (the frontier right after it was routed) is derived on demand: the
//! history keeps the frontier before its oldest entry and a checkpoint every [`CHECKPOINT_EVERY`]
//! entries, and advances from the nearest one.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use task_events::{Audience, Event};

use crate::hub::cursor::{Cursor, Frontier, PartitionId};

/// A full frontier is kept every this many entries.
pub const CHECKPOINT_EVERY: u64 = 64;

/// The bounds of the history.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_events: usize,
    pub max_bytes: usize,
    pub max_age: Duration,
}

/// One routed event.
pub struct Entry {
    /// Replica-local routing order.
    pub seq: u64,
    /// Where it is in the log, when it came from Kafka (or Dapr with the record's coordinates).
    pub pos: Option<(PartitionId, i64)>,
    /// This replica's count of events without a log position, up to and including this one.
    pub local_upto: u64,
    pub event: Event,
    pub id: Box<str>,
    pub timestamp: Box<str>,
    /// When it was routed (for the age bound).
    pub at: Instant,
    /// Its cursor, once computed.
    cursor: OnceLock<Arc<str>>,
    /// A state event replaced by a newer value of its key (or removed): a session that has not
    /// written it yet skips it.
    superseded: std::sync::atomic::AtomicBool,
}

impl Entry {
    pub fn new(
        seq: u64,
        pos: Option<(PartitionId, i64)>,
        local_upto: u64,
        event: Event,
        id: String,
        timestamp: String,
    ) -> Self {
        Entry {
            seq,
            pos,
            local_upto,
            event,
            id: id.into(),
            timestamp: timestamp.into(),
            at: Instant::now(),
            cursor: OnceLock::new(),
            superseded: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// A newer value of its state key was routed (or the key was removed).
    pub fn supersede(&self) {
        self.superseded.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether a newer value of its state key exists: writing this one is pointless.
    pub fn superseded(&self) -> bool {
        self.superseded.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Its state key, for a state event.
    pub fn state_key(&self) -> Option<&str> {
        match &self.event {
            task_events::Event::Generic(g) => g.key.as_deref(),
            task_events::Event::Task(_) => None,
        }
    }

    /// The event's type (what session filters look at).
    pub fn event_type(&self) -> &str {
        self.event.event_type()
    }

    /// Who receives it: a task event's user, or a generic event's audience.
    pub fn audience(&self) -> std::borrow::Cow<'_, Audience> {
        match &self.event {
            Event::Task(task) => std::borrow::Cow::Owned(Audience {
                user: Some(task.user_id.clone()),
                ..Audience::default()
            }),
            Event::Generic(generic) => std::borrow::Cow::Borrowed(&generic.to),
        }
    }

    /// The session that published it (a client publication), which does not get it back.
    pub fn sender_session(&self) -> Option<u128> {
        match &self.event {
            Event::Generic(generic) => generic
                .from
                .as_ref()
                .and_then(|f| f.session.as_deref())
                .map(crate::hub::registry::session_id),
            Event::Task(_) => None,
        }
    }

    /// Sets the cursor (when routing, where the frontier is at hand).
    pub fn set_cursor(&self, cursor: impl FnOnce() -> String) -> Arc<str> {
        self.cursor.get_or_init(|| cursor().into()).clone()
    }

    pub fn cursor(&self) -> Option<Arc<str>> {
        self.cursor.get().cloned()
    }

    /// Approximate memory, for the byte bound.
    fn bytes(&self) -> usize {
        let payload = match &self.event {
            Event::Task(t) => t.task.get().len() + t.user_id.len() + t.event_type.len(),
            Event::Generic(g) => {
                let p = match &g.payload {
                    task_events::Payload::Data(d) | task_events::Payload::Message(d) => d.get().len(),
                };
                p + g.event_type.len()
                    + g.to.all_users().map(str::len).sum::<usize>()
                    + g.to.all_rooms().map(str::len).sum::<usize>()
            }
        };
        256 + payload + self.id.len() + self.timestamp.len()
    }
}

/// Why a cursor cannot be honoured here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unrecoverable {
    /// Events after the cursor are no longer all in the history.
    HistoryExceeded,
    /// The cursor names partitions this replica does not read, or positions far ahead of it.
    UnknownCursor,
}

impl Unrecoverable {
    pub fn reason(self) -> &'static str {
        match self {
            Unrecoverable::HistoryExceeded => "history_exceeded",
            Unrecoverable::UnknownCursor => "unknown_cursor",
        }
    }
}

/// How far past this replica's frontier a cursor may point (a replica a little behind the one
/// that issued it catches up; one far ahead is not a cursor of this cluster's log).
const MAX_AHEAD: i64 = 100_000;

#[derive(Default)]
struct Inner {
    entries: VecDeque<Arc<Entry>>,
    /// Seq of `entries[0]` (the next seq when empty).
    first_seq: u64,
    bytes: usize,
    /// Per partition, (offset, seq) of its entries, oldest first.
    by_partition: HashMap<PartitionId, VecDeque<(i64, u64)>>,
    /// (local seq, seq) of entries without a log position, oldest first.
    locals: VecDeque<(u64, u64)>,
    /// Per partition, the offset from which the history is complete.
    covered_from: HashMap<PartitionId, i64>,
    /// The local seq from which positionless entries are complete.
    locals_from: u64,
    /// The frontier before the oldest entry.
    base: Frontier,
    /// (seq, frontier right after that entry), every CHECKPOINT_EVERY entries.
    checkpoints: VecDeque<(u64, Arc<Frontier>)>,
    /// Whether any entry was evicted (the history no longer reaches back to the start).
    evicted_any: bool,
    /// Unix ms from which every event is held (or was, before evictions): when this replica
    /// started, or how far back it read the log at start.
    complete_since_ms: u64,
}

pub struct History {
    inner: RwLock<Inner>,
    limits: Limits,
}

impl History {
    pub fn new(limits: Limits) -> Self {
        let started_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        History {
            inner: RwLock::new(Inner {
                complete_since_ms: started_ms,
                ..Inner::default()
            }),
            limits,
        }
    }

    /// The log was read back from Unix ms `since` at start: events from then on are held.
    pub fn complete_since(&self, since_ms: u64) {
        let mut inner = self.inner.write();
        inner.complete_since_ms = inner.complete_since_ms.min(since_ms);
    }

    pub fn enabled(&self) -> bool {
        self.limits.max_events > 0
    }

    /// The history of `partition` is complete from `offset` (where this replica started reading
    /// it). Called once per partition, before its first entry.
    pub fn start_partition(&self, partition: PartitionId, offset: i64) {
        let mut inner = self.inner.write();
        if inner.base.admits(partition) {
            inner.covered_from.entry(partition).or_insert(offset);
            inner.base.start(partition, offset);
        }
    }

    /// Appends an entry (its seq must follow the last one); `checkpoint` is the frontier right
    /// after it, given every CHECKPOINT_EVERY entries. Evicts what the bounds no longer hold.
    pub fn push(&self, entry: Arc<Entry>, checkpoint: Option<Frontier>) {
        let mut inner = self.inner.write();
        if inner.entries.is_empty() {
            inner.first_seq = entry.seq;
        }
        inner.bytes += entry.bytes();
        match entry.pos {
            Some((p, offset)) => inner
                .by_partition
                .entry(p)
                .or_default()
                .push_back((offset, entry.seq)),
            None => inner.locals.push_back((entry.local_upto, entry.seq)),
        }
        if let Some(frontier) = checkpoint {
            inner.checkpoints.push_back((entry.seq, Arc::new(frontier)));
        }
        let now = entry.at;
        inner.entries.push_back(entry);
        while let Some(front) = inner.entries.front() {
            let over = inner.entries.len() > self.limits.max_events
                || inner.bytes > self.limits.max_bytes
                || now.duration_since(front.at) > self.limits.max_age;
            if !over {
                break;
            }
            let old = inner.entries.pop_front().expect("front exists");
            inner.evicted_any = true;
            inner.first_seq = old.seq + 1;
            inner.bytes = inner.bytes.saturating_sub(old.bytes());
            match old.pos {
                Some((p, offset)) => {
                    if let Some(list) = inner.by_partition.get_mut(&p) {
                        list.pop_front();
                    }
                    inner.covered_from.insert(p, offset.saturating_add(1));
                    inner.base.advance(p, offset);
                }
                None => {
                    inner.locals.pop_front();
                    inner.locals_from = old.local_upto + 1;
                }
            }
            while inner.checkpoints.front().is_some_and(|(seq, _)| *seq <= old.seq) {
                inner.checkpoints.pop_front();
            }
        }
    }

    /// The seq the next entry will get (the head).
    pub fn next_seq(&self) -> u64 {
        let inner = self.inner.read();
        inner.first_seq + inner.entries.len() as u64
    }

    /// The oldest seq still held.
    pub fn oldest_seq(&self) -> u64 {
        self.inner.read().first_seq
    }

    /// Up to `max` entries from `seq` on (fewer at the head). An empty answer with `seq` below
    /// [`History::oldest_seq`] means those were evicted.
    pub fn range(&self, seq: u64, max: usize) -> Vec<Arc<Entry>> {
        let inner = self.inner.read();
        let start = seq.saturating_sub(inner.first_seq) as usize;
        if seq < inner.first_seq {
            return Vec::new();
        }
        inner
            .entries
            .range(start.min(inner.entries.len())..)
            .take(max)
            .cloned()
            .collect()
    }

    /// Runs `f` over up to `max` entries from `seq` on, under the read lock and without copying
    /// them; `None` when `seq` was evicted. Whatever `f` does must not take this history's lock.
    pub fn visit<R>(
        &self,
        seq: u64,
        max: usize,
        f: impl FnOnce(&mut dyn Iterator<Item = &Arc<Entry>>) -> R,
    ) -> Option<R> {
        let inner = self.inner.read();
        if seq < inner.first_seq {
            return None;
        }
        let start = ((seq - inner.first_seq) as usize).min(inner.entries.len());
        Some(f(&mut inner.entries.range(start..).take(max)))
    }

    /// The cursor of an entry: the frontier right after it was routed, and the local count.
    pub fn cursor_of(&self, entry: &Entry, instance: u64) -> Arc<str> {
        if let Some(cursor) = entry.cursor() {
            return cursor;
        }
        let inner = self.inner.read();
        let (mut frontier, from) = match inner.checkpoints.iter().rev().find(|(seq, _)| *seq <= entry.seq) {
            Some((seq, f)) => ((**f).clone(), seq + 1),
            None => (inner.base.clone(), inner.first_seq),
        };
        let start = from.saturating_sub(inner.first_seq) as usize;
        let end = (entry.seq + 1).saturating_sub(inner.first_seq) as usize;
        for e in inner
            .entries
            .range(start.min(inner.entries.len())..end.min(inner.entries.len()))
        {
            if let Some((p, offset)) = e.pos {
                frontier.advance(p, offset);
            }
        }
        drop(inner);
        entry.set_cursor(|| {
            Cursor {
                frontier,
                local: Some((instance, entry.local_upto)),
            }
            .encode()
        })
    }

    /// Where a session resuming from `cursor` starts: the seq of the first entry it has not
    /// seen, given this replica's `frontier` (what it has routed) and `instance`.
    pub fn resume_from(
        &self,
        cursor: &Cursor,
        frontier: &Frontier,
        instance: u64,
    ) -> Result<u64, Unrecoverable> {
        let inner = self.inner.read();
        let head = inner.first_seq + inner.entries.len() as u64;
        for p in cursor.frontier.0.keys() {
            if !frontier.0.contains_key(p) {
                return Err(Unrecoverable::UnknownCursor);
            }
        }
        let mut start = head;
        for (p, next) in &frontier.0 {
            let covered = inner.covered_from.get(p).copied().unwrap_or(*next);
            let want = match cursor.frontier.get(*p) {
                Some(offset) => offset,
                // A partition the cursor does not name: fine only if nothing happened on it.
                None if covered == *next => continue,
                None => return Err(Unrecoverable::UnknownCursor),
            };
            // Saturating: offsets may come from outside (a Dapr delivery's, a crafted cursor's).
            if want > next.saturating_add(MAX_AHEAD) {
                return Err(Unrecoverable::UnknownCursor);
            }
            if want >= *next {
                continue;
            }
            if want < covered {
                return Err(Unrecoverable::HistoryExceeded);
            }
            if let Some(list) = inner.by_partition.get(p) {
                let i = list.partition_point(|(offset, _)| *offset < want);
                if let Some((_, seq)) = list.get(i) {
                    start = start.min(*seq);
                }
            }
        }
        if let Some((resumed_instance, upto)) = cursor.local {
            if resumed_instance == instance {
                if upto.saturating_add(1) < inner.locals_from {
                    return Err(Unrecoverable::HistoryExceeded);
                }
                let i = inner.locals.partition_point(|(local, _)| *local <= upto);
                if let Some((_, seq)) = inner.locals.get(i) {
                    start = start.min(*seq);
                }
            }
        }
        Ok(start)
    }

    /// Where a client that saw every event up to Unix time `millis` (by event time) stands:
    /// the cursor just before the first held entry that happened after it. `None` when every
    /// held entry happened by then (the client is up to date).
    pub fn cursor_before_time(&self, millis: u64, instance: u64) -> Option<Arc<str>> {
        let at = std::time::UNIX_EPOCH + Duration::from_millis(millis);
        let (first_after, previous) = {
            let inner = self.inner.read();
            let index = inner
                .entries
                .iter()
                .position(|e| humantime::parse_rfc3339_weak(&e.timestamp).map_or(true, |t| t > at))?;
            let previous = index.checked_sub(1).map(|i| inner.entries[i].clone());
            let before_start = millis < inner.complete_since_ms;
            (index == 0 && (inner.evicted_any || before_start), previous)
        };
        Some(match previous {
            Some(entry) => self.cursor_of(&entry, instance),
            None if first_after => {
                // Before what the history holds, and something older was evicted: a position
                // that cannot be honoured, so the client is told to reload.
                let inner = self.inner.read();
                let mut frontier = inner.base.clone();
                for offset in frontier.0.values_mut() {
                    *offset = 0;
                }
                Cursor {
                    frontier,
                    local: Some((instance, 0)),
                }
                .encode()
                .into()
            }
            None => {
                let inner = self.inner.read();
                Cursor {
                    frontier: inner.base.clone(),
                    local: Some((instance, inner.locals_from.saturating_sub(1))),
                }
                .encode()
                .into()
            }
        })
    }

    /// Entries held and their approximate bytes.
    pub fn size(&self) -> (usize, usize) {
        let inner = self.inner.read();
        (inner.entries.len(), inner.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(user: &str) -> Event {
        Event::from_json(format!(r#"{{"event_type":"t","user_id":"{user}","task":{{}}}}"#).as_bytes())
            .unwrap()
    }

    /// Routes `n` events on partitions p0/p1 alternately, as the router would.
    fn fill(h: &History, frontier: &mut Frontier, n: u64) {
        let p0 = PartitionId::new("t", 0);
        let p1 = PartitionId::new("t", 1);
        for seq in 0..n {
            let p = if seq % 2 == 0 { p0 } else { p1 };
            let offset = (seq / 2) as i64;
            frontier.advance(p, offset);
            let entry = Arc::new(Entry::new(
                seq,
                Some((p, offset)),
                0,
                event("u"),
                format!("e{seq}"),
                "t".into(),
            ));
            let ck = seq.is_multiple_of(CHECKPOINT_EVERY).then(|| frontier.clone());
            h.push(entry, ck);
        }
    }

    fn history(max_events: usize) -> (History, Frontier) {
        let h = History::new(Limits {
            max_events,
            max_bytes: usize::MAX,
            max_age: Duration::from_secs(3600),
        });
        let mut f = Frontier::default();
        for p in 0..2 {
            h.start_partition(PartitionId::new("t", p), 0);
            f.start(PartitionId::new("t", p), 0);
        }
        (h, f)
    }

    /// Found by `dapr::headers_naming_endless_partitions_are_bounded`: a resume on a partition
    /// whose offsets reach `i64::MAX` (a Dapr delivery names any) overflowed, and the session's
    /// upgrade panicked; a cursor's local sequence at `u64::MAX` did the same.
    #[test]
    fn resumes_at_the_largest_positions_do_not_overflow() {
        let h = History::new(Limits {
            max_events: 10,
            max_bytes: usize::MAX,
            max_age: Duration::from_secs(3600),
        });
        let p = PartitionId::new("t", 0);
        let mut f = Frontier::default();
        h.start_partition(p, i64::MAX - 1);
        f.start(p, i64::MAX - 1);
        f.advance(p, i64::MAX - 1);
        let mut c = Cursor::default();
        c.frontier.0.insert(p, i64::MAX);
        assert_eq!(h.resume_from(&c, &f, 1), Ok(0));
        c.local = Some((1, u64::MAX));
        assert_eq!(h.resume_from(&c, &f, 1), Ok(0));
    }

    #[test]
    fn resume_points_and_exceeded_history() {
        let (h, mut f) = history(10);
        fill(&h, &mut f, 20);
        assert_eq!((h.oldest_seq(), h.next_seq()), (10, 20));
        let p0 = PartitionId::new("t", 0);
        let p1 = PartitionId::new("t", 1);
        let at = |o0: i64, o1: i64| {
            let mut c = Cursor::default();
            c.frontier.0.insert(p0, o0);
            c.frontier.0.insert(p1, o1);
            c
        };
        // Up to date: start at the head.
        assert_eq!(h.resume_from(&at(10, 10), &f, 1), Ok(20));
        // Missed p0 offsets 8, 9 (seqs 16, 18) and p1 offset 9 (seq 19).
        assert_eq!(h.resume_from(&at(8, 9), &f, 1), Ok(16));
        // Before what is held: offsets below 5 were evicted.
        assert_eq!(
            h.resume_from(&at(2, 9), &f, 1),
            Err(Unrecoverable::HistoryExceeded)
        );
        // Naming a partition this replica does not read, or far ahead.
        let mut unknown = at(10, 10);
        unknown.frontier.0.insert(PartitionId::new("other", 0), 1);
        assert_eq!(h.resume_from(&unknown, &f, 1), Err(Unrecoverable::UnknownCursor));
        assert_eq!(
            h.resume_from(&at(10, 10_000_000), &f, 1),
            Err(Unrecoverable::UnknownCursor)
        );
    }

    #[test]
    fn entry_cursors_are_the_frontier_right_after_them() {
        let (h, mut f) = history(1000);
        fill(&h, &mut f, 200);
        for entry in h.range(0, 1000) {
            let cursor = Cursor::decode(&h.cursor_of(&entry, 9)).unwrap();
            let (p, offset) = entry.pos.unwrap();
            assert!(cursor.frontier.covers(p, offset));
            assert!(!cursor.frontier.covers(p, offset + 1));
            assert_eq!(cursor.local, Some((9, 0)));
            // The other partition: covered up to the entries routed before this one.
            let other = if p.partition == 0 {
                PartitionId::new("t", 1)
            } else {
                PartitionId::new("t", 0)
            };
            let expected = (entry.seq as i64 + 1) / 2;
            assert_eq!(cursor.frontier.get(other), Some(expected), "seq {}", entry.seq);
        }
    }

    #[test]
    fn bounded_by_bytes_and_age() {
        let h = History::new(Limits {
            max_events: 1000,
            max_bytes: 3000,
            max_age: Duration::from_secs(3600),
        });
        let mut f = Frontier::default();
        h.start_partition(PartitionId::new("t", 0), 0);
        h.start_partition(PartitionId::new("t", 1), 0);
        fill(&h, &mut f, 100);
        let (n, bytes) = h.size();
        assert!(bytes <= 3000 && n < 100, "{n} entries, {bytes} bytes");
        let old = History::new(Limits {
            max_events: 1000,
            max_bytes: usize::MAX,
            max_age: Duration::ZERO,
        });
        fill(&old, &mut Frontier::default(), 3);
        assert!(old.size().0 <= 1, "older than the age bound: evicted");
    }
}
