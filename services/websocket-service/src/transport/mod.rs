//! Transports: how a session's messages reach its client.
//!
//! - [`ws`]: one WebSocket connection: upgrade, authentication, its loop (writes, client
//!   messages, heartbeat, deadlines) and its close codes.

pub mod ws;
