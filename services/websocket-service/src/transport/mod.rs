//! Transports: how a session's messages reach its client.
//!
//! - [`ws`]: one WebSocket connection: upgrade, authentication, its loop (writes, client
//!   messages, heartbeat, deadlines) and its close codes.
//! - [`feed`]: what a session writes next: its queue, the history when it fell behind or
//!   resumes, then live again.
//! - [`refusals`]: how refusals reach clients that reconnect after every close: permanent ones
//!   are refused at the upgrade after the first, transient ones are paced closes.

pub mod feed;
pub mod refusals;
pub mod ws;
