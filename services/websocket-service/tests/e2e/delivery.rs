//! Routing, fan-out, order, malformed records, slow clients.

use std::time::Duration;

use serde_json::json;

use crate::harness::*;

/// Three users with two tabs each: every tab gets exactly its user's events, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_event_reaches_every_tab_of_its_user_and_no_one_else() {
    let brokers = brokers();
    let topic = create_topic(&brokers, 1).await;
    let gw = TestGateway::on_topic(&topic).await;
    let users = ["alice", "bob", "carol"];
    let mut tabs: Vec<(&str, Client)> = Vec::new();
    for user in users {
        for _ in 0..2 {
            tabs.push((user, connect(&gw.url(&token(user))).await));
        }
    }
    let producer = producer(&brokers);
    // Interleaved events, plus one for a user connected nowhere.
    for i in 0..5 {
        for user in users {
            produce(
                &producer,
                &topic,
                user,
                &task_event(user, "task.updated", json!({"n": i, "owner": user})),
            )
            .await;
        }
        produce(
            &producer,
            &topic,
            "dave",
            &task_event("dave", "task.created", json!({"n": i})),
        )
        .await;
    }
    // A last event per user: once a tab has it, everything before it on the (single) partition
    // was routed.
    for user in users {
        produce(
            &producer,
            &topic,
            user,
            &task_event(user, "task.completed", json!({"owner": user, "last": true})),
        )
        .await;
    }
    for (user, tab) in &mut tabs {
        for i in 0..5 {
            let msg = tab.recv().await;
            assert_eq!(msg["type"], "task_update");
            assert_eq!(msg["event"], "task.updated");
            assert_eq!(msg["task"], json!({"n": i, "owner": *user}), "tab of {user}");
        }
        let last = tab.recv().await;
        assert_eq!(last["task"], json!({"owner": *user, "last": true}));
        tab.assert_nothing_pending().await;
    }
    gw.stop().await;
}

/// Two instances on one topic (as two replicas behind one Service): each delivers every event
/// to its own client of the same user. A shared consumer group would split them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_each_deliver_every_event_to_their_own_clients() {
    let brokers = brokers();
    let topic = create_topic(&brokers, 3).await;
    let a = TestGateway::on_topic(&topic).await;
    let b = TestGateway::on_topic(&topic).await;
    let mut on_a = connect(&a.url(&token("u1"))).await;
    let mut on_b = connect(&b.url(&token("u1"))).await;
    let producer = producer(&brokers);
    for i in 0..20 {
        produce(
            &producer,
            &topic,
            "u1",
            &task_event("u1", "task.updated", json!({"seq": i})),
        )
        .await;
    }
    for client in [&mut on_a, &mut on_b] {
        for i in 0..20 {
            assert_eq!(client.recv().await["task"]["seq"], i);
        }
    }
    a.stop().await;
    b.stop().await;
}

/// Per-user order holds across a multi-partition topic (producers key by user id).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_one_user_arrive_in_the_order_produced() {
    let brokers = brokers();
    let topic = create_topic(&brokers, 4).await;
    let gw = TestGateway::on_topic(&topic).await;
    let users = ["o1", "o2", "o3"];
    let mut clients = Vec::new();
    for user in users {
        clients.push(connect(&gw.url(&token(user))).await);
    }
    let producer = producer(&brokers);
    let n = 150;
    let sends = users.iter().map(|user| {
        let producer = producer.clone();
        let topic = topic.clone();
        async move {
            for i in 0..n {
                produce(
                    &producer,
                    &topic,
                    user,
                    &task_event(user, "task.updated", json!({"seq": i})),
                )
                .await;
            }
        }
    });
    futures_util::future::join_all(sends).await;
    for client in &mut clients {
        for i in 0..n {
            assert_eq!(client.recv().await["task"]["seq"], i);
        }
    }
    gw.stop().await;
}

