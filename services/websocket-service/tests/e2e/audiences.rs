//! Audiences (issue 8): rooms, workspaces, roles, broadcasts, filters and the HTTP publish API,
//! with real clients, a real broker and two gateway instances on one topic.

use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::*;

pub const API_KEY: &str = "server-api-key-0123456789";

/// Environment of a gateway on `topic` with the publish API and public rooms `lobby`, `public:*`.
fn env_with_api(topic: &str) -> Vec<(String, String)> {
    let mut env = env_for(Some(&brokers()), Some(topic));
    set(&mut env, "SERVER_API_KEY", API_KEY);
    set(&mut env, "ROOMS_PUBLIC", "lobby,public:*");
    env
}

/// Two instances of one cluster (both read the whole topic). One partition, so that every event
/// keeps its place relative to the markers below, whatever its record key.
async fn two_instances() -> (TestGateway, TestGateway) {
    let topic = create_topic(&brokers(), 1).await;
    let a = TestGateway::start(env_with_api(&topic)).await;
    let b = TestGateway::start(env_with_api(&topic)).await;
    a.wait_ready().await;
    b.wait_ready().await;
    (a, b)
}

fn generic(event_type: &str, data: Value, to: Value) -> Value {
    json!({"event_type": event_type, "data": data, "to": to})
}

/// Publishes through instance `gw`'s API and expects 202 from Kafka.
async fn publish(gw: &TestGateway, body: Value) -> Value {
    let (status, answer) = gw.publish(API_KEY, &body).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["delivery"], "kafka", "{answer}");
    answer
}

/// A marker per user, published after the events under test: on a one-partition topic, once a
/// client has read its marker it has read everything that was addressed to it before.
async fn marker(gw: &TestGateway, users: &[&str]) {
    for user in users {
        publish(
            gw,
            generic("marker", json!({"user": user}), json!({"user": user})),
        )
        .await;
    }
}

