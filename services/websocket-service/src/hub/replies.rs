//! RPC answers that come back through the log.
//!
//! A call answered over Kafka waits here under its request id (a random UUID the gateway gave
//! it) until a generic envelope `rpc_result` or `rpc_error` addressed to its session arrives:
//!
//! ```json
//! {"event_type": "rpc_result", "to": {"session": "<session>"},
//!  "data": {"request_id": "<id>", "data": {...}}}
//! {"event_type": "rpc_error", "to": {"session": "<session>"},
//!  "data": {"request_id": "<id>", "error": {"code": "...", "message": "..."}}}
//! ```
//!
//! Every replica reads every answer; the one holding the call takes it, the others find no
//! waiter and drop it. An answer is not an event: it is not kept in the history, and one that
//! comes after its call timed out (or twice) is counted and dropped.

use std::collections::HashMap;

use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::oneshot;

/// Event types that carry answers.
pub const RESULT: &str = "rpc_result";
pub const ERROR: &str = "rpc_error";

/// What a backend answered.
#[derive(Debug)]
pub enum Answer {
    Result(Box<RawValue>),
    Error { code: String, message: String },
}

#[derive(Deserialize)]
struct Reply {
    request_id: String,
    /// Present even as `null` (a result may be null).
    #[serde(default, deserialize_with = "present")]
    data: Option<Box<RawValue>>,
    #[serde(default)]
    error: Option<ReplyError>,
}

#[derive(Deserialize)]
pub struct ReplyError {
    pub code: String,
    #[serde(default)]
    pub message: String,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

/// What became of an answer read from the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// Handed to its call.
    Answered,
    /// No call waits for it here (another replica's, or one that timed out).
    NoWaiter,
    /// Not a well-formed answer.
    Malformed,
}

/// Calls waiting for an answer from the log, by request id.
#[derive(Default)]
pub struct Replies {
    waiting: Mutex<HashMap<String, (u128, oneshot::Sender<Answer>)>>,
}

impl Replies {
    /// Registers call `request_id` of `session`; the answer comes on the receiver. The caller
    /// removes it with [`Replies::forget`] when it stops waiting.
    pub fn wait(&self, request_id: &str, session: u128) -> oneshot::Receiver<Answer> {
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().insert(request_id.to_string(), (session, tx));
        rx
    }

    pub fn forget(&self, request_id: &str) {
        self.waiting.lock().remove(request_id);
    }

    /// Calls waiting now.
    pub fn len(&self) -> usize {
        self.waiting.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// An `rpc_result` / `rpc_error` envelope addressed to `session`: to its call, if it waits
    /// here.
    pub fn take(&self, event_type: &str, session: u128, data: &RawValue) -> Taken {
        let Ok(reply) = serde_json::from_str::<Reply>(data.get()) else {
            return Taken::Malformed;
        };
        let answer = match (event_type, reply.data, reply.error) {
            (ERROR, _, Some(e)) if !e.code.is_empty() => Answer::Error {
                code: e.code.chars().take(64).collect(),
                message: e.message.chars().take(1024).collect(),
            },
            (RESULT, Some(data), None) => Answer::Result(data),
            _ => return Taken::Malformed,
        };
        let mut waiting = self.waiting.lock();
        match waiting.get(&reply.request_id) {
            Some((s, _)) if *s == session => {}
            _ => return Taken::NoWaiter,
        }
        let (_, tx) = waiting.remove(&reply.request_id).expect("present");
        drop(waiting);
        match tx.send(answer) {
            Ok(()) => Taken::Answered,
            Err(_) => Taken::NoWaiter,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_string()).unwrap()
    }

    #[test]
    fn an_answer_reaches_its_call_once_and_only_from_its_session() {
        let replies = Replies::default();
        let mut rx = replies.wait("r1", 7);
        let answer = raw(r#"{"request_id":"r1","data":{"n":1}}"#);
        assert_eq!(
            replies.take(RESULT, 8, &answer),
            Taken::NoWaiter,
            "another session"
        );
        assert_eq!(replies.take(RESULT, 7, &answer), Taken::Answered);
        match rx.try_recv().unwrap() {
            Answer::Result(data) => assert_eq!(data.get(), r#"{"n":1}"#),
            other => panic!("{other:?}"),
        }
        assert_eq!(replies.take(RESULT, 7, &answer), Taken::NoWaiter, "twice");
        assert!(replies.is_empty());
    }

    #[test]
    fn errors_and_malformed_answers() {
        let replies = Replies::default();
        let mut rx = replies.wait("r2", 1);
        assert_eq!(replies.take(RESULT, 1, &raw(r#"{"data":1}"#)), Taken::Malformed);
        assert_eq!(
            replies.take(RESULT, 1, &raw(r#"{"request_id":"r2","error":{"code":"x"}}"#)),
            Taken::Malformed
        );
        let error = raw(r#"{"request_id":"r2","error":{"code":"not_found","message":"no"}}"#);
        assert_eq!(replies.take(ERROR, 1, &error), Taken::Answered);
        assert!(matches!(rx.try_recv().unwrap(), Answer::Error { code, .. } if code == "not_found"));
        let _rx = replies.wait("r3", 1);
        replies.forget("r3");
        assert!(replies.is_empty());
        // A null result is a result; an error without a code is not an error.
        let mut rx = replies.wait("r4", 1);
        let empty_code = raw(r#"{"request_id":"r4","error":{"code":"","message":"?"}}"#);
        assert_eq!(replies.take(ERROR, 1, &empty_code), Taken::Malformed);
        assert_eq!(
            replies.take(RESULT, 1, &raw(r#"{"request_id":"r4","data":null}"#)),
            Taken::Answered
        );
        assert!(matches!(rx.try_recv().unwrap(), Answer::Result(data) if data.get() == "null"));
    }
}
