//! A hostile client against the running gateway: floods of upgrades, heads that never end,
//! frames that lie about their size, messages cut into thousands of fragments, floods of
//! joins, oversized cursors and tokens, tokens that try to choose their own key. Each test
//! asserts the limit that holds and that the gateway keeps serving a well-behaved client. The
//! README's "Abuse" table lists them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::conformance::{
    self, encode, header, key, read_head, upgrade_request, Raw, CONTINUATION, PING, TEXT,
};
use crate::harness::*;

const API_KEY: &str = "abuse-api-key-0123456789";

/// Open file descriptors of a process (its sockets among them).
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

/// A metric's value in a `/metrics` text.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {name}"))
}

/// Publishes one task event for `user` through a gateway process's internal API.
async fn publish_to(service: &ServiceProcess, user: &str, n: u64) {
    let event = json!({"event_type": "task.updated", "user_id": user, "task": {"n": n}});
    assert_event_schema(&event);
    let resp = http()
        .post(format!("http://127.0.0.1:{}/api/publish", service.internal_port))
        .bearer_auth(API_KEY)
        .json(&event)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
}

/// The next `task_update`, skipping other messages.
async fn next_event(client: &mut Client) -> Value {
    loop {
        let msg = client.recv().await;
        if msg["type"] == "task_update" {
            return msg;
        }
    }
}

/// How a hostile upgrade ended.
#[derive(Debug, PartialEq, Eq, Hash, Clone, Copy)]
enum Outcome {
    /// Upgraded, then closed with this code.
    Closed(u16),
    /// Refused at the upgrade with this status.
    Status(u16),
}

