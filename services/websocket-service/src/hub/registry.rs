//! Who is connected: user id -> that user's open sessions, each with its bounded mailbox.
//!
//! The fan-out ([`Registry::deliver`]) never waits for a client: it pushes into each session's
//! mailbox and moves on. A full mailbox is a decision, not a wait: the session is kicked with
//! 4008 (slow consumer) and its messages are dropped, so one stalled client costs at most
//! `SESSION_QUEUE_CAPACITY` messages of memory and delays nobody else.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;

use bytestring::ByteString;
use parking_lot::{Mutex, RwLock};
use tokio::sync::Notify;

use crate::protocol::close;

/// A session's outbound queue plus the way to tell it to close.
///
/// One wake-up for both "a message was queued" and "close now". It is `notify_one`, which stores
/// a permit when the session is not waiting, and the session only ever waits for it in one
/// place, after which it looks at both the queue and the kick flag again: so no wake-up is lost,
/// and none can be consumed by a wait that does not re-check the queue.
#[derive(Debug)]
pub struct Mailbox {
    /// Messages waiting to be written; never longer than `capacity`.
    queue: Mutex<VecDeque<ByteString>>,
    /// Something changed: a message was queued, or the session was kicked.
    wake: Notify,
    /// Close code the session must close with, 0 while it may live.
    kicked: AtomicU16,
    capacity: usize,
}

impl Mailbox {
    fn new(capacity: usize) -> Self {
        Mailbox {
            queue: Mutex::new(VecDeque::new()),
            wake: Notify::new(),
            kicked: AtomicU16::new(0),
            capacity,
        }
    }

    /// Queues a message. When the queue is full the session is kicked, and the error holds how
    /// many messages were dropped (the queued ones and this one).
    fn push(&self, msg: ByteString) -> Result<(), usize> {
        let mut queue = self.queue.lock();
        if queue.len() >= self.capacity {
            let dropped = queue.len() + 1;
            queue.clear();
            drop(queue);
            self.kick(close::SLOW_CONSUMER);
            return Err(dropped);
        }
        queue.push_back(msg);
        drop(queue);
        self.wake.notify_one();
        Ok(())
    }

    /// Tells the session to close with `code`. The first kick wins.
    pub fn kick(&self, code: u16) {
        let _ = self
            .kicked
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire);
        self.wake.notify_one();
    }

    /// The close code if the session was kicked.
    pub fn kicked(&self) -> Option<u16> {
        match self.kicked.load(Ordering::Acquire) {
            0 => None,
            code => Some(code),
        }
    }

    /// The oldest queued message, left in the queue: it is removed with [`Mailbox::pop`] once
    /// written, so a write that is abandoned half-way loses nothing.
    pub fn front(&self) -> Option<ByteString> {
        self.queue.lock().front().cloned()
    }

    /// Removes the oldest message. Gives memory back once a burst has drained.
    pub fn pop(&self) -> Option<ByteString> {
        let mut queue = self.queue.lock();
        let msg = queue.pop_front();
        if queue.is_empty() && queue.capacity() > 16 {
            queue.shrink_to(0);
        }
        msg
    }

    pub fn is_empty(&self) -> bool {
        self.queue.lock().is_empty()
    }

    /// Waits until a message is queued or the session kicked (or either happened since the
    /// last wait). The caller must look at the queue and [`Mailbox::kicked`] afterwards.
    pub async fn changed(&self) {
        self.wake.notified().await
    }
}

/// A connection limit that refused a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LimitHit {
    #[error("server at connection capacity")]
    Total,
    #[error("too many connections for this user")]
    PerUser,
    #[error("server shutting down")]
    Draining,
}

impl LimitHit {
    pub fn close_code(self) -> u16 {
        match self {
            LimitHit::Total => close::TRY_AGAIN_LATER,
            LimitHit::PerUser => close::TOO_MANY_CONNECTIONS,
            LimitHit::Draining => close::GOING_AWAY,
        }
    }
}

/// What one delivery did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// Sessions the message was queued to.
    pub queued: usize,
    /// Sessions kicked because their queue was full.
    pub overflowed: usize,
    /// Messages those sessions lost (their queues and this one).
    pub dropped: usize,
}

