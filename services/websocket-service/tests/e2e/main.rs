//! End-to-end tests: the real gateway, a real Kafka-protocol broker (tansu) over TCP, real
//! WebSocket clients. One test binary, so the workspace builds it once.

mod abuse;
mod audiences;
mod auth;
#[path = "../support/broker.rs"]
mod broker;
mod cluster;
mod conformance;
mod dapr;
mod delivery;
mod drain;
mod faults;
mod harness;
mod protocol;
mod resume;
mod seeds;
mod spine;
mod state;
mod upstream;
