//! A resume cursor (`since=`, `Last-Event-ID`): `hub::cursor::Cursor::decode`.
//!
//! The encoding is not canonical (LEB128 numbers may be padded, entries may come in any order
//! or repeat: the last wins), so the property is on values: a cursor that decodes re-encodes to
//! a string that decodes to the same cursor. And the other way, from the same bytes read as
//! positions: any cursor the gateway can hand out (frontier moved by `advance` and `start`,
//! with any partition and offset a record can name) encodes to a string that decodes to it.
//! Last, a resume from the decoded cursor on a replica standing at the built one is answered
//! (a start or a reason, never a panic), and a replica's own cursor resumes without a reason.
#![no_main]

use libfuzzer_sys::fuzz_target;
use websocket_service::fuzzing::{resume, Cursor};
use websocket_service::hub::cursor::PartitionId;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(cursor) = Cursor::decode(text) {
            let again = cursor.encode();
            assert_eq!(
                Cursor::decode(&again).as_ref(),
                Ok(&cursor),
                "{text} re-encoded as {again}"
            );
        }
    }
    let cursor = positions(data);
    let text = cursor.encode();
    assert_eq!(Cursor::decode(&text).as_ref(), Ok(&cursor), "{text}");
    assert!(resume(&cursor, &cursor).is_ok(), "{text} on its own replica");
    if let Some(decoded) = std::str::from_utf8(data).ok().and_then(|t| Cursor::decode(t).ok()) {
        let _ = resume(&decoded, &cursor);
    }
});

/// A cursor built from the bytes: per 17 bytes (at most 64 times: a longer cursor may pass
/// `MAX_CURSOR_CHARS`), a move of the frontier (`advance` or `start`)
/// on a topic, partition and offset; the rest, a local position or none.
fn positions(data: &[u8]) -> Cursor {
    let mut cursor = Cursor::default();
    let mut chunks = data.chunks_exact(17);
    for chunk in chunks.by_ref().take(64) {
        let topic = u32::from_le_bytes(chunk[1..5].try_into().unwrap());
        let partition = i32::from_le_bytes(chunk[5..9].try_into().unwrap());
        let offset = i64::from_le_bytes(chunk[9..17].try_into().unwrap());
        let p = PartitionId { topic, partition };
        if chunk[0] & 1 == 0 {
            cursor.frontier.advance(p, offset);
        } else {
            cursor.frontier.start(p, offset);
        }
    }
    let rest = chunks.remainder();
    if rest.len() >= 16 {
        let instance = u64::from_le_bytes(rest[..8].try_into().unwrap());
        let seq = u64::from_le_bytes(rest[8..16].try_into().unwrap());
        cursor.local = Some((instance, seq));
    }
    cursor
}
