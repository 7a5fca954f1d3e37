//! Nothing missed (issue 9): resume after a disconnect on any replica, SSE and polling, and a
//! slow reader that catches up instead of being cut.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::audiences::API_KEY;
use crate::harness::*;

pub(crate) fn env_on(topic: &str) -> Vec<(String, String)> {
    let mut env = env_for(Some(&brokers()), Some(topic));
    set(&mut env, "SERVER_API_KEY", API_KEY);
    set(&mut env, "ROOMS_PUBLIC", "lobby");
    // Sessions that pass `since` get a heartbeat message every interval: none within a test, so
    // what a test reads next is what it expects (the SSE heartbeats have their own setting).
    set(&mut env, "HEARTBEAT_INTERVAL_SECS", "600");
    set(&mut env, "CLIENT_TIMEOUT_SECS", "1800");
    env
}

pub(crate) async fn publish(gw: &TestGateway, events: Value) {
    let (status, body) = gw.publish(API_KEY, &events).await;
    assert_eq!(status, 202, "{body}");
}

/// Publishes through `via` and waits until `reader` has routed every one of the events (so a
/// resume there replays them from its history): a condition, not a sleep.
pub(crate) async fn publish_read_by(reader: &TestGateway, via: &TestGateway, events: Value) {
    // First what `via` has routed (both read the same topic from its start): otherwise a reader
    // still behind would count earlier events as these.
    reader.wait_routed(via.routed()).await;
    let before = reader.routed();
    let count = events.as_array().map_or(1, Vec::len) as u64;
    publish(via, events).await;
    reader.wait_routed(before + count).await;
}

fn ev(kind: &str, n: i64, to: Value) -> Value {
    json!({"event_type": kind, "data": {"n": n}, "to": to})
}

/// The events produced while the client is away: seven for its audience (user, room, workspace),
/// four for others (another user, the same room name in another workspace, another workspace).
fn missed() -> Value {
    json!([
        ev("mine", 1, json!({"user": "res"})),
        ev("theirs", 0, json!({"user": "someone-else"})),
        ev("mine", 2, json!({"room": "lobby", "workspace": "w1"})),
        ev("theirs", 0, json!({"room": "lobby", "workspace": "w2"})),
        ev("mine", 3, json!({"workspace": "w1"})),
        {"event_type": "task.created", "user_id": "res", "task": {"n": 4}},
        ev("theirs", 0, json!({"workspace": "w2"})),
        ev("mine", 5, json!({"user": "res", "workspace": "w1"})),
        ev("theirs", 0, json!({"user": "someone-else", "room": "lobby"})),
        ev("mine", 6, json!({"all": true, "workspace": "w1"})),
        ev("mine", 7, json!({"users": ["res", "x"]})),
    ])
}

fn n_of(msg: &Value) -> i64 {
    msg["data"]["n"].as_i64().or(msg["task"]["n"].as_i64()).unwrap()
}

fn resume_token() -> String {
    token_claims("res", json!({"workspace_id": "w1"}))
}

/// Connects with `since` (and the room), reads the `connected` message.
async fn connect_since(gw: &TestGateway, since: &str) -> Client {
    connect(&format!("{}&rooms=lobby&since={since}", gw.url(&resume_token()))).await
}

/// Reads events until one with `n == last`; returns their n in order, and the last cursor.
async fn read_until(client: &mut Client, last: i64) -> (Vec<i64>, String) {
    let mut got = Vec::new();
    loop {
        let msg = client.recv().await;
        if msg["type"] == "heartbeat" {
            continue;
        }
        let n = n_of(&msg);
        got.push(n);
        if n == last {
            return (got, msg["cursor"].as_str().unwrap().to_string());
        }
    }
}