/// One upgrade with `target`, read to its end.
async fn hostile_upgrade(addr: std::net::SocketAddr, target: String) -> Outcome {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let (request, _) = upgrade_request(addr, &target, "");
    stream.write_all(request.as_bytes()).await.unwrap();
    let head = read_head(&mut stream).await;
    if head.status != 101 {
        return Outcome::Status(head.status);
    }
    let mut data = head.rest;
    let mut chunk = [0u8; 1024];
    // The close frame: a two-byte header, then the code.
    while data.len() < 4 {
        let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
            .await
            .expect("a close in time")
            .unwrap();
        assert!(n > 0, "ended without a close frame");
        data.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(data[0], 0x88, "a close frame");
    Outcome::Closed(u16::from_be_bytes([data[2], data[3]]))
}

/// 1000 upgrades at once, half with forged tokens and half with none, against a gateway process:
/// every one is refused (4001 after the upgrade, or 401 at it once the refusal is remembered),
/// a good client keeps getting its events during and after, and the gateway ends with exactly
/// the good connections, its file descriptors back where they were and its memory bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_flood_is_refused_and_leaves_nothing_behind() {
    let service = ServiceProcess::spawn(&[("SERVER_API_KEY", API_KEY), ("WORKERS", "2")]).await;
    let addr: std::net::SocketAddr = service.base().parse().unwrap();
    let url = |t: &str| format!("ws://{}/ws?token={t}", service.base());
    let mut good = connect(&url(&token("good"))).await;
    // Warm up (worker threads, buffers), then take the baseline.
    for _ in 0..20 {
        hostile_upgrade(addr, "/ws".into()).await;
    }
    let (rss_before, fds_before) = (service.rss_kib(), fds(service.pid()));

    let started = Instant::now();
    let mut flood = Vec::new();
    for i in 0..1000 {
        let target = if i % 2 == 0 {
            let forged = token_with(
                Algorithm::HS256,
                &EncodingKey::from_secret(b"not-the-gateway-secret-0123"),
                json!({"sub": format!("mallory{i}"), "exp": now_secs() + 600}),
            );
            format!("/ws?token={forged}")
        } else {
            "/ws".to_string()
        };
        flood.push(tokio::spawn(hostile_upgrade(addr, target)));
    }
    // During the flood: the good client gets an event, a new one connects and gets one.
    publish_to(&service, "good", 1).await;
    assert_eq!(next_event(&mut good).await["task"]["n"], 1);
    let mut late = connect(&url(&token("good"))).await;
    publish_to(&service, "good", 2).await;
    assert_eq!(next_event(&mut late).await["task"]["n"], 2);
    assert_eq!(next_event(&mut good).await["task"]["n"], 2);

    let mut outcomes = std::collections::HashMap::new();
    for task in flood {
        *outcomes.entry(task.await.unwrap()).or_insert(0) += 1;
    }
    let took = started.elapsed();
    let refused = outcomes.get(&Outcome::Closed(4001)).copied().unwrap_or(0)
        + outcomes.get(&Outcome::Status(401)).copied().unwrap_or(0);
    assert_eq!(refused, 1000, "every hostile upgrade refused: {outcomes:?}");
    assert_eq!(
        outcomes.get(&Outcome::Closed(4001)),
        Some(&500),
        "every forged token is verified and closed 4001: {outcomes:?}"
    );
    // After: still serving, exactly the two good sessions, nothing leaked.
    publish_to(&service, "good", 3).await;
    assert_eq!(next_event(&mut good).await["task"]["n"], 3);
    assert_eq!(next_event(&mut late).await["task"]["n"], 3);
    let metrics = http()
        .get(format!("http://127.0.0.1:{}/metrics", service.internal_port))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(metric(&metrics, "gateway_connections"), 2.0);
    let deadline = Instant::now() + WAIT;
    while fds(service.pid()) > fds_before + 2 {
        assert!(
            Instant::now() < deadline,
            "sockets leaked: {} fds, {} before",
            fds(service.pid()),
            fds_before
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let grown = service.rss_kib().saturating_sub(rss_before);
    println!("upgrade flood: 1000 upgrades in {took:?}, {outcomes:?}, RSS +{grown} KiB");
    assert!(
        grown < 32 * 1024,
        "RSS grew by {grown} KiB for a flood of refused upgrades"
    );
}

/// Slowloris on the upgrade: connections that send a request line and then one header byte a
/// second, and connections that send nothing, are answered 408 and dropped when the request
/// head's deadline (5 s, not moved by the trickle) passes; meanwhile a good client connects and
/// is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_heads_are_dropped_after_5_s() {
    let gw = TestGateway::start(conformance::env()).await;
    let addr = gw.addr;
    let dropped = Arc::new(AtomicUsize::new(0));
    let opened = Arc::new(AtomicUsize::new(0));
    let mut slow = Vec::new();
    for i in 0..40 {
        let (dropped, opened) = (dropped.clone(), opened.clone());
        slow.push(tokio::spawn(async move {
            let started = Instant::now();
            let mut stream = TcpStream::connect(addr).await.unwrap();
            let (request, _) = upgrade_request(addr, &format!("/ws?token={}", token("slow")), "");
            let (line, _) = request.split_once("\r\n").unwrap();
            if i % 2 == 0 {
                stream
                    .write_all(format!("{line}\r\nX-Slow: ").as_bytes())
                    .await
                    .unwrap();
            }
            opened.fetch_add(1, Ordering::SeqCst);
            let mut answer = Vec::new();
            let mut chunk = [0u8; 256];
            loop {
                tokio::select! {
                    read = stream.read(&mut chunk) => match read {
                        Ok(0) | Err(_) => break,
                        Ok(n) => answer.extend_from_slice(&chunk[..n]),
                    },
                    () = tokio::time::sleep(Duration::from_secs(1)), if i % 2 == 0 => {
                        // One more byte of the header, never its end.
                        if stream.write_all(b"a").await.is_err() {
                            break;
                        }
                    }
                }
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "still open after 10 s"
                );
            }
            dropped.fetch_add(1, Ordering::SeqCst);
            (started.elapsed(), String::from_utf8_lossy(&answer).to_string())
        }));
    }
    // Every slow connection is open: the good client comes while they are held (each is
    // dropped no sooner than 4.5 s, checked below).
    let deadline = Instant::now() + WAIT;
    while opened.load(Ordering::SeqCst) < 40 {
        assert!(Instant::now() < deadline, "the slow connections did not open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(dropped.load(Ordering::SeqCst), 0, "not before the deadline");
    let mut good = connect(&gw.url(&token("patient"))).await;
    good.assert_nothing_pending().await;
    let mut answers = std::collections::BTreeMap::new();
    for task in slow {
        let (took, answer) = task.await.unwrap();
        *answers
            .entry(answer.lines().next().unwrap_or("(nothing)").to_string())
            .or_insert(0) += 1;
        assert!(
            took >= Duration::from_millis(4500) && took < Duration::from_secs(8),
            "dropped after {took:?}"
        );
        assert!(answer.starts_with("HTTP/1.1 408 "), "answered {answer:?}");
    }
    println!("slow heads: {answers:?}");
    good.assert_nothing_pending().await;
    gw.stop().await;
}

/// Slowloris inside the socket: a frame whose payload comes one byte every 300 ms. No frame
/// arrives while it trickles, so the idle timeout (`CLIENT_TIMEOUT_SECS`, 2 s here) cuts it
/// with 4000, although bytes keep coming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_frame_is_cut_at_the_idle_timeout() {
    let mut env = conformance::env();
    set(&mut env, "HEARTBEAT_INTERVAL_SECS", "1");
    set(&mut env, "CLIENT_TIMEOUT_SECS", "2");
    let gw = TestGateway::start(env).await;
    let mut raw = Raw::open(&gw, "trickle").await;
    let mask = key();
    let msg = conformance::ping_of(100);
    let frame = encode(true, 0, TEXT, Some(mask), msg.as_bytes());
    let started = Instant::now();
    let (mut read, mut write) = raw.stream.split();
    let trickle = async {
        for byte in &frame {
            if write.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    let mut seen = Vec::new();
    let reader = async {
        let mut chunk = [0u8; 256];
        while let Ok(n @ 1..) = read.read(&mut chunk).await {
            seen.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::select! {
        () = reader => {}
        () = trickle => panic!("the whole frame trickled in without the gateway closing"),
    }
    let took = started.elapsed();
    // Pings (0x89) may come first; the close (0x88) carries 4000.
    let close = seen.windows(4).find(|w| w[0] == 0x88).expect("a close frame");
    assert_eq!(u16::from_be_bytes([close[2], close[3]]), 4000);
    // Cut at the timeout (2 s, checked every 1 s heartbeat), long before the frame is whole
    // (about 30 s): 8 s leaves a loaded machine room.
    assert!(took < Duration::from_secs(8), "closed after {took:?}");
    gw.stop().await;
}

/// A frame header that announces far more than `MAX_FRAME_BYTES` and then sends a few bytes is
/// closed 1009 at once, without waiting for (or buffering) the payload; a control frame that
/// announces more than 125 bytes, 1002.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_that_lies_about_its_size_is_closed_at_once() {
    let mut env = conformance::env();
    set(&mut env, "MAX_FRAME_BYTES", "4096");
    let gw = TestGateway::start(env).await;
    for (opcode, len, code) in [
        (TEXT, (1u64 << 63) - 1, 1009),
        (TEXT, 1 << 30, 1009),
        (TEXT, 4097, 1009),
        (CONTINUATION, 1 << 30, 1009),
        (PING, 1 << 30, 1002),
        (PING, 126, 1002),
    ] {
        let mut raw = Raw::open(&gw, "liar").await;
        let mut bytes = header(opcode != CONTINUATION, 0, opcode, Some(key()), len);
        if opcode == CONTINUATION {
            bytes = [encode(false, 0, TEXT, Some(key()), b"{"), bytes].concat();
        }
        bytes.extend_from_slice(b"0123456789abcdef");
        let started = Instant::now();
        raw.send_bytes(&bytes).await;
        raw.expect_close(code).await;
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{len} bytes announced: closed after {:?}",
            started.elapsed()
        );
    }
    let mut c = connect(&gw.url(&token("honest"))).await;
    c.assert_nothing_pending().await;
    gw.stop().await;
}

/// The same lie, against a gateway process, with the bytes really sent: 1 GiB announced, then
/// as much as the connection takes. The gateway closes with 1009 at once, reads and drops what
/// still comes for at most `client_disconnect_timeout` (1 s), then ends the connection; its memory
/// does not grow with what was sent (before the frame guard, the whole frame was buffered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_that_lies_about_its_size_is_not_buffered() {
    let service = ServiceProcess::spawn(&[]).await;
    let addr: std::net::SocketAddr = service.base().parse().unwrap();
    let rss_before = service.rss_kib();
    let mut raw = Raw::upgrade(addr, &format!("/ws?token={}", token("liar")), "").await;
    assert_eq!(raw.text().await["type"], "connected");
    raw.send_bytes(&header(true, 0, TEXT, Some(key()), 1 << 30)).await;
    let started = Instant::now();
    let (mut read, mut write) = raw.stream.split();
    let reader = async {
        let mut seen = Vec::new();
        let mut chunk = [0u8; 1024];
        while let Ok(n @ 1..) = read.read(&mut chunk).await {
            seen.extend_from_slice(&chunk[..n]);
        }
        (seen, started.elapsed())
    };
    // At most 512 MiB, so that a gateway that buffers the frame cannot take the machine down.
    let writer = async {
        let chunk = vec![b'x'; 1 << 20];
        let mut written = 0usize;
        while written < 512 << 20 && write.write_all(&chunk).await.is_ok() {
            written += chunk.len();
        }
        written
    };
    let ((seen, ended), written) =
        tokio::time::timeout(Duration::from_secs(10), async { tokio::join!(reader, writer) })
            .await
            .expect("the gateway ends the connection");
    let grown = service.rss_kib().saturating_sub(rss_before);
    println!(
        "frame size lie: {} MiB written, connection ended after {ended:?}, RSS +{grown} KiB",
        written >> 20
    );
    assert_eq!(
        &seen[..4],
        &[0x88, seen[1], 0x03, 0xF1],
        "a close frame with 1009 first: {seen:?}"
    );
    assert!(
        ended < Duration::from_secs(3),
        "the gateway kept the connection for {ended:?}"
    );
    assert!(
        grown < 16 * 1024,
        "RSS grew by {grown} KiB after {} MiB of a lying frame",
        written >> 20
    );
}

/// A message cut into thousands of one-byte fragments, within `MAX_FRAME_BYTES` in all: it is
/// answered, and the gateway answers another client meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_tiny_fragments() {
    let gw = TestGateway::start(conformance::env()).await;
    let mut other = connect(&gw.url(&token("bystander"))).await;
    let mut raw = Raw::open(&gw, "shredder").await;
    let bytes = shredded(&conformance::ping_of(60_000), true);
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        raw.send_bytes(&bytes).await;
        raw
    });
    other.assert_nothing_pending().await;
    let mut raw = writer.await.unwrap();
    assert_eq!(raw.text().await["type"], "pong");
    println!("60000 one-byte fragments answered after {:?}", started.elapsed());
    other.assert_nothing_pending().await;
    gw.stop().await;
}

