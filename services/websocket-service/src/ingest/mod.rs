//! Ingest: bytes in from outside, decoded events out to the [`hub`](crate::hub).
//!
//! - [`kafka`]: the direct Kafka source (every partition of every topic, no consumer group).
//! - [`dapr`]: the Dapr pub/sub path: subscription discovery, delivery route, app token.

pub mod dapr;
pub mod kafka;