/// A client on A reads, disconnects, misses events for its user, room and workspace (and
/// others not for it), and resumes on B with its cursor: exactly its seven, in order, then live
/// events, without a duplicate at the seam.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_on_another_replica_gets_exactly_what_was_missed() {
    let topic = create_topic(&brokers(), 1).await;
    let a = TestGateway::start(env_on(&topic)).await;
    let b = TestGateway::start(env_on(&topic)).await;
    a.wait_ready().await;
    b.wait_ready().await;
    let mut first = connect_since(&a, "").await;
    assert!(first.hello["cursor"].is_string());
    assert!(first.hello.get("recovered").is_none(), "no resume asked");
    publish(
        &a,
        json!([
            ev("before", 100, json!({"user": "res"})),
            ev("before", 101, json!({"user": "res"}))
        ]),
    )
    .await;
    let (_, cursor) = read_until(&mut first, 101).await;
    drop(first);

    publish_read_by(&b, &a, missed()).await;
    let mut again = connect_since(&b, &cursor).await;
    assert_eq!(again.hello["recovered"], true, "{}", again.hello);
    assert_eq!(again.hello["replayed"], 7, "{}", again.hello);
    assert_eq!(
        again.hello["cursor"], cursor,
        "until the replay is written the session stands where it resumed from"
    );
    let (got, _) = read_until(&mut again, 7).await;
    assert_eq!(got, vec![1, 2, 3, 4, 5, 6, 7]);
    publish(&b, json!([ev("live", 8, json!({"user": "res"}))])).await;
    let (got, _) = read_until(&mut again, 8).await;
    assert_eq!(got, vec![8], "live after the replay, nothing twice");
    again.assert_nothing_pending().await;
    a.stop().await;
    b.stop().await;
}

/// Both replicas restart: the new one reads the recent log back into its history at start, and
/// the cursor given by the old ones still resumes exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_after_every_replica_restarted() {
    let topic = create_topic(&brokers(), 2).await;
    let a = TestGateway::start(env_on(&topic)).await;
    a.wait_ready().await;
    let mut first = connect_since(&a, "").await;
    publish(&a, json!([ev("before", 100, json!({"user": "res"}))])).await;
    let (_, cursor) = read_until(&mut first, 100).await;
    drop(first);
    publish(
        &a,
        json!([
            ev("mine", 1, json!({"user": "res"})),
            ev("mine", 2, json!({"user": "res"}))
        ]),
    )
    .await;
    a.stop().await;
    let fresh = TestGateway::start(env_on(&topic)).await;
    fresh.wait_ready().await;
    let mut again = connect_since(&fresh, &cursor).await;
    assert_eq!(again.hello["recovered"], true, "{}", again.hello);
    assert_eq!(again.hello["replayed"], 2, "{}", again.hello);
    let mut got = vec![n_of(&again.recv().await), n_of(&again.recv().await)];
    got.sort();
    assert_eq!(got, vec![1, 2]);
    again.assert_nothing_pending().await;
    fresh.stop().await;
}

/// A client that received nothing resumes exactly, from the position in `connected` (and in
/// `pong`): Socket.IO's recovery fails in exactly this case.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_client_resumes_exactly() {
    let topic = create_topic(&brokers(), 1).await;
    let gw = TestGateway::start(env_on(&topic)).await;
    gw.wait_ready().await;
    publish_read_by(&gw, &gw, json!([ev("old", 1, json!({"user": "res"}))])).await;
    let mut idle = connect_since(&gw, "").await;
    let pong = idle.ask(json!({"type": "ping"})).await;
    assert_eq!(pong["type"], "pong");
    let cursor = pong["cursor"].as_str().unwrap().to_string();
    drop(idle);
    publish_read_by(
        &gw,
        &gw,
        json!([
            ev("new", 2, json!({"user": "res"})),
            ev("new", 3, json!({"user": "res"}))
        ]),
    )
    .await;
    let mut back = connect_since(&gw, &cursor).await;
    assert_eq!(back.hello["replayed"], 2, "{}", back.hello);
    let (got, _) = read_until(&mut back, 3).await;
    assert_eq!(got, vec![2, 3]);
    back.assert_nothing_pending().await;
    gw.stop().await;
}

/// A cursor older than the history gets `recovered: false` (history_exceeded); a forged one is
/// refused cleanly (unknown_cursor); both sessions then work live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursors_that_cannot_be_honoured_are_told_so() {
    let topic = create_topic(&brokers(), 1).await;
    let mut env = env_on(&topic);
    set(&mut env, "HISTORY_MAX_EVENTS", "5");
    let gw = TestGateway::start(env).await;
    gw.wait_ready().await;
    let mut first = connect_since(&gw, "").await;
    publish(&gw, json!([ev("seen", 0, json!({"user": "res"}))])).await;
    let (_, cursor) = read_until(&mut first, 0).await;
    drop(first);
    let many: Vec<Value> = (1..=20).map(|n| ev("lost", n, json!({"user": "res"}))).collect();
    publish_read_by(&gw, &gw, json!(many)).await;
    let mut old = connect_since(&gw, &cursor).await;
    assert_eq!(
        (old.hello["recovered"].as_bool(), old.hello["reason"].as_str()),
        (Some(false), Some("history_exceeded")),
        "{}",
        old.hello
    );
    for forged in ["AAAAAAAAAAAAAAAAAAAA", "not-a-cursor", &"x".repeat(2000)] {
        let mut c = connect_since(&gw, forged).await;
        assert_eq!(c.hello["reason"], "unknown_cursor", "{}", c.hello);
        c.assert_nothing_pending().await;
    }
    publish(&gw, json!([ev("live", 21, json!({"user": "res"}))])).await;
    let (got, _) = read_until(&mut old, 21).await;
    assert_eq!(got, vec![21], "no partial replay presented as complete");
    gw.stop().await;
}

