//! What a client sends, on its way to the session, beyond what actix-ws checks.
//!
//! - [`FrameGuard`] looks at the frame headers before actix-ws decodes them: a frame that
//!   announces more than `MAX_FRAME_BYTES`, or a control frame that announces more than 125
//!   bytes, is refused as soon as its header has arrived. actix-http's decoder refuses an
//!   oversized frame only once all of its announced payload is buffered: a client announcing
//!   1 GiB could make the session buffer everything it sends until the idle timeout. Here the
//!   bytes are only counted, never held. It also hands the body on at most [`BATCH`] frames at a
//!   time: actix-ws decodes every frame it has read into a queue before it returns the first,
//!   and the queue keeps its capacity, so one burst of tiny frames (150 KB of empty pongs:
//!   25,000 frames) left 1.3 MiB with the connection for its whole life.
//! - [`Messages`] joins the fragments of a message by copying them into one buffer, bounded by
//!   `MAX_FRAME_BYTES`. actix-ws's aggregation keeps every fragment as its own `Bytes` (32
//!   bytes of handle each, plus what it pins of the read buffer): a message cut into one-byte
//!   fragments cost about 65 times its size, 4 MiB per connection at the default bound.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use actix_web::error::PayloadError;
use actix_web::web::{self, Bytes, BytesMut};
use actix_ws::{AggregatedMessage, Item, Message, MessageStream, ProtocolError};
use bytestring::ByteString;
use futures_util::Stream;

/// A client's frames refused here, before or after actix-ws decoded them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// A frame, or a fragmented message in all, over `MAX_FRAME_BYTES`.
    #[error("frame or message larger than MAX_FRAME_BYTES")]
    TooLarge,
    #[error("control frame announces more than 125 bytes")]
    ControlTooLong,
    /// A fragmented text message that is not UTF-8 once whole.
    #[error("text message is not valid UTF-8")]
    InvalidUtf8,
}

/// Why the stream of a client's messages ended in error.
#[derive(Debug)]
pub enum Failure {
    Protocol(ProtocolError),
    Refused(Refused),
}

impl Refused {
    /// The refusal carried by an error of the message stream, if it is one.
    pub fn of(error: &io::Error) -> Option<Refused> {
        match error.get_ref()?.downcast_ref::<PayloadError>()? {
            PayloadError::Io(inner) => inner.get_ref()?.downcast_ref::<Refused>().copied(),
            _ => None,
        }
    }
}

/// Most frames handed on at once: what actix-ws's queue of decoded frames holds at most.
pub const BATCH: usize = 64;

/// The request body of an upgraded connection, with its frame headers checked.
pub struct FrameGuard {
    inner: web::Payload,
    /// What is left of a chunk after a batch, and whether to yield before handing it on (so
    /// that actix-ws stops reading and decodes what it has).
    rest: Bytes,
    yield_first: bool,
    max: u64,
    /// The header being read (at most 14 bytes: 2, 8 of length, 4 of mask) and how much of it.
    header: [u8; 14],
    have: u8,
    /// Bytes of the current frame's payload still to come.
    payload_left: u64,
}

impl FrameGuard {
    pub fn new(inner: web::Payload, max_frame_bytes: usize) -> Self {
        FrameGuard {
            inner,
            rest: Bytes::new(),
            yield_first: false,
            max: max_frame_bytes as u64,
            header: [0; 14],
            have: 0,
            payload_left: 0,
        }
    }

    /// Follows the frames through `data`; refuses at the first header over a bound. Returns how
    /// much of `data` to hand on now: up to where frame `BATCH + 1` begins, or all of it.
    fn scan(&mut self, data: &[u8]) -> Result<usize, Refused> {
        let mut at = 0;
        let mut frames = 0;
        while at < data.len() {
            if self.payload_left > 0 {
                let n = self.payload_left.min((data.len() - at) as u64);
                self.payload_left -= n;
                at += n as usize;
                continue;
            }
            if self.have == 0 && frames == BATCH {
                return Ok(at);
            }
            self.header[self.have as usize] = data[at];
            self.have += 1;
            at += 1;
            if let Some(len) = self.complete_header() {
                self.have = 0;
                frames += 1;
                let control = self.header[0] & 0x08 != 0;
                if control && len > 125 {
                    return Err(Refused::ControlTooLong);
                }
                if len > self.max {
                    return Err(Refused::TooLarge);
                }
                self.payload_left = len;
            }
        }
        Ok(at)
    }

