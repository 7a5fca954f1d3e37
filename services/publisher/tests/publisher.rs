//! The publisher against a stand-in sidecar (path, query, headers, body, retries, error mapping),
//! against the real broker (keys, partitions, order), and the `task-publish` CLI.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use publisher::{new_event, DaprPublisher, EventType, KafkaPublisher, PublishError, Publisher};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One request as the stand-in sidecar saw it.
#[derive(Debug, Clone)]
struct Seen {
    request_line: String,
    headers: Vec<(String, String)>,
    body: Value,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A sidecar stand-in answering each request with the next scripted (status, body).
async fn sidecar(script: Vec<(u16, &'static str)>) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        for (status, body) in script {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let request = read_request(&mut sock).await;
            log.lock().unwrap().push(request);
            let resp = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            sock.write_all(resp.as_bytes()).await.unwrap();
        }
    });
    (base, seen)
}

async fn read_request(sock: &mut tokio::net::TcpStream) -> Seen {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = sock.read(&mut chunk).await.unwrap();
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let mut lines = head.lines();
            let request_line = lines.next().unwrap().to_string();
            let headers: Vec<(String, String)> = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .collect();
            let len: usize = headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .map_or(0, |(_, v)| v.parse().unwrap());
            while buf.len() < end + 4 + len {
                let n = sock.read(&mut chunk).await.unwrap();
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = serde_json::from_slice(&buf[end + 4..end + 4 + len]).unwrap_or(Value::Null);
            return Seen {
                request_line,
                headers,
                body,
            };
        }
    }
}

fn event(user: &str, n: i64) -> publisher::TaskEvent {
    new_event(EventType::Updated, user, json!({"n": n})).unwrap()
}

#[tokio::test]
async fn dapr_publish_request_is_what_the_sidecar_expects() {
    let (base, seen) = sidecar(vec![(204, "")]).await;
    let p = DaprPublisher::new(&base, "taskpubsub", "task-updates", Some("s3cret".into())).unwrap();
    let e = event("user 42/x", 1);
    p.publish(&e).await.unwrap();
    let seen = seen.lock().unwrap()[0].clone();
    assert_eq!(
        seen.request_line,
        "POST /v1.0/publish/taskpubsub/task-updates?metadata.partitionKey=user+42%2Fx HTTP/1.1"
    );
    assert_eq!(seen.header("content-type"), Some("application/json"));
    assert_eq!(seen.header("dapr-api-token"), Some("s3cret"));
    assert_eq!(seen.body["event_type"], "task.updated");
    assert_eq!(seen.body["user_id"], "user 42/x");
    assert_eq!(seen.body["task"], json!({"n": 1}));
    assert_eq!(seen.body["id"].as_str(), e.id.as_deref());
    assert!(seen.body["occurred_at"].as_str().unwrap().ends_with('Z'));

    // No token configured: no header.
    let (base, seen) = sidecar(vec![(204, "")]).await;
    DaprPublisher::new(&base, "taskpubsub", "task-updates", None)
        .unwrap()
        .publish(&e)
        .await
        .unwrap();
    assert_eq!(seen.lock().unwrap()[0].header("dapr-api-token"), None);
}