/// An SSE stream as read by an SSE parser: frames with `id:` (the cursor) and unnamed `data:`
/// (or `event:` with `named=1`).
async fn sse(
    url: &str,
    last_event_id: Option<&str>,
) -> impl futures_util::Stream<Item = eventsource_stream::Event> {
    use eventsource_stream::Eventsource;
    let mut req = http().get(url);
    if let Some(id) = last_event_id {
        req = req.header("Last-Event-ID", id);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert_eq!(resp.headers()["cache-control"], "no-cache");
    assert_eq!(resp.headers()["x-accel-buffering"], "no");
    resp.bytes_stream()
        .eventsource()
        .map(|e| e.expect("a well-formed event"))
}

async fn next_sse(
    stream: &mut (impl futures_util::Stream<Item = eventsource_stream::Event> + Unpin),
) -> (eventsource_stream::Event, Value) {
    let event = tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("an event")
        .expect("stream open");
    let value: Value = serde_json::from_str(&event.data).unwrap();
    assert_server_schema(&value);
    (event, value)
}

/// SSE: a bad token is 401 JSON before any stream; events come with `id:` = cursor; a
/// reconnect with `Last-Event-ID` gets exactly what was missed; unnamed frames by default
/// (for `onmessage`), named with `named=1`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_resumes_with_last_event_id() {
    let topic = create_topic(&brokers(), 1).await;
    let a = TestGateway::start(env_on(&topic)).await;
    let b = TestGateway::start(env_on(&topic)).await;
    a.wait_ready().await;
    b.wait_ready().await;
    let bad = http()
        .get(format!("http://{}/events?token=nope", a.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 401);
    assert_eq!(bad.json::<Value>().await.unwrap()["error"], "unauthorized");
    let url =
        |gw: &TestGateway, extra: &str| format!("http://{}/events?token={}{extra}", gw.addr, resume_token());

    let mut stream = Box::pin(sse(&url(&a, ""), None).await);
    let (event, hello) = next_sse(&mut stream).await;
    assert_eq!(
        (event.event.as_str(), hello["type"].as_str()),
        ("message", Some("connected"))
    );
    publish(&a, json!([ev("one", 1, json!({"user": "res"}))])).await;
    let (event, msg) = next_sse(&mut stream).await;
    assert_eq!(
        event.event, "message",
        "unnamed: an onmessage-only EventSource sees it"
    );
    assert_eq!(n_of(&msg), 1);
    assert_eq!(event.id, msg["cursor"].as_str().unwrap(), "id is the cursor");
    let last_id = event.id.clone();
    drop(stream);

    publish_read_by(
        &b,
        &a,
        json!([
            ev("two", 2, json!({"user": "res"})),
            ev("three", 3, json!({"workspace": "w1"}))
        ]),
    )
    .await;
    let mut stream = Box::pin(sse(&url(&b, "&named=1"), Some(&last_id)).await);
    let (event, hello) = next_sse(&mut stream).await;
    assert_eq!(event.event, "connected");
    assert_eq!(
        (hello["recovered"].as_bool(), hello["replayed"].as_u64()),
        (Some(true), Some(2))
    );
    let (event, msg) = next_sse(&mut stream).await;
    assert_eq!((event.event.as_str(), n_of(&msg)), ("two", 2));
    let (event, msg) = next_sse(&mut stream).await;
    assert_eq!((event.event.as_str(), n_of(&msg)), ("three", 3));
    a.stop().await;
    b.stop().await;
}

async fn poll(gw: &TestGateway, query: &str) -> Value {
    let url = format!(
        "http://{}/events/poll?token={}&rooms=lobby{query}",
        gw.addr,
        resume_token()
    );
    let resp = http().get(url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    for event in body["events"].as_array().unwrap() {
        assert_server_schema(event);
    }
    body
}

/// Polling: starts now, resumes from its cursor on any replica, waits for the next event, and
/// also takes a Unix time as `since`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_resumes_the_same_way() {
    let topic = create_topic(&brokers(), 1).await;
    let a = TestGateway::start(env_on(&topic)).await;
    let b = TestGateway::start(env_on(&topic)).await;
    a.wait_ready().await;
    b.wait_ready().await;
    let start = poll(&a, "").await;
    assert_eq!(start["events"], json!([]));
    assert_eq!(start["recovered"], true);
    let c0 = start["cursor"].as_str().unwrap().to_string();
    let before = now_secs() as f64 - 0.5;
    publish_read_by(
        &b,
        &a,
        json!([
            ev("p", 1, json!({"user": "res"})),
            ev("p", 2, json!({"room": "lobby", "workspace": "w1"}))
        ]),
    )
    .await;
    let got = poll(&b, &format!("&since={c0}")).await;
    let ns: Vec<i64> = got["events"].as_array().unwrap().iter().map(n_of).collect();
    assert_eq!(ns, vec![1, 2]);
    let c1 = got["cursor"].as_str().unwrap().to_string();
    // Nothing new: it waits, and answers when the next event arrives.
    let waiting = tokio::spawn(get_json(format!(
        "http://{}/events/poll?token={}&rooms=lobby&since={c1}&wait=15",
        a.addr,
        resume_token()
    )));
    // The poll is waiting (it counts as a session while it does).
    a.wait_connections(1).await;
    publish(&b, json!([ev("p", 3, json!({"user": "res"}))])).await;
    let got = tokio::time::timeout(WAIT, waiting).await.unwrap().unwrap();
    let ns: Vec<i64> = got["events"].as_array().unwrap().iter().map(n_of).collect();
    assert_eq!(ns, vec![3]);
    // The budget app's kind of `since`: a Unix time.
    let by_time = poll(&a, &format!("&since={before}")).await;
    let ns: Vec<i64> = by_time["events"].as_array().unwrap().iter().map(n_of).collect();
    assert_eq!(ns, vec![1, 2, 3]);
    // An hour ago: the topic is younger than that and the replica holds all of it, so the
    // answer is complete.
    let hour_ago = format!("&since={}", now_secs() - 3600);
    let whole = poll(&a, &hour_ago).await;
    assert_eq!(
        (
            whole["recovered"].as_bool(),
            whole["events"].as_array().map(Vec::len)
        ),
        (Some(true), Some(3)),
        "{whole}"
    );
    // A replica that keeps only the last two events cannot say what happened an hour ago.
    let mut short = env_on(&topic);
    set(&mut short, "HISTORY_MAX_EVENTS", "2");
    let c = TestGateway::start(short).await;
    c.wait_ready().await;
    let too_old = poll(&c, &hour_ago).await;
    assert_eq!(too_old["recovered"], false, "{too_old}");
    assert_eq!(too_old["reason"], "history_exceeded", "{too_old}");
    c.stop().await;
    // A `wait` that is not a number of seconds is no wait.
    let odd = poll(&a, &format!("&since={c0}&wait=nan")).await;
    assert_eq!(odd["events"].as_array().unwrap().len(), 3, "{odd}");
    // A drain answers a waiting poll at once: it does not hold the replica for its `wait`.
    let waiting = tokio::spawn(get_json(format!(
        "http://{}/events/poll?token={}&wait=25",
        a.addr,
        resume_token()
    )));
    // The poll is waiting (it counts as a session while it does).
    a.wait_connections(1).await;
    let started = std::time::Instant::now();
    a.stop().await;
    let answer = tokio::time::timeout(Duration::from_secs(5), waiting).await;
    assert!(answer.is_ok(), "the waiting poll was answered by the drain");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "the drain did not wait for the poll"
    );
    b.stop().await;
}

