//! Thin entry points to the parsers of outside input, for the fuzz targets in `fuzz/` (and only
//! for them: not an API, hidden from the docs). Each wraps the function the gateway itself runs,
//! without its state, so what is fuzzed is what serves.

use std::future::Future as _;
use std::sync::Arc;

use serde_json::Value;

pub use crate::auth::{AuthError, Authenticator, Identity};
pub use crate::hub::cursor::{Cursor, CursorError};
pub use crate::protocol::ClientEnvelope;
pub use crate::transport::admission::{percent_decode, query_value, split_list};

use crate::ingest::dapr::{self, Deliver};
use crate::ingest::Origin;

/// What a Dapr delivery is answered with (`ingest::dapr`).
#[derive(Debug)]
pub enum DaprAnswer {
    /// A single delivery's `status`.
    One(&'static str),
    /// A bulk delivery: per entry, in order, its `{"entryId", "status"}`, or `None` when the
    /// entry has no id to answer with.
    Bulk(Vec<Option<Value>>),
}

/// Reads a Dapr delivery body as `POST <DAPR_ROUTE>` does, routing each record value with
/// `route` (true: `SUCCESS`). Also returns how many bodies, entries or records were counted as
/// malformed.
pub fn dapr_answer(body: &[u8], route: &mut dyn FnMut(&[u8]) -> bool) -> (DaprAnswer, usize) {
    struct To<'r> {
        route: &'r mut dyn FnMut(&[u8]) -> bool,
        malformed: usize,
    }
    impl Deliver for To<'_> {
        fn route(&mut self, bytes: &[u8], _origin: Origin<'_>) -> &'static str {
            if (self.route)(bytes) {
                "SUCCESS"
            } else {
                "DROP"
            }
        }
        fn malformed(&mut self, _origin: &Origin<'_>, _reason: &dyn std::fmt::Display) {
            self.malformed += 1;
        }
    }
    let mut to = To { route, malformed: 0 };
    let answer = match dapr::answer(body, Origin::dapr_unknown(), &mut to) {
        dapr::Answer::One(status) => DaprAnswer::One(status),
        dapr::Answer::Bulk(statuses) => DaprAnswer::Bulk(statuses),
    };
    (answer, to.malformed)
}

/// The answer to a client message refused before it was read (`transport::ws::calls`).
pub fn refused(text: &str, code: &str, message: &str) -> String {
    crate::transport::ws::calls::refused(text, code, message).to_string()
}

/// One event of a publish body, as it would be written: its id, record key and JSON.
#[derive(Debug)]
pub struct Published {
    pub id: String,
    pub key: String,
    pub json: String,
}

/// `POST /api/publish`'s body decoder (`ingest::publish`): the events, or the detail and the
/// per-event errors.
pub fn publish_decode(bytes: &[u8], max_events: usize) -> Result<Vec<Published>, (String, Vec<Value>)> {
    crate::ingest::publish::decode(bytes, max_events).map(|ready| {
        ready
            .into_iter()
            .map(|r| Published {
                id: r.id,
                key: r.key,
                json: r.json,
            })
            .collect()
    })
}

/// A verifier of HS256 tokens signed with `secret` (16 bytes or more), with the gateway's
/// default rules (`exp` and `sub` required, leeway).
pub fn hs256_verifier(secret: &str) -> Arc<Authenticator> {
    let settings = crate::Settings::load([("JWT_SECRET".to_string(), secret.to_string())])
        .expect("an HS256 secret of 16 bytes or more is a valid configuration");
    Authenticator::from_settings(&settings.auth, &crate::health::Readiness::default())
        .expect("an HS256 verifier builds")
}

/// Verifies a token as a connecting session's is verified. A static key never waits, so the
/// future completes on its first poll.
pub fn verify(auth: &Authenticator, token: &str) -> Result<Identity, AuthError> {
    let mut future = std::pin::pin!(auth.verify(token));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(result) => result,
        std::task::Poll::Pending => unreachable!("verification with a static key does not wait"),
    }
}

/// Where a session resuming from `cursor` starts on a replica whose routing stands at `replica`
/// and that holds no events yet (`hub::history::History::resume_from`, as an upgrade with
/// `since` runs it): the start, or why it cannot.
pub fn resume(cursor: &Cursor, replica: &Cursor) -> Result<u64, crate::hub::history::Unrecoverable> {
    use crate::hub::history::{History, Limits};
    let history = History::new(Limits {
        max_events: 16,
        max_bytes: 1 << 20,
        max_age: std::time::Duration::from_secs(60),
    });
    for (p, next) in &replica.frontier.0 {
        history.start_partition(*p, *next);
    }
    let instance = replica.local.map_or(0, |(instance, _)| instance);
    history.resume_from(cursor, &replica.frontier, instance)
}

#[cfg(test)]
mod resume_tests {
    use super::*;
    use crate::hub::cursor::PartitionId;

    /// The largest positions a cursor or a Dapr delivery can name are answered, not a panic;
    /// a replica's own position resumes at once.
    #[test]
    fn extreme_positions_are_answered() {
        let p = PartitionId::new("t", i32::MIN);
        let mut replica = Cursor::default();
        replica.frontier.start(p, i64::MAX);
        replica.local = Some((7, u64::MAX));
        assert_eq!(resume(&replica, &replica), Ok(0));
        let mut far = Cursor::default();
        far.frontier.start(p, i64::MIN);
        far.local = Some((7, u64::MAX));
        assert!(resume(&far, &replica).is_err());
        let mut ahead = replica.clone();
        ahead.frontier.0.insert(p, i64::MAX);
        assert_eq!(resume(&ahead, &replica), Ok(0));
    }
}