#[tokio::test]
async fn dapr_retries_5xx_then_succeeds_and_maps_4xx_without_retry() {
    let (base, seen) = sidecar(vec![
        (
            500,
            r#"{"errorCode":"ERR_PUBSUB_PUBLISH_MESSAGE","message":"broker down"}"#,
        ),
        (503, ""),
        (204, ""),
    ])
    .await;
    let p = DaprPublisher::new(&base, "taskpubsub", "task-updates", None)
        .unwrap()
        .with_retries(4, Duration::from_millis(10));
    p.publish(&event("u", 1)).await.unwrap();
    assert_eq!(seen.lock().unwrap().len(), 3, "two retries, then success");

    let (base, seen) = sidecar(vec![(
        404,
        r#"{"errorCode":"ERR_PUBSUB_NOT_FOUND","message":"pubsub taskpubsub not found"}"#,
    )])
    .await;
    let p = DaprPublisher::new(&base, "taskpubsub", "task-updates", None).unwrap();
    match p.publish(&event("u", 1)).await {
        Err(PublishError::Rejected {
            status,
            error_code,
            message,
        }) => {
            assert_eq!(status, 404);
            assert_eq!(error_code.as_deref(), Some("ERR_PUBSUB_NOT_FOUND"));
            assert_eq!(message, "pubsub taskpubsub not found");
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert_eq!(seen.lock().unwrap().len(), 1, "a 4xx is not retried");

    let (base, seen) = sidecar(vec![(500, ""), (500, ""), (500, "")]).await;
    let p = DaprPublisher::new(&base, "taskpubsub", "task-updates", None)
        .unwrap()
        .with_retries(3, Duration::from_millis(10));
    let err = p.publish(&event("u", 1)).await.unwrap_err();
    assert!(
        matches!(err, PublishError::Unavailable { attempts: 3, .. }),
        "{err}"
    );
    assert_eq!(
        seen.lock().unwrap().len(),
        3,
        "bounded: exactly the configured attempts"
    );

    // Nothing listening: connection errors are retried, then surfaced.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let p = DaprPublisher::new(&format!("http://{closed}"), "taskpubsub", "task-updates", None)
        .unwrap()
        .with_retries(2, Duration::from_millis(10));
    assert!(matches!(
        p.publish(&event("u", 1)).await,
        Err(PublishError::Unavailable { attempts: 2, .. })
    ));
}

fn brokers() -> String {
    std::env::var("KAFKA_TEST_BROKERS")
        .expect("KAFKA_TEST_BROKERS is not set: run the tests with `make test`")
}

async fn create_topic(brokers: &str, partitions: i32) -> String {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let topic = format!("pub-{}", uuid::Uuid::new_v4().simple());
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let r = admin
        .create_topics(
            &[NewTopic::new(&topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    assert!(matches!(r.as_slice(), [Ok(_)]), "{r:?}");
    topic
}

/// Keys are user ids, so each user's events land in one partition, in the order published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_keys_by_user_and_keeps_order() {
    let brokers = brokers();
    let topic = create_topic(&brokers, 3).await;
    let p = Publisher::Kafka(KafkaPublisher::new(&brokers, &topic, Duration::from_secs(20)).unwrap());
    let users = ["ann", "ben", "cid", "dot"];
    let mut ids = Vec::new();
    for n in 0..5 {
        for user in users {
            let e = event(user, n);
            p.publish(&e).await.unwrap();
            ids.push(e.id.unwrap());
        }
    }
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(sorted, ids, "ids are time-ordered");

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", format!("check-{}", uuid::Uuid::new_v4().simple()))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for partition in 0..3 {
        tpl.add_partition_offset(&topic, partition, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut by_user: std::collections::HashMap<String, Vec<(i32, i64)>> = Default::default();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut count = 0;
    while count < 20 && std::time::Instant::now() < deadline {
        if let Some(Ok(msg)) = consumer.poll(Duration::from_millis(200)) {
            let key = String::from_utf8(msg.key().unwrap().to_vec()).unwrap();
            let value: Value = serde_json::from_slice(msg.payload().unwrap()).unwrap();
            assert_eq!(value["user_id"], key.as_str(), "record key = user id");
            by_user
                .entry(key)
                .or_default()
                .push((msg.partition(), value["task"]["n"].as_i64().unwrap()));
            count += 1;
        }
    }
    assert_eq!(count, 20);
    for (user, seen) in by_user {
        let partitions: std::collections::HashSet<_> = seen.iter().map(|(p, _)| *p).collect();
        assert_eq!(partitions.len(), 1, "{user} spread over {partitions:?}");
        let order: Vec<i64> = seen.iter().map(|(_, n)| *n).collect();
        assert_eq!(order, vec![0, 1, 2, 3, 4], "{user} in order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_unreachable_is_surfaced_within_the_timeout() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let p = KafkaPublisher::new(&closed.to_string(), "t", Duration::from_secs(2)).unwrap();
    let started = std::time::Instant::now();
    let err = p.publish(&event("u", 1)).await.unwrap_err();
    assert!(matches!(err, PublishError::Kafka(_)), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(matches!(
        KafkaPublisher::new("", "t", Duration::from_secs(1)),
        Err(PublishError::Config(_))
    ));
}

fn cli(args: &[&str], env: &[(&str, String)]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_task-publish"))
        .args(args)
        .env_remove("KAFKA_BROKERS")
        .env_remove("DAPR_API_TOKEN")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_prints_the_id_or_one_line_of_reason() {
    let brokers = brokers();
    let topic = create_topic(&brokers, 1).await;
    let out = cli(
        &[
            "--via",
            "kafka",
            "--user",
            "42",
            "--event",
            "created",
            "--task",
            r#"{"id":1}"#,
            "--topic",
            &topic,
        ],
        &[("KAFKA_BROKERS", brokers.clone())],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let id = String::from_utf8(out.stdout).unwrap();
    assert!(
        uuid::Uuid::parse_str(id.trim()).is_ok(),
        "prints the event id: {id}"
    );

    let bad_json = cli(
        &[
            "--via", "kafka", "--user", "42", "--event", "created", "--task", "{nope",
        ],
        &[("KAFKA_BROKERS", brokers)],
    );
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let no_sidecar = cli(
        &[
            "--via",
            "dapr",
            "--user",
            "42",
            "--event",
            "created",
            "--task",
            "{}",
            "--timeout-secs",
            "2",
        ],
        &[("DAPR_HTTP_PORT", closed.to_string())],
    );
    let no_brokers = cli(
        &[
            "--via", "kafka", "--user", "42", "--event", "created", "--task", "{}",
        ],
        &[],
    );
    let broker_down = cli(
        &[
            "--via",
            "kafka",
            "--user",
            "42",
            "--event",
            "created",
            "--task",
            "{}",
            "--timeout-secs",
            "2",
        ],
        &[("KAFKA_BROKERS", format!("127.0.0.1:{closed}"))],
    );
    for (out, want) in [
        (bad_json, "not valid JSON"),
        (no_sidecar, "dapr unavailable"),
        (no_brokers, "KAFKA_BROKERS"),
        (broker_down, "kafka"),
    ] {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(stderr.contains(want), "{want}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    }

    // A 4xx from the sidecar: its error code in the reason.
    let (base, _) = sidecar(vec![(
        403,
        r#"{"errorCode":"ERR_PUBSUB_FORBIDDEN","message":"topic not allowed"}"#,
    )])
    .await;
    let port = base.rsplit(':').next().unwrap().to_string();
    let out = tokio::task::spawn_blocking(move || {
        cli(
            &[
                "--via", "dapr", "--user", "42", "--event", "created", "--task", "{}",
            ],
            &[("DAPR_HTTP_PORT", port)],
        )
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("ERR_PUBSUB_FORBIDDEN"),
        "{stderr}"
    );
}

/// A generic event through the sidecar: the body is the generic envelope, the partition key is
/// the room's.
#[tokio::test]
async fn dapr_publishes_generic_events_keyed_by_room() {
    let (base, seen) = sidecar(vec![(204, "")]).await;
    let p = DaprPublisher::new(&base, "taskpubsub", "task-updates", None).unwrap();
    let to = publisher::Audience {
        room: Some("support:7".into()),
        workspace: Some("acme".into()),
        ..Default::default()
    };
    let e = publisher::new_generic_event("ticket.updated", json!({"id": 7}), to).unwrap();
    p.publish(&e).await.unwrap();
    let seen = seen.lock().unwrap()[0].clone();
    assert_eq!(
        seen.request_line,
        "POST /v1.0/publish/taskpubsub/task-updates?metadata.partitionKey=room%3Aacme%2Fsupport%3A7 HTTP/1.1"
    );
    assert_eq!(seen.body["event_type"], "ticket.updated");
    assert_eq!(seen.body["data"], json!({"id": 7}));
    assert_eq!(seen.body["to"], json!({"room": "support:7", "workspace": "acme"}));
    assert_eq!(seen.body["id"].as_str(), e.id.as_deref());
}

fn event_cli(args: &[&str], env: &[(&str, String)]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_event-publish"))
        .args(args)
        .env_remove("KAFKA_BROKERS")
        .env_remove("DAPR_API_TOKEN")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap()
}

/// `event-publish` writes the generic envelope to Kafka, keyed by its audience; bad input is one
/// line of reason and exit 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_publish_cli_writes_generic_events() {
    let brokers = brokers();
    let topic = create_topic(&brokers, 1).await;
    let env = [("KAFKA_BROKERS", brokers.clone())];
    let out = event_cli(
        &[
            "--via",
            "kafka",
            "--type",
            "ticket.created",
            "--data",
            r#"{"id":42}"#,
            "--to",
            r#"{"all":true,"roles":["agent"]}"#,
            "--topic",
            &topic,
        ],
        &env,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let out = event_cli(
        &[
            "--via",
            "kafka",
            "--message",
            r#"{"type":"queue_update","queue_id":3}"#,
            "--to",
            r#"{"user":"u1"}"#,
            "--topic",
            &topic,
        ],
        &env,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", format!("check-{}", uuid::Uuid::new_v4().simple()))
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Beginning).unwrap();
    consumer.assign(&tpl).unwrap();
    let mut records = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while records.len() < 2 && std::time::Instant::now() < deadline {
        if let Some(Ok(msg)) = consumer.poll(Duration::from_millis(200)) {
            let key = String::from_utf8(msg.key().unwrap().to_vec()).unwrap();
            let value: Value = serde_json::from_slice(msg.payload().unwrap()).unwrap();
            records.push((key, value));
        }
    }
    assert_eq!(records.len(), 2);
    assert_eq!(records[0].0, "broadcast");
    assert_eq!(records[0].1["id"], id.as_str());
    assert_eq!(records[0].1["to"], json!({"all": true, "roles": ["agent"]}));
    assert_eq!(records[1].0, "u1");
    assert_eq!(
        records[1].1["message"],
        json!({"type": "queue_update", "queue_id": 3})
    );
    assert_eq!(records[1].1["event_type"], "queue_update");

    for bad in [
        vec![
            "--via",
            "kafka",
            "--type",
            "x",
            "--data",
            "{}",
            "--to",
            r#"{"rom":"a"}"#,
        ],
        vec![
            "--via",
            "kafka",
            "--type",
            "x",
            "--data",
            "{",
            "--to",
            r#"{"all":true}"#,
        ],
        vec![
            "--via",
            "kafka",
            "--message",
            r#"{"kind":1}"#,
            "--to",
            r#"{"all":true}"#,
        ],
        vec!["--via", "kafka", "--type", "x", "--data", "{}", "--to", "{}"],
    ] {
        let out = event_cli(&bad, &env);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{bad:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.starts_with("event-publish: "), "{stderr}");
    }
}
