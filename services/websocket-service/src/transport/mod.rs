//! Transports: how a session's messages reach its client.
//!
//! - [`ws`]: one WebSocket connection: upgrade, authentication, its loop (writes, client
//!   messages, heartbeat, deadlines) and its close codes.
//! - [`admission`]: deciding on a session (token, workspace, rooms, limits, resume), for every
//!   transport.
//! - [`feed`]: what a session writes next: its queue, the history when it fell behind or
//!   resumes, then live again.
//! - [`sse`]: Server-Sent Events (`GET /events`).
//! - [`poll`]: long polling (`GET /events/poll`).
//! - [`refusals`]: how refusals reach clients that reconnect after every close: permanent ones
//!   are refused at the upgrade after the first, transient ones are paced closes.

pub mod admission;
pub mod feed;
pub mod poll;
pub mod refusals;
pub mod sse;
pub mod ws;