/// `msg` as one-byte fragments, the last one with FIN when `finished`.
fn shredded(msg: &str, finished: bool) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(msg.len() * 7);
    for (i, b) in msg.bytes().enumerate() {
        let opcode = if i == 0 { TEXT } else { CONTINUATION };
        let last = i == msg.len() - 1;
        if last && !finished {
            break;
        }
        bytes.extend(encode(last, 0, opcode, Some(key()), &[b]));
    }
    bytes
}

/// `n` raw sessions of users `{prefix}0`..., each past its `connected` message.
async fn connected_raw(addr: std::net::SocketAddr, n: usize, prefix: &str) -> Vec<Raw> {
    let mut held = Vec::with_capacity(n);
    for i in 0..n {
        let mut raw = Raw::upgrade(addr, &format!("/ws?token={}", token(&format!("{prefix}{i}"))), "").await;
        assert_eq!(raw.text().await["type"], "connected");
        held.push(raw);
    }
    held
}

/// A message held open in one-byte fragments costs the gateway about its size, not a multiple:
/// 20 connections each hold 65,000 bytes of fragments (the default `MAX_FRAME_BYTES` is 64 KiB),
/// measured on a gateway process. actix-ws's own aggregation held each fragment as its own
/// `Bytes`: 4.2 MiB per connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_fragments_cost_about_their_size() {
    let service = ServiceProcess::spawn(&[("WORKERS", "1")]).await;
    let addr: std::net::SocketAddr = service.base().parse().unwrap();
    let n = 20;
    let msg = conformance::ping_of(65_000);
    let mut held = connected_raw(addr, n, "holder").await;
    let rss_before = service.rss_kib();
    let fragments = shredded(&msg, false);
    for raw in held.iter_mut() {
        raw.send_bytes(&fragments).await;
    }
    // Every fragment read: the last one then completes each message at once.
    let last = encode(
        true,
        0,
        CONTINUATION,
        Some(key()),
        &msg.as_bytes()[msg.len() - 1..],
    );
    held[n - 1].send_bytes(&last).await;
    assert_eq!(held[n - 1].text().await["type"], "pong");
    let per_connection = service.rss_kib().saturating_sub(rss_before) / n as u64;
    println!("65000 one-byte fragments held: {per_connection} KiB per connection");
    assert!(per_connection < 512, "{per_connection} KiB per connection");
    for raw in held.iter_mut().take(n - 1) {
        raw.send_bytes(&last).await;
        assert_eq!(raw.text().await["type"], "pong");
    }
}

