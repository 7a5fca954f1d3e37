//! What a session writes next, whatever its transport: its queue, then, when it fell behind or
//! resumes, the shared history at its own pace, and back to live.
//!
//! A session that reads slower than a burst does not make its queue grow: when the queue is
//! full it is skipped by the fan-out and catches up from the history (its cost is a position,
//! not a copy of the backlog). It is cut (4008) only when it falls out of the history window,
//! or when one write waits `WRITE_TIMEOUT_SECS` (no progress). A resuming session starts the
//! same way, from the first entry its cursor has not seen; entries its cursor already covers
//! (a replica behind the one that issued it) are skipped, so the seam has no duplicate.

use std::collections::VecDeque;
use std::sync::Arc;

use bytestring::ByteString;

use crate::hub::cursor::Cursor;
use crate::hub::history::Entry;
use crate::hub::registry::{Mailbox, Queued, Registry, SessionId};
use crate::hub::router::{message, Router};

/// Most history entries looked at per catch-up step.
const CATCH_UP_BATCH: usize = 64;

/// The next thing to write.
pub enum Next {
    Item(Queued),
    /// Nothing now.
    Empty,
    /// The session fell out of the history window: it must be cut and resume.
    Evicted,
}

pub struct Feed {
    mailbox: Arc<Mailbox>,
    id: SessionId,
    /// A message taken but not written (the transport had no room): first in line.
    head: Option<Queued>,
    /// Catch-up messages taken from the history, not yet written.
    outbox: VecDeque<Queued>,
    /// The cursor of the last message written (or the starting one).
    last_cursor: Arc<str>,
    /// A resume's cursor: entries it covers are not written again.
    floor: Option<Box<Cursor>>,
    /// State values to write first (a snapshot), and the seqs they hold, so the same value
    /// queued meanwhile is not written twice. Allocated only while a snapshot is pending.
    snapshot: Option<Box<Snapshot>>,
    /// The item last handed out by `next` came from the snapshot (it moves no cursor).
    from_snapshot: bool,
}

#[derive(Default)]
struct Snapshot {
    pending: VecDeque<Queued>,
    seqs: std::collections::HashSet<u64>,
}

impl Feed {
    pub fn new(mailbox: Arc<Mailbox>, id: SessionId, start: Arc<str>, floor: Option<Cursor>) -> Self {
        Feed {
            mailbox,
            id,
            head: None,
            outbox: VecDeque::new(),
            last_cursor: start,
            floor: floor.map(Box::new),
            snapshot: None,
            from_snapshot: false,
        }
    }

    /// Queues a snapshot: these state values are written before anything else, flagged
    /// `snapshot: true`, without moving the session's cursor.
    pub fn push_snapshot(&mut self, entries: Vec<(Arc<Entry>, Option<Box<str>>)>) {
        if entries.is_empty() {
            return;
        }
        let snapshot = self.snapshot.get_or_insert_with(Default::default);
        for (entry, room) in entries {
            if snapshot.seqs.insert(entry.seq) {
                let text = crate::hub::router::snapshot_message(&entry, room.as_deref());
                snapshot.pending.push_back((text, entry));
            }
        }
    }

    /// Whether the item `next` last handed out belongs to a snapshot (no cursor of its own).
    pub fn last_is_snapshot(&self) -> bool {
        self.from_snapshot
    }

    /// Tells the mailbox the oldest message this session still holds (for the replica's beat).
    fn settle(&self) {
        // A snapshot's value is not a position: it does not hold the beat back.
        let head = self.head.as_ref().filter(|_| !self.from_snapshot);
        let taken = head.into_iter().chain(self.outbox.front()).map(|q| q.1.seq).min();
        self.mailbox.settle(taken);
    }

    /// Whether a message is waiting for room in the transport.
    pub fn blocked(&self) -> bool {
        self.head.is_some()
    }

    /// Takes the head back out (to write it while waiting for room).
    pub fn take_head(&mut self) -> Option<Queued> {
        self.head.take()
    }

    /// A message that could not be written yet goes back to the front.
    pub fn put_back(&mut self, item: Queued) {
        self.head = Some(item);
    }

    /// Records that `item` was written.
    pub fn written(&mut self, item: &Queued, router: &Router) {
        self.settle();
        if self.from_snapshot {
            return;
        }
        self.last_cursor = router.history().cursor_of(&item.1, router.instance());
    }

