//! Upstream (issue 16): RPC calls answered by a small real HTTP backend and by a Kafka consumer,
//! a legacy request type, and room publications through Kafka, across two gateway processes.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;

const BACKEND_TOKEN: &str = "backend-token-0123456789";

/// A small real HTTP backend: one request per connection, answered by `method`.
struct HttpBackend {
    addr: std::net::SocketAddr,
    /// Every request body it received.
    seen: Arc<Mutex<Vec<Value>>>,
    /// `slow.wait` calls are held until this is notified; then they answer and are counted.
    release: Arc<tokio::sync::Notify>,
    slow_answered: Arc<std::sync::atomic::AtomicUsize>,
}

impl HttpBackend {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let release = Arc::new(tokio::sync::Notify::new());
        let slow_answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (log, rel, answered) = (seen.clone(), release.clone(), slow_answered.clone());
        tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(serve_one(sock, log.clone(), rel.clone(), answered.clone()));
            }
        });
        HttpBackend {
            addr,
            seen,
            release,
            slow_answered,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/rpc", self.addr)
    }
}

async fn serve_one(
    mut sock: tokio::net::TcpStream,
    seen: Arc<Mutex<Vec<Value>>>,
    release: Arc<tokio::sync::Notify>,
    slow_answered: Arc<std::sync::atomic::AtomicUsize>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let (head, body) = loop {
        let n = sock.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            while buf.len() < end + 4 + length {
                let n = sock.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    return;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            break (head, buf[end + 4..end + 4 + length].to_vec());
        }
    };
    let mut request: Value = serde_json::from_slice(&body).unwrap();
    let auth = head
        .lines()
        .find_map(|l| l.strip_prefix("authorization:"))
        .map(|v| v.trim().to_string());
    request["authorization_header"] = json!(auth);
    seen.lock().unwrap().push(request.clone());
    let method = request["method"].as_str().unwrap_or_default().to_string();
    let (status, answer) = match method.as_str() {
        "echo.who" => (200, request.clone()),
        "slow.wait" => {
            // Held until the test releases it (long after the gateway's deadline).
            let _ = tokio::time::timeout(WAIT, release.notified()).await;
            (200, json!({"late": true}))
        }
        "fail.custom" => (
            404,
            json!({"error": {"code": "not_found", "message": "no such report"}}),
        ),
        "fail.crash" => (500, json!("internal error")),
        "big.answer" => (200, json!({"blob": "x".repeat(100_000)})),
        "metrics.get" => (
            200,
            json!({"metric_type": request["data"]["metric_type"], "value": 42}),
        ),
        "check.publish" if request["data"]["room"] == "announce:open" => (200, json!({"allow": true})),
        "check.publish" => (
            403,
            json!({"error": {"code": "denied", "message": "announcements are closed"}}),
        ),
        _ => (400, json!({"error": {"code": "bad_method", "message": "?"}})),
    };
    let body = answer.to_string();
    let response = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = sock.write_all(response.as_bytes()).await;
    if method == "slow.wait" {
        slow_answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A Kafka backend: reads requests from `topic`, answers each with a generic envelope addressed
/// to the calling session on the topic the request names.
fn kafka_backend(topic: &str) {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", unique("rpc-backend"))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&assignment).unwrap();
    let producer = producer(&brokers());
    tokio::spawn(async move {
        let mut stream = consumer.stream();
        while let Some(Ok(record)) = stream.next().await {
            let request: Value = serde_json::from_slice(record.payload().unwrap()).unwrap();
            let session = request["reply_to"]["session"].as_str().unwrap();
            assert_eq!(session, request["session"], "{request}");
            let reply = if request["method"] == "kafka.fail" {
                json!({"event_type": "rpc_error", "to": {"session": session},
                       "data": {"request_id": request["request_id"], "error": {"code": "no_data", "message": "nothing yet"}}})
            } else {
                json!({"event_type": "rpc_result", "to": {"session": session},
                       "data": {"request_id": request["request_id"],
                                "data": {"user": request["user"], "n": request["data"]["n"]}}})
            };
            let topic = request["reply_to"]["topic"].as_str().unwrap().to_string();
            produce(&producer, &topic, session, reply.to_string().as_bytes()).await;
        }
    });
}

fn rpc(id: Value, method: &str, data: Value) -> Value {
    json!({"type": "rpc", "id": id, "method": method, "data": data})
}

/// Sends a call and expects its answer next.
async fn call(client: &mut Client, id: Value, method: &str, data: Value) -> Value {
    let answer = client.ask(rpc(id.clone(), method, data)).await;
    assert_eq!(answer["id"], id, "{answer}");
    answer
}

fn error_code(answer: &Value) -> &str {
    assert_eq!(answer["type"], "rpc_error", "{answer}");
    answer["error"]["code"].as_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_over_http_answers_only_the_caller_and_each_failure_has_its_code() {
    let backend = HttpBackend::start().await;
    let url = backend.url();
    let topic = create_topic(&brokers(), 1).await;
    let mut env = env_for(Some(&brokers()), Some(&topic));
    set(
        &mut env,
        "RPC_ROUTES",
        &format!(
            "echo.*={url},slow.*={url},fail.*={url},big.*={url},metrics.get={url},down.*=http://127.0.0.1:1/rpc"
        ),
    );
    set(
        &mut env,
        "RPC_LEGACY_TYPES",
        "request_metrics=metrics.get:metrics",
    );
    // Long enough for every quick call on a loaded machine, short enough to wait out twice.
    set(&mut env, "RPC_TIMEOUT_MS", "2000");
    set(&mut env, "RPC_MAX_IN_FLIGHT", "2");
    set(&mut env, "BACKEND_TOKEN", BACKEND_TOKEN);
    set(&mut env, "SERVER_API_KEY", crate::audiences::API_KEY);
    let gw = TestGateway::start(env).await;
    gw.wait_ready().await;
    let token = token_claims("alice", json!({"roles": ["agent"]}));
    let mut caller = connect(&gw.url(&token)).await;
    let mut other_tab = connect(&gw.url(&token)).await;

    // The answer reaches the caller only; what the backend got is stamped from the token, not
    // from what the client claims.
    let spoof = json!({"type": "rpc", "id": "c1", "method": "echo.who", "data": {"user_id": "mallory"},
                       "user": "mallory", "session": "x", "roles": ["admin"]});
    let answer = caller.ask(spoof).await;
    assert_eq!(answer["type"], "rpc_result", "{answer}");
    assert_eq!(answer["id"], "c1");
    let got = &answer["data"];
    assert_eq!(got["user"], "alice", "{got}");
    assert_eq!(got["roles"], json!(["agent"]), "{got}");
    assert_eq!(got["session"], caller.hello["connection_id"], "{got}");
    assert_eq!(
        got["data"],
        json!({"user_id": "mallory"}),
        "the client's data travels as data"
    );
    assert_eq!(got["method"], "echo.who");
    assert_eq!(got["authorization_header"], format!("bearer {BACKEND_TOKEN}"));
    assert_ne!(caller.hello["connection_id"], other_tab.hello["connection_id"]);
    other_tab.assert_nothing_pending().await;

    // A backend addresses one session (not the user's other tab) by its connection_id.
    let nudge =
        json!({"event_type": "nudge", "data": {"n": 1}, "to": {"session": caller.hello["connection_id"]}});
    let (status, body) = gw.publish(crate::audiences::API_KEY, &nudge).await;
    assert_eq!(status, 202, "{body}");
    let got = caller.recv().await;
    assert_eq!(
        (got["type"].as_str(), &got["data"]),
        (Some("nudge"), &json!({"n": 1})),
        "{got}"
    );
    other_tab.assert_nothing_pending().await;

    // Each failure has its own code; a number id comes back as a number.
    assert_eq!(
        error_code(&call(&mut caller, json!(2), "fail.custom", json!({})).await),
        "not_found"
    );
    assert_eq!(
        error_code(&call(&mut caller, json!(3), "fail.crash", json!({})).await),
        "backend_error"
    );
    assert_eq!(
        error_code(&call(&mut caller, json!(4), "big.answer", json!({})).await),
        "response_too_large"
    );
    assert_eq!(
        error_code(&call(&mut caller, json!(5), "down.now", json!({})).await),
        "backend_unavailable"
    );
    assert_eq!(
        error_code(&call(&mut caller, json!(6), "nobody.home", json!({})).await),
        "unknown_method"
    );
    assert_eq!(
        error_code(&call(&mut caller, json!(7), "bad method", json!({})).await),
        "invalid_request"
    );
    let no_id = caller.ask(json!({"type": "rpc", "method": "echo.who"})).await;
    assert_eq!(no_id["type"], "error", "{no_id}");
    assert_eq!(no_id["code"], "invalid_message");

    // A slow backend holds up nothing else: pings are answered while two calls wait, a third is
    // refused at once (RPC_MAX_IN_FLIGHT=2), and both end with `timeout`.
    for id in ["s1", "s2", "s3"] {
        caller
            .send(&rpc(json!(id), "slow.wait", json!({})).to_string())
            .await;
    }
    let refused = caller.recv().await;
    assert_eq!(refused["id"], "s3", "{refused}");
    assert_eq!(error_code(&refused), "too_many_requests");
    let pong = caller.ask(json!({"type": "ping"})).await;
    assert_eq!(pong["type"], "pong", "{pong}");
    let started = Instant::now();
    let mut timed_out = Vec::new();
    for _ in 0..2 {
        let answer = caller.recv().await;
        assert_eq!(error_code(&answer), "timeout");
        timed_out.push(answer["id"].as_str().unwrap().to_string());
    }
    timed_out.sort();
    assert_eq!(timed_out, ["s1", "s2"]);
    assert!(started.elapsed() < Duration::from_secs(5), "the deadline holds");
    // Exactly one answer each: nothing more comes when the backend finally answers.
    backend.release.notify_waiters();
    let deadline = Instant::now() + WAIT;
    while backend.slow_answered.load(std::sync::atomic::Ordering::SeqCst) < 2 {
        assert!(
            Instant::now() < deadline,
            "the backend did not answer the held calls"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    caller.assert_nothing_pending().await;

    // The analytics client as written: `request_metrics`, and an answer it dispatches on `event`.
    let mut analytics = connect(&format!(
        "{}&workspace_id=w1",
        gw.url(&token_claims("ana", json!({"workspaces": ["w1"]})))
    ))
    .await;
    let answer = analytics
        .ask(json!({"type": "request_metrics", "metric_type": "executions"}))
        .await;
    assert_eq!(answer["event"], "metrics", "{answer}");
    assert_eq!(answer["type"], "metrics");
    assert_eq!(answer["data"], json!({"metric_type": "executions", "value": 42}));
    let seen = backend.seen.lock().unwrap().clone();
    let legacy = seen.iter().find(|r| r["method"] == "metrics.get").unwrap();
    assert_eq!(legacy["user"], "ana");
    assert_eq!(legacy["workspace"], "w1");

    let metrics = gw.metrics().await;
    assert!(
        metrics.contains(r#"gateway_rpc_calls_total{backend="http",result="timeout"} 2"#),
        "{metrics}"
    );
    gw.stop().await;
}

/// A gateway process on `topic`, waited for until it serves.
async fn process(env: &[(String, String)]) -> ServiceProcess {
    let p = ServiceProcess::spawn_env(env).await;
    p.wait_ready().await;
    p
}

fn url(p: &ServiceProcess, user: &str) -> String {
    format!("ws://{}/ws?token={}", p.base(), token(user))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_rpc_and_room_publications_cross_two_processes() {
    let backend = HttpBackend::start().await;
    let brokers = brokers();
    let topic = create_topic(&brokers, 1).await;
    let requests = create_topic(&brokers, 1).await;
    let publications = create_topic(&brokers, 2).await;
    kafka_backend(&requests);
    let mut env = env_for(Some(&brokers), Some(&topic));
    set(
        &mut env,
        "RPC_ROUTES",
        &format!("kafka.*=kafka:{requests},check.*={}", backend.url()),
    );
    set(
        &mut env,
        "CLIENT_PUBLISH_ROOMS",
        "typing:*=members,announce:*=rpc:check.publish,private=deny",
    );
    set(&mut env, "CLIENT_PUBLISH_TOPIC", &publications);
    set(&mut env, "ROOMS_PUBLIC", "typing:*,announce:*,private");
    let a = process(&env).await;
    let b = process(&env).await;

    // An RPC answered over Kafka: the caller is on B, another session of the same user on A.
    let mut caller = connect(&url(&b, "alice")).await;
    let mut alice_on_a = connect(&url(&a, "alice")).await;
    let answer = call(&mut caller, json!("k1"), "kafka.count", json!({"n": 7})).await;
    assert_eq!(answer["type"], "rpc_result", "{answer}");
    assert_eq!(answer["data"], json!({"user": "alice", "n": 7}));
    assert_eq!(
        error_code(&call(&mut caller, json!("k2"), "kafka.fail", json!({})).await),
        "no_data"
    );
    alice_on_a.assert_nothing_pending().await;

    // A typing indicator reaches the room's members on both replicas, and nobody else.
    let mut bob_on_b = connect(&url(&b, "bob")).await;
    let mut dave_on_a = connect(&url(&a, "dave")).await;
    let mut carol_on_b = connect(&url(&b, "carol")).await;
    alice_on_a.join("typing:42").await;
    bob_on_b.join("typing:42").await;
    dave_on_a.join("typing:42").await;
    let typing = json!({"type": "publish", "id": 1, "room": "typing:42", "event_type": "typing",
                        "data": {"typing": true}, "ephemeral": true, "from": {"user": "mallory"}});
    let ack = alice_on_a.ask(typing).await;
    assert_eq!(ack["type"], "published", "{ack}");
    assert_eq!(ack["id"], 1);
    for member in [&mut bob_on_b, &mut dave_on_a] {
        let got = member.recv().await;
        assert_eq!(got["type"], "typing", "{got}");
        assert_eq!(got["room"], "typing:42");
        assert_eq!(
            got["from"],
            json!({"user": "alice"}),
            "stamped, not the client's claim"
        );
        assert_eq!(got["data"], json!({"typing": true}));
        assert_eq!(got["id"], ack["data"]["event_id"]);
    }
    carol_on_b.assert_nothing_pending().await;
    // Not back to the publishing session; the user's other sessions are members like any.
    alice_on_a.assert_nothing_pending().await;

    // Refusals: a denied room, a room not joined, a backend that says no; one it allows.
    let denied = alice_on_a
        .ask(json!({"type": "publish", "room": "private", "data": {}, "id": "p1"}))
        .await;
    assert_eq!(
        (denied["type"].as_str(), denied["code"].as_str()),
        (Some("error"), Some("forbidden")),
        "{denied}"
    );
    assert_eq!(denied["id"], "p1");
    let not_member = alice_on_a
        .ask(json!({"type": "publish", "room": "typing:7", "data": {}}))
        .await;
    assert_eq!(not_member["code"], "forbidden", "{not_member}");
    let closed = alice_on_a
        .ask(json!({"type": "publish", "room": "announce:closed", "data": {}}))
        .await;
    assert_eq!(closed["code"], "forbidden", "{closed}");
    assert_eq!(closed["message"], "announcements are closed");
    carol_on_b.join("announce:open").await;
    let open = alice_on_a
        .ask(json!({"type": "publish", "room": "announce:open", "data": {"text": "hi"}}))
        .await;
    assert_eq!(open["type"], "published", "{open}");
    let got = carol_on_b.recv().await;
    assert_eq!(
        (got["type"].as_str(), got["from"]["user"].as_str()),
        (Some("message"), Some("alice")),
        "{got}"
    );
    assert!(got["cursor"].is_string(), "a publication has a position: {got}");
    let reserved = alice_on_a
        .ask(json!({"type": "publish", "room": "typing:42", "event_type": "user.online", "data": {}}))
        .await;
    assert_eq!(reserved["code"], "invalid_message", "{reserved}");
    for client in [&mut bob_on_b, &mut dave_on_a] {
        client.assert_nothing_pending().await;
    }
    // The backend that decided saw who asked, from the token.
    let seen = backend.seen.lock().unwrap().clone();
    assert!(
        seen.iter()
            .all(|r| r["user"] == "alice" && r["method"] == "check.publish"),
        "{seen:?}"
    );
}
