//! Who is connected: user id -> that user's open sessions, each with its bounded mailbox.
//!
//! The fan-out ([`Registry::deliver`]) never waits for a client: it pushes into each session's
//! mailbox and moves on. A full mailbox is a decision, not a wait: the session is kicked with
//! 4008 (slow consumer) and its messages are dropped, so one stalled client costs at most
//! `SESSION_QUEUE_CAPACITY` messages of memory and delays nobody else.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytestring::ByteString;
use tokio::sync::Notify;

use crate::protocol::close;

/// A session's outbound queue plus the way to tell it to close.
#[derive(Debug)]
pub struct Mailbox {
    /// Messages waiting to be written; never longer than `capacity`.
    queue: Mutex<VecDeque<ByteString>>,
    /// Wakes the session task: a message arrived, or it was kicked.
    notify: Notify,
    /// Close code the session must close with, 0 while it may live.
    kicked: AtomicU16,
    capacity: usize,
}

impl Mailbox {
    fn new(capacity: usize) -> Self {
        Mailbox {
            queue: Mutex::new(VecDeque::new()),
            notify: Notify::new(),
            kicked: AtomicU16::new(0),
            capacity,
        }
    }

    /// Queues a message. When the queue is full the session is kicked, and the error holds how
    /// many messages were dropped (the queued ones and this one).
    fn push(&self, msg: ByteString) -> Result<(), usize> {
        let mut queue = self.queue.lock().expect("mailbox lock");
        if queue.len() >= self.capacity {
            let dropped = queue.len() + 1;
            queue.clear();
            drop(queue);
            self.kick(close::SLOW_CONSUMER);
            return Err(dropped);
        }
        queue.push_back(msg);
        drop(queue);
        self.notify.notify_one();
        Ok(())
    }

    /// Tells the session to close with `code`. The first kick wins.
    pub fn kick(&self, code: u16) {
        let _ = self
            .kicked
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire);
        self.notify.notify_one();
    }

    /// The close code if the session was kicked.
    pub fn kicked(&self) -> Option<u16> {
        match self.kicked.load(Ordering::Acquire) {
            0 => None,
            code => Some(code),
        }
    }

    /// The next queued message, if any. Gives memory back once a burst has drained.
    pub fn pop(&self) -> Option<ByteString> {
        let mut queue = self.queue.lock().expect("mailbox lock");
        let msg = queue.pop_front();
        if msg.is_none() && queue.capacity() > 16 {
            queue.shrink_to(0);
        }
        msg
    }

    /// Waits until something was pushed or the session was kicked.
    pub async fn notified(&self) {
        self.notify.notified().await
    }
}

/// A connection limit that refused a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LimitHit {
    #[error("server at connection capacity")]
    Total,
    #[error("too many connections for this user")]
    PerUser,
}

impl LimitHit {
    pub fn close_code(self) -> u16 {
        match self {
            LimitHit::Total => close::TRY_AGAIN_LATER,
            LimitHit::PerUser => close::TOO_MANY_CONNECTIONS,
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

/// All sessions of this instance, by user.
pub struct Registry {
    users: RwLock<HashMap<Arc<str>, Vec<Arc<Mailbox>>>>,
    open: AtomicUsize,
    max_total: usize,
    max_per_user: usize,
    queue_capacity: usize,
}

impl Registry {
    pub fn new(max_total: usize, max_per_user: usize, queue_capacity: usize) -> Self {
        Registry {
            users: RwLock::new(HashMap::new()),
            open: AtomicUsize::new(0),
            max_total,
            max_per_user,
            queue_capacity,
        }
    }

    /// Admits a session for `user`, or says which limit refused it.
    pub fn register(&self, user: &Arc<str>) -> Result<Arc<Mailbox>, LimitHit> {
        let mut users = self.users.write().expect("registry lock");
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

    /// Removes a session; the user's entry goes with its last session.
    pub fn unregister(&self, user: &str, mailbox: &Arc<Mailbox>) {
        let mut users = self.users.write().expect("registry lock");
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
        let users = self.users.read().expect("registry lock");
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
        let users = self.users.read().expect("registry lock");
        users.values().flatten().cloned().collect()
    }

    /// Open sessions.
    pub fn connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Users with at least one open session.
    pub fn users(&self) -> usize {
        self.users.read().expect("registry lock").len()
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