/// A stalled SSE client (it never reads its stream) is cut once its writes make no progress;
/// another client of the same user gets everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_sse_client_is_cut_without_hurting_others() {
    let topic = create_topic(&brokers(), 1).await;
    let mut env = env_on(&topic);
    set(&mut env, "WRITE_TIMEOUT_SECS", "2");
    let gw = TestGateway::start(env).await;
    gw.wait_ready().await;
    let url = format!("http://{}/events?token={}", gw.addr, resume_token());
    // Stalled: the response is held, its body never read.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket.connect(gw.addr).await.unwrap();
    use tokio::io::AsyncWriteExt;
    let path = url.trim_start_matches(&format!("http://{}", gw.addr));
    stalled
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut reader = Box::pin(sse(&url, None).await);
    next_sse(&mut reader).await;
    gw.wait_connections(2).await;
    let blob = "z".repeat(64 * 1024);
    for chunk in 0..10 {
        let events: Vec<Value> = (0..10)
            .map(|i| json!({"event_type": "big", "data": {"n": chunk * 10 + i, "blob": blob}, "to": {"user": "res"}}))
            .collect();
        let (status, _) = gw.publish_raw(API_KEY, json!(events).to_string()).await;
        assert_eq!(status, 202);
    }
    for n in 0..100 {
        let (_, msg) = next_sse(&mut reader).await;
        assert_eq!(n_of(&msg), n);
    }
    gw.wait_connections(1).await;
    drop(stalled);
    gw.stop().await;
}