    /// The first batch of `bytes`; the rest is kept for later.
    fn batch(&mut self, mut bytes: Bytes) -> Result<Bytes, PayloadError> {
        match self.scan(&bytes) {
            Ok(cut) => {
                if cut < bytes.len() {
                    self.rest = bytes.split_off(cut);
                    self.yield_first = true;
                }
                Ok(bytes)
            }
            Err(refused) => Err(PayloadError::Io(io::Error::new(
                io::ErrorKind::InvalidData,
                refused,
            ))),
        }
    }

    /// The payload length, once the header is complete.
    fn complete_header(&self) -> Option<u64> {
        let h = &self.header[..self.have as usize];
        if h.len() < 2 {
            return None;
        }
        let (extended, mask) = (
            match h[1] & 0x7F {
                126 => 2,
                127 => 8,
                _ => 0,
            },
            if h[1] & 0x80 != 0 { 4 } else { 0 },
        );
        if h.len() < 2 + extended + mask {
            return None;
        }
        Some(match extended {
            2 => u64::from(u16::from_be_bytes([h[2], h[3]])),
            8 => u64::from_be_bytes(h[2..10].try_into().unwrap_or_default()),
            _ => u64::from(h[1] & 0x7F),
        })
    }
}

impl Stream for FrameGuard {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if !this.rest.is_empty() {
            // actix-ws reads until its body is pending, then decodes: pending once per batch.
            if std::mem::take(&mut this.yield_first) {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let rest = std::mem::take(&mut this.rest);
            return Poll::Ready(Some(this.batch(rest)));
        }
        Poll::Ready(match ready!(Pin::new(&mut this.inner).poll_next(cx)) {
            Some(Ok(bytes)) => Some(this.batch(bytes)),
            other => other,
        })
    }
}

/// The client's messages, fragments joined.
pub struct Messages {
    stream: MessageStream,
    max: usize,
    /// The fragmented message being received, and whether it is text (`None`: none open).
    partial: BytesMut,
    text: Option<bool>,
}

impl Messages {
    pub fn new(stream: MessageStream, max_message_bytes: usize) -> Self {
        Messages {
            stream,
            max: max_message_bytes,
            partial: BytesMut::new(),
            text: None,
        }
    }

    /// The next message; cancel-safe (what was read is kept in `self`).
    pub async fn recv(&mut self) -> Option<Result<AggregatedMessage, Failure>> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<AggregatedMessage, Failure>>> {
        loop {
            let message = match ready!(Pin::new(&mut self.stream).poll_next(cx)) {
                None => return Poll::Ready(None),
                Some(Err(error)) => return Poll::Ready(Some(Err(Failure::Protocol(error)))),
                Some(Ok(message)) => message,
            };
            let whole = match message {
                Message::Text(text) => AggregatedMessage::Text(text),
                Message::Binary(bytes) => AggregatedMessage::Binary(bytes),
                Message::Ping(bytes) => AggregatedMessage::Ping(bytes),
                Message::Pong(bytes) => AggregatedMessage::Pong(bytes),
                Message::Close(reason) => AggregatedMessage::Close(reason),
                Message::Nop => continue,
                // actix-http's codec refuses a fragment out of order (a continuation with no
                // message open, a new message while one is): they come here in order.
                Message::Continuation(item) => {
                    let (bytes, last) = match item {
                        Item::FirstText(bytes) => {
                            self.text = Some(true);
                            (bytes, false)
                        }
                        Item::FirstBinary(bytes) => {
                            self.text = Some(false);
                            (bytes, false)
                        }
                        Item::Continue(bytes) => (bytes, false),
                        Item::Last(bytes) => (bytes, true),
                    };
                    if self.partial.len() + bytes.len() > self.max {
                        self.partial = BytesMut::new();
                        return Poll::Ready(Some(Err(Failure::Refused(Refused::TooLarge))));
                    }
                    self.partial.extend_from_slice(&bytes);
                    if !last {
                        continue;
                    }
                    let bytes = std::mem::take(&mut self.partial).freeze();
                    match self.text.take() {
                        Some(false) => AggregatedMessage::Binary(bytes),
                        _ => match ByteString::try_from(bytes) {
                            Ok(text) => AggregatedMessage::Text(text),
                            Err(_) => return Poll::Ready(Some(Err(Failure::Refused(Refused::InvalidUtf8)))),
                        },
                    }
                }
            };
            return Poll::Ready(Some(Ok(whole)));
        }
    }
}

