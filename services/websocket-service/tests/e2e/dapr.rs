//! The Dapr delivery route, driven by requests shaped as the sidecar sends them
//! (`docs/dapr-contract.md`): headers, CloudEvent fields, raw payloads, bulk deliveries.

use base64::Engine as _;
use serde_json::{json, Value};

use crate::harness::*;

const TOKEN: &str = "sidecar-app-token-0123";

async fn post(gw: &TestGateway, path: &str, body: &Value, headers: &[(&str, String)]) -> (u16, Value) {
    let mut req = http()
        .post(format!("http://{}{path}", gw.addr))
        .header("content-type", "application/cloudevents+json")
        .body(body.to_string());
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let resp = req.send().await.expect("post");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// What daprd sends with every delivery from a Kafka component.
fn sidecar_headers(offset: i64) -> Vec<(&'static str, String)> {
    vec![
        ("dapr-api-token", TOKEN.to_string()),
        ("pubsubname", "taskpubsub".into()),
        (
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
        ),
        ("__topic", "task-updates".into()),
        ("__partition", "0".into()),
        ("__offset", offset.to_string()),
        ("__timestamp", "1795000000000".into()),
        ("__key", "dapr-user".into()),
    ]
}

fn cloudevent(id: &str, data: Value) -> Value {
    json!({
        "id": id, "specversion": "1.0", "source": "tasks-api", "type": "com.dapr.event.sent",
        "datacontenttype": "application/json", "topic": "task-updates", "pubsubname": "taskpubsub",
        "traceid": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "tracestate": "",
        "time": "2026-11-22T10:00:00Z", "data": data
    })
}

async fn dapr_gateway() -> TestGateway {
    let mut env = env_for(None, None);
    set(&mut env, "DAPR_ENABLED", "true");
    set(&mut env, "APP_API_TOKEN", TOKEN);
    set(&mut env, "DAPR_DEAD_LETTER_TOPIC", "task-updates-dlq");
    TestGateway::start(env).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_discovery() {
    let gw = dapr_gateway().await;
    let resp = http()
        .get(format!("http://{}/dapr/subscribe", gw.addr))
        .header("dapr-app-id", "websocket-service")
        .header("dapr-api-token", TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body,
        json!([{"pubsubname": "taskpubsub", "topic": "task-updates", "route": "/task-updates",
                "routes": {"default": "/task-updates"}, "deadLetterTopic": "task-updates-dlq"}])
    );
    gw.stop().await;

    let mut env = env_for(None, None);
    set(&mut env, "DAPR_ENABLED", "true");
    set(&mut env, "DAPR_INSECURE_NO_APP_TOKEN", "true");
    set(&mut env, "DAPR_BULK_SUBSCRIBE", "true");
    set(&mut env, "DAPR_ROUTE", "/incoming/tasks");
    let gw = TestGateway::start(env).await;
    let (_, body) = gw.get("/dapr/subscribe").await;
    assert_eq!(body[0]["routes"]["default"], "/incoming/tasks");
    assert_eq!(
        body[0]["bulkSubscribe"],
        json!({"enabled": true, "maxMessagesCount": 100, "maxAwaitDurationMs": 1000})
    );
    gw.stop().await;

    let mut env = env_for(None, None);
    set(&mut env, "DAPR_ENABLED", "true");
    set(&mut env, "APP_API_TOKEN", TOKEN);
    set(&mut env, "DAPR_SUBSCRIBE", "false");
    let gw = TestGateway::start(env).await;
    let resp = http()
        .get(format!("http://{}/dapr/subscribe", gw.addr))
        .header("dapr-api-token", TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!([]),
        "declarative mode: no programmatic subscription"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_token_is_required_except_for_health() {
    let gw = dapr_gateway().await;
    let event = cloudevent(
        "t-1",
        json!({"event_type": "task.created", "user_id": "x", "task": {}}),
    );
    let (status, body) = post(&gw, "/task-updates", &event, &[]).await;
    assert_eq!((status, body["error"].as_str()), (401, Some("invalid api token")));
    let (status, _) = post(
        &gw,
        "/task-updates",
        &event,
        &[("dapr-api-token", "wrong".into())],
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(gw.get("/dapr/subscribe").await.0, 401);
    assert_eq!(
        gw.get("/health").await.0,
        200,
        "the sidecar's health probe sends no token"
    );
    let (status, body) = post(&gw, "/task-updates", &event, &sidecar_headers(1)).await;
    assert_eq!((status, body), (200, json!({"status": "SUCCESS"})));
    gw.stop().await;
}

/// CloudEvent, raw payload and a bare envelope all reach the WebSocket client as the same
/// message the Kafka path sends; what can never succeed is dropped, never an error status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_reach_websocket_clients_and_bad_events_are_dropped() {
    let gw = dapr_gateway().await;
    let mut client = connect(&gw.url(&token("dapr-user"))).await;
    let envelope = |n: i32| json!({"event_type": "task.updated", "user_id": "dapr-user", "task": {"n": n}});

    let (status, body) = post(
        &gw,
        "/task-updates",
        &cloudevent("ce-1", envelope(1)),
        &sidecar_headers(10),
    )
    .await;
    assert_eq!((status, body), (200, json!({"status": "SUCCESS"})));
    let msg = client.recv().await;
    assert_eq!(
        (msg["type"].as_str(), msg["event"].as_str()),
        (Some("task_update"), Some("task.updated"))
    );
    assert_eq!(msg["task"], json!({"n": 1}));
    assert_eq!(msg["id"], "ce-1");
    assert_eq!(msg["timestamp"], "2026-11-22T10:00:00Z");

    // Raw payload: a fresh wrapper id each delivery; the record bytes in data_base64.
    let raw = json!({
        "id": uuid::Uuid::new_v4().to_string(), "specversion": "1.0",
        "datacontenttype": "application/octet-stream", "source": "Dapr", "type": "com.dapr.event.sent",
        "topic": "task-updates", "pubsubname": "taskpubsub",
        "data_base64": base64::engine::general_purpose::STANDARD.encode(envelope(2).to_string()),
    });
    let (_, body) = post(&gw, "/task-updates", &raw, &sidecar_headers(11)).await;
    assert_eq!(body["status"], "SUCCESS");
    let msg = client.recv().await;
    assert_eq!(msg["task"], json!({"n": 2}));
    assert_eq!(
        msg["id"], "kafka:task-updates:0:11",
        "raw mode ids come from the record, not the wrapper"
    );

    // A record written straight to Kafka arrives as it is, still labelled as a CloudEvent.
    let (_, body) = post(&gw, "/task-updates", &envelope(3), &sidecar_headers(12)).await;
    assert_eq!(body["status"], "SUCCESS");
    assert_eq!(client.recv().await["task"], json!({"n": 3}));

    // An event for a user connected nowhere is still routed: SUCCESS.
    let other = json!({"event_type": "task.created", "user_id": "elsewhere", "task": {}});
    assert_eq!(
        post(
            &gw,
            "/task-updates",
            &cloudevent("ce-2", other),
            &sidecar_headers(13)
        )
        .await
        .1["status"],
        "SUCCESS"
    );

    let drops = [
        cloudevent("bad-1", json!({"event_type": "task.created", "task": {}})),
        cloudevent("bad-2", json!("not an object")),
        cloudevent(
            "bad-3",
            json!({"event_type": "task.created", "user_id": "dapr-user", "task": [1]}),
        ),
        json!({"specversion": "1.0", "id": "bad-4", "data_base64": "%%% not base64"}),
        json!([1, 2, 3]),
    ];
    for (i, event) in drops.iter().enumerate() {
        let (status, body) = post(&gw, "/task-updates", event, &sidecar_headers(20 + i as i64)).await;
        assert_eq!((status, body), (200, json!({"status": "DROP"})), "{event}");
    }
    let resp = http()
        .post(format!("http://{}/task-updates", gw.addr))
        .header("dapr-api-token", TOKEN)
        .body("{ not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap(), json!({"status": "DROP"}));
    client.assert_nothing_pending().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_delivery_answers_each_entry() {
    let gw = dapr_gateway().await;
    let mut client = connect(&gw.url(&token("bulk-user"))).await;
    let good = |n: i32| json!({"event_type": "task.created", "user_id": "bulk-user", "task": {"n": n}});
    let bulk = json!({
        "id": uuid::Uuid::new_v4().to_string(), "type": "com.dapr.event.sent.bulk",
        "topic": "task-updates", "pubsubname": "taskpubsub", "metadata": {},
        "entries": [
            {"entryId": "e1", "event": cloudevent("b-1", good(1)), "contentType": "application/cloudevents+json", "metadata": {}},
            {"entryId": "e2", "event": cloudevent("b-2", json!({"user_id": "bulk-user"})), "contentType": "application/cloudevents+json", "metadata": {}},
            {"entryId": "e3", "event": base64::engine::general_purpose::STANDARD.encode(good(3).to_string()),
             "contentType": "application/octet-stream", "metadata": {"__topic": "task-updates", "__partition": "1", "__offset": "7"}},
            {"entryId": "e4", "contentType": "application/cloudevents+json", "metadata": {}},
        ]
    });
    let resp = http()
        .post(format!("http://{}/task-updates", gw.addr))
        .header("content-type", "application/json")
        .header("dapr-api-token", TOKEN)
        .body(bulk.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({"statuses": [
            {"entryId": "e1", "status": "SUCCESS"}, {"entryId": "e2", "status": "DROP"},
            {"entryId": "e3", "status": "SUCCESS"}, {"entryId": "e4", "status": "DROP"}
        ]})
    );
    assert_eq!(client.recv().await["task"]["n"], 1);
    let third = client.recv().await;
    assert_eq!(
        (third["task"]["n"].as_i64(), third["id"].as_str()),
        (Some(3), Some("kafka:task-updates:1:7"))
    );
    client.assert_nothing_pending().await;
    gw.stop().await;
}

/// Kafka and Dapr both enabled: the same record arrives both ways and is delivered once; a
/// redelivery of the same event is not delivered again either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_event_one_delivery_across_kafka_and_dapr() {
    let brokers = brokers();
    let topic = create_topic(&brokers, 1).await;
    let mut env = env_for(Some(&brokers), Some(&topic));
    set(&mut env, "DAPR_ENABLED", "true");
    set(&mut env, "APP_API_TOKEN", TOKEN);
    let gw = TestGateway::start(env).await;
    gw.wait_ready().await;
    let mut client = connect(&gw.url(&token("twice"))).await;

    // A bare record written to Kafka at offset 0: the Kafka path reads it, and the sidecar
    // delivers the same record with its coordinates in headers.
    let record = json!({"event_type": "task.created", "user_id": "twice", "task": {"n": 1}});
    produce(
        &producer(&brokers),
        &topic,
        "twice",
        record.to_string().as_bytes(),
    )
    .await;
    let first = client.recv().await;
    assert_eq!(first["id"], format!("kafka:{topic}:0:0"));
    let mut headers = sidecar_headers(0);
    headers.retain(|(k, _)| *k != "__topic");
    headers.push(("__topic", topic.clone()));
    assert_eq!(
        post(&gw, "/task-updates", &record, &headers).await.1["status"],
        "SUCCESS"
    );

    // A CloudEvent delivered twice (a sidecar retry).
    let event = cloudevent(
        "ce-dup",
        json!({"event_type": "task.updated", "user_id": "twice", "task": {"n": 2}}),
    );
    post(&gw, "/task-updates", &event, &sidecar_headers(5)).await;
    post(&gw, "/task-updates", &event, &sidecar_headers(5)).await;
    assert_eq!(client.recv().await["task"]["n"], 2);
    client.assert_nothing_pending().await;
    assert_eq!(websocket_service::telemetry::Stats::get(&gw.stats.duplicates), 2);
    gw.stop().await;
}

/// Producer -> broker -> gateway -> WebSocket client, with the publisher crate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_to_kafka_to_websocket() {
    use publisher::{new_event, EventType, KafkaPublisher};

    let brokers = brokers();
    let topic = create_topic(&brokers, 3).await;
    let gw = TestGateway::on_topic(&topic).await;
    let mut client = connect(&gw.url(&token("pub-user"))).await;
    let kafka = KafkaPublisher::new(&brokers, &topic, std::time::Duration::from_secs(20)).unwrap();
    let mut ids = Vec::new();
    for n in 0..5 {
        let event = new_event(EventType::Updated, "pub-user", json!({"n": n})).unwrap();
        kafka.publish(&event).await.unwrap();
        ids.push(event.id.unwrap());
    }
    for (n, id) in ids.iter().enumerate() {
        let msg = client.recv().await;
        assert_eq!(
            (msg["task"]["n"].as_u64(), msg["id"].as_str()),
            (Some(n as u64), Some(id.as_str()))
        );
        assert_eq!(msg["event"], "task.updated");
    }
    gw.stop().await;
}

/// Publisher in Dapr mode -> a stand-in sidecar that forwards to the gateway's route the way
/// daprd does (CloudEvent around the published JSON, sidecar headers, app token) -> WebSocket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_through_a_sidecar_to_websocket() {
    use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
    use publisher::{new_event, DaprPublisher, EventType};

    let gw = dapr_gateway().await;
    let mut client = connect(&gw.url(&token("sidecar-user"))).await;
    let gateway_route = format!("http://{}/task-updates", gw.addr);

    async fn publish(
        req: HttpRequest,
        path: web::Path<(String, String)>,
        body: web::Bytes,
        gateway_route: web::Data<String>,
    ) -> HttpResponse {
        let (pubsub, topic) = path.into_inner();
        assert_eq!(req.headers().get("content-type").unwrap(), "application/json");
        assert!(
            req.query_string().starts_with("metadata.partitionKey="),
            "{}",
            req.query_string()
        );
        let data: Value = serde_json::from_slice(&body).unwrap();
        let cloudevent = json!({
            "id": uuid::Uuid::new_v4().to_string(), "specversion": "1.0", "source": "tasks-api",
            "type": "com.dapr.event.sent", "datacontenttype": "application/json",
            "topic": topic, "pubsubname": pubsub, "time": "2026-11-22T10:00:00Z", "data": data,
        });
        let answer: Value = http()
            .post(gateway_route.get_ref())
            .header("content-type", "application/cloudevents+json")
            .header("dapr-api-token", TOKEN)
            .header("pubsubname", pubsub)
            .body(cloudevent.to_string())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(answer, json!({"status": "SUCCESS"}));
        HttpResponse::NoContent().finish()
    }
    let route = web::Data::new(gateway_route);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let sidecar_addr = listener.local_addr().unwrap();
    let sidecar = HttpServer::new(move || {
        App::new()
            .app_data(route.clone())
            .route("/v1.0/publish/{pubsub}/{topic}", web::post().to(publish))
    })
    .workers(1)
    .listen(listener)
    .unwrap()
    .run();
    let sidecar_handle = sidecar.handle();
    tokio::spawn(sidecar);

    let dapr = DaprPublisher::new(
        &format!("http://{sidecar_addr}"),
        "taskpubsub",
        "task-updates",
        None,
    )
    .unwrap();
    let event = new_event(EventType::Completed, "sidecar-user", json!({"id": 9})).unwrap();
    dapr.publish(&event).await.unwrap();
    let msg = client.recv().await;
    assert_eq!(msg["event"], "task.completed");
    assert_eq!(msg["task"], json!({"id": 9}));
    assert_eq!(
        msg["id"].as_str(),
        event.id.as_deref(),
        "the publisher's id survives the CloudEvent wrapping"
    );
    sidecar_handle.stop(true).await;
    gw.stop().await;
}

/// Delivery bodies are read up to `dapr::MAX_BODY_BYTES`: a 2 MiB event (over actix's default
/// 256 KiB payload limit) is delivered, a body over the bound is refused with 413 before anything
/// is routed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_bodies_are_bounded() {
    let gw = dapr_gateway().await;
    let mut client = connect(&gw.url(&token("big"))).await;
    let limit = websocket_service::ingest::dapr::MAX_BODY_BYTES;
    let under = "x".repeat(2 * 1024 * 1024);
    let event = cloudevent(
        "big-1",
        json!({"event_type": "task.created", "user_id": "big", "task": {"blob": under}}),
    );
    assert_eq!(
        post(&gw, "/task-updates", &event, &sidecar_headers(1)).await,
        (200, json!({"status": "SUCCESS"}))
    );
    assert_eq!(
        client.recv().await["task"]["blob"].as_str().map(str::len),
        Some(2 * 1024 * 1024)
    );

    let over = "x".repeat(limit + 1);
    let event = cloudevent(
        "big-2",
        json!({"event_type": "task.created", "user_id": "big", "task": {"blob": over}}),
    );
    let (status, _) = post(&gw, "/task-updates", &event, &sidecar_headers(2)).await;
    assert_eq!(status, 413);
    client.assert_nothing_pending().await;
    gw.stop().await;
}

/// A generic event delivered by the sidecar reaches its audience like one read from Kafka; one
/// with an unknown audience key is dropped (never an error status the sidecar would retry).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generic_events_through_dapr() {
    let mut env = env_for(None, None);
    set(&mut env, "DAPR_ENABLED", "true");
    set(&mut env, "APP_API_TOKEN", TOKEN);
    set(&mut env, "ROOMS_PUBLIC", "status");
    let gw = TestGateway::start(env).await;
    let mut member = connect(&gw.url(&token("m1"))).await;
    member.join("status").await;
    let mut other = connect(&gw.url(&token("m2"))).await;
    let event = cloudevent(
        "ce-generic-1",
        json!({"event_type": "system.status", "data": {"ok": true}, "to": {"room": "status"}}),
    );
    assert_eq!(
        post(&gw, "/task-updates", &event, &sidecar_headers(11)).await,
        (200, json!({"status": "SUCCESS"}))
    );
    let got = member.recv().await;
    assert_eq!(
        (
            got["type"].as_str(),
            got["room"].as_str(),
            got["data"]["ok"].as_bool()
        ),
        (Some("system.status"), Some("status"), Some(true))
    );
    assert_eq!(got["id"], "ce-generic-1");
    let bad = cloudevent(
        "ce-generic-2",
        json!({"event_type": "system.status", "data": {}, "to": {"rooms": "status", "everyone": true}}),
    );
    assert_eq!(
        post(&gw, "/task-updates", &bad, &sidecar_headers(12)).await,
        (200, json!({"status": "DROP"}))
    );
    member.assert_nothing_pending().await;
    other.assert_nothing_pending().await;
    gw.stop().await;
}

/// Issue 15 item 8: a delivery that reaches a path the gateway does not serve (a subscription
/// pointed at the wrong route) is answered 503, which the sidecar retries, never 404, which it
/// would take as "drop for good"; on both listeners. Other unknown paths stay 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_to_an_unknown_path_is_retried_not_dropped() {
    let gw = dapr_gateway().await;
    let event = cloudevent(
        "lost-1",
        json!({"event_type": "task.created", "user_id": "x", "task": {}}),
    );
    for addr in [gw.addr, gw.internal] {
        let resp = http()
            .post(format!("http://{addr}/orders/route-typo"))
            .header("content-type", "application/cloudevents+json")
            .header("dapr-api-token", TOKEN)
            .header("pubsubname", "taskpubsub")
            .body(event.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 503, "{addr}");
        assert_eq!(resp.headers()["retry-after"], "5");
    }
    assert_eq!(gw.get("/nothing-here").await.0, 404);
    assert!(gw
        .metrics()
        .await
        .contains("gateway_dapr_deliveries_total{status=\"UNKNOWN_ROUTE\"} 2"));
    gw.stop().await;
}