/// A burst of tiny frames leaves nothing behind: 20 connections each send 25,000 empty pongs
/// (150 KB) at once, then a ping. actix-ws decodes all it has read into a queue that keeps its
/// capacity: 1.3 MiB per connection for its whole life, before the frame guard handed the body
/// on in batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_tiny_frames_leaves_no_memory_behind() {
    let service = ServiceProcess::spawn(&[("WORKERS", "1")]).await;
    let addr: std::net::SocketAddr = service.base().parse().unwrap();
    let n = 20;
    let mut held = connected_raw(addr, n, "burst").await;
    let rss_before = service.rss_kib();
    let mut burst = Vec::new();
    for _ in 0..25_000 {
        burst.extend(encode(true, 0, conformance::PONG, Some(key()), b""));
    }
    burst.extend(encode(true, 0, TEXT, Some(key()), br#"{"type":"ping"}"#));
    for raw in held.iter_mut() {
        raw.send_bytes(&burst).await;
    }
    for raw in held.iter_mut() {
        assert_eq!(raw.text().await["type"], "pong");
    }
    let per_connection = service.rss_kib().saturating_sub(rss_before) / n as u64;
    println!("25,000 empty pongs at once: {per_connection} KiB per connection after");
    assert!(per_connection < 256, "{per_connection} KiB per connection");
}

/// A join_room flood: rooms per session stay at `MAX_ROOMS_PER_SESSION`; with the message rate
/// limit on, a burst's worth of messages is handled, the next ones are answered `rate_limited`,
/// and after a burst's worth of those the session is closed 4009.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_room_flood_is_rate_limited_and_bounded() {
    let mut env = conformance::env();
    set(&mut env, "MAX_ROOMS_PER_SESSION", "10");
    set(&mut env, "CLIENT_MESSAGES_PER_SEC", "50");
    set(&mut env, "CLIENT_MESSAGES_BURST", "200");
    let gw = TestGateway::start(env).await;
    let url = gw.url(&token_claims("joiner", json!({"rooms": ["flood:*"]})));
    let flood: String = (0..3000)
        .map(|i| json!({"type": "join_room", "room": format!("flood:{i}")}).to_string())
        .collect::<Vec<_>>()
        .join("\n");
    let mut raw = Raw::upgrade(gw.addr, url.trim_start_matches(&format!("ws://{}", gw.addr)), "").await;
    assert_eq!(raw.text().await["type"], "connected");
    let mut frames = Vec::new();
    for line in flood.lines() {
        frames.extend(encode(true, 0, TEXT, Some(key()), line.as_bytes()));
    }
    raw.send_bytes(&frames).await;
    let (mut joined, mut limit, mut rate_limited) = (0, 0, 0);
    let close = loop {
        let frame = raw.next_frame().await.expect("a close before EOF");
        match frame.opcode {
            TEXT => {
                let msg: Value = serde_json::from_slice(&frame.payload).unwrap();
                assert_server_schema(&msg);
                match (msg["type"].as_str().unwrap(), msg["code"].as_str()) {
                    ("joined_room", _) => joined += 1,
                    ("error", Some("limit")) => limit += 1,
                    ("error", Some("rate_limited")) => rate_limited += 1,
                    _ => panic!("unexpected {msg}"),
                }
            }
            conformance::CLOSE => break frame.close(),
            _ => {}
        }
    };
    let _ = raw.stream.shutdown().await;
    raw.expect_eof().await;
    assert_eq!(close.0, 4009, "{close:?}");
    assert_eq!(joined, 10, "rooms per session");
    assert!(
        (200..300).contains(&(joined + limit)),
        "a burst's worth handled: {}",
        joined + limit
    );
    assert_eq!(rate_limited, 200, "a burst's worth of refusals, then the close");
    gw.wait_connections(0).await;

    // Without the rate limit: every join answered, still 10 rooms, the session stays open.
    let mut env = conformance::env();
    set(&mut env, "MAX_ROOMS_PER_SESSION", "10");
    set(&mut env, "CLIENT_MESSAGES_PER_SEC", "0");
    let gw = TestGateway::start(env).await;
    let mut c = connect(&gw.url(&token_claims("joiner", json!({"rooms": ["flood:*"]})))).await;
    let (mut joined, mut limit) = (0, 0);
    for line in flood.lines() {
        c.send(line).await;
    }
    for _ in 0..3000 {
        let msg = c.recv().await;
        match msg["type"].as_str() {
            Some("joined_room") => joined += 1,
            Some("error") if msg["code"] == "limit" => limit += 1,
            _ => panic!("unexpected {msg}"),
        }
    }
    assert_eq!((joined, limit), (10, 2990));
    c.assert_nothing_pending().await;
    gw.stop().await;
}

