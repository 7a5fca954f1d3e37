//! RFC 6455 conformance with raw frames: a client of its own (a TCP stream, the upgrade written
//! by hand, frames encoded byte by byte) sends what a library client never would, and each case
//! asserts the exact answer: a close frame with its code, or the reply. The README's "Protocol
//! conformance (RFC 6455)" table lists the sections covered.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::*;

pub const CONTINUATION: u8 = 0x0;
pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;

/// How long a case waits for the server's answer.
const ANSWER: Duration = Duration::from_secs(5);

/// A frame header: FIN, the RSV bits (as the top nibble's three low bits, `0b0111_0000`), the
/// opcode, the mask bit and key, and the payload length in the shortest encoding (7 bits, 16 or
/// 64). `len` may announce more than is sent.
pub fn header(fin: bool, rsv: u8, opcode: u8, mask: Option<[u8; 4]>, len: u64) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | (rsv & 0b0111_0000) | (opcode & 0x0F)];
    let masked = if mask.is_some() { 0x80 } else { 0 };
    if len < 126 {
        out.push(masked | len as u8);
    } else if len <= u64::from(u16::MAX) {
        out.push(masked | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(masked | 127);
        out.extend_from_slice(&len.to_be_bytes());
    }
    if let Some(key) = mask {
        out.extend_from_slice(&key);
    }
    out
}

/// A whole frame, masked with `mask` when given.
pub fn encode(fin: bool, rsv: u8, opcode: u8, mask: Option<[u8; 4]>, payload: &[u8]) -> Vec<u8> {
    let mut out = header(fin, rsv, opcode, mask, payload.len() as u64);
    match mask {
        Some(key) => out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4])),
        None => out.extend_from_slice(payload),
    }
    out
}

/// A fresh masking key (RFC 6455 5.3: unpredictable, per frame).
pub fn key() -> [u8; 4] {
    let id = uuid::Uuid::new_v4();
    let b = id.as_bytes();
    [b[0], b[1], b[2], b[3]]
}

/// A frame the server sent.
#[derive(Debug)]
pub struct Frame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The close code and reason of a close frame.
    pub fn close(&self) -> (u16, String) {
        assert_eq!(self.opcode, CLOSE, "not a close frame: {self:?}");
        assert!(self.payload.len() >= 2, "a close without a code: {self:?}");
        let code = u16::from_be_bytes([self.payload[0], self.payload[1]]);
        let reason = String::from_utf8(self.payload[2..].to_vec()).expect("a UTF-8 close reason");
        (code, reason)
    }
}