/// The message shape the frontends switch on, with the id and timestamp the gateway adds; a
/// CloudEvent-wrapped record (what Dapr publishers write) gives the same message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_shape_for_plain_and_cloudevent_records() {
    let brokers = brokers();
    let topic = create_topic(&brokers, 1).await;
    let gw = TestGateway::on_topic(&topic).await;
    let mut client = connect(&gw.url(&token("shape"))).await;
    assert_eq!(client.hello["user_id"], "shape");
    let producer = producer(&brokers);
    produce(
        &producer,
        &topic,
        "shape",
        &task_event("shape", "task.created", json!({"id": 7, "title": "write tests"})),
    )
    .await;
    let cloudevent = json!({
        "specversion": "1.0", "id": "3f1c-ce", "source": "tasks-api", "type": "com.dapr.event.sent",
        "time": "2026-11-22T10:00:00Z", "datacontenttype": "application/json",
        "topic": topic, "pubsubname": "taskpubsub",
        "data": {"event_type": "task.deleted", "user_id": "shape", "task": {"id": 7}}
    });
    produce(&producer, &topic, "shape", cloudevent.to_string().as_bytes()).await;

    let plain = client.recv().await;
    assert_eq!(plain["type"], "task_update");
    assert_eq!(plain["event"], "task.created");
    assert_eq!(plain["task"], json!({"id": 7, "title": "write tests"}));
    assert_eq!(
        plain["id"],
        format!("kafka:{topic}:0:0"),
        "stable id from topic/partition/offset"
    );
    assert!(plain["timestamp"].as_str().unwrap().ends_with('Z'));

    let wrapped = client.recv().await;
    assert_eq!(wrapped["event"], "task.deleted");
    assert_eq!(wrapped["id"], "3f1c-ce");
    assert_eq!(wrapped["timestamp"], "2026-11-22T10:00:00Z");
    gw.stop().await;
}

/// Malformed records are counted and skipped; the events around them still flow, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_records_are_counted_and_skipped() {
    let brokers = brokers();
    let topic = create_topic(&brokers, 1).await;
    let gw = TestGateway::on_topic(&topic).await;
    let mut client = connect(&gw.url(&token("m"))).await;
    let producer = producer(&brokers);
    let bad: [&[u8]; 5] = [
        b"not json at all",
        br#"{"event_type":"task.created","task":{}}"#,
        br#"{"event_type":"task.created","user_id":42,"task":{}}"#,
        br#"{"event_type":"task.created","user_id":"m","task":"a string"}"#,
        b"",
    ];
    produce(
        &producer,
        &topic,
        "m",
        &task_event("m", "task.created", json!({"seq": 1})),
    )
    .await;
    for value in bad {
        produce(&producer, &topic, "m", value).await;
    }
    produce(
        &producer,
        &topic,
        "m",
        &task_event("m", "task.created", json!({"seq": 2})),
    )
    .await;
    assert_eq!(client.recv().await["task"]["seq"], 1);
    assert_eq!(client.recv().await["task"]["seq"], 2);
    client.assert_nothing_pending().await;
    assert_eq!(
        websocket_service::telemetry::Stats::get(&gw.stats.records_malformed),
        5
    );
    assert_eq!(
        websocket_service::telemetry::Stats::get(&gw.stats.records_consumed),
        7
    );
    gw.stop().await;
}

/// A client that stops reading falls behind: once its queue is full it is left to catch up from
/// the history, and once it falls out of the history window it is disconnected (4008); the other
/// tab of the same user keeps receiving everything in order, and memory does not grow with what
/// the stalled client failed to read (the history's bound, not a copy per client).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_is_cut_off_and_nobody_else_notices() {
    let brokers = brokers();
    let topic = create_topic(&brokers, 1).await;
    // A process of its own: its memory is not shared with the other tests of this binary.
    let gw = ServiceProcess::spawn(&[
        ("KAFKA_BROKERS", &brokers),
        ("KAFKA_TOPICS", &topic),
        ("GATEWAY_CONTROL_TOPIC", &control_topic(&topic)),
        ("SESSION_QUEUE_CAPACITY", "16"),
        ("HISTORY_MAX_BYTES", "8388608"),
    ])
    .await;
    gw.wait_ready().await;
    let url = format!("ws://{}/ws?token={}", gw.base(), token("s"));
    let mut healthy = connect(&url).await;
    // Connected, then never read again.
    let stalled = connect(&url).await;
    gw.wait_connections(2).await;

    let producer = producer(&brokers);
    let blob = "x".repeat(60 * 1024);
    let events = 800; // ~48 MiB in all: far more than socket buffers and every bounded queue.
    let rss_before = gw.rss_kib();
    let reader = tokio::spawn(async move {
        for i in 0..events {
            let msg = healthy.recv().await;
            assert_eq!(msg["task"]["seq"], i, "healthy tab keeps its order");
        }
        healthy
    });
    for i in 0..events {
        produce(
            &producer,
            &topic,
            "s",
            &task_event("s", "task.updated", json!({"seq": i, "blob": blob})),
        )
        .await;
    }
    let mut healthy = tokio::time::timeout(Duration::from_secs(120), reader)
        .await
        .expect("healthy tab done")
        .unwrap();
    let grown = gw.rss_kib().saturating_sub(rss_before);

    gw.wait_connections(1).await;
    let metrics = gw.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l == "gateway_slow_client_disconnects_total 1"),
        "{metrics}"
    );
    assert!(
        grown < 40 * 1024,
        "process memory grew by {} MiB while a client was stalled",
        grown / 1024
    );
    healthy.assert_nothing_pending().await;
    drop(stalled);
}

