//! Graceful drain and metrics, against the real binary: SIGTERM makes `/ready` fail at once,
//! refuses new upgrades, closes open sessions with 1001 spread over the window, and the process
//! exits 0 within the grace period.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_sessions_over_the_window_and_exits_0() {
    let service = ServiceProcess::spawn(&[("DRAIN_WINDOW_SECS", "2"), ("SHUTDOWN_GRACE_SECS", "6")]).await;
    let base = service.base();
    let http = http();
    let mut clients = Vec::new();
    for i in 0..8 {
        clients.push(connect(&format!("ws://{base}/ws?token={}", token(&format!("d{i}")))).await);
    }

    let term = Instant::now();
    // Each session's close is timed by a task of its own, waiting from before the signal: timed
    // after the checks below, closes that came meanwhile would all read the same late time.
    let closes: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                wait_close(&mut c.ws, 1001).await;
                term.elapsed()
            })
        })
        .collect();
    service.signal("TERM");
    // Not ready at once (well within the 2 s window; a debug build on a loaded machine may take
    // a moment to read the signal), and new upgrades refused.
    let mut refused_ready = false;
    while term.elapsed() < Duration::from_millis(1500) {
        let status = http
            .get(format!("http://{base}/ready"))
            .send()
            .await
            .unwrap()
            .status();
        if status == 503 {
            refused_ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused_ready, "/ready answers 503 within 1.5 s of SIGTERM");
    // A new upgrade during the drain is a close after open (1001: go elsewhere), never an HTTP
    // error a legacy client would count as a failed try.
    let reason = expect_close(&format!("ws://{base}/ws?token={}", token("late")), 1001).await;
    assert!(reason.contains("shutting down"), "{reason}");

    // Every session closed with 1001, spread over the window rather than all at once.
    let mut times = Vec::new();
    for close in closes {
        times.push(close.await.expect("close waiter"));
    }
    times.sort();
    let spread = *times.last().unwrap() - times[0];
    assert!(
        spread >= Duration::from_millis(1000),
        "closes spread over the 2 s window: {times:?}"
    );
    assert!(*times.last().unwrap() < Duration::from_secs(4), "{times:?}");
    let status = service.wait_exit(Duration::from_secs(7)).await;
    assert_eq!(status.code(), Some(0), "exits 0");
}

/// `/metrics` reports what happened, under the Prometheus names operators alert on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_report_sessions_events_and_failures() {
    let brokers = brokers();
    let topic = create_topic(&brokers, 1).await;
    let mut env = env_for(Some(&brokers), Some(&topic));
    set(&mut env, "RDKAFKA_STATISTICS_INTERVAL_MS", "200");
    let gw = TestGateway::start(env).await;
    gw.wait_ready().await;
    let mut client = connect(&gw.url(&token("m1"))).await;
    expect_close(&gw.url("not-a-token"), 4001).await;
    let producer = producer(&brokers);
    produce(
        &producer,
        &topic,
        "m1",
        &task_event("m1", "task.created", json!({"n": 1})),
    )
    .await;
    produce(&producer, &topic, "m1", b"garbage").await;
    produce(
        &producer,
        &topic,
        "m1",
        &task_event("m1", "task.created", json!({"n": 2})),
    )
    .await;
    assert_eq!(client.recv().await["task"]["n"], 1);
    assert_eq!(client.recv().await["task"]["n"], 2);
    let partition = format!("topic=\"{topic}\",partition=\"0\"");
    let wanted = [
        "gateway_connections 1".to_string(),
        "gateway_connected_users 1".to_string(),
        "gateway_ready 1".to_string(),
        "gateway_messages_delivered_total 2".to_string(),
        "gateway_auth_failures_total{reason=\"malformed\"} 1".to_string(),
        format!("gateway_kafka_records_consumed_total{{{partition}}} 3"),
        format!("gateway_kafka_records_malformed_total{{{partition}}} 1"),
        format!("gateway_kafka_consumer_lag{{{partition}}} 0"),
        "gateway_delivery_latency_seconds_count 2".to_string(),
    ];
    // The lag comes with librdkafka's statistics (every 200 ms here): wait for every line.
    let deadline = Instant::now() + WAIT;
    loop {
        let text = gw.metrics().await;
        let missing: Vec<&String> = wanted
            .iter()
            .filter(|want| !text.lines().any(|l| l == want.as_str()))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "missing {missing:?} in:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(client);
    gw.wait_connections(0).await;
    let text = gw.metrics().await;
    assert!(
        text.contains("gateway_sessions_closed_total{reason=\"client_closed\"} 1")
            || text.contains("gateway_sessions_closed_total{reason=\"client_gone\"} 1"),
        "{text}"
    );
    gw.stop().await;
}
