//! The socket protocol: hello, ping/pong, errors that keep the session, frames that end it,
//! heartbeats, connection limits, the HTTP endpoints, and configuration errors.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_pong_and_errors_keep_the_session() {
    let gw = TestGateway::start(env_for(None, None)).await;
    let mut c = connect(&gw.url(&token("p"))).await;
    assert_eq!(c.hello["user_id"], "p");
    assert!(c.hello["connection_id"].as_str().unwrap().len() >= 16);

    c.send(r#"{"type":"ping"}"#).await;
    assert_eq!(c.recv().await["type"], "pong");
    c.send("{not json").await;
    let err = c.recv().await;
    assert_eq!(
        (err["type"].as_str(), err["code"].as_str()),
        (Some("error"), Some("invalid_json"))
    );
    c.send(r#"{"type":"teleport"}"#).await;
    let err = c.recv().await;
    assert_eq!(err["code"], "unknown_type");
    assert!(err["message"].as_str().unwrap().contains("teleport"));
    c.send(r#"[1,2,3]"#).await;
    assert_eq!(c.recv().await["code"], "invalid_message");
    // Still open.
    c.send(r#"{"type":"ping"}"#).await;
    assert_eq!(c.recv().await["type"], "pong");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_and_oversized_frames_close_the_session() {
    let mut env = env_for(None, None);
    set(&mut env, "MAX_FRAME_BYTES", "4096");
    let gw = TestGateway::start(env).await;

    let mut c = connect(&gw.url(&token("b"))).await;
    c.ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    wait_close(&mut c.ws, 1003).await;

    let mut c = connect(&gw.url(&token("b"))).await;
    let big = format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(8192));
    c.ws.send(Message::text(big)).await.unwrap();
    wait_close(&mut c.ws, 1009).await;

    // Just under the limit is fine.
    let mut c = connect(&gw.url(&token("b"))).await;
    let fits = format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(3000));
    c.send(&fits).await;
    assert_eq!(c.recv().await["type"], "pong");
    gw.stop().await;
}

/// The server pings; a peer that answers nothing is dropped after CLIENT_TIMEOUT_SECS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_pings_and_drops_silent_peers() {
    let mut env = env_for(None, None);
    set(&mut env, "HEARTBEAT_INTERVAL_SECS", "1");
    set(&mut env, "CLIENT_TIMEOUT_SECS", "3");
    let gw = TestGateway::start(env).await;

    let live = connect(&gw.url(&token("h"))).await;
    // Upgraded, then never read again: its pings go unanswered.
    let silent = connect(&gw.url(&token("h"))).await;
    gw.wait_connections(2).await;
    // The live client reads (tungstenite answers each ping) for longer than the timeout.
    let reader = tokio::spawn(async move {
        let mut live = live;
        let mut pings = 0;
        let until = tokio::time::Instant::now() + Duration::from_secs(6);
        while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(until, live.ws.next()).await {
            if matches!(msg, Message::Ping(_)) {
                pings += 1;
            }
        }
        (live, pings)
    });
    gw.wait_connections(1).await;
    let (mut live, pings) = reader.await.unwrap();
    assert!(pings >= 3, "server pinged {pings} times in 6 s");
    live.assert_nothing_pending().await;
    assert_eq!(
        gw.get("/health").await.1["connections"],
        1,
        "only the silent peer was dropped"
    );
    drop(silent);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limits_close_with_clear_codes() {
    let mut env = env_for(None, None);
    set(&mut env, "MAX_CONNECTIONS_PER_USER", "2");
    set(&mut env, "MAX_CONNECTIONS", "3");
    let gw = TestGateway::start(env).await;
    let _a1 = connect(&gw.url(&token("a"))).await;
    let _a2 = connect(&gw.url(&token("a"))).await;
    let reason = expect_close(&gw.url(&token("a")), 4029).await;
    assert!(reason.contains("too many connections"), "{reason}");
    let _b1 = connect(&gw.url(&token("b"))).await;
    expect_close(&gw.url(&token("c")), 1013).await;
    gw.wait_connections(3).await;
    drop(_a1);
    gw.wait_connections(2).await;
    connect(&gw.url(&token("c"))).await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_ready_without_kafka() {
    let gw = TestGateway::start(env_for(None, None)).await;
    let (status, body) = gw.get("/health").await;
    assert_eq!(status, 200);
    assert_eq!(body, serde_json::json!({"status": "healthy", "connections": 0}));
    let _c = connect(&gw.url(&token("x"))).await;
    assert_eq!(gw.get("/health").await.1["connections"], 1);
    // No source configured (Dapr-only deployment): ready.
    assert_eq!(gw.get("/ready").await.0, 200);
    gw.stop().await;
}

/// Bad configuration: one line naming the variable, exit code 64.
#[test]
fn invalid_configuration_exits_64() {
    let bin = env!("CARGO_BIN_EXE_websocket-service");
    let cases: [&[(&str, &str)]; 3] = [
        &[("JWT_SECRET", SECRET), ("PORT", "eighty")],
        &[],
        &[("JWT_SECRET", SECRET), ("LOG_FORMAT", "xml")],
    ];
    let wants = ["PORT", "JWT_SECRET", "LOG_FORMAT"];
    for (vars, want) in cases.iter().zip(wants) {
        let out = std::process::Command::new(bin)
            .env_clear()
            .envs(vars.iter().copied())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "stderr: {stderr}");
        assert!(stderr.contains(want), "message names {want}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    }
}