/// Oversized parameters. The request target is bounded by the `http` crate at 64 KiB (a longer
/// one is answered 400 before the gateway sees it), the head by actix-http at 128 KiB and 96
/// headers (431). Within them: a 60 KB cursor is answered `unknown_cursor` (the session opens
/// live); a 60 KB token in the query and a 100 KB one in `Authorization` are refused 4001 (then
/// 401 at the upgrade). Every answer comes at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_cursors_tokens_and_heads_are_refused_quickly() {
    let gw = TestGateway::start(conformance::env()).await;
    let quick = |started: Instant, what: &str| {
        println!("{what}: answered in {:?}", started.elapsed());
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{what}: {:?}",
            started.elapsed()
        );
    };
    let status_of = |request: String| async move {
        let mut stream = TcpStream::connect(gw.addr).await.unwrap();
        // The server may answer and close before it has read all of it.
        let _ = stream.write_all(request.as_bytes()).await;
        read_head(&mut stream).await.status
    };

    let started = Instant::now();
    let since = "A".repeat(60_000);
    let mut raw = Raw::upgrade(
        gw.addr,
        &format!("/ws?token={}&since={since}", token("cursor")),
        "",
    )
    .await;
    let hello = raw.text().await;
    assert_eq!(
        (hello["recovered"].as_bool(), hello["reason"].as_str()),
        (Some(false), Some("unknown_cursor")),
        "{hello}"
    );
    raw.send(true, TEXT, br#"{"type":"ping"}"#).await;
    assert_eq!(raw.text().await["type"], "pong");
    quick(started, "cursor");

    // Tokens that look like JWTs: three base64url segments.
    let jwt_of = |len: usize| format!("eyJhbGciOiJIUzI1NiJ9.{}.{}", "A".repeat(len), "B".repeat(43));
    let started = Instant::now();
    let mut raw = Raw::upgrade(gw.addr, &format!("/ws?token={}", jwt_of(60_000)), "").await;
    raw.read_close(4001).await;
    quick(started, "token in the query");
    let header_token = jwt_of(100_000);
    let started = Instant::now();
    let bearer = format!("Authorization: Bearer {header_token}\r\n");
    let mut raw = Raw::upgrade(gw.addr, "/ws", &bearer).await;
    raw.read_close(4001).await;
    quick(started, "token in Authorization");
    // Remembered (hashed): the same token again is refused at the upgrade.
    assert_eq!(status_of(upgrade_request(gw.addr, "/ws", &bearer).0).await, 401);

    // Over the bounds of the HTTP stack.
    let cases = [
        (
            "100 KB cursor",
            upgrade_request(
                gw.addr,
                &format!("/ws?token={}&since={}", token("c"), "A".repeat(100_000)),
                "",
            )
            .0,
            400,
        ),
        (
            "100 KB token in the query",
            upgrade_request(gw.addr, &format!("/ws?token={}", jwt_of(100_000)), "").0,
            400,
        ),
        (
            "140 KB Authorization",
            upgrade_request(
                gw.addr,
                "/ws",
                &format!("Authorization: Bearer {}\r\n", jwt_of(140_000)),
            )
            .0,
            431,
        ),
        (
            "100 headers",
            upgrade_request(
                gw.addr,
                "/ws",
                &(0..100).map(|i| format!("X-H{i}: v\r\n")).collect::<String>(),
            )
            .0,
            431,
        ),
    ];
    for (what, request, status) in cases {
        let started = Instant::now();
        assert_eq!(status_of(request).await, status, "{what}");
        quick(started, what);
    }
    let mut c = connect(&gw.url(&token("fine"))).await;
    c.assert_nothing_pending().await;
    gw.stop().await;
}

