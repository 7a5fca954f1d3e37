//! A Kafka record value: `task_events::Event::from_json` (the task envelope, the generic
//! envelope, and either as a CloudEvent's data).
//!
//! Properties: never a panic; an accepted event serialises and decodes again to an equal event
//! (the same kind, fields and record key); `TaskEvent::from_json` accepts exactly the task
//! events.
#![no_main]

use libfuzzer_sys::fuzz_target;
use task_events::{Event, GenericEvent, Payload, TaskEvent};

fuzz_target!(|data: &[u8]| {
    let decoded = Event::from_json(data);
    let as_task = TaskEvent::from_json(data);
    assert_eq!(
        as_task.is_ok(),
        matches!(decoded, Ok(Event::Task(_))),
        "TaskEvent::from_json and Event::from_json disagree"
    );
    match decoded {
        Err(error) => assert!(!error.to_string().is_empty()),
        Ok(Event::Generic(event)) => {
            let bytes = serde_json::to_vec(&event).expect("an accepted generic event serialises");
            match Event::from_json(&bytes) {
                Ok(Event::Generic(again)) => same_generic(&event, &again, &bytes),
                other => panic!(
                    "a generic event serialised as {} decodes as {other:?}",
                    String::from_utf8_lossy(&bytes)
                ),
            }
        }
        Ok(Event::Task(event)) => {
            let bytes = serde_json::to_vec(&event).expect("an accepted task event serialises");
            match Event::from_json(&bytes) {
                Ok(Event::Task(again)) => same_task(&event, &again, &bytes),
                other => panic!(
                    "a task event serialised as {} decodes as {other:?}",
                    String::from_utf8_lossy(&bytes)
                ),
            }
        }
    }
});

fn same_generic(a: &GenericEvent, b: &GenericEvent, wire: &[u8]) {
    let wire = String::from_utf8_lossy(wire);
    assert_eq!(a.id, b.id, "id, through {wire}");
    assert_eq!(a.event_type, b.event_type, "event_type, through {wire}");
    assert_eq!(
        payload(&a.payload),
        payload(&b.payload),
        "payload, through {wire}"
    );
    assert_eq!(a.to, b.to, "to, through {wire}");
    assert_eq!(a.occurred_at, b.occurred_at, "occurred_at, through {wire}");
    assert_eq!(a.key, b.key, "key, through {wire}");
    assert_eq!(a.from, b.from, "from, through {wire}");
    assert_eq!(a.ephemeral, b.ephemeral, "ephemeral, through {wire}");
    assert_eq!(a.partition_key(), b.partition_key(), "record key, through {wire}");
}

fn same_task(a: &TaskEvent, b: &TaskEvent, wire: &[u8]) {
    let wire = String::from_utf8_lossy(wire);
    assert_eq!(a.id, b.id, "id, through {wire}");
    assert_eq!(a.event_type, b.event_type, "event_type, through {wire}");
    assert_eq!(a.user_id, b.user_id, "user_id, through {wire}");
    assert_eq!(a.task.get(), b.task.get(), "task, through {wire}");
    assert_eq!(a.occurred_at, b.occurred_at, "occurred_at, through {wire}");
    assert_eq!(a.partition_key(), b.partition_key(), "record key, through {wire}");
}

/// The payload's kind and JSON text.
fn payload(p: &Payload) -> (&'static str, &str) {
    match p {
        Payload::Data(d) => ("data", d.get()),
        Payload::Message(m) => ("message", m.get()),
    }
}