/// A WebSocket client that writes whatever it is told to.
pub struct Raw {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

/// The server's answer to an HTTP request head: status, headers (names lowercased), and the
/// bytes that followed the head.
pub struct Head {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub rest: Vec<u8>,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads an HTTP response head from `stream` (at most `ANSWER`).
pub async fn read_head(stream: &mut TcpStream) -> Head {
    let mut data = Vec::new();
    let end = tokio::time::timeout(ANSWER, async {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                return end;
            }
            let n = stream.read(&mut chunk).await.expect("read the response head");
            assert!(
                n > 0,
                "connection closed before a response head: {:?}",
                String::from_utf8_lossy(&data)
            );
            data.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("a response head in time");
    let head = String::from_utf8_lossy(&data[..end]).to_string();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a status line: {status_line}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Head {
        status,
        headers,
        rest: data[end + 4..].to_vec(),
    }
}

/// An upgrade request for `target` (path and query) with a fresh key, plus `extra` header lines
/// (each ending in `\r\n`). Returns the request and its key.
pub fn upgrade_request(addr: SocketAddr, target: &str, extra: &str) -> (String, String) {
    let key = tokio_tungstenite::tungstenite::handshake::client::generate_key();
    let request = format!(
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    );
    (request, key)
}

impl Raw {
    /// Upgrades `target` by hand: checks 101, `Upgrade`, `Connection` and `Sec-WebSocket-Accept`
    /// (RFC 6455 4.1, 4.2.2).
    pub async fn upgrade(addr: SocketAddr, target: &str, extra: &str) -> Raw {
        let mut stream = TcpStream::connect(addr).await.expect("tcp connect");
        stream.set_nodelay(true).unwrap();
        let (request, key) = upgrade_request(addr, target, extra);
        stream.write_all(request.as_bytes()).await.unwrap();
        let head = read_head(&mut stream).await;
        assert_eq!(head.status, 101, "headers: {:?}", head.headers);
        assert_eq!(
            head.header("upgrade").map(str::to_ascii_lowercase).as_deref(),
            Some("websocket")
        );
        assert!(head
            .header("connection")
            .is_some_and(|c| c.to_ascii_lowercase().contains("upgrade")));
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        assert_eq!(head.header("sec-websocket-accept"), Some(accept.as_str()));
        Raw {
            stream,
            buf: head.rest,
        }
    }

    /// Upgrades with a good token for `user` and reads the `connected` message.
    pub async fn open(gw: &TestGateway, user: &str) -> Raw {
        let mut raw = Raw::upgrade(gw.addr, &format!("/ws?token={}", token(user)), "").await;
        let hello = raw.text().await;
        assert_eq!(hello["type"], "connected", "{hello}");
        raw
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// A masked frame.
    pub async fn send(&mut self, fin: bool, opcode: u8, payload: &[u8]) {
        self.send_bytes(&encode(fin, 0, opcode, Some(key()), payload))
            .await;
    }

    /// The next frame from the server; `None` when it closed the connection. Checks what a
    /// server frame must be: unmasked, no reserved bits (RFC 6455 5.1, 5.2).
    pub async fn next_frame(&mut self) -> Option<Frame> {
        tokio::time::timeout(ANSWER, async {
            loop {
                if let Some((frame, used)) = decode(&self.buf) {
                    self.buf.drain(..used);
                    return Some(frame);
                }
                let mut chunk = [0u8; 8192];
                match self.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => {
                        assert!(self.buf.is_empty(), "a partial frame before EOF: {:?}", self.buf);
                        return None;
                    }
                    Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await
        .expect("no answer from the server in time")
    }

    /// The next text message (skipping the server's heartbeat pings), as JSON checked against
    /// the schema.
    pub async fn text(&mut self) -> Value {
        loop {
            let frame = self.next_frame().await.expect("a message, not EOF");
            match frame.opcode {
                TEXT => {
                    assert!(frame.fin, "the server does not fragment");
                    let value: Value = serde_json::from_slice(&frame.payload).expect("JSON");
                    assert_server_schema(&value);
                    return value;
                }
                PING => continue,
                _ => panic!("expected a text message, got {frame:?}"),
            }
        }
    }

    /// Expects a close frame with `code` (text messages and pings before it are allowed); answers
    /// it as a client does (RFC 6455 5.5.1: a close frame back, then the end of its TCP stream)
    /// and expects the server to end the connection. Returns the reason.
    pub async fn expect_close(&mut self, code: u16) -> String {
        let reason = self.read_close(code).await;
        let _ = self
            .stream
            .write_all(&encode(true, 0, CLOSE, Some(key()), &code.to_be_bytes()))
            .await;
        let _ = self.stream.shutdown().await;
        self.expect_eof().await;
        reason
    }

    /// Reads up to a close frame with `code` (text messages and pings before it are allowed)
    /// and returns its reason.
    pub async fn read_close(&mut self, code: u16) -> String {
        loop {
            let frame = self
                .next_frame()
                .await
                .unwrap_or_else(|| panic!("the connection ended without a close frame (expected {code})"));
            match frame.opcode {
                CLOSE => {
                    assert!(frame.fin, "a control frame is never fragmented");
                    let (got, reason) = frame.close();
                    assert_eq!(got, code, "close reason: {reason}");
                    return reason;
                }
                TEXT | PING => continue,
                other => panic!("expected close {code}, got opcode {other}: {frame:?}"),
            }
        }
    }

    /// Nothing more comes: the server closed the TCP connection.
    pub async fn expect_eof(&mut self) {
        if let Some(frame) = self.next_frame().await {
            panic!("nothing may follow a close frame, got {frame:?}");
        }
    }
}

/// Decodes one server frame from the front of `buf`: the frame and the bytes it took.
fn decode(buf: &[u8]) -> Option<(Frame, usize)> {
    if buf.len() < 2 {
        return None;
    }
    assert_eq!(buf[0] & 0b0111_0000, 0, "the server set reserved bits");
    assert_eq!(buf[1] & 0x80, 0, "the server masked a frame");
    let (len, at) = match buf[1] & 0x7F {
        126 if buf.len() >= 4 => (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
        127 if buf.len() >= 10 => (u64::from_be_bytes(buf[2..10].try_into().unwrap()), 10),
        126 | 127 => return None,
        n => (u64::from(n), 2),
    };
    let end = at + len as usize;
    if buf.len() < end {
        return None;
    }
    let frame = Frame {
        fin: buf[0] & 0x80 != 0,
        opcode: buf[0] & 0x0F,
        payload: buf[at..end].to_vec(),
    };
    Some((frame, end))
}

/// A `ping` message of exactly `len` bytes.
pub fn ping_of(len: usize) -> String {
    let shell = r#"{"type":"ping","pad":""}"#.len();
    format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(len - shell))
}

fn assert_pong(msg: &Value) {
    assert_eq!(msg["type"], "pong", "{msg}");
}

/// The environment of these tests' gateways: no Kafka, and no drain window, so that stopping
/// one with sessions open does not wait for them.
pub fn env() -> Vec<(String, String)> {
    let mut env = env_for(None, None);
    set(&mut env, "DRAIN_WINDOW_SECS", "0");
    env
}

/// The gateway of these tests: `MAX_FRAME_BYTES` low, so the size cases stay small.
async fn gateway() -> TestGateway {
    let mut env = env();
    set(&mut env, "MAX_FRAME_BYTES", "4096");
    TestGateway::start(env).await
}

/// 4.1, 4.2.1, 4.2.2, 4.4: the opening handshake (checked by `Raw::upgrade` on every connection),
/// and the refusals of a bad one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_handshake() {
    let gw = gateway().await;
    let mut raw = Raw::open(&gw, "hs").await;
    raw.send(true, TEXT, br#"{"type":"ping"}"#).await;
    assert_pong(&raw.text().await);

    let target = format!("/ws?token={}", token("hs"));
    let addr = gw.addr;
    let answer = |request: String| async move {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        read_head(&mut stream).await
    };
    // A version the server does not speak: 426 naming the one it does (4.2.2, 4.4).
    let (request, _) = upgrade_request(gw.addr, &target, "");
    let head = answer(request.replace("Version: 13", "Version: 8")).await;
    assert_eq!(head.status, 426);
    assert_eq!(head.header("sec-websocket-version"), Some("13"));
    // A key that is not 16 bytes in base64, or none: 400 (4.2.1).
    let (request, key) = upgrade_request(gw.addr, &target, "");
    assert_eq!(answer(request.replace(&key, "c2hvcnQ=")).await.status, 400);
    let without_key: String = request
        .split("\r\n")
        .filter(|l| !l.starts_with("Sec-WebSocket-Key"))
        .collect::<Vec<_>>()
        .join("\r\n");
    assert_eq!(answer(without_key).await.status, 400);
    // Not an upgrade at all.
    let (request, _) = upgrade_request(gw.addr, &target, "");
    assert_eq!(
        answer(request.replace("Upgrade: websocket\r\n", "")).await.status,
        400
    );
    gw.stop().await;
}

/// 5.2: the three payload length encodings (7-bit, 16-bit, 64-bit), each masked with its own
/// key (5.3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_length_encodings() {
    let mut env = env();
    set(&mut env, "MAX_FRAME_BYTES", "70000");
    let gw = TestGateway::start(env).await;
    let mut raw = Raw::open(&gw, "len").await;
    for len in [15, 125, 126, 4000, 65_535, 65_536, 69_000] {
        let msg = if len == 15 {
            r#"{"type":"ping"}"#.to_string()
        } else {
            ping_of(len)
        };
        assert_eq!(msg.len(), len);
        let frame = encode(true, 0, TEXT, Some(key()), msg.as_bytes());
        let header_len = match len {
            0..=125 => 6,
            126..=65_535 => 8,
            _ => 14,
        };
        assert_eq!(frame.len(), header_len + len);
        raw.send_bytes(&frame).await;
        assert_pong(&raw.text().await);
    }
    gw.stop().await;
}

/// 5.4, 5.5.2, 5.5.3: a fragmented text message is answered once whole; a ping between its
/// fragments is answered at once with a pong carrying the same payload, then the message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragments_and_control_frames_between_them() {
    let gw = gateway().await;
    let mut raw = Raw::open(&gw, "frag").await;
    raw.send(false, TEXT, br#"{"type":"#).await;
    raw.send(true, CONTINUATION, br#""ping"}"#).await;
    assert_pong(&raw.text().await);

    // Three fragments, empty ones among them, and a ping in the middle.
    raw.send(false, TEXT, br#"{"type""#).await;
    raw.send(false, CONTINUATION, b"").await;
    raw.send(true, PING, b"between").await;
    let pong = raw.next_frame().await.expect("a pong");
    assert_eq!(
        (pong.opcode, pong.fin, pong.payload.as_slice()),
        (PONG, true, &b"between"[..])
    );
    raw.send(false, CONTINUATION, br#":"pi"#).await;
    raw.send(true, CONTINUATION, br#"ng"}"#).await;
    assert_pong(&raw.text().await);

    // An unsolicited pong is allowed and not answered (5.5.3): the next answer is the pong
    // message for the next ping.
    raw.send(true, PONG, b"unsolicited").await;
    raw.send(true, PING, &[7u8; 125]).await;
    let pong = raw.next_frame().await.expect("a pong");
    assert_eq!(
        (pong.opcode, pong.payload),
        (PONG, vec![7u8; 125]),
        "125 bytes: the most a control frame takes"
    );
    raw.send(true, TEXT, br#"{"type":"ping"}"#).await;
    assert_pong(&raw.text().await);
    gw.stop().await;
}

/// 8.1, 5.6: a text message that is not UTF-8 fails the connection with 1007, whole or
/// fragmented; a character split across two fragments is fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_closes_1007() {
    let gw = gateway().await;
    let mut raw = Raw::open(&gw, "utf8").await;
    raw.send(true, TEXT, b"{\"type\":\"\xff\xfe\"}").await;
    raw.expect_close(1007).await;

    // A truncated sequence at the end of the message.
    let mut raw = Raw::open(&gw, "utf8").await;
    raw.send(true, TEXT, b"{\"type\":\"ping\"}\xce").await;
    raw.expect_close(1007).await;

    let mut raw = Raw::open(&gw, "utf8").await;
    raw.send(false, TEXT, b"{\"type\":\"ping\",\"x\":\"\xed\xa0")
        .await;
    // A surrogate (U+D800) encoded: not UTF-8.
    raw.send(true, CONTINUATION, b"\x80\"}").await;
    raw.expect_close(1007).await;

    // "é" (C3 A9) split between fragments is one valid character.
    let mut raw = Raw::open(&gw, "utf8").await;
    raw.send(false, TEXT, b"{\"type\":\"ping\",\"x\":\"\xc3").await;
    raw.send(true, CONTINUATION, b"\xa9\"}").await;
    assert_pong(&raw.text().await);
    gw.stop().await;
}

/// 5.2: reserved bits without a negotiated extension, and reserved opcodes, fail with 1002.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_bits_and_opcodes_close_1002() {
    let gw = gateway().await;
    for rsv in [0b0100_0000, 0b0010_0000, 0b0001_0000, 0b0111_0000] {
        let mut raw = Raw::open(&gw, "rsv").await;
        raw.send_bytes(&encode(true, rsv, TEXT, Some(key()), br#"{"type":"ping"}"#))
            .await;
        raw.expect_close(1002).await;
    }
    // On a control frame too.
    let mut raw = Raw::open(&gw, "rsv").await;
    raw.send_bytes(&encode(true, 0b0100_0000, PING, Some(key()), b"x"))
        .await;
    raw.expect_close(1002).await;
    for opcode in [0x3, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF] {
        let mut raw = Raw::open(&gw, "op").await;
        raw.send(true, opcode, b"x").await;
        raw.expect_close(1002).await;
    }
    gw.stop().await;
}

/// 5.1, 5.3: a client frame must be masked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmasked_client_frames_close_1002() {
    let gw = gateway().await;
    for opcode in [TEXT, PING] {
        let mut raw = Raw::open(&gw, "unmasked").await;
        let payload: &[u8] = if opcode == TEXT {
            br#"{"type":"ping"}"#
        } else {
            b""
        };
        raw.send_bytes(&encode(true, 0, opcode, None, payload)).await;
        raw.expect_close(1002).await;
    }
    gw.stop().await;
}

/// 5.5: control frames carry at most 125 bytes and are never fragmented.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_frame_rules_close_1002() {
    let gw = gateway().await;
    for opcode in [PING, PONG, CLOSE] {
        let mut raw = Raw::open(&gw, "ctl").await;
        let mut payload = vec![b'a'; 126];
        if opcode == CLOSE {
            payload[..2].copy_from_slice(&1000u16.to_be_bytes());
        }
        raw.send(true, opcode, &payload).await;
        raw.expect_close(1002).await;
    }
    for opcode in [PING, PONG, CLOSE] {
        let mut raw = Raw::open(&gw, "ctl").await;
        let payload: &[u8] = if opcode == CLOSE { &[0x03, 0xE8] } else { b"x" };
        raw.send(false, opcode, payload).await;
        raw.expect_close(1002).await;
    }
    gw.stop().await;
}

/// 5.5.1, 7.1.2, 7.4.1, 7.4.2: the closing handshake, and close frames that are not valid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_frames() {
    let gw = gateway().await;
    // A valid close is answered with a close frame (1000), then the server ends the TCP
    // connection by itself, although this client neither closes its side nor sends anything more
    // (actix-http waits `client_disconnect_timeout`, 1 s, for the client to go first).
    let mut raw = Raw::open(&gw, "close").await;
    raw.send(true, CLOSE, b"\x03\xe8bye").await;
    let sent = std::time::Instant::now();
    raw.read_close(1000).await;
    raw.expect_eof().await;
    assert!(
        sent.elapsed() < Duration::from_secs(3),
        "TCP closed after {:?}",
        sent.elapsed()
    );
    // Without a payload (no status code), and with codes a client may send.
    let mut raw = Raw::open(&gw, "close").await;
    raw.send(true, CLOSE, b"").await;
    raw.expect_close(1000).await;
    for code in [1001u16, 1003, 1007, 1011, 3000, 3999, 4000, 4999] {
        let mut raw = Raw::open(&gw, "close").await;
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice("é".as_bytes());
        raw.send(true, CLOSE, &payload).await;
        raw.expect_close(1000).await;
    }
    // Codes that must not be sent (1005, 1006, 1015), unassigned or out of range: 1002.
    for code in [
        0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
    ] {
        let mut raw = Raw::open(&gw, "close").await;
        raw.send(true, CLOSE, &code.to_be_bytes()).await;
        raw.expect_close(1002).await;
    }
    // A one-byte payload, and a reason that is not UTF-8.
    for payload in [&b"\x03"[..], &b"\x03\xe8\xff\xfe"[..]] {
        let mut raw = Raw::open(&gw, "close").await;
        raw.send(true, CLOSE, payload).await;
        raw.expect_close(1002).await;
    }
    gw.wait_connections(0).await;
    gw.stop().await;
}

/// 5.4: a continuation with no message started, and a new data frame while one is open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragmentation_errors_close_1002() {
    let gw = gateway().await;
    for fin in [true, false] {
        let mut raw = Raw::open(&gw, "cont").await;
        raw.send(fin, CONTINUATION, br#"{"type":"ping"}"#).await;
        raw.expect_close(1002).await;
    }
    // After a complete fragmented message, the next continuation has nothing to continue.
    let mut raw = Raw::open(&gw, "cont").await;
    raw.send(false, TEXT, br#"{"type":"#).await;
    raw.send(true, CONTINUATION, br#""ping"}"#).await;
    assert_pong(&raw.text().await);
    raw.send(true, CONTINUATION, b"{}").await;
    raw.expect_close(1002).await;
    for (fin, opcode) in [(true, TEXT), (false, TEXT), (true, BINARY)] {
        let mut raw = Raw::open(&gw, "cont").await;
        raw.send(false, TEXT, br#"{"type":"#).await;
        raw.send(fin, opcode, br#"{"type":"ping"}"#).await;
        raw.expect_close(1002).await;
    }
    gw.stop().await;
}

/// 7.4.1 (1009), 10.4: a message over `MAX_FRAME_BYTES`, in one frame or in fragments; at the
/// bound exactly, answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_close_1009() {
    let gw = gateway().await;
    let mut raw = Raw::open(&gw, "big").await;
    raw.send(true, TEXT, ping_of(4096).as_bytes()).await;
    assert_pong(&raw.text().await);
    raw.send(true, TEXT, ping_of(4097).as_bytes()).await;
    raw.expect_close(1009).await;

    // Fragments: 4096 in all is fine, one byte more is not.
    for (total, answer) in [(4096, None), (4097, Some(1009))] {
        let mut raw = Raw::open(&gw, "big").await;
        let msg = ping_of(total);
        let chunks: Vec<&[u8]> = msg.as_bytes().chunks(1000).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let opcode = if i == 0 { TEXT } else { CONTINUATION };
            raw.send(i == chunks.len() - 1, opcode, chunk).await;
        }
        match answer {
            None => assert_pong(&raw.text().await),
            Some(code) => {
                raw.expect_close(code).await;
            }
        }
    }

    // Many tiny continuations whose total passes the bound: closed as soon as it does.
    let mut raw = Raw::open(&gw, "big").await;
    let mut bytes = encode(false, 0, TEXT, Some(key()), b"{");
    for _ in 0..5000 {
        bytes.extend(encode(false, 0, CONTINUATION, Some(key()), b" "));
    }
    raw.send_bytes(&bytes).await;
    raw.expect_close(1009).await;

    // A binary message: the protocol is text (1003).
    let mut raw = Raw::open(&gw, "big").await;
    raw.send(true, BINARY, b"\x01\x02").await;
    raw.expect_close(1003).await;
    gw.stop().await;
}