/// A partition that appears on a known topic is picked up and read from its beginning.
/// tansu 0.6 has no CreatePartitions, so the topic is recreated with a second partition: to the
/// gateway that is the same event (partition 1 of a topic it already reads appears).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_added_later_are_picked_up() {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::producer::FutureRecord;

    let brokers = brokers();
    let topic = create_topic(&brokers, 1).await;
    // A slow refresh, so the record below lands before the gateway sees partition 1: only
    // reading a new partition from its beginning can deliver it.
    let mut env = env_for(Some(&brokers), Some(&topic));
    set(&mut env, "KAFKA_METADATA_REFRESH_SECS", "3");
    let gw = TestGateway::start(env).await;
    gw.wait_ready().await;
    let mut client = connect(&gw.url(&token("grow"))).await;
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let deleted = admin
        .delete_topics(&[&topic], &AdminOptions::new())
        .await
        .expect("delete topic");
    assert!(
        matches!(deleted.as_slice(), [Ok(_)]),
        "topic deleted: {deleted:?}"
    );
    create_topic_named(&brokers, &topic, 2).await;

    // Written to the new partition at once, before the gateway's next metadata refresh.
    let producer = producer(&brokers);
    let payload = task_event("grow", "task.created", json!({"in": "new partition"}));
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let sent = producer
            .send(
                FutureRecord::to(&topic)
                    .partition(1)
                    .key("grow")
                    .payload(&payload),
                Duration::from_secs(5),
            )
            .await;
        match sent {
            Ok((partition, _)) => {
                assert_eq!(partition, 1);
                break;
            }
            // The producer may not know the new partition yet.
            Err(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err((e, _)) => panic!("produce to the new partition: {e}"),
        }
    }
    assert_eq!(client.recv().await["task"]["in"], "new partition");
    gw.stop().await;
}

/// Issue 15 item 9: records without a key on a topic of several partitions are counted (a
/// user's events could arrive out of order); keyed ones are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_records_are_counted() {
    use rdkafka::producer::FutureRecord;
    let brokers = brokers();
    let topic = create_topic(&brokers, 3).await;
    let gw = TestGateway::on_topic(&topic).await;
    let mut client = connect(&gw.url(&token("k"))).await;
    let producer = producer(&brokers);
    produce(
        &producer,
        &topic,
        "k",
        &task_event("k", "task.created", json!({"n": 0})),
    )
    .await;
    for (n, partition) in [(1, 0), (2, 1), (3, 2)] {
        let payload = task_event("k", "task.created", json!({"n": n}));
        producer
            .send(
                FutureRecord::<(), _>::to(&topic)
                    .partition(partition)
                    .payload(&payload),
                Duration::from_secs(20),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("produce");
    }
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(client.recv().await["task"]["n"].as_i64().unwrap());
    }
    seen.sort();
    assert_eq!(seen, vec![0, 1, 2, 3]);
    let metrics = gw.metrics().await;
    let line = format!("gateway_kafka_records_keyless_total{{topic=\"{topic}\"}} 3");
    assert!(metrics.lines().any(|l| l == line), "missing `{line}`:\n{metrics}");
    gw.stop().await;
}
