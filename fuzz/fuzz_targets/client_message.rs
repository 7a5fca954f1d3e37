//! A client's WebSocket text message: `protocol::ClientEnvelope` as the session reads it, and
//! the answer to a message refused before it was read (`transport::ws::calls::refused`, what a
//! client over its message rate gets).
//!
//! Properties: never a panic; the answer is valid JSON, an object with a string `type`
//! (`error` or `rpc_error`); an `rpc` with a valid id (a string or a number, at most 130 bytes
//! of JSON) is answered with `rpc_error` and that id, a `publish` with a valid id with `error`
//! and that id.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use serde_json::value::RawValue;
use websocket_service::fuzzing::{refused, ClientEnvelope};

#[derive(Deserialize)]
struct Answer<'a> {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default, borrow)]
    id: Option<&'a RawValue>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    error: Option<ErrorBody>,
}

#[derive(Deserialize)]
struct ErrorBody {
    code: String,
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let envelope = serde_json::from_str::<ClientEnvelope<'_>>(text).ok();
    let reply = refused(text, "rate_limited", "too many messages");
    let answer: Answer<'_> = serde_json::from_str(&reply)
        .unwrap_or_else(|e| panic!("the answer is not a JSON object with a string type ({e}): {reply}"));
    let code = match answer.kind.as_str() {
        "error" => answer.code.as_deref(),
        "rpc_error" => answer.error.as_ref().map(|e| e.code.as_str()),
        other => panic!("unexpected answer type {other}: {reply}"),
    };
    assert_eq!(code, Some("rate_limited"), "{reply}");
    let Some(envelope) = envelope else {
        assert_eq!(answer.kind, "error");
        assert!(answer.id.is_none());
        return;
    };
    let id = envelope.id.filter(|id| valid_id(id.get()));
    match (envelope.kind.as_ref(), id) {
        ("rpc", Some(id)) => {
            assert_eq!(answer.kind, "rpc_error", "{reply}");
            assert_eq!(
                answer.id.map(RawValue::get),
                Some(id.get()),
                "the rpc id is echoed: {reply}"
            );
        }
        ("publish", id) => {
            assert_eq!(answer.kind, "error", "{reply}");
            assert_eq!(answer.id.map(RawValue::get), id.map(RawValue::get), "{reply}");
        }
        _ => {
            assert_eq!(answer.kind, "error", "{reply}");
            assert!(answer.id.is_none(), "{reply}");
        }
    }
});

/// The protocol's rule for a client id: a JSON string or number, at most 130 bytes of JSON.
fn valid_id(json: &str) -> bool {
    json.len() <= 130 && matches!(json.as_bytes().first(), Some(b'"' | b'-' | b'0'..=b'9'))
}
