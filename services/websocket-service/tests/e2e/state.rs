//! State events (issue 11): compare-before-send, snapshots first, conflation for slow readers,
//! and every replica (also one started later) serving the same snapshot.

use serde_json::{json, Value};

use crate::harness::*;
use crate::resume::{env_on, publish};

fn state(key: &str, data: Value, to: Value) -> Value {
    json!({"event_type": "dashboard.update", "key": key, "data": data, "to": to})
}

fn marker(n: i64) -> Value {
    json!({"event_type": "marker", "data": {"n": n}, "to": {"all": true}})
}

/// Reads until the marker `n`; returns what came before it.
async fn until_marker(client: &mut Client, n: i64) -> Vec<Value> {
    let mut before = Vec::new();
    loop {
        let msg = client.recv().await;
        if msg["type"] == "marker" && msg["data"]["n"] == n {
            return before;
        }
        before.push(msg);
    }
}

/// Identical state is not sent again; a new session and a new room member get the snapshot
/// first; a replica started afterwards serves the same snapshot; a tombstone removes the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_is_compared_snapshotted_and_the_same_on_every_replica() {
    let topic = create_topic(&brokers(), 1).await;
    let a = TestGateway::start(env_on(&topic)).await;
    let b = TestGateway::start(env_on(&topic)).await;
    a.wait_ready().await;
    b.wait_ready().await;
    let mut watcher = connect(&b.url(&token("watcher"))).await;
    publish(
        &a,
        state("stats", json!({"a": 1, "b": [1, 2]}), json!({"all": true})),
    )
    .await;
    let first = watcher.recv().await;
    assert_eq!(
        (first["type"].as_str(), first["key"].as_str()),
        (Some("dashboard.update"), Some("stats")),
        "{first}"
    );
    assert_eq!(first["data"], json!({"a": 1, "b": [1, 2]}));
    assert!(
        first.get("snapshot").is_none() && first["cursor"].is_string(),
        "{first}"
    );
    // The same value, fields in another order: not sent. Then a marker, which comes next.
    publish(
        &a,
        json!([
            state("stats", json!({"b": [1, 2], "a": 1}), json!({"all": true})),
            marker(1)
        ]),
    )
    .await;
    assert!(
        until_marker(&mut watcher, 1).await.is_empty(),
        "an identical value is not sent again"
    );
    // The watcher is on B; A reads the topic on its own and may be behind.
    a.wait_routed(b.routed()).await;
    for gw in [&a, &b] {
        let metrics = gw.metrics().await;
        assert!(metrics.contains("gateway_state_unchanged_total 1"), "{metrics}");
    }
    // A room's state, and a newer value of the stats.
    publish(
        &a,
        json!([
            state("queue", json!({"open": 3}), json!({"room": "lobby"})),
            state("stats", json!({"a": 2}), json!({"all": true})),
            marker(2)
        ]),
    )
    .await;
    let seen = until_marker(&mut watcher, 2).await;
    assert_eq!(seen.len(), 1, "the room's state is not for it: {seen:?}");
    assert_eq!(seen[0]["data"], json!({"a": 2}));
    // A has read what B has (both read the topic from its start).
    a.wait_routed(b.routed()).await;
    // A new session: the snapshot first (the latest stats only), flagged, without a cursor.
    let mut fresh = connect(&a.url(&token("fresh"))).await;
    let snap = fresh.recv().await;
    assert_eq!(
        (snap["key"].as_str(), snap["snapshot"].as_bool()),
        (Some("stats"), Some(true)),
        "{snap}"
    );
    assert_eq!(snap["data"], json!({"a": 2}));
    assert!(snap.get("cursor").is_none(), "{snap}");
    fresh.assert_nothing_pending().await;
    // Joining the room: its state after the answer.
    fresh.join("lobby").await;
    let room = fresh.recv().await;
    assert_eq!(
        (
            room["key"].as_str(),
            room["snapshot"].as_bool(),
            room["room"].as_str()
        ),
        (Some("queue"), Some(true), Some("lobby")),
        "{room}"
    );
    fresh.assert_nothing_pending().await;
    // A replica started now rebuilt the same state from the log.
    let c = TestGateway::start(env_on(&topic)).await;
    c.wait_ready().await;
    let mut late = connect(&format!("ws://{}/ws?token={}&rooms=lobby", c.addr, token("late"))).await;
    let mut snapshot: Vec<(String, Value)> = Vec::new();
    for _ in 0..2 {
        let msg = late.recv().await;
        assert_eq!(msg["snapshot"], true, "{msg}");
        snapshot.push((msg["key"].as_str().unwrap().to_string(), msg["data"].clone()));
    }
    snapshot.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        snapshot,
        vec![
            ("queue".into(), json!({"open": 3})),
            ("stats".into(), json!({"a": 2}))
        ]
    );
    late.assert_nothing_pending().await;
    // A tombstone: delivered (the clients clear the key), and gone from later snapshots.
    publish(
        &b,
        json!([state("stats", Value::Null, json!({"all": true})), marker(3)]),
    )
    .await;
    let seen = until_marker(&mut watcher, 3).await;
    assert_eq!((seen.len(), &seen[0]["data"]), (1, &Value::Null), "{seen:?}");
    c.wait_routed(b.routed()).await;
    let mut after = connect(&c.url(&token("after"))).await;
    after.assert_nothing_pending().await;
    a.stop().await;
    b.stop().await;
    c.stop().await;
}

