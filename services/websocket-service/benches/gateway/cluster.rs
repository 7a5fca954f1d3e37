//! Cluster workloads (issue 10), two replicas sharing a control topic:
//!
//! - `presence`: N sessions over U users (ten sessions each, ten users per workspace) connect to
//!   replica A, then drop at once and reconnect to replica B (a reconnect storm: a drain, a
//!   deploy). Presence transitions, presence messages the clients received, and presence
//!   records written, per phase. Target: at most one online transition per user that was
//!   actually offline (phase 1: every user), nothing for users who stayed online (phase 2).
//! - `revoke`: one user's 1,000 sessions, half on each replica; the time from
//!   `POST /api/revoke` until the last of them is closed.
//! - `revcheck`: what the revocation check costs at connect: connects per second with no
//!   revocation and with 10,000 in force (of other users), and the check itself in-process.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::recovery::met;
use crate::*;

const API_KEY: &str = "bench-server-api-key-0123456789";

fn token_claims(user: &str, extra: serde_json::Value) -> String {
    let mut claims =
        json!({"sub": user, "exp": now_us() / 1_000_000 + 3600, "iat": now_us() / 1_000_000 - 5});
    if let (Some(c), Some(e)) = (claims.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
    }
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// Opens `tokens.len()` sessions on `port`, `concurrency` at a time; each socket's messages are
/// then read by a task that counts presence messages into `presence` and records when the
/// socket ended in `closed` (µs since the epoch; 0 while open).
async fn open_counting(
    port: u16,
    tokens: Vec<String>,
    concurrency: usize,
    presence: Arc<AtomicU64>,
    closed: Arc<Vec<AtomicU64>>,
    offset: usize,
) -> Vec<tokio::task::JoinHandle<()>> {
    let sockets: Vec<(usize, Ws)> = futures_util::stream::iter(tokens.into_iter().enumerate())
        .map(|(i, tok)| async move {
            let url = format!("ws://127.0.0.1:{port}/ws?token={tok}");
            let config =
                tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(4096);
            let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), false)
                .await
                .expect("connect");
            match ws.next().await {
                Some(Ok(Message::Text(t))) if t.contains("\"connected\"") => {}
                other => panic!("expected connected, got {other:?}"),
            }
            (i, ws)
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    sockets
        .into_iter()
        .map(|(i, mut ws)| {
            let (presence, closed) = (presence.clone(), closed.clone());
            tokio::spawn(async move {
                while let Some(Ok(msg)) = ws.next().await {
                    match msg {
                        Message::Text(t)
                            if t.contains("\"user.online\"") || t.contains("\"user.offline\"") =>
                        {
                            presence.fetch_add(1, Ordering::Relaxed);
                        }
                        Message::Close(_) => break,
                        _ => {}
                    }
                }
                if let Some(slot) = closed.get(offset + i) {
                    slot.store(now_us(), Ordering::Relaxed);
                }
            })
        })
        .collect()
}

async fn post(port: u16, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    // One client for the run: building one loads the system's root certificates (tens of ms).
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    let resp = CLIENT
        .get_or_init(reqwest::Client::new)
        .post(format!("http://127.0.0.1:{port}{path}"))
        .bearer_auth(API_KEY)
        .json(&body)
        .send()
        .await
        .expect("server API");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or_default())
}

