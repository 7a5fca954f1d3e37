//! The hub: who is connected and who receives what. No actix here: everything is testable
//! without a network.
//!
//! - [`registry`]: open sessions, each with a bounded mailbox; connection limits.
//! - [`router`]: a decoded event, to the message, to the mailboxes of its audience; shared by
//!   every source.
//! - [`dedup`]: one event, one delivery, within a bounded window.
//! - [`cursor`]: resume positions derived from the Kafka log (the same on every replica).
//! - [`handoff`]: where sessions that sent no cursor stood, for the next one of the user.
//! - [`history`]: recent events, what resumes replay and slow sessions catch up from.
//! - [`memberships`]: rooms that belong to the user (every session, every replica, across
//!   reconnects).
//! - [`presence`]: who is online, cluster-wide, and the transitions to announce.
//! - [`revocations`]: revoked tokens, cluster-wide.
//! - [`replies`]: RPC answers that come back through the log, to the call waiting for them.
//! - [`state`]: state events: the latest value per key and audience, compare-before-send,
//!   conflation and snapshots.

pub mod cursor;
pub mod dedup;
pub mod handoff;
pub mod history;
pub mod memberships;
pub mod presence;
pub mod registry;
pub mod replies;
pub mod revocations;
pub mod router;
pub mod state;