/// A reader that stalls while 20 keys change 200 times each, between numbered plain events: once
/// it reads again, it has every plain event in order and, per key, values in order ending with
/// the last one published, far fewer than were published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_gets_the_latest_state_and_every_plain_event() {
    let topic = create_topic(&brokers(), 1).await;
    let mut env = env_on(&topic);
    set(&mut env, "SESSION_QUEUE_CAPACITY", "16");
    set(&mut env, "WRITE_TIMEOUT_SECS", "60");
    set(&mut env, "PUBLISH_MAX_BODY_BYTES", "4194304");
    let gw = TestGateway::start(env).await;
    gw.wait_ready().await;
    let mut slow = connect_small_buffer(&gw.url(&token("slow"))).await;
    // 16 MB in all: more than the kernel's socket buffers take (the reader's is 4 KiB, but the
    // sender's grows to a few MB on loopback).
    let (keys, rounds) = (20, 200);
    let pad = "p".repeat(4000);
    let mut plain = 0;
    for round in 0..rounds {
        let mut batch = Vec::new();
        for key in 0..keys {
            batch.push(state(
                &format!("k{key}"),
                json!({"v": round, "pad": pad}),
                json!({"all": true}),
            ));
        }
        batch.push(json!({"event_type": "plain", "data": {"n": plain}, "to": {"all": true}}));
        plain += 1;
        publish(&gw, Value::Array(batch)).await;
    }
    publish(&gw, json!([marker(9)])).await;
    // Everything routed while the session read nothing: it fell behind. Then read everything.
    gw.wait_routed((rounds * (keys as i64 + 1) + 1) as u64).await;
    let got = until_marker(&mut slow, 9).await;
    let plains: Vec<i64> = got
        .iter()
        .filter(|m| m["type"] == "plain")
        .map(|m| m["data"]["n"].as_i64().unwrap())
        .collect();
    assert_eq!(
        plains,
        (0..plain).collect::<Vec<_>>(),
        "every plain event, in order"
    );
    let mut last: std::collections::HashMap<String, i64> = Default::default();
    let mut states = 0;
    for m in got.iter().filter(|m| m["type"] == "dashboard.update") {
        states += 1;
        let (key, v) = (
            m["key"].as_str().unwrap().to_string(),
            m["data"]["v"].as_i64().unwrap(),
        );
        if let Some(prev) = last.insert(key.clone(), v) {
            assert!(v > prev, "{key}: {v} after {prev}");
        }
    }
    assert_eq!(last.len(), keys, "every key");
    assert!(
        last.values().all(|v| *v == rounds - 1),
        "the last value of every key: {last:?}"
    );
    assert!(
        states < keys * rounds as usize / 2,
        "stale values were skipped: {states} of {} written",
        keys * rounds as usize
    );
    let metrics = gw.metrics().await;
    assert!(!metrics.contains("gateway_state_conflated_total 0"), "{metrics}");
    gw.stop().await;
}