pub async fn presence(cfg: &Config) {
    let n = cfg.connections;
    let users = knob("BENCH_PRESENCE_USERS", (n / 10).max(1) as u64) as usize;
    let per_ws = 10;
    let topic = create_topic(&cfg.brokers, 1).await;
    let control = create_topic(&cfg.brokers, 1).await;
    let env = [
        ("GATEWAY_CONTROL_TOPIC", control.as_str()),
        ("PRESENCE_ENABLED", "true"),
        ("PRESENCE_GRACE_SECS", "5"),
    ];
    let per_user = n / users + 1;
    let a = Server::start(cfg, &topic, per_user, &env).await;
    let b = Server::start(cfg, &topic, per_user, &env).await;
    println!(
        "\n[presence] {n} sessions over {users} users ({} per user, {per_ws} users per workspace) connect to A, then drop at once and reconnect to B",
        n / users
    );
    let tokens: Vec<String> = {
        let by_user: Vec<String> = (0..users)
            .map(|u| {
                token_claims(
                    &format!("p{u}"),
                    json!({"workspace_id": format!("w{}", u / per_ws)}),
                )
            })
            .collect();
        (0..n).map(|i| by_user[i % users].clone()).collect()
    };
    // Phase 1: everyone comes online.
    let received = Arc::new(AtomicU64::new(0));
    let none: Arc<Vec<AtomicU64>> = Arc::new(Vec::new());
    let started = Instant::now();
    let readers = open_counting(
        a.port,
        tokens.clone(),
        cfg.concurrency,
        received.clone(),
        none.clone(),
        0,
    )
    .await;
    let connect_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (a_t1, a_r1) = presence_counts(&a).await;
    let (b_t1, b_r1) = presence_counts(&b).await;
    let msgs1 = received.load(Ordering::Relaxed);
    println!(
        "  phase 1 (all offline -> online in {connect_secs:.2} s): transitions A {a_t1}, B {b_t1} for {users} users that were offline (target <= {users} each: {})",
        met(a_t1 <= users as u64 && b_t1 <= users as u64)
    );
    println!(
        "                         presence messages received {msgs1}; records written A {a_r1}, B {b_r1}"
    );
    // Phase 2: the storm. Every socket drops at once; all reconnect to B at once.
    for r in &readers {
        r.abort();
    }
    drop(readers);
    let received2 = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let readers = open_counting(b.port, tokens, cfg.concurrency, received2.clone(), none, 0).await;
    let storm_secs = started.elapsed().as_secs_f64();
    // Past the grace, so A's tombstones are written and read.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let (a_t2, a_r2) = presence_counts(&a).await;
    let (b_t2, b_r2) = presence_counts(&b).await;
    let msgs2 = received2.load(Ordering::Relaxed);
    let (dt_a, dt_b) = (a_t2 - a_t1, b_t2 - b_t1);
    println!(
        "  phase 2 (reconnect storm to B, {storm_secs:.2} s): transitions A {dt_a}, B {dt_b}; presence messages received {msgs2}   (target 0: {})",
        met(dt_a == 0 && dt_b == 0 && msgs2 == 0)
    );
    println!(
        "                         records written A {} (tombstones after the grace), B {} (one per user)",
        a_r2 - a_r1,
        b_r2 - b_r1
    );
    for r in readers {
        r.abort();
    }
}

/// Presence transitions and records written, from a server's metrics.
async fn presence_counts(s: &Server) -> (u64, u64) {
    (
        s.counter("gateway_presence_transitions_total").await,
        s.counter("gateway_presence_records_written_total").await,
    )
}