/// Slow is not dead: 20,000 events of 8 KiB produced at once for one user, one client reading at
/// full speed (faster than its queue, slower than the burst), one never reading. The reader gets
/// all 20,000 in order (it catches up from the history instead of being cut); the stalled one is
/// cut; the process stays under 256 MiB RSS throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_reaches_a_fast_reader_while_a_stalled_one_costs_little() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let brokers = brokers();
    let topic = create_topic(&brokers, 1).await;
    let service = ServiceProcess::spawn(&[
        ("KAFKA_BROKERS", &brokers),
        ("KAFKA_TOPICS", &topic),
        ("GATEWAY_CONTROL_TOPIC", &control_topic(&topic)),
        ("RDKAFKA_FETCH_WAIT_MAX_MS", "10"),
    ])
    .await;
    let base = service.base();
    service.wait_ready().await;
    let url = format!("ws://{base}/ws?token={}", token("burst"));
    let mut reader = connect(&url).await;
    let _stalled = connect_small_buffer(&url).await;
    let pid = service.pid();
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_kib(pid) / 1024, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let total: u64 = 20_000;
    let read = tokio::spawn(async move {
        for seq in 0..total {
            let msg = reader.recv().await;
            assert_eq!(msg["task"]["seq"], seq, "in order, none missing");
        }
        reader
    });
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "5")
        .set("message.timeout.ms", "60000")
        .create()
        .unwrap();
    let blob = "b".repeat(8 * 1024);
    let started = std::time::Instant::now();
    let mut sends = futures_util::stream::FuturesUnordered::new();
    for seq in 0..total {
        let payload = task_event("burst", "task.updated", json!({"seq": seq, "blob": blob}));
        let producer = producer.clone();
        let topic = topic.clone();
        sends.push(async move {
            producer
                .send(
                    FutureRecord::to(&topic).key("burst").payload(&payload),
                    Duration::from_secs(60),
                )
                .await
                .map(|_| ())
                .map_err(|(e, _)| e)
        });
        while sends.len() >= 2000 {
            sends.next().await.unwrap().expect("produce");
        }
    }
    while let Some(sent) = sends.next().await {
        sent.expect("produce");
    }
    let mut reader = tokio::time::timeout(Duration::from_secs(120), read)
        .await
        .expect("the reader got all 20,000")
        .unwrap();
    let elapsed = started.elapsed();
    reader.assert_nothing_pending().await;
    sampler.abort();
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("burst: 20000 x 8 KiB read in {elapsed:?}, peak RSS {peak} MiB");
    assert!(peak < 256, "peak RSS {peak} MiB");
}

/// SSE heartbeats: a client that passes `since` in the query (our browser client, which handles
/// its own reconnects) gets them as `heartbeat` messages carrying the cursor; a plain
/// `EventSource` (no `since`) gets only the comment and the `id:` line, as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_heartbeats_are_messages_for_clients_that_pass_since() {
    let topic = create_topic(&brokers(), 1).await;
    let mut env = env_on(&topic);
    set(&mut env, "SSE_HEARTBEAT_SECS", "1");
    let gw = TestGateway::start(env).await;
    gw.wait_ready().await;
    let url = |extra: &str| format!("http://{}/events?token={}{extra}", gw.addr, resume_token());
    let mut with_since = Box::pin(sse(&url("&since="), None).await);
    let (_, hello) = next_sse(&mut with_since).await;
    assert_eq!(hello["type"], "connected");
    let (event, beat) = next_sse(&mut with_since).await;
    assert_eq!(beat["type"], "heartbeat", "{beat}");
    assert_eq!(event.id, beat["cursor"].as_str().unwrap());
    let mut plain = Box::pin(sse(&url(""), None).await);
    let (_, hello) = next_sse(&mut plain).await;
    assert_eq!(hello["type"], "connected");
    let nothing = tokio::time::timeout(Duration::from_millis(2500), plain.next()).await;
    assert!(nothing.is_err(), "no message, only comments: {nothing:?}");
    gw.stop().await;
}