/// A session's place in the registry. Dropping it unregisters the session, however the session
/// task ends (a panic included), so a slot can never leak.
pub struct Slot {
    registry: Arc<Registry>,
    user: Arc<str>,
    mailbox: Arc<Mailbox>,
}

impl Slot {
    pub fn mailbox(&self) -> &Arc<Mailbox> {
        &self.mailbox
    }

    pub fn user(&self) -> &Arc<str> {
        &self.user
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.registry.unregister(&self.user, &self.mailbox);
    }
}

/// All sessions of this instance, by user.
pub struct Registry {
    users: RwLock<HashMap<Arc<str>, Vec<Arc<Mailbox>>>>,
    open: AtomicUsize,
    /// Set when the drain starts: no session is admitted after it, so none can miss its 1001.
    closed: AtomicBool,
    max_total: usize,
    max_per_user: usize,
    queue_capacity: usize,
}

impl Registry {
    pub fn new(max_total: usize, max_per_user: usize, queue_capacity: usize) -> Self {
        Registry {
            users: RwLock::new(HashMap::new()),
            open: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            max_total,
            max_per_user,
            queue_capacity,
        }
    }

    /// Admits a session for `user` and returns its slot, or says which limit refused it.
    pub fn admit(self: &Arc<Self>, user: &Arc<str>) -> Result<Slot, LimitHit> {
        let mailbox = self.register(user)?;
        Ok(Slot {
            registry: self.clone(),
            user: user.clone(),
            mailbox,
        })
    }

    /// Admits a session for `user`, or says which limit refused it.
    pub fn register(&self, user: &Arc<str>) -> Result<Arc<Mailbox>, LimitHit> {
        let mut users = self.users.write();
        // Checked under the lock that `close_admission` takes: a session is either in the
        // snapshot the drain kicks, or refused here.
        if self.closed.load(Ordering::Acquire) {
            return Err(LimitHit::Draining);
        }
        if self.open.load(Ordering::Relaxed) >= self.max_total {
            return Err(LimitHit::Total);
        }
        let sessions = users.entry(user.clone()).or_default();
        if sessions.len() >= self.max_per_user {
            if sessions.is_empty() {
                users.remove(user);
            }
            return Err(LimitHit::PerUser);
        }
        let mailbox = Arc::new(Mailbox::new(self.queue_capacity));
        sessions.push(mailbox.clone());
        self.open.fetch_add(1, Ordering::Relaxed);
        Ok(mailbox)
    }

    /// Refuses every later [`Registry::register`] (the drain has started).
    pub fn close_admission(&self) {
        let _users = self.users.write();
        self.closed.store(true, Ordering::Release);
    }

    /// Removes a session; the user's entry goes with its last session.
    pub fn unregister(&self, user: &str, mailbox: &Arc<Mailbox>) {
        let mut users = self.users.write();
        if let Some(sessions) = users.get_mut(user) {
            if let Some(i) = sessions.iter().position(|m| Arc::ptr_eq(m, mailbox)) {
                sessions.swap_remove(i);
                self.open.fetch_sub(1, Ordering::Relaxed);
            }
            if sessions.is_empty() {
                users.remove(user);
            }
        }
    }

    /// Queues a message to every session of `user`, without waiting for any of them. The
    /// message is built (once, shared by all sessions) only if the user has a session here.
    pub fn deliver(&self, user: &str, make: impl FnOnce() -> ByteString) -> Delivery {
        let users = self.users.read();
        let mut outcome = Delivery::default();
        let Some(sessions) = users.get(user) else {
            return outcome;
        };
        let msg = make();
        for mailbox in sessions {
            if mailbox.kicked().is_some() {
                continue;
            }
            match mailbox.push(msg.clone()) {
                Ok(()) => outcome.queued += 1,
                Err(dropped) => {
                    outcome.overflowed += 1;
                    outcome.dropped += dropped;
                }
            }
        }
        outcome
    }

    /// Every open session's mailbox, to close them in steps (drain).
    pub fn sessions(&self) -> Vec<Arc<Mailbox>> {
        let users = self.users.read();
        users.values().flatten().cloned().collect()
    }