pub async fn revoke(cfg: &Config) {
    let sessions = knob("BENCH_REVOKE_SESSIONS", 1000) as usize;
    let topic = create_topic(&cfg.brokers, 1).await;
    let control = create_topic(&cfg.brokers, 1).await;
    let env = [
        ("GATEWAY_CONTROL_TOPIC", control.as_str()),
        ("SERVER_API_KEY", API_KEY),
    ];
    let a = Server::start(cfg, &topic, sessions, &env).await;
    let b = Server::start(cfg, &topic, sessions, &env).await;
    println!(
        "\n[revoke] one user's {sessions} sessions, half on each of two replicas; POST /api/revoke to A"
    );
    let tok = token_claims("victim", json!({}));
    let closed: Arc<Vec<AtomicU64>> = Arc::new((0..sessions).map(|_| AtomicU64::new(0)).collect());
    let none = Arc::new(AtomicU64::new(0));
    let half = sessions / 2;
    let mut readers = open_counting(
        a.port,
        vec![tok.clone(); half],
        cfg.concurrency,
        none.clone(),
        closed.clone(),
        0,
    )
    .await;
    readers.extend(
        open_counting(
            b.port,
            vec![tok; sessions - half],
            cfg.concurrency,
            none,
            closed.clone(),
            half,
        )
        .await,
    );
    // A first order, for no one here: the HTTP client and the producer are warm for the one
    // measured.
    assert_eq!(
        post(a.internal_port, "/api/revoke", json!({"user": "nobody"}))
            .await
            .0,
        200
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent = now_us();
    let (status, answer) = post(a.internal_port, "/api/revoke", json!({"user": "victim"})).await;
    let answered = now_us() - sent;
    assert_eq!(status, 200, "{answer}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while closed.iter().any(|c| c.load(Ordering::Relaxed) == 0) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let times: Vec<u64> = closed
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .filter(|t| *t > 0)
        .map(|t| t.saturating_sub(sent))
        .collect();
    let last = |range: std::ops::Range<usize>| {
        closed[range]
            .iter()
            .map(|c| c.load(Ordering::Relaxed).saturating_sub(sent))
            .max()
            .unwrap_or(0) as f64
            / 1000.0
    };
    println!(
        "  closed                 {} of {sessions}; all within {:.1} ms of the request (A's last {:.1} ms, B's last {:.1} ms); the API answered in {:.1} ms",
        times.len(),
        times.iter().max().copied().unwrap_or(0) as f64 / 1000.0,
        last(0..half),
        last(half..sessions),
        answered as f64 / 1000.0
    );
    for r in readers {
        r.abort();
    }
}

pub async fn revcheck(cfg: &Config) {
    let n = knob("BENCH_REVCHECK_CONNECTIONS", 5000) as usize;
    let revocations = knob("BENCH_REVOCATIONS", 10_000) as usize;
    let topic = create_topic(&cfg.brokers, 1).await;
    let control = create_topic(&cfg.brokers, 1).await;
    let env = [
        ("GATEWAY_CONTROL_TOPIC", control.as_str()),
        ("SERVER_API_KEY", API_KEY),
    ];
    let server = Server::start(cfg, &topic, 2, &env).await;
    println!("\n[revcheck] the revocation check at connect: {n} new connections with none and with {revocations} revocations in force");
    let rate = |tokens: Vec<String>| {
        let port = server.port;
        async move {
            let none = Arc::new(AtomicU64::new(0));
            let started = Instant::now();
            let readers = open_counting(port, tokens, cfg.concurrency, none, Arc::new(Vec::new()), 0).await;
            let per_sec = readers.len() as f64 / started.elapsed().as_secs_f64();
            for r in readers {
                r.abort();
            }
            per_sec
        }
    };
    let without = rate(
        (0..n)
            .map(|i| token_claims(&format!("a{i}"), json!({"jti": format!("a{i}")})))
            .collect(),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = Instant::now();
    let _: Vec<()> = futures_util::stream::iter(0..revocations)
        .map(|i| async move {
            let body = if i % 2 == 0 {
                json!({"user": format!("gone{i}")})
            } else {
                json!({"jti": format!("gone{i}")})
            };
            let (status, answer) = post(server.internal_port, "/api/revoke", body).await;
            assert_eq!(status, 200, "{answer}");
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let writing = started.elapsed().as_secs_f64();
    let with = rate(
        (0..n)
            .map(|i| token_claims(&format!("b{i}"), json!({"jti": format!("b{i}")})))
            .collect(),
    )
    .await;
    // The check alone, in-process, against as many revocations.
    let set = websocket_service::hub::revocations::Revocations::default();
    for i in 0..revocations {
        let target = if i % 2 == 0 {
            websocket_service::hub::revocations::Target::User(format!("gone{i}"))
        } else {
            websocket_service::hub::revocations::Target::Jti(format!("gone{i}"))
        };
        set.insert(
            target,
            websocket_service::hub::revocations::Revocation {
                issued_before: Some(u64::MAX),
                until_ms: u64::MAX,
            },
        );
    }
    let checks = 1_000_000u32;
    let started = Instant::now();
    let mut hits = 0;
    for i in 0..checks {
        let user = format!("user{}", i % 1000);
        let token = websocket_service::hub::revocations::Token {
            user: &user,
            jti: Some("some-jti"),
            issued_at: Some(1),
        };
        hits += usize::from(set.is_revoked(&token, 0));
    }
    let per_check_ns = started.elapsed().as_nanos() as f64 / f64::from(checks);
    assert_eq!(hits, 0);
    println!(
        "  connects per second    {without:.0} with none, {with:.0} with {revocations} in force   (target >= 3000: {})",
        met(with >= 3000.0)
    );
    println!(
        "  the check              {per_check_ns:.0} ns per connect against {revocations} revocations (in-process, including the key strings); {revocations} revocations written through the API in {writing:.1} s"
    );
}