/// `body` with its frame headers checked against `max_frame_bytes`.
pub async fn guard(
    req: &actix_web::HttpRequest,
    body: web::Payload,
    max_frame_bytes: usize,
) -> actix_web::Result<web::Payload> {
    use actix_web::FromRequest as _;
    let stream: Pin<Box<dyn Stream<Item = Result<Bytes, PayloadError>>>> =
        Box::pin(FrameGuard::new(body, max_frame_bytes));
    let mut payload = actix_web::dev::Payload::from(stream);
    web::Payload::from_request(req, &mut payload).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(max: u64) -> FrameGuard {
        FrameGuard {
            inner: unreachable_payload(),
            rest: Bytes::new(),
            yield_first: false,
            max,
            header: [0; 14],
            have: 0,
            payload_left: 0,
        }
    }

    fn unreachable_payload() -> web::Payload {
        use actix_web::FromRequest as _;
        let req = actix_web::test::TestRequest::default().to_http_request();
        let mut payload = actix_web::dev::Payload::None;
        futures_util::FutureExt::now_or_never(web::Payload::from_request(&req, &mut payload))
            .unwrap()
            .unwrap()
    }

    fn frame(opcode: u8, masked: bool, len: u64) -> Vec<u8> {
        let m = if masked { 0x80 } else { 0 };
        let mut out = vec![0x80 | opcode];
        if len < 126 {
            out.push(m | len as u8);
        } else if len <= 0xFFFF {
            out.push(m | 126);
            out.extend((len as u16).to_be_bytes());
        } else {
            out.push(m | 127);
            out.extend(len.to_be_bytes());
        }
        if masked {
            out.extend([1, 2, 3, 4]);
        }
        out
    }

    #[test]
    fn follows_frames_across_chunks() {
        let mut g = guard(4096);
        let mut stream = Vec::new();
        for (opcode, len) in [(1, 5), (1, 300), (9, 125), (1, 4096), (0, 0), (1, 70)] {
            stream.extend(frame(opcode, true, len));
            stream.extend(std::iter::repeat_n(b'x', len as usize));
        }
        // Byte by byte, and in odd chunks: the headers are found wherever the chunks cut.
        for chunk in stream.chunks(1) {
            assert_eq!(g.scan(chunk), Ok(1));
        }
        let mut g = guard(4096);
        for chunk in stream.chunks(7) {
            assert_eq!(g.scan(chunk), Ok(chunk.len()));
        }
        assert_eq!((g.have, g.payload_left), (0, 0));
    }

    #[test]
    fn hands_on_a_batch_of_frames_at_a_time() {
        let mut stream = Vec::new();
        for _ in 0..BATCH * 2 + 5 {
            stream.extend(frame(10, true, 0));
        }
        let frame_len = 6;
        let mut g = guard(4096);
        assert_eq!(g.scan(&stream), Ok(BATCH * frame_len));
        assert_eq!(g.scan(&stream[BATCH * frame_len..]), Ok(BATCH * frame_len));
        assert_eq!(g.scan(&stream[2 * BATCH * frame_len..]), Ok(5 * frame_len));
    }

    #[test]
    fn refuses_at_the_header() {
        for (opcode, masked, len, refused) in [
            (1, true, 4097, Refused::TooLarge),
            (1, true, 1 << 30, Refused::TooLarge),
            (0, false, u64::MAX, Refused::TooLarge),
            (9, true, 126, Refused::ControlTooLong),
            (8, true, 1 << 40, Refused::ControlTooLong),
        ] {
            let mut g = guard(4096);
            let mut bytes = frame(1, true, 3);
            bytes.extend(b"abc");
            bytes.extend(frame(opcode, masked, len));
            assert_eq!(g.scan(&bytes), Err(refused), "{opcode} {len}");
        }
    }
}