/// Reads a client's events up to its marker; returns their event types (and rooms).
async fn events_until_marker(client: &mut Client) -> Vec<String> {
    let mut got = Vec::new();
    loop {
        let msg = client.recv().await;
        let kind = msg["type"].as_str().unwrap().to_string();
        if kind == "marker" {
            return got;
        }
        match msg["room"].as_str() {
            Some(room) => got.push(format!("{kind}@{room}")),
            None => got.push(kind),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_broadcast_reaches_exactly_the_joined_sessions_on_both_instances() {
    let (a, b) = two_instances().await;
    let mut in_a = connect(&a.url(&token_claims("r1", json!({"rooms": ["support:*"]})))).await;
    let mut in_b = connect(&b.url(&token_claims("r2", json!({"rooms": ["support:*"]})))).await;
    let mut out_b = connect(&b.url(&token_claims("r3", json!({"rooms": ["support:*"]})))).await;
    // Another tab of r1 that did not join: rooms are per session.
    let mut tab_a = connect(&a.url(&token_claims("r1", json!({})))).await;
    in_a.join("support:7").await;
    in_b.join("support:7").await;
    out_b.join("support:8").await;

    publish(
        &a,
        generic("ticket.updated", json!({"n": 1}), json!({"room": "support:7"})),
    )
    .await;
    marker(&a, &["r1", "r2", "r3"]).await;
    assert_eq!(events_until_marker(&mut in_a).await, ["ticket.updated@support:7"]);
    assert_eq!(events_until_marker(&mut in_b).await, ["ticket.updated@support:7"]);
    assert_eq!(events_until_marker(&mut out_b).await, Vec::<String>::new());
    assert_eq!(events_until_marker(&mut tab_a).await, Vec::<String>::new());

    // Left: no more events from the room.
    let left = in_b.ask(json!({"type": "leave_room", "room": "support:7"})).await;
    assert_eq!(left, json!({"type": "left_room", "data": {"room": "support:7"}}));
    publish(
        &b,
        generic("ticket.updated", json!({"n": 2}), json!({"room": "support:7"})),
    )
    .await;
    marker(&b, &["r1", "r2"]).await;
    assert_eq!(events_until_marker(&mut in_a).await, ["ticket.updated@support:7"]);
    assert_eq!(events_until_marker(&mut in_b).await, Vec::<String>::new());
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_excluding_a_user_roles_and_the_message_shape() {
    let (a, b) = two_instances().await;
    let mut admin_a = connect(&a.url(&token_claims("boss", json!({"roles": ["admin"]})))).await;
    let mut agent_b = connect(&b.url(&token_claims("agent", json!({"role": "agent"})))).await;
    let mut skipped_a = connect(&a.url(&token("skip"))).await;
    let mut skipped_b = connect(&b.url(&token("skip"))).await;

    let answer = publish(
        &b,
        json!([
            generic(
                "ticket.created",
                json!({"id": 9}),
                json!({"all": true, "exclude_users": ["skip"]})
            ),
            generic(
                "inventory.low_stock",
                json!({"sku": "x"}),
                json!({"roles": ["admin"]})
            ),
            generic("agents.only", json!({}), json!({"all": true, "roles": ["agent"]})),
        ]),
    )
    .await;
    assert_eq!(answer["ids"].as_array().unwrap().len(), 3);
    marker(&b, &["boss", "agent", "skip"]).await;
    assert_eq!(
        events_until_marker(&mut admin_a).await,
        ["ticket.created", "inventory.low_stock"]
    );
    assert_eq!(
        events_until_marker(&mut agent_b).await,
        ["ticket.created", "agents.only"]
    );
    assert_eq!(events_until_marker(&mut skipped_a).await, Vec::<String>::new());
    assert_eq!(events_until_marker(&mut skipped_b).await, Vec::<String>::new());

    // The generic message serves both frontends: `type` and `event`, payload under `data`.
    publish(
        &a,
        generic("notification", json!({"text": "hi"}), json!({"user": "boss"})),
    )
    .await;
    let msg = admin_a.recv().await;
    assert_eq!(
        (msg["type"].as_str(), msg["event"].as_str()),
        (Some("notification"), Some("notification"))
    );
    assert_eq!(msg["data"], json!({"text": "hi"}));
    assert!(msg["id"].as_str().unwrap().len() >= 32);
    assert!(msg["timestamp"].as_str().unwrap().ends_with('Z'));
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workspaces_never_see_each_other_even_through_rooms_of_the_same_name() {
    let (a, b) = two_instances().await;
    // Bound by the token's own workspace_id, or by ?workspace_id= among the token's workspaces.
    let t1 = token_claims("w1-user", json!({"workspace_id": "w1", "rooms": ["alerts"]}));
    let mut w1 = connect(&a.url(&t1)).await;
    assert_eq!(w1.hello["workspace_id"], "w1");
    assert_eq!(w1.hello["event"], "connected");
    let t2 = token_claims(
        "w2-user",
        json!({"workspace_id": "w9", "workspaces": ["w2"], "rooms": ["alerts"]}),
    );
    let mut w2 = connect(&format!("{}&workspace_id=w2", b.url(&t2))).await;
    assert_eq!(w2.hello["workspace_id"], "w2");
    w1.join("alerts").await;
    w2.join("alerts").await;

    publish(
        &a,
        generic("execution_started", json!({}), json!({"workspace": "w1"})),
    )
    .await;
    publish(
        &a,
        generic("alert", json!({}), json!({"workspace": "w2", "room": "alerts"})),
    )
    .await;
    // Addressed to w1-user, but in workspace w2: not delivered to w1-user's w1 session.
    publish(
        &a,
        generic("dm", json!({}), json!({"workspace": "w2", "user": "w1-user"})),
    )
    .await;
    marker(&a, &["w1-user", "w2-user"]).await;
    assert_eq!(events_until_marker(&mut w1).await, ["execution_started"]);
    assert_eq!(events_until_marker(&mut w2).await, ["alert@alerts"]);
    // The workspace rides along on workspace-addressed events.
    publish(
        &b,
        generic("execution_done", json!({}), json!({"workspace": "w2"})),
    )
    .await;
    assert_eq!(w2.recv().await["workspace_id"], "w2");

    // A workspace the token does not grant: 4003 with a reason.
    let reason = expect_close(&format!("{}&workspace_id=w3", b.url(&t2)), 4003).await;
    assert!(reason.contains("w3"), "{reason}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_are_authorized_bounded_and_answered() {
    let topic = create_topic(&brokers(), 1).await;
    let mut env = env_with_api(&topic);
    set(&mut env, "MAX_ROOMS_PER_SESSION", "2");
    let gw = TestGateway::start(env).await;
    gw.wait_ready().await;
    let mut c = connect(&gw.url(&token_claims("j", json!({"rooms": ["team-1"]})))).await;
    let refused = c.ask(json!({"type": "join_room", "room": "team-2"})).await;
    assert_eq!(
        (refused["type"].as_str(), refused["code"].as_str()),
        (Some("error"), Some("forbidden"))
    );
    assert_eq!(
        c.ask(json!({"type": "join_room", "room": "bad room"})).await["code"],
        "invalid_room"
    );
    assert_eq!(
        c.ask(json!({"type": "join_room"})).await["code"],
        "invalid_message"
    );
    c.join("team-1").await;
    c.join("lobby").await;
    assert_eq!(
        c.ask(json!({"type": "join_room", "room": "public:x"})).await["code"],
        "limit"
    );

    // The forbidden room's events never reach it.
    publish(&gw, generic("secret", json!({}), json!({"room": "team-2"}))).await;
    publish(&gw, generic("news", json!({}), json!({"room": "lobby"}))).await;
    marker(&gw, &["j"]).await;
    assert_eq!(events_until_marker(&mut c).await, ["news@lobby"]);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_narrow_and_widen_delivery_and_task_updates_match_by_event() {
    let topic = create_topic(&brokers(), 1).await;
    let gw = TestGateway::start(env_with_api(&topic)).await;
    gw.wait_ready().await;
    let mut c = connect(&gw.url(&token("f"))).await;
    let sub = c
        .ask(json!({"type": "subscribe", "event_types": ["execution_started", "task.created", "marker"]}))
        .await;
    assert_eq!(
        sub,
        json!({"type": "subscribed", "data": {"event_types": ["execution_started", "task.created", "marker"]}})
    );
    let to_f = json!({"user": "f"});
    publish(
        &gw,
        json!([
            generic("execution_started", json!({}), to_f.clone()),
            generic("execution_failed", json!({}), to_f.clone()),
            {"event_type": "task.created", "user_id": "f", "task": {"id": 1}},
            {"event_type": "task.deleted", "user_id": "f", "task": {"id": 1}},
        ]),
    )
    .await;
    marker(&gw, &["f"]).await;
    assert_eq!(
        events_until_marker(&mut c).await,
        ["execution_started", "task_update"]
    );

    // Widen: unsubscribe from everything (no list) means every type again.
    let unsub = c.ask(json!({"type": "unsubscribe"})).await;
    assert_eq!(
        unsub,
        json!({"type": "unsubscribed", "data": {"event_types": []}})
    );
    publish(&gw, generic("execution_failed", json!({}), to_f.clone())).await;
    marker(&gw, &["f"]).await;
    assert_eq!(events_until_marker(&mut c).await, ["execution_failed"]);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_matching_a_session_twice_arrives_once() {
    let topic = create_topic(&brokers(), 1).await;
    let gw = TestGateway::start(env_with_api(&topic)).await;
    gw.wait_ready().await;
    let mut c = connect(&gw.url(&token("twice"))).await;
    c.join("lobby").await;
    c.join("public:a").await;
    publish(
        &gw,
        generic(
            "hello",
            json!({}),
            json!({"user": "twice", "users": ["twice"], "rooms": ["lobby", "public:a"]}),
        ),
    )
    .await;
    marker(&gw, &["twice"]).await;
    assert_eq!(events_until_marker(&mut c).await, ["hello@lobby"]);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verbatim_message_reaches_the_client_byte_for_byte() {
    let topic = create_topic(&brokers(), 1).await;
    let gw = TestGateway::start(env_with_api(&topic)).await;
    gw.wait_ready().await;
    let mut c = connect(&gw.url(&token("v"))).await;
    let frame =
        r#"{"type":"queue_update","queue_id":12,"status":"open","parent_issue":null,"priority":"high"}"#;
    let body = format!(r#"{{"message":{frame},"to":{{"user":"v"}}}}"#);
    let (status, answer) = gw.publish_raw(API_KEY, body).await;
    assert_eq!(status, 202, "{answer}");
    let got = loop {
        match tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut c.ws)).await {
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(text)))) => break text.to_string(),
            Ok(Some(Ok(_))) => continue,
            other => panic!("no frame: {other:?}"),
        }
    };
    assert_eq!(got, frame);
    assert_server_schema(&serde_json::from_str(&got).unwrap());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publish_api_refuses_bad_keys_bodies_and_sizes() {
    let topic = create_topic(&brokers(), 1).await;
    let mut env = env_with_api(&topic);
    set(&mut env, "PUBLISH_MAX_BODY_BYTES", "2048");
    set(&mut env, "PUBLISH_MAX_EVENTS", "3");
    let gw = TestGateway::start(env).await;
    gw.wait_ready().await;
    let mut c = connect(&gw.url(&token("p"))).await;
    let ok = generic("x", json!({}), json!({"user": "p"}));

    let (status, body) = gw.publish("wrong-key-0123456789", &ok).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["status"], 401);
    let (status, body) = gw.publish_raw(API_KEY, "not json".into()).await;
    assert_eq!((status, body["title"].as_str()), (400, Some("invalid events")));
    let (status, body) = gw
        .publish_raw(
            API_KEY,
            json!([ok, generic("x", json!({}), json!({"rooom": "a"}))]).to_string(),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["errors"][0]["index"], 1);
    assert_eq!(body["errors"][0]["field"], "to");
    assert!(
        body["errors"][0]["detail"].as_str().unwrap().contains("rooom"),
        "{body}"
    );
    let (status, _) = gw.publish_raw(API_KEY, json!([ok, ok, ok, ok]).to_string()).await;
    assert_eq!(status, 400);
    let big = generic("x", json!({"pad": "z".repeat(4096)}), json!({"user": "p"}));
    let (status, body) = gw.publish_raw(API_KEY, big.to_string()).await;
    assert_eq!(status, 413, "{body}");
    // Not on the public port at all.
    let public = http()
        .post(format!("http://{}/api/publish", gw.addr))
        .bearer_auth(API_KEY)
        .body(ok.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(public.status(), 404);
    // Nothing of the refused requests was delivered.
    c.assert_nothing_pending().await;
    gw.stop().await;
}

/// The broker being down: 503 with Retry-After once the publish timeout passes, never a 202.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publish_api_answers_503_while_the_broker_is_down() {
    let dead = format!("127.0.0.1:{}", free_port());
    let mut env = env_for(Some(&dead), Some("nowhere"));
    set(&mut env, "SERVER_API_KEY", API_KEY);
    set(&mut env, "PUBLISH_TIMEOUT_MS", "1500");
    let gw = TestGateway::start(env).await;
    let resp = http()
        .post(format!("http://{}/api/publish", gw.internal))
        .bearer_auth(API_KEY)
        .body(generic("x", json!({}), json!({"all": true})).to_string())
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "2");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["failed_indexes"], json!([0]));
    assert_eq!(body["accepted"], json!([]));
    gw.stop().await;
}

/// Without Kafka the API delivers on this replica and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_kafka_the_publish_api_delivers_locally() {
    let mut env = env_for(None, None);
    set(&mut env, "SERVER_API_KEY", API_KEY);
    let gw = TestGateway::start(env).await;
    let mut c = connect(&gw.url(&token("loc"))).await;
    let (status, body) = gw
        .publish(
            API_KEY,
            &generic("ping.local", json!({"n": 1}), json!({"user": "loc"})),
        )
        .await;
    assert_eq!(status, 202);
    assert_eq!(body["delivery"], "local");
    assert_eq!(c.recv().await["data"]["n"], 1);
    gw.stop().await;
}