/// An Ed25519 key of the attacker's own: its private key and public JWK.
fn attacker_key() -> (EncodingKey, Value) {
    // PKCS#8 DER of an Ed25519 private key (RFC 8410): a fixed prefix, then the 32-byte seed.
    let mut der = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
    ];
    der.extend_from_slice(b"attacker-ed25519-seed-0123456789");
    let key = EncodingKey::from_ed_der(&der);
    let mut jwk =
        serde_json::to_value(jsonwebtoken::jwk::Jwk::from_encoding_key(&key, Algorithm::EdDSA).unwrap())
            .unwrap();
    jwk["kid"] = json!("attacker");
    (key, jwk)
}

/// Tokens that try to pick their key: `alg: none`; a `kid` that is a URL; `jku` and `x5u` naming
/// the attacker's key server; a `jwk` embedded in the header. With a JWKS configured, every one
/// is refused 4001, the attacker's server is never fetched from, and the configured JWKS is
/// fetched at most once more (an unknown `kid`, bounded by `JWKS_MIN_REFRESH_SECS`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_cannot_choose_their_key() {
    use base64::Engine as _;
    let jwks = JwksServer::start().await;
    let attacker = JwksServer::start().await;
    attacker.set_keys(&["attacker"]);
    let mut env = conformance::env();
    env.retain(|(k, _)| k != "JWT_SECRET");
    set(&mut env, "JWT_JWKS_URL", &jwks.url());
    set(&mut env, "JWKS_MIN_REFRESH_SECS", "60");
    let gw = TestGateway::start(env).await;
    gw.wait_ready().await;
    let trusted = EncodingKey::from_ed_pem(fixture("ed25519-private.pem").as_bytes()).unwrap();
    let (forged, forged_jwk) = attacker_key();
    let claims = json!({"sub": "victim", "exp": now_secs() + 600});
    let sign = |header: Value, key: &EncodingKey| {
        let header: Header = serde_json::from_value(header).unwrap();
        jsonwebtoken::encode(&header, &claims, key).unwrap()
    };
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let evil = attacker.url();
    let cases = vec![
        (
            "alg none",
            format!("{}.{}.", b64(&json!({"alg": "none", "kid": "k1"})), b64(&claims)),
        ),
        (
            "alg none, no kid",
            format!("{}.{}.", b64(&json!({"alg": "none"})), b64(&claims)),
        ),
        (
            "kid is a URL",
            sign(json!({"alg": "EdDSA", "kid": evil}), &forged),
        ),
        (
            "jku and x5u",
            sign(
                json!({"alg": "EdDSA", "kid": "attacker", "jku": evil, "x5u": evil}),
                &forged,
            ),
        ),
        (
            "jku with a trusted kid",
            sign(json!({"alg": "EdDSA", "kid": "k1", "jku": evil}), &forged),
        ),
        (
            "embedded jwk",
            sign(
                json!({"alg": "EdDSA", "kid": "attacker", "jwk": forged_jwk}),
                &forged,
            ),
        ),
        ("HS256 with the public key", {
            let public = fixture("ed25519-public.pem");
            sign(
                json!({"alg": "HS256", "kid": "k1"}),
                &EncodingKey::from_secret(public.as_bytes()),
            )
        }),
    ];
    for (what, bad) in cases {
        let reason = expect_close(&gw.url(&bad), 4001).await;
        assert!(reason.starts_with("unauthorized"), "{what}: {reason}");
    }
    assert_eq!(
        attacker.fetches.load(Ordering::SeqCst),
        0,
        "a URL from a token was fetched"
    );
    assert!(
        jwks.fetches.load(Ordering::SeqCst) <= 2,
        "JWKS fetched {} times",
        jwks.fetches.load(Ordering::SeqCst)
    );
    // The headers are ignored, not trusted: a token signed by the configured key passes whatever
    // `jku` it names, and nothing is fetched from it either.
    let fine = sign(
        json!({"alg": "EdDSA", "kid": "k1", "jku": evil, "x5u": evil}),
        &trusted,
    );
    let mut c = connect(&gw.url(&fine)).await;
    c.assert_nothing_pending().await;
    assert_eq!(attacker.fetches.load(Ordering::SeqCst), 0);
    gw.stop().await;
}