    /// The session's resume position now: when it has written everything offered to it, the
    /// current frontier (or, once kicked, where the replica stood at the kick: it is offered
    /// nothing after, so the frontier would claim events it never got); else the cursor of the
    /// last message written.
    pub fn cursor(&self, router: &Router) -> Arc<str> {
        let idle = || {
            self.head.is_none()
                && self.outbox.is_empty()
                && self.mailbox.is_empty()
                && self.mailbox.lag().is_none()
        };
        if self.mailbox.kicked().is_some() {
            return match self.mailbox.kicked_at() {
                Some(at) if idle() => at,
                _ => self.last_cursor.clone(),
            };
        }
        router.cursor_if(idle).unwrap_or_else(|| self.last_cursor.clone())
    }

    fn covered(&self, entry: &Entry, router: &Router) -> bool {
        self.floor
            .as_deref()
            .is_some_and(|floor| covered(floor, entry, router.instance()))
    }

    /// The next message to write.
    pub fn next(&mut self, router: &Router, registry: &Registry) -> Next {
        if let Some(item) = self.head.take() {
            return Next::Item(item);
        }
        if let Some(snapshot) = self.snapshot.as_mut() {
            while let Some(item) = snapshot.pending.pop_front() {
                if item.1.superseded() {
                    // A newer value came: it is in the queue (the session was in its audience).
                    router.stats().state_conflated();
                    continue;
                }
                self.from_snapshot = true;
                router.stats().state_snapshot(1);
                return Next::Item(item);
            }
        }
        self.from_snapshot = false;
        loop {
            if let Some(item) = self.mailbox.pop().or_else(|| self.outbox.pop_front()) {
                if self.covered(&item.1, router) {
                    continue;
                }
                if item.1.superseded() {
                    // Conflation: a newer value of this state key is behind it.
                    router.stats().state_conflated();
                    continue;
                }
                if let Some(snapshot) = &self.snapshot {
                    // Queued while the snapshot was taken: the snapshot wrote it already.
                    if snapshot.seqs.contains(&item.1.seq) {
                        continue;
                    }
                }
                return Next::Item(item);
            }
            if self.snapshot.as_ref().is_some_and(|s| s.pending.is_empty()) {
                // Everything queued before the snapshot was taken has been looked at.
                self.snapshot = None;
            }
            let Some(seq) = self.mailbox.lag() else {
                self.settle();
                return Next::Empty;
            };
            let history = router.history();
            // The batch's entries for this session, picked under the history's read lock with
            // one registry lookup (no copy of the others).
            let mut picked: Vec<(Arc<Entry>, Option<Box<str>>)> = Vec::new();
            let mut next_seq = seq;
            let visited = history.visit(seq, CATCH_UP_BATCH, |entries| {
                let floor = self.floor.as_ref();
                let instance = router.instance();
                let mut entries = entries.inspect(|e| next_seq = e.seq + 1);
                registry.offer_each(self.id, &mut entries, |entry, room| {
                    // A superseded state value is not even built: a newer one is ahead.
                    if !floor.is_some_and(|floor| covered(floor, entry, instance)) && !entry.superseded() {
                        picked.push((entry.clone(), room.map(Box::from)));
                    }
                });
            });
            if visited.is_none() {
                return Next::Evicted;
            }
            if next_seq == seq {
                if router.go_live(&self.mailbox, seq) {
                    // Live: anything pushed from now on is in the queue.
                    continue;
                }
                // Something was routed meanwhile: it is in the history.
                continue;
            }
            if let Some((first, _)) = picked.first() {
                self.mailbox.pending_from(first.seq);
            }
            self.mailbox.set_lag(next_seq);
            for (entry, room) in picked {
                let text = catch_up_message(&entry, room.as_deref(), router);
                self.outbox.push_back((text, entry));
            }
        }
    }
}

/// The message of a history entry written during a catch-up (the same text live delivery
/// writes).
fn catch_up_message(entry: &Arc<Entry>, room: Option<&str>, router: &Router) -> ByteString {
    // Built per session: the history keeps the event, not its text (half the memory).
    let cursor = router.history().cursor_of(entry, router.instance());
    message(entry, &cursor, room)
}

/// How many of the history's entries from `seq` on are for session `id` (what a resume will
/// replay), skipping those `floor` covers.
pub fn count_replay(router: &Router, registry: &Registry, id: SessionId, seq: u64, floor: &Cursor) -> usize {
    let mut count = 0;
    let instance = router.instance();
    router.history().visit(seq, usize::MAX, |entries| {
        registry.offer_each(id, entries, |entry, _| {
            if !covered(floor, entry, instance) && !entry.superseded() {
                count += 1;
            }
        });
    });
    count
}

