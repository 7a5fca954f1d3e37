//! Resume positions, derived from the Kafka log so that they mean the same on every replica and
//! survive restarts.
//!
//! A [`Frontier`] says, for each partition of the events topics, the offset up to which events
//! are covered. Every replica reads the whole log, so a frontier handed out by one replica can
//! be honoured by any other: it replays the events of the session's audience at or past the
//! frontier, from its own history. A [`Cursor`] is a frontier in a short opaque string, plus,
//! for events that came with no log position (the publish API without Kafka), this replica's
//! own sequence, which only this replica can honour.
//!
//! Encoding (base64url, no padding): version byte 1; the number of entries; per entry the
//! topic's id (4 bytes, FNV-1a of its name), the partition and the offset (LEB128); a flag and,
//! when set, the replica's instance id and local sequence (LEB128); a 4-byte checksum. At most
//! [`MAX_CURSOR_CHARS`] characters are accepted.

use std::collections::BTreeMap;

use base64::Engine as _;

/// The longest cursor accepted; anything longer is refused as unknown. A cursor takes about 14
/// characters per partition read (topic id, partition, offset) plus about 30: this allows
/// about 580 partitions in all, well past what one gateway reads, and stays inside the 8 KiB
/// request line proxies commonly accept.
pub const MAX_CURSOR_CHARS: usize = 8000;
/// The most partitions a cursor may name.
const MAX_ENTRIES: usize = 512;
/// The most partitions a frontier tracks: a cursor of this many, whatever their topics,
/// partitions and offsets (at most 19 bytes each), stays under [`MAX_CURSOR_CHARS`].
pub const MAX_PARTITIONS: usize = 256;

/// A partition of an events topic, named the same way on every replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PartitionId {
    /// FNV-1a (32 bits) of the topic's name.
    pub topic: u32,
    pub partition: i32,
}

impl PartitionId {
    pub fn new(topic: &str, partition: i32) -> Self {
        PartitionId {
            topic: topic_id(topic),
            partition,
        }
    }
}

/// A stable 32-bit id of a topic name (FNV-1a): the same in every process and version.
pub fn topic_id(name: &str) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in name.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

/// Per partition, the first offset not covered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier(pub BTreeMap<PartitionId, i64>);

impl Frontier {
    /// Whether `partition` is tracked or there is room for it: a frontier tracks at most
    /// [`MAX_PARTITIONS`], so that its cursor can always be decoded again.
    pub fn admits(&self, partition: PartitionId) -> bool {
        self.0.len() < MAX_PARTITIONS || self.0.contains_key(&partition)
    }

    /// Covers `offset` (and everything below it) on `partition`; nothing when the frontier is
    /// full and does not track `partition`.
    pub fn advance(&mut self, partition: PartitionId, offset: i64) {
        if !self.admits(partition) {
            return;
        }
        let next = self.0.entry(partition).or_insert(0);
        // Saturating: the offset may come from outside (a Dapr delivery's `__offset`).
        *next = (*next).max(offset.saturating_add(1));
    }

    /// Starts tracking `partition` at `next` (nothing below is claimed to be covered), when
    /// the frontier admits it.
    pub fn start(&mut self, partition: PartitionId, next: i64) {
        if self.admits(partition) {
            self.0.entry(partition).or_insert(next);
        }
    }

    /// Whether `offset` on `partition` is covered.
    pub fn covers(&self, partition: PartitionId, offset: i64) -> bool {
        self.0.get(&partition).is_some_and(|next| offset < *next)
    }

    pub fn get(&self, partition: PartitionId) -> Option<i64> {
        self.0.get(&partition).copied()
    }
}

/// A client's resume position.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    pub frontier: Frontier,
    /// (replica instance, local sequence) for events without a log position.
    pub local: Option<(u64, u64)>,
}

/// Why a cursor cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CursorError {
    #[error("cursor too long")]
    TooLong,
    #[error("cursor is not base64url")]
    Encoding,
    #[error("cursor checksum mismatch")]
    Checksum,
    #[error("cursor malformed")]
    Malformed,
}

impl Cursor {
    pub fn encode(&self) -> String {
        let mut bytes = Vec::with_capacity(8 + self.frontier.0.len() * 10);
        bytes.push(1u8);
        put(&mut bytes, self.frontier.0.len() as u64);
        for (p, offset) in &self.frontier.0 {
            bytes.extend_from_slice(&p.topic.to_le_bytes());
            put(&mut bytes, u64::from(p.partition as u32));
            put(&mut bytes, *offset as u64);
        }
        match self.local {
            Some((instance, seq)) => {
                bytes.push(1);
                put(&mut bytes, instance);
                put(&mut bytes, seq);
            }
            None => bytes.push(0),
        }
        let sum = checksum(&bytes);
        bytes.extend_from_slice(&sum.to_le_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    pub fn decode(text: &str) -> Result<Cursor, CursorError> {
        if text.len() > MAX_CURSOR_CHARS {
            return Err(CursorError::TooLong);
        }
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| CursorError::Encoding)?;
        if bytes.len() < 6 {
            return Err(CursorError::Malformed);
        }
        let (body, sum) = bytes.split_at(bytes.len() - 4);
        if checksum(body).to_le_bytes() != sum {
            return Err(CursorError::Checksum);
        }
        let mut r = Reader { bytes: body, at: 0 };
        if r.byte()? != 1 {
            return Err(CursorError::Malformed);
        }
        let n = r.uint()? as usize;
        if n > MAX_ENTRIES {
            return Err(CursorError::Malformed);
        }
        let mut frontier = Frontier::default();
        for _ in 0..n {
            let topic = u32::from_le_bytes([r.byte()?, r.byte()?, r.byte()?, r.byte()?]);
            // The inverses of `encode`'s casts: a partition or offset out of the usual range (a
            // Dapr delivery names its record in headers) still decodes to what was encoded.
            let partition = u32::try_from(r.uint()?).map_err(|_| CursorError::Malformed)? as i32;
            let offset = r.uint()? as i64;
            frontier.0.insert(PartitionId { topic, partition }, offset);
        }
        let local = match r.byte()? {
            0 => None,
            1 => Some((r.uint()?, r.uint()?)),
            _ => return Err(CursorError::Malformed),
        };
        if r.at != body.len() {
            return Err(CursorError::Malformed);
        }
        Ok(Cursor { frontier, local })
    }
}

fn put(out: &mut Vec<u8>, mut n: u64) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, CursorError> {
        let b = *self.bytes.get(self.at).ok_or(CursorError::Malformed)?;
        self.at += 1;
        Ok(b)
    }