    /// Open sessions.
    pub fn connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Users with at least one open session.
    pub fn users(&self) -> usize {
        self.users.read().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_user_and_total() {
        let r = Registry::new(3, 2, 4);
        let a: Arc<str> = "a".into();
        let b: Arc<str> = "b".into();
        let a1 = r.register(&a).unwrap();
        let _a2 = r.register(&a).unwrap();
        assert_eq!(r.register(&a).unwrap_err(), LimitHit::PerUser);
        let _b1 = r.register(&b).unwrap();
        assert_eq!(r.register(&b).unwrap_err(), LimitHit::Total);
        r.unregister("a", &a1);
        assert_eq!(r.connections(), 2);
        assert!(r.register(&b).is_ok());
    }

    #[test]
    fn no_admission_after_the_drain_started() {
        let r = Arc::new(Registry::new(10, 10, 4));
        let u: Arc<str> = "u".into();
        let before = r.admit(&u).unwrap();
        r.close_admission();
        assert_eq!(r.admit(&u).err(), Some(LimitHit::Draining));
        assert_eq!(LimitHit::Draining.close_code(), close::GOING_AWAY);
        assert_eq!(
            r.sessions().len(),
            1,
            "the earlier session is in the drain's snapshot"
        );
        drop(before);
        assert_eq!(r.connections(), 0);
    }

    #[tokio::test]
    async fn a_panicking_session_task_gives_its_slot_back() {
        let r = Arc::new(Registry::new(10, 1, 4));
        let u: Arc<str> = "u".into();
        let slot = r.admit(&u).unwrap();
        let task = tokio::spawn(async move {
            let _slot = slot;
            panic!("session bug");
        });
        assert!(task.await.unwrap_err().is_panic());
        assert_eq!(r.connections(), 0);
        assert!(r.admit(&u).is_ok(), "the per-user limit is free again");
    }

    #[tokio::test]
    async fn a_message_queued_while_busy_is_never_lost() {
        let r = Registry::new(10, 10, 8);
        let u: Arc<str> = "u".into();
        let mb = r.register(&u).unwrap();
        // Queued while the session is not waiting: the permit is kept for its next wait.
        r.deliver("u", || ByteString::from_static("m"));
        tokio::time::timeout(std::time::Duration::from_secs(1), mb.changed())
            .await
            .expect("a stored wake-up");
        assert_eq!(mb.pop().as_deref(), Some("m"));
        // A kick wakes the session too.
        mb.kick(close::GOING_AWAY);
        tokio::time::timeout(std::time::Duration::from_secs(1), mb.changed())
            .await
            .expect("a kick wakes");
        assert_eq!(mb.kicked(), Some(close::GOING_AWAY));
    }

    fn delivery(queued: usize, overflowed: usize) -> Delivery {
        // A queue of capacity 2 that overflows loses its 2 messages and the new one.
        Delivery {
            queued,
            overflowed,
            dropped: overflowed * 3,
        }
    }

    #[test]
    fn a_full_mailbox_kicks_only_its_session() {
        let r = Registry::new(10, 10, 2);
        let u: Arc<str> = "u".into();
        let slow = r.register(&u).unwrap();
        let fast = r.register(&u).unwrap();
        let msg = || ByteString::from_static("m");
        assert_eq!(r.deliver("u", msg), delivery(2, 0));
        assert!(fast.pop().is_some());
        assert_eq!(r.deliver("u", msg), delivery(2, 0));
        assert!(fast.pop().is_some());
        // slow holds 2 (its capacity): the third overflows it, fast still gets it.
        assert_eq!(r.deliver("u", msg), delivery(1, 1));
        assert_eq!(slow.kicked(), Some(close::SLOW_CONSUMER));
        assert!(slow.pop().is_none(), "an overflowed queue is dropped, not kept");
        assert_eq!(fast.kicked(), None);
        assert_eq!(r.deliver("u", msg), delivery(1, 0));
    }

    #[test]
    fn unknown_user_costs_a_lookup() {
        let r = Registry::new(10, 10, 2);
        let built = std::cell::Cell::new(false);
        let make = || {
            built.set(true);
            ByteString::from_static("m")
        };
        assert_eq!(r.deliver("nobody", make), Delivery::default());
        assert!(!built.get(), "no message is built for a user with no session");
    }
}