/// A delivery's `__topic` and `__partition` headers come from outside: naming more partitions
/// than a cursor can hold, or a new topic each time, must not grow the cursors past what is
/// accepted nor the metrics by a series per name. Every event is still delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_naming_endless_partitions_are_bounded() {
    let gw = dapr_gateway().await;
    let mut client = connect(&format!("{}&since=", gw.url(&token("dapr-user")))).await;
    // Unbounded, 400 of them (negative partitions, the longest offsets) made a cursor of about
    // 9,600 characters, which was then refused.
    const N: i64 = 400;
    let mut cursor = String::new();
    for n in 0..N {
        let headers = vec![
            ("dapr-api-token", TOKEN.to_string()),
            ("__topic", format!("invented-{n}")),
            ("__partition", (-(n + 1) * 7919).to_string()),
            ("__offset", (i64::MAX - n).to_string()),
        ];
        let event = json!({"event_type": "task.updated", "user_id": "dapr-user", "task": {"n": n}});
        let (status, body) = post(
            &gw,
            "/task-updates",
            &cloudevent(&format!("many-{n}"), event),
            &headers,
        )
        .await;
        assert_eq!((status, body), (200, json!({"status": "SUCCESS"})));
        // Heartbeats (this session passed `since`) may come between.
        let msg = loop {
            let msg = client.recv().await;
            if msg["type"] != "heartbeat" {
                break msg;
            }
        };
        assert_eq!(msg["task"]["n"], n, "{msg}");
        cursor = msg["cursor"].as_str().expect("a cursor").to_string();
    }
    // The replica tracks 256 partitions; the cursor after 400 is still one it accepts.
    assert!(cursor.len() <= 8000, "{} characters", cursor.len());
    let again = connect(&format!("{}&since={cursor}", gw.url(&token("dapr-user")))).await;
    assert_eq!(again.hello["recovered"], true, "{}", again.hello);
    // Keyless deliveries are counted under one label, not one per invented topic.
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains(&format!(
            "gateway_kafka_records_keyless_total{{topic=\"other\"}} {N}"
        )),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("keyless"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(!metrics.contains("invented-"), "a header became a label");
    gw.stop().await;
}
