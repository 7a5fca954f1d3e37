//! The body of `POST /api/publish`: `ingest::publish::decode(bytes, max_events)`, one event
//! or an array of them, with the default limit (100) and a small one (3).
//!
//! Properties: never a panic; `Ok` gives between 1 and `max_events` events, one per event of
//! the body, each with a non-empty id and record key, and JSON (what is written to Kafka) that
//! the gateway's record decoder reads back with the same id, record key and a time; an array
//! refused for its events names each bad one (the first 20), by index, in order, and only bad
//! ones.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;
use task_events::Event;
use websocket_service::fuzzing::publish_decode;

fuzz_target!(|data: &[u8]| {
    for max_events in [100, 3] {
        check(data, max_events);
    }
});

fn check(data: &[u8], max_events: usize) {
    let first = data.iter().find(|b| !b.is_ascii_whitespace());
    // The events of the body, read on their own.
    let items: Option<Vec<&RawValue>> = match first {
        Some(b'[') => serde_json::from_slice(data).ok(),
        Some(b'{') => serde_json::from_slice(data).ok().map(|one| vec![one]),
        _ => None,
    };
    match publish_decode(data, max_events) {
        Ok(events) => {
            let items = items.expect("an accepted body is an event or an array of them");
            assert!(
                (1..=max_events).contains(&events.len()),
                "{} events with at most {max_events}",
                events.len()
            );
            assert_eq!(events.len(), items.len(), "one event per item");
            for event in &events {
                assert!(!event.id.is_empty(), "an event without an id: {}", event.json);
                assert!(
                    !event.key.is_empty(),
                    "an event without a record key: {}",
                    event.json
                );
                let written = Event::from_json(event.json.as_bytes())
                    .unwrap_or_else(|e| panic!("the record written does not decode ({e}): {}", event.json));
                assert_eq!(written.id(), Some(event.id.as_str()), "{}", event.json);
                assert_eq!(written.partition_key(), event.key, "{}", event.json);
                assert!(written.occurred_at().is_some(), "{}", event.json);
            }
        }
        Err((detail, errors)) => {
            assert!(!detail.is_empty());
            let Some(items) = items.filter(|items| (1..=max_events).contains(&items.len())) else {
                // Refused as a whole: not JSON, empty, or too many events.
                assert!(errors.is_empty(), "{detail}: {errors:?}");
                return;
            };
            let bad: Vec<usize> = items
                .iter()
                .enumerate()
                .filter(|(_, raw)| Event::from_json(raw.get().as_bytes()).is_err())
                .map(|(i, _)| i)
                .collect();
            assert!(!bad.is_empty(), "refused with no bad event: {detail}");
            let named: Vec<usize> = errors
                .iter()
                .map(|e| e["index"].as_u64().expect("an error has an index") as usize)
                .collect();
            assert_eq!(
                named,
                bad.iter().copied().take(20).collect::<Vec<_>>(),
                "{detail}"
            );
            for error in &errors {
                assert!(error["detail"].as_str().is_some_and(|d| !d.is_empty()), "{error}");
            }
        }
    }
}
