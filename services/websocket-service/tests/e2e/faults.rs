//! Broker failures: down at start, restarted mid-way. The service keeps serving, `/ready` says
//! why it is not ready, and events produced after recovery are delivered.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::broker::OwnBroker;
use crate::harness::*;

async fn wait_not_ready(gw: &TestGateway) -> serde_json::Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = gw.get("/ready").await;
        if status == 503 {
            return body;
        }
        assert!(Instant::now() < deadline, "gateway still ready: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `/ready` reports the Kafka source degraded.
async fn wait_degraded(gw: &TestGateway) -> serde_json::Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = gw.get("/ready").await;
        if body["degraded"]["kafka"].is_string() {
            assert_eq!(status, 200, "{body}");
            return body;
        }
        assert!(Instant::now() < deadline, "no degradation reported: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Down at start: the replica has never caught up, so it is unready until it has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_at_start_then_up() {
    let mut broker = OwnBroker::new(tansu_bin());
    let topic = unique("late");
    let gw = TestGateway::start(env_for(Some(&broker.addr()), Some(&topic))).await;
    let body = wait_not_ready(&gw).await;
    assert!(body["reasons"]["kafka"].is_string(), "reason given: {body}");
    // Still serving sockets and health while Kafka is away.
    assert_eq!(gw.get("/health").await.0, 200);
    let mut client = connect(&gw.url(&token("late"))).await;
    // But not a resume: until it has read the log it cannot tell what a cursor missed, and
    // `recovered: false` would make the client reload for nothing. Transient: 1013 (SSE and
    // polling: 503 with Retry-After).
    let cursor = "AQPz_zGuACrz_zGuA9OF2MwE9Y19yAEAAe_9tvUNB1M_I08";
    let reason = expect_close(&format!("{}&since={cursor}", gw.url(&token("late"))), 1013).await;
    assert!(reason.contains("still reading the log"), "{reason}");
    let poll = format!("/events/poll?token={}&since={cursor}", token("late"));
    let (status, body) = gw.get(&poll).await;
    assert_eq!(status, 503, "{body}");
    // Nor a client without a cursor that has a session to take over (it ended here a moment
    // ago): the takeover would use the record up for nothing.
    let seed = connect(&gw.url(&token("seed"))).await;
    drop(seed);
    gw.wait_connections(1).await;
    let reason = expect_close(&gw.url(&token("seed")), 1013).await;
    assert!(reason.contains("still reading the log"), "{reason}");

    broker.start().await;
    create_topic_named(&broker.addr(), &topic, 1).await;
    gw.wait_ready().await;
    let producer = producer(&broker.addr());
    produce(
        &producer,
        &topic,
        "late",
        &task_event("late", "task.created", json!({"n": 1})),
    )
    .await;
    assert_eq!(client.recv().await["task"]["n"], 1);
    // Ready: the same resume is answered (this cursor names partitions this replica does not
    // read: not recovered, but admitted).
    let resumed = connect(&format!("{}&since={cursor}", gw.url(&token("late")))).await;
    assert_eq!(resumed.hello["recovered"], false, "{}", resumed.hello);
    // And the client without a cursor takes over its session now.
    connect(&gw.url(&token("seed"))).await;
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains(r#"gateway_catchups_total{reason="here"} 1"#),
        "{metrics}"
    );
    gw.stop().await;
    broker.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_mid_way() {
    let mut broker = OwnBroker::new(tansu_bin());
    broker.start().await;
    let topic = unique("restart");
    create_topic_named(&broker.addr(), &topic, 1).await;
    let gw = TestGateway::start(env_for(Some(&broker.addr()), Some(&topic))).await;
    gw.wait_ready().await;
    let mut client = connect(&gw.url(&token("r"))).await;
    let producer = producer(&broker.addr());
    produce(
        &producer,
        &topic,
        "r",
        &task_event("r", "task.created", json!({"n": 1})),
    )
    .await;
    assert_eq!(client.recv().await["task"]["n"], 1);

    // No producer across the restart: its metadata requests for the topic could have the broker
    // create it on its own, with its default partitions, before the test recreates it.
    drop(producer);
    broker.kill();
    // A broker outage after start is shared by every replica: it is reported, but the replica
    // stays in the Service (open sessions still work, reconnecting clients still find it).
    let body = wait_degraded(&gw).await;
    assert_eq!(body["status"], "ready", "{body}");
    assert!(body["degraded"]["kafka"].is_string(), "reason given: {body}");
    assert!(gw.metrics().await.contains("gateway_degraded{part=\"kafka\"} 1"));
    client.assert_nothing_pending().await;

    broker.start().await;
    // This broker keeps its log in memory, so the restart lost the topic and its offsets: recreate
    // it and write one record for nobody first, so the next offsets continue where the gateway
    // stood (offset 1) as they would on a broker with durable storage.
    create_topic_named(&broker.addr(), &topic, 1).await;
    let producer = crate::harness::producer(&broker.addr());
    gw.wait_ready().await;
    produce(
        &producer,
        &topic,
        "nobody",
        &task_event("nobody", "task.created", json!({})),
    )
    .await;
    produce(
        &producer,
        &topic,
        "r",
        &task_event("r", "task.updated", json!({"n": 2})),
    )
    .await;
    assert_eq!(client.recv().await["task"]["n"], 2);
    gw.stop().await;
    broker.kill();
}
