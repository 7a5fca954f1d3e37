//! Regression tests for the defects found by trying the gateway core (issue 7). Each test names
//! the item it covers; each failed on the code before its fix.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::harness::*;

/// Item 1: a client that sends messages while its events flow loses no wake-up. One client pings
/// in a loop while 300 events are produced 20 ms apart for its user: every event arrives, in
/// order, and the last one does not wait for a next event that never comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_not_stuck_behind_client_messages() {
    let brokers = brokers();
    let topic = create_topic(&brokers, 1).await;
    // Pings in a loop: far over the message rate limit, which is not what this is about.
    let mut env = env_for(Some(&brokers), Some(&topic));
    set(&mut env, "CLIENT_MESSAGES_PER_SEC", "0");
    let gw = TestGateway::start(env).await;
    gw.wait_ready().await;
    let client = connect(&gw.url(&token("chatty"))).await;
    let (mut sink, mut stream) = client.ws.split();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pings = Arc::new(AtomicU64::new(0));
    let pinger = {
        let (stop, pings) = (stop.clone(), pings.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                sink.send(Message::text(r#"{"type":"ping"}"#)).await.unwrap();
                pings.fetch_add(1, Ordering::Relaxed);
                // The gateway under test runs on this test's runtime (2 threads): a loop that
                // never yields would starve its Kafka consumer, which a real client cannot do.
                tokio::task::yield_now().await;
            }
            sink
        })
    };
    let n = 300;
    let reader = tokio::spawn(async move {
        let mut seen = Vec::new();
        let mut pongs = 0u64;
        // Pongs keep coming whatever happens to the events: a deadline for the whole, so a stuck
        // event fails the test instead of hanging it.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while seen.len() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "stuck: {} of {n} events arrived within 60 s ({pongs} pongs)",
                seen.len()
            );
            let msg = tokio::time::timeout(WAIT, stream.next())
                .await
                .unwrap_or_else(|_| panic!("stuck: {} of {n} events arrived", seen.len()))
                .expect("socket open")
                .expect("socket ok");
            if let Message::Text(text) = msg {
                let value: Value = serde_json::from_str(&text).unwrap();
                assert_server_schema(&value);
                match value["type"].as_str() {
                    Some("task_update") => seen.push(value["task"]["seq"].as_u64().unwrap()),
                    Some("pong") => pongs += 1,
                    other => panic!("unexpected {other:?}: {value}"),
                }
            }
        }
        (seen, pongs)
    });
    let producer = producer(&brokers);
    for seq in 0..n {
        produce(
            &producer,
            &topic,
            "chatty",
            &task_event("chatty", "task.updated", json!({"seq": seq})),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (seen, pongs) = reader.await.unwrap();
    stop.store(true, Ordering::Relaxed);
    let _ = pinger.await.unwrap();
    assert_eq!(seen, (0..n as u64).collect::<Vec<_>>(), "every event, in order");
    assert!(
        pongs > 100 && pings.load(Ordering::Relaxed) > 100,
        "the client really was busy: {pongs} pongs"
    );
    gw.stop().await;
}

/// Item 1, deterministically: the event arrives while the session's reply to a client message is
/// blocked (the client sent a flood of pings and reads nothing for a while). Once the client
/// reads again, the event must come, although no later event ever wakes the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_queued_during_a_blocked_reply_is_delivered() {
    let brokers = brokers();
    let topic = create_topic(&brokers, 1).await;
    let mut env = env_for(Some(&brokers), Some(&topic));
    set(&mut env, "CLIENT_TIMEOUT_SECS", "120");
    set(&mut env, "WRITE_TIMEOUT_SECS", "60");
    set(&mut env, "CLIENT_MESSAGES_PER_SEC", "0");
    let gw = TestGateway::start(env).await;
    gw.wait_ready().await;
    // A small receive buffer, so that a few thousand pongs fill the path.
    let client = connect_small_buffer(&gw.url(&token("flood"))).await;
    let (mut sink, mut stream) = client.ws.split();
    // Far more pongs than the socket buffers and actix-ws's channel hold.
    let fed = Arc::new(AtomicU64::new(0));
    let pinger = tokio::spawn({
        let fed = fed.clone();
        async move {
            for _ in 0..150_000 {
                if sink.feed(Message::text(r#"{"type":"ping"}"#)).await.is_err() {
                    break;
                }
                fed.fetch_add(1, Ordering::Relaxed);
            }
            let _ = sink.flush().await;
            sink
        }
    });
    // The event comes once the flood is well under way (not after a fixed pause, which a loaded
    // machine may not fill).
    let deadline = Instant::now() + WAIT;
    while fed.load(Ordering::Relaxed) < 20_000 && !pinger.is_finished() {
        assert!(Instant::now() < deadline, "the pinger is stuck");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    produce(
        &producer(&brokers),
        &topic,
        "flood",
        &task_event("flood", "task.created", json!({"only": true})),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut pongs = 0u64;
    loop {
        let msg = tokio::time::timeout(WAIT, stream.next())
            .await
            .unwrap_or_else(|_| panic!("the event never came (after {pongs} pongs)"))
            .expect("open")
            .expect("ok");
        if let Message::Text(text) = msg {
            let value: Value = serde_json::from_str(&text).unwrap();
            match value["type"].as_str() {
                Some("pong") => pongs += 1,
                Some("task_update") => {
                    assert_eq!(value["task"]["only"], true);
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    assert!(
        pongs > 1000,
        "the reply path really was blocked: {pongs} pongs before the event"
    );
    pinger.abort();
    gw.stop().await;
}

/// Item 2: with the default configuration nobody can inject an event or read internal state on
/// the public port: the Dapr route is off (and answers a status the sidecar retries, never 404),
/// `/metrics` is not there; metrics are on the internal listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_unauthenticated_injection_or_internal_state_by_default() {
    let gw = TestGateway::start(env_for(None, None)).await;
    let mut victim = connect(&gw.url(&token("victim"))).await;
    let forged = json!({"event_type": "task.deleted", "user_id": "victim", "task": {"id": 1}});
    for addr in [gw.addr, gw.internal] {
        let resp = http()
            .post(format!("http://{addr}/task-updates"))
            .header("content-type", "application/cloudevents+json")
            .body(forged.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 503, "Dapr delivery is off unless configured");
    }
    victim.assert_nothing_pending().await;
    let public = http()
        .get(format!("http://{}/metrics", gw.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(public.status(), 404, "no metrics on the public port");
    assert!(gw.metrics().await.contains("gateway_connections 1"));
    gw.stop().await;
}

/// Item 2: Dapr delivery switched on without an app token is refused at start (exit 64), unless
/// the operator opts out explicitly, which is logged loudly.
#[test]
fn dapr_without_an_app_token_is_refused_at_start() {
    let (code, stderr) = run_to_exit(&[("JWT_SECRET", SECRET), ("DAPR_ENABLED", "true")]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("APP_API_TOKEN"), "{stderr}");
}

/// Item 3: the drain ends as soon as no session remains, instead of waiting out the window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_out_the_window_once_sessions_are_gone() {
    let service = ServiceProcess::spawn(&[("DRAIN_WINDOW_SECS", "8"), ("SHUTDOWN_GRACE_SECS", "12")]).await;
    let mut client = connect(&format!("ws://{}/ws?token={}", service.base(), token("last"))).await;
    let internal = format!("http://127.0.0.1:{}/metrics", service.internal_port);
    assert_eq!(
        http().get(&internal).send().await.unwrap().status(),
        200,
        "metrics on INTERNAL_PORT"
    );
    let term = Instant::now();
    service.signal("TERM");
    wait_close(&mut client.ws, 1001).await;
    drop(client);
    let status = service.wait_exit(Duration::from_secs(12)).await;
    assert_eq!(status.code(), Some(0));
    assert!(
        term.elapsed() < Duration::from_secs(4),
        "exited {:?} after SIGTERM, its only session closed at once (window 8 s)",
        term.elapsed()
    );
}

/// Item 3: a session whose upgrade was accepted just before the drain started, but that was
/// admitted after it (here: its token's key was still being fetched), also gets its 1001.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_admitted_during_the_drain_gets_1001() {
    let jwks = JwksServer::start().await;
    let mut env = env_for(None, None);
    env.retain(|(k, _)| k != "JWT_SECRET");
    set(&mut env, "JWT_JWKS_URL", &jwks.url());
    set(&mut env, "JWKS_MIN_REFRESH_SECS", "1");
    set(&mut env, "DRAIN_WINDOW_SECS", "1");
    set(&mut env, "SHUTDOWN_GRACE_SECS", "8");
    let gw = TestGateway::start(env).await;
    gw.wait_ready().await;
    tokio::time::sleep(Duration::from_millis(1100)).await; // past JWKS_MIN_REFRESH_SECS
                                                           // A rotated-in key that is served slowly: the upgrade waits for it.
    jwks.set_keys(&["k1", "k2"]);
    jwks.set_delay(Duration::from_millis(1500));
    let late = jwks.token("k2", "late", now_secs() + 600);
    let url = gw.url(&late);
    let client = tokio::spawn(async move {
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("upgrade");
        let mut got = Vec::new();
        loop {
            match tokio::time::timeout(WAIT, ws.next())
                .await
                .expect("closed in time")
            {
                Some(Ok(Message::Close(frame))) => return (got, frame.map(|f| u16::from(f.code))),
                Some(Ok(Message::Text(t))) => got.push(t.to_string()),
                Some(Ok(_)) => {}
                other => return (got, other.map(|_| 0)),
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopping = tokio::spawn(gw.stop());
    let (_messages, code) = client.await.unwrap();
    assert_eq!(code, Some(1001), "a late session is closed as going away");
    stopping.await.unwrap();
}

/// Item 4: a peer that stops reading while its writes are blocked loses its slot: every write
/// has a deadline, so the idle timeout and the per-user limit still apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_write_does_not_hold_the_slot() {
    let brokers = brokers();
    let topic = create_topic(&brokers, 1).await;
    let mut env = env_for(Some(&brokers), Some(&topic));
    set(&mut env, "MAX_CONNECTIONS_PER_USER", "1");
    set(&mut env, "HEARTBEAT_INTERVAL_SECS", "1");
    set(&mut env, "CLIENT_TIMEOUT_SECS", "3");
    set(&mut env, "WRITE_TIMEOUT_SECS", "2");
    let gw = TestGateway::start(env).await;
    gw.wait_ready().await;
    // Upgraded, then never read again.
    let stalled = connect(&gw.url(&token("stall"))).await;
    gw.wait_connections(1).await;
    let producer = producer(&brokers);
    let blob = "y".repeat(200 * 1024);
    // ~30 MiB: more than the socket buffers and actix-ws's channel hold, fewer messages than the
    // session queue, so the session's write blocks and nothing else happens afterwards.
    for seq in 0..150 {
        produce(
            &producer,
            &topic,
            "stall",
            &task_event("stall", "task.updated", json!({"seq": seq, "blob": blob})),
        )
        .await;
    }
    gw.wait_connections(0).await;
    let fresh = connect(&gw.url(&token("stall"))).await;
    assert_eq!(fresh.hello["user_id"], "stall", "the user's slot is free again");
    drop(stalled);
    gw.stop().await;
}

/// Item 5: a token that expires during a session closes it with its own code (4002: reconnect
/// with a fresh token), not 4001; a token inside the leeway is not accepted and closed at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_expiry_has_its_own_close_code_and_honours_the_leeway() {
    let mut env = env_for(None, None);
    set(&mut env, "JWT_LEEWAY_SECS", "3");
    let gw = TestGateway::start(env).await;
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    // Expired a second ago, inside the 3 s leeway: accepted, and usable.
    let lenient = token_with(
        Algorithm::HS256,
        &key,
        json!({"sub": "lee", "exp": now_secs() - 1}),
    );
    let mut client = connect(&gw.url(&lenient)).await;
    client.assert_nothing_pending().await;
    let reason = wait_close(&mut client.ws, 4002).await;
    assert!(reason.contains("expired"), "{reason}");
    // Far outside the leeway: refused at connect with 4001.
    let stale = token_with(
        Algorithm::HS256,
        &key,
        json!({"sub": "lee", "exp": now_secs() - 60}),
    );
    expect_close(&gw.url(&stale), 4001).await;
    gw.stop().await;
}

/// Item 8: a bulk delivery with malformed entries answers every entry on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_bulk_entry_does_not_fail_the_others() {
    let mut env = env_for(None, None);
    set(&mut env, "DAPR_ENABLED", "true");
    set(&mut env, "APP_API_TOKEN", "bulk-token-0123");
    let gw = TestGateway::start(env).await;
    let mut client = connect(&gw.url(&token("bulky"))).await;
    let event = |n: i32| {
        json!({"specversion": "1.0", "id": format!("bulk-{n}"), "type": "com.dapr.event.sent",
               "data": {"event_type": "task.created", "user_id": "bulky", "task": {"n": n}}})
    };
    let body = json!({
        "id": "b", "type": "com.dapr.event.sent.bulk", "topic": "task-updates", "pubsubname": "p",
        "metadata": null,
        "entries": [
            {"entryId": "e1", "event": event(1), "metadata": {}},
            {"entryId": "e2", "event": event(2), "metadata": null},
            {"entryId": 3, "event": event(3), "metadata": {}},
            {"entryId": "e4", "event": event(4), "metadata": {"__partition": 5}},
            {"entryId": "e5", "event": event(5)},
        ]
    });
    let resp = http()
        .post(format!("http://{}/task-updates", gw.addr))
        .header("content-type", "application/json")
        .header("dapr-api-token", "bulk-token-0123")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(
        answer,
        json!({"statuses": [
            {"entryId": "e1", "status": "SUCCESS"},
            {"entryId": "e2", "status": "SUCCESS"},
            {"entryId": 3, "status": "DROP"},
            {"entryId": "e4", "status": "SUCCESS"},
            {"entryId": "e5", "status": "SUCCESS"},
        ]})
    );
    for n in [1, 2, 4, 5] {
        assert_eq!(client.recv().await["task"]["n"], n);
    }
    client.assert_nothing_pending().await;
    gw.stop().await;
}

/// Item 9: a topic that appears after the replica started is read from the replica's start (by
/// the brokers' offset-for-time lookup), so what was written to it before the next metadata
/// refresh is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_created_after_start_is_read_from_the_start_of_the_replica() {
    let brokers = brokers();
    let topic = unique("later");
    let mut env = env_for(Some(&brokers), Some(&topic));
    set(&mut env, "KAFKA_METADATA_REFRESH_SECS", "3");
    let gw = TestGateway::start(env).await;
    let mut client = connect(&gw.url(&token("early"))).await;
    // Let the gateway see that the topic is missing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    create_topic_named(&brokers, &topic, 1).await;
    let producer = producer(&brokers);
    for n in 0..3 {
        produce(
            &producer,
            &topic,
            "early",
            &task_event("early", "task.created", json!({"n": n})),
        )
        .await;
    }
    for n in 0..3 {
        assert_eq!(client.recv().await["task"]["n"], n);
    }
    client.assert_nothing_pending().await;
    gw.stop().await;
}

/// Item 10: the JWKS is refreshed on a schedule (honouring its cache lifetime): a key removed
/// from the set stops being accepted without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_removed_from_the_jwks_stops_working() {
    let jwks = JwksServer::start().await;
    jwks.set_max_age(1);
    let mut env = env_for(None, None);
    env.retain(|(k, _)| k != "JWT_SECRET");
    set(&mut env, "JWT_JWKS_URL", &jwks.url());
    set(&mut env, "JWKS_MIN_REFRESH_SECS", "1");
    let gw = TestGateway::start(env).await;
    gw.wait_ready().await;
    let old = jwks.token("k1", "rot", now_secs() + 600);
    connect(&gw.url(&old)).await;
    jwks.set_keys(&["k2"]);
    let deadline = Instant::now() + WAIT;
    loop {
        let (mut ws, _) = tokio_tungstenite::connect_async(gw.url(&old)).await.unwrap();
        let first = tokio::time::timeout(WAIT, ws.next()).await.unwrap();
        if let Some(Ok(Message::Close(Some(frame)))) = first {
            assert_eq!(u16::from(frame.code), 4001);
            break;
        }
        assert!(Instant::now() < deadline, "the removed key is still accepted");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    gw.stop().await;
}
