//! A Dapr delivery body (`POST <DAPR_ROUTE>`): a single CloudEvent or bare envelope, a raw
//! payload (`data_base64`), or a bulk delivery (`entries`), read as `ingest::dapr` reads it,
//! each record value routed by the decoder the router uses (`task_events::Event::from_json`).
//!
//! Properties: never a panic; a single delivery gets `SUCCESS` exactly when its one record
//! decodes, else `DROP`; a bulk delivery gets one outcome per entry, in order: every entry
//! that is an object with a string `entryId` (and no repeated field) gets exactly one status,
//! with that id, and an entry that is not an object gets none; `SUCCESS` only for a record that
//! decoded.
#![no_main]

use std::collections::HashSet;
use std::fmt;

use libfuzzer_sys::fuzz_target;
use serde::de::{Deserializer as _, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use task_events::Event;
use websocket_service::fuzzing::{dapr_answer, DaprAnswer};

fuzz_target!(|data: &[u8]| {
    let mut routed = Vec::new();
    let (answer, _malformed) = dapr_answer(data, &mut |bytes| {
        let ok = Event::from_json(bytes).is_ok();
        routed.push(ok);
        ok
    });
    match answer {
        DaprAnswer::One(status) => {
            assert!(
                routed.len() <= 1,
                "a single delivery routed {} records",
                routed.len()
            );
            match status {
                "SUCCESS" => assert_eq!(routed, [true]),
                "DROP" => assert!(!routed.contains(&true)),
                other => panic!("unknown status {other}"),
            }
        }
        DaprAnswer::Bulk(statuses) => {
            let answered = statuses.iter().flatten().count();
            assert!(
                routed.len() <= answered,
                "more records routed than entries answered"
            );
            let successes = statuses
                .iter()
                .flatten()
                .filter(|s| s["status"] == "SUCCESS")
                .count();
            assert_eq!(successes, routed.iter().filter(|ok| **ok).count());
            // The entries, read on their own.
            let bulk: Bulk<'_> = serde_json::from_slice(data).expect("a bulk delivery has a list of entries");
            assert_eq!(statuses.len(), bulk.entries.len(), "one outcome per entry");
            for (i, (entry, status)) in bulk.entries.iter().zip(&statuses).enumerate() {
                check_entry(i, entry.get(), status.as_ref());
            }
        }
    }
});

#[derive(Deserialize)]
struct Bulk<'a> {
    #[serde(borrow)]
    entries: Vec<&'a RawValue>,
}

fn check_entry(i: usize, text: &str, status: Option<&Value>) {
    // An entry too deep for a `Value` is not checked further (entries are kept raw, and raw
    // JSON may nest deeper).
    let Ok(entry) = serde_json::from_str::<Value>(text) else {
        return;
    };
    let Some(object) = entry.as_object() else {
        assert!(status.is_none(), "entry {i} is not an object but was answered");
        return;
    };
    if let Some(status) = status {
        let fields = status.as_object().expect("a status is an object");
        assert_eq!(fields.len(), 2, "entry {i}: {status}");
        assert!(
            matches!(status["status"].as_str(), Some("SUCCESS" | "DROP")),
            "entry {i}: {status}"
        );
        assert_eq!(
            Some(&status["entryId"]),
            object.get("entryId"),
            "entry {i}: the id is echoed"
        );
        assert!(!status["entryId"].is_null());
    }
    if object.get("entryId").is_some_and(Value::is_string) && unique_fields(text) {
        assert!(
            status.is_some(),
            "entry {i} has a string entryId but got no status: {text}"
        );
    }
}

/// Whether an object's fields are all named once (serde refuses a repeated field, which a
/// sidecar never sends; such an entry cannot be answered).
fn unique_fields(object: &str) -> bool {
    struct Unique;
    impl<'de> Visitor<'de> for Unique {
        type Value = bool;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
            let mut seen = HashSet::new();
            let mut unique = true;
            while let Some(key) = map.next_key::<String>()? {
                unique &= seen.insert(key);
                map.next_value::<IgnoredAny>()?;
            }
            Ok(unique)
        }
    }
    let mut de = serde_json::Deserializer::from_str(object);
    de.deserialize_map(Unique).unwrap_or(false)
}