    fn uint(&mut self) -> Result<u64, CursorError> {
        let mut n: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            n |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err(CursorError::Malformed)
    }
}

/// FNV-1a over the bytes, so a damaged or hand-edited cursor is refused rather than misread.
fn checksum(bytes: &[u8]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5 ^ 0x5a5a_0001;
    for byte in bytes {
        hash ^= u32::from(*byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Cursor {
        let mut f = Frontier::default();
        f.advance(PartitionId::new("task-updates", 0), 41);
        f.advance(PartitionId::new("task-updates", 3), 1_234_567_890);
        f.start(PartitionId::new("other", 1), 0);
        Cursor {
            frontier: f,
            local: Some((0xdead_beef, 7)),
        }
    }

    #[test]
    fn round_trip_and_size() {
        let c = sample();
        let text = c.encode();
        assert_eq!(Cursor::decode(&text), Ok(c));
        assert!(text.len() < 64, "{} chars", text.len());
        let empty = Cursor::default();
        assert_eq!(Cursor::decode(&empty.encode()), Ok(empty));
    }

    #[test]
    fn encoding_is_stable() {
        // A cursor handed out by one version is read by the next (fuzz/corpus/cursor/ holds it).
        let text = "AQPz_zGuACrz_zGuA9OF2MwE9Y19yAEAAe_9tvUNB1M_I08";
        assert_eq!(sample().encode(), text);
        assert_eq!(Cursor::decode(text), Ok(sample()));
    }

    /// Found by the `cursor` fuzz target: a negative partition (or offset) was encoded, but its
    /// cursor refused as malformed, so after a Dapr delivery naming one every resume failed.
    #[test]
    fn any_position_round_trips() {
        let mut f = Frontier::default();
        f.advance(
            PartitionId {
                topic: 1_094_861_137,
                partition: -926_396_329,
            },
            8_089_441_440_256_018_632,
        );
        f.start(PartitionId::new("t", i32::MIN), -5);
        f.start(PartitionId::new("t", i32::MAX), i64::MIN);
        f.start(PartitionId::new("u", 0), i64::MAX);
        // Found next: `advance` overflowed (a panic where overflow is checked) at the last offset.
        f.advance(PartitionId::new("v", 0), i64::MAX);
        assert!(f.covers(PartitionId::new("v", 0), i64::MAX - 1));
        let c = Cursor {
            frontier: f,
            local: Some((u64::MAX, 0)),
        };
        assert_eq!(Cursor::decode(&c.encode()), Ok(c));
    }

    /// A Dapr delivery's headers can name any partition: past `MAX_PARTITIONS` a new one is not
    /// tracked, and the fullest cursor, with the longest values, is still accepted.
    #[test]
    fn a_frontier_is_bounded_and_its_cursor_always_decodes() {
        let mut f = Frontier::default();
        for i in 0..MAX_PARTITIONS + 10 {
            let p = PartitionId::new(&format!("topic-{i}"), i32::MIN + i as i32);
            f.advance(p, i64::MAX - 1);
            f.start(PartitionId::new("late", i as i32), -1);
        }
        assert_eq!(f.0.len(), MAX_PARTITIONS);
        let tracked = *f.0.keys().next().unwrap();
        assert!(f.admits(tracked));
        assert!(!f.admits(PartitionId::new("new", 0)));
        f.advance(PartitionId::new("new", 0), 1);
        assert_eq!(f.get(PartitionId::new("new", 0)), None);
        let c = Cursor {
            frontier: f,
            local: Some((u64::MAX, u64::MAX)),
        };
        let text = c.encode();
        assert!(text.len() <= MAX_CURSOR_CHARS, "{} chars", text.len());
        assert_eq!(Cursor::decode(&text), Ok(c));
    }

    #[test]
    fn covers_and_advance() {
        let c = sample();
        let p = PartitionId::new("task-updates", 0);
        assert!(c.frontier.covers(p, 41) && !c.frontier.covers(p, 42));
        assert!(!c.frontier.covers(PartitionId::new("task-updates", 9), 0));
    }

    #[test]
    fn damaged_or_forged_cursors_are_refused() {
        let text = sample().encode();
        let mut bytes = text.clone().into_bytes();
        bytes[5] = if bytes[5] == b'A' { b'B' } else { b'A' };
        let damaged = String::from_utf8(bytes).unwrap();
        assert!(Cursor::decode(&damaged).is_err());
        assert_eq!(Cursor::decode("not base64!"), Err(CursorError::Encoding));
        assert_eq!(
            Cursor::decode(&"A".repeat(MAX_CURSOR_CHARS + 1)),
            Err(CursorError::TooLong)
        );
        assert!(Cursor::decode("AAAA").is_err());
        assert_eq!(topic_id("task-updates"), topic_id("task-updates"));
        assert_ne!(topic_id("a"), topic_id("b"));
    }
}