/// Whether a resume's cursor already covers `entry`.
fn covered(floor: &Cursor, entry: &Entry, instance: u64) -> bool {
    match entry.pos {
        Some((p, offset)) => floor.frontier.covers(p, offset),
        None => floor
            .local
            .is_some_and(|(i, upto)| i == instance && entry.local_upto <= upto),
    }
}

/// The latest state values in session `id`'s audience that `also` accepts (at most `max`), each
/// with the room it reaches the session through: what a snapshot writes.
pub fn snapshot_for(
    router: &Router,
    registry: &Registry,
    id: SessionId,
    max: usize,
    also: impl Fn(&Entry) -> bool,
) -> Vec<(Arc<Entry>, Option<Box<str>>)> {
    if max == 0 {
        return Vec::new();
    }
    router
        .state()
        .snapshot(max, |e| also(e) && registry.offer_one(id, e).is_some())
        .into_iter()
        .filter_map(|e| registry.offer_one(id, &e).map(|room| (e, room)))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::hub::dedup::Dedup;
    use crate::hub::history::{History, Limits};
    use crate::hub::registry::{Limits as SessionLimits, Profile, Slot};
    use crate::hub::state::StateStore;
    use crate::ingest::Origin;
    use crate::telemetry::Stats;

    fn router() -> (Router, Arc<Registry>) {
        let registry = Arc::new(Registry::new(SessionLimits {
            max_total: 10,
            max_per_user: 10,
            max_anonymous: 0,
            queue_capacity: 16,
            catch_up: true,
        }));
        let router = Router::new(
            registry.clone(),
            Arc::new(Stats::default()),
            Dedup::new(Duration::from_secs(60), 1000),
            History::new(Limits {
                max_events: 100,
                max_bytes: 1 << 20,
                max_age: Duration::from_secs(60),
            }),
            StateStore::new(Duration::from_secs(60), 100),
        );
        router.start_partition("t", 0, 0);
        (router, registry)
    }

    fn event_for(user: &str, n: i64) -> task_events::Event {
        let json = format!(r#"{{"event_type":"task.updated","user_id":"{user}","task":{{"n":{n}}}}}"#);
        task_events::Event::from_json(json.as_bytes()).unwrap()
    }

    fn at(offset: i64) -> Origin<'static> {
        Origin::Kafka {
            topic: "t",
            partition: 0,
            offset,
            timestamp_ms: None,
        }
    }

    /// A session of `u` that was offered one event and wrote it; its cursor then.
    fn wrote_one() -> (Router, Slot, Feed, Arc<str>) {
        let (router, registry) = router();
        let slot = registry.admit(Profile::user("u")).unwrap();
        let mut feed = Feed::new(slot.mailbox().clone(), slot.id(), router.current_cursor(), None);
        router.route(event_for("u", 1), at(0));
        let Next::Item(item) = feed.next(&router, &registry) else {
            panic!("the first event is offered");
        };
        feed.written(&item, &router);
        let after_first = feed.cursor(&router);
        (router, slot, feed, after_first)
    }

    /// Found under load by `seeds::a_drain_loses_nothing_for_clients_without_a_cursor`: a kicked
    /// session (the drain's 1001) is offered nothing more, so while it winds down its position
    /// is the last message it wrote, not the replica's frontier. Taken as the frontier, the
    /// next session of the user (a client without a cursor, taken over on another replica)
    /// skipped what was routed between the kick and the end: lost.
    #[test]
    fn a_kicked_session_stands_where_it_last_wrote() {
        let (router, slot, feed, after_first) = wrote_one();
        assert_eq!(after_first, router.current_cursor(), "idle: the frontier");

        // Events for others move the frontier on: an idle session stands there too, so that a
        // takeover does not replay from an old position (the history may no longer hold it).
        router.route(event_for("other", 1), at(1));
        let at_kick = router.current_cursor();
        assert_ne!(at_kick, after_first);
        router.kick(slot.mailbox(), 1001);
        router.route(event_for("u", 2), at(2));
        assert_eq!(
            feed.cursor(&router),
            at_kick,
            "where the replica stood at the kick: the event routed after it was never offered"
        );
    }

    /// Kicked with messages still queued: it stands where it last wrote, and the queued ones are
    /// replayed by whoever takes over.
    #[test]
    fn a_kicked_session_with_messages_queued_stands_where_it_last_wrote() {
        let (router, slot, feed, after_first) = wrote_one();
        router.route(event_for("u", 2), at(1));
        router.kick(slot.mailbox(), 1001);
        assert_eq!(
            feed.cursor(&router),
            after_first,
            "the second is queued, not written"
        );
    }
}
