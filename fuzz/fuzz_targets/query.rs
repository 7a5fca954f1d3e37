//! A connect URL's query string (`?token=..&since=..&rooms=a,b&event_types=..`): the pure parts
//! of `transport::admission` (`query_value`, `percent_decode`, `split_list`) that
//! `Request::from_http` and the SSE and polling routes read parameters with.
//!
//! Properties: never a panic; a list never holds an empty, untrimmed or comma-bearing item;
//! a value without `%` or `+` is kept as it is; and any string, percent-encoded, decodes back to
//! itself, alone and as a parameter of a query string.
#![no_main]

use libfuzzer_sys::fuzz_target;
use websocket_service::fuzzing::{percent_decode, query_value, split_list};

const NAMES: [&str; 7] = [
    "token",
    "workspace_id",
    "since",
    "rooms",
    "event_types",
    "wait",
    "named",
];

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let text = text.as_ref();
    for name in NAMES {
        if let Some(value) = query_value(text, name) {
            for item in split_list(&value) {
                assert!(!item.is_empty() && !item.contains(','), "{item:?} from {text:?}");
                assert_eq!(item.trim(), item, "{item:?} from {text:?}");
            }
        }
    }
    let decoded = percent_decode(text);
    if !text.contains(['%', '+']) {
        assert_eq!(decoded, text);
    }
    let encoded = percent_encode(text);
    assert_eq!(percent_decode(&encoded), text, "through {encoded}");
    let query = format!("a=1&since=x&rooms={encoded}&b");
    assert_eq!(
        query_value(&query, "rooms").as_deref(),
        Some(text),
        "through {query}"
    );
});

/// Every byte but the unreserved ones (RFC 3986) as `%XX`, as `encodeURIComponent` does.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
