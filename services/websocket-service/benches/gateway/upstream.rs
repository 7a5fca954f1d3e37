//! Upstream workloads: `rpc` (round trips through an HTTP backend and a Kafka backend at fixed
//! rates) and `publish` (a client's room publication to the room's 1,000 members).
//!
//! The HTTP backend is a real actix-web server in this process (its own thread, keep-alive);
//! the Kafka backend is a consumer in this process that answers every request on the reply
//! topic. A call's latency is from the client's send to its `rpc_result`, on the client.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::FutureRecord;
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::*;

/// An HTTP backend answering `{"echo": data}`; returns its URL.
fn http_backend() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/rpc", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            actix_web::HttpServer::new(|| {
                actix_web::App::new().route(
                    "/rpc",
                    actix_web::web::post().to(|body: actix_web::web::Json<Value>| async move {
                        actix_web::HttpResponse::Ok().json(json!({"echo": body["data"]}))
                    }),
                )
            })
            .workers(1)
            .listen(listener)
            .unwrap()
            .run()
            .await
            .unwrap();
        });
    });
    url
}

/// A Kafka backend: answers every request on `topic` on the topic it names.
fn kafka_backend(brokers: &str, topic: &str) {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("bench-rpc-{}", uuid::Uuid::new_v4().simple()))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", knob("BENCH_FETCH_WAIT_MS", 5).to_string())
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&assignment).unwrap();
    let producer = producer_lingering(brokers, 1);
    tokio::spawn(async move {
        let mut stream = consumer.stream();
        while let Some(Ok(record)) = stream.next().await {
            let Ok(request) = serde_json::from_slice::<Value>(record.payload().unwrap_or_default()) else {
                continue;
            };
            let session = request["session"].as_str().unwrap_or_default().to_string();
            let reply = json!({"event_type": "rpc_result", "to": {"session": session},
                               "data": {"request_id": request["request_id"], "data": {"echo": request["data"]}}})
            .to_string();
            let topic = request["reply_to"]["topic"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let producer = producer.clone();
            tokio::spawn(async move {
                let _ = producer
                    .send(
                        FutureRecord::to(&topic).key(&session).payload(&reply),
                        Duration::from_secs(10),
                    )
                    .await;
            });
        }
    });
}

/// RPC round trips through both backends at 1,000 and 10,000 calls/s.
pub async fn rpc(cfg: &Config) {
    let sessions = knob("BENCH_RPC_SESSIONS", 200) as usize;
    let seconds = knob("BENCH_RPC_SECONDS", 5);
    let topic = create_topic(&cfg.brokers, 1).await;
    let requests = create_topic(&cfg.brokers, 1).await;
    let http = http_backend();
    kafka_backend(&cfg.brokers, &requests);
    let routes = format!("bench.http={http},bench.kafka=kafka:{requests}");
    let server = Server::start(
        cfg,
        &topic,
        sessions + 1,
        &[
            ("RPC_ROUTES", &routes),
            ("CLIENT_MESSAGES_PER_SEC", "0"),
            ("RPC_MAX_IN_FLIGHT", "256"),
        ],
    )
    .await;
    warm_up(cfg, &server).await;
    println!(
        "\n[rpc] {sessions} sessions calling at a fixed total rate for {seconds} s; round trip on the client"
    );
    for backend in ["http", "kafka"] {
        for rate in [1_000u64, 10_000] {
            let (sockets, _) =
                connect_all(cfg, server.port, sessions, |i| format!("caller-{i}"), |_| None).await;
            let cpu_start = cpu_now(&server);
            let (latencies, errors, sent) =
                calls_at_rate(sockets, &format!("bench.{backend}"), rate, seconds).await;
            let cpu = cpu_now(&server);
            report_rpc(
                backend,
                rate,
                sent,
                &latencies,
                &errors,
                (cpu.0 - cpu_start.0, cpu.2 - cpu_start.2),
            );
        }
    }
}

/// A few calls through each backend first, so connections, metadata and the backend consumer
/// are up before anything is measured.
async fn warm_up(cfg: &Config, server: &Server) {
    let (mut sockets, _) = connect_all(cfg, server.port, 1, |_| "warm".into(), |_| None).await;
    let ws = &mut sockets[0];
    for method in ["bench.http", "bench.kafka"] {
        for id in 0..20 {
            let call = json!({"type": "rpc", "id": id, "method": method, "data": {}});
            ws.send(Message::text(call.to_string()))
                .await
                .expect("warm-up call");
            loop {
                let Some(Ok(Message::Text(text))) = ws.next().await else {
                    panic!("warm-up: the session ended")
                };
                if text.contains("\"rpc_result\"") {
                    break;
                }
                assert!(!text.contains("\"rpc_error\""), "warm-up call failed: {text}");
            }
        }
    }
}

/// Every session sends calls at `rate / sessions` per second; returns the round trips (µs) of
/// the answers, the error codes, and how many calls were sent.
async fn calls_at_rate(
    sockets: Vec<Ws>,
    method: &str,
    rate: u64,
    seconds: u64,
) -> (Vec<u32>, BTreeMap<String, u64>, u64) {
    let n = sockets.len() as u64;
    let per_session = (rate / n).max(1);
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let errors = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    let answered = Arc::new(AtomicU64::new(0));
    let mut senders = Vec::new();
    for (i, ws) in sockets.into_iter().enumerate() {
        let (mut sink, mut stream) = ws.split();
        let (lat, errs, done) = (latencies.clone(), errors.clone(), answered.clone());
        tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                let Message::Text(text) = msg else { continue };
                let now = now_us();
                let v: Value = serde_json::from_str(&text).unwrap_or_default();
                match v["type"].as_str() {
                    Some("rpc_result") => {
                        let sent = v["id"].as_u64().unwrap_or(now);
                        lat.lock().unwrap().push(now.saturating_sub(sent) as u32);
                    }
                    Some("rpc_error") => {
                        let code = v["error"]["code"].as_str().unwrap_or("?").to_string();
                        *errs.lock().unwrap().entry(code).or_default() += 1;
                    }
                    _ => continue,
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        });
        let method = method.to_string();
        senders.push(tokio::spawn(async move {
            // Spread the sessions' ticks over the period.
            let period = Duration::from_micros(1_000_000 / per_session);
            tokio::time::sleep(period.mul_f64(i as f64 / n as f64)).await;
            let mut tick = tokio::time::interval(period);
            let mut sent = 0u64;
            for _ in 0..per_session * seconds {
                tick.tick().await;
                let call = json!({"type": "rpc", "id": now_us(), "method": method, "data": {"n": sent}});
                if sink.send(Message::text(call.to_string())).await.is_err() {
                    break;
                }
                sent += 1;
            }
            // The socket stays open (the sink is handed back) until the answers are in.
            (sent, sink)
        }));
    }
    let mut sent = 0;
    let mut sinks = Vec::new();
    for s in senders {
        let (n, sink) = s.await.expect("sender");
        sent += n;
        sinks.push(sink);
    }
    // Every answer in (or ten seconds without), then the sockets close.
    let deadline = Instant::now() + Duration::from_secs(10);
    while answered.load(Ordering::Relaxed) < sent && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for mut sink in sinks {
        let _ = sink.close().await;
    }
    let latencies = std::mem::take(&mut *latencies.lock().unwrap());
    let errors = std::mem::take(&mut *errors.lock().unwrap());
    (latencies, errors, sent)
}

fn report_rpc(
    backend: &str,
    rate: u64,
    sent: u64,
    latencies: &[u32],
    errors: &BTreeMap<String, u64>,
    cpu: (f64, f64),
) {
    let mut lat = latencies.to_vec();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
    };
    let errors = if errors.is_empty() {
        "none".to_string()
    } else {
        errors
            .iter()
            .map(|(c, n)| format!("{c} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "  {backend:<5} {rate:>6}/s  sent {sent}, answered {}, errors: {errors}; round trip p50 {}  p99 {}  max {}; CPU s gateway {:.2}, broker {:.2}",
        lat.len(),
        ms(pct(0.5)),
        ms(pct(0.99)),
        ms(lat.last().copied()),
        cpu.0,
        cpu.1
    );
}

/// A client publishes to a room of 1,000 members: publish-to-receive on every other member.
pub async fn publish(cfg: &Config) -> Option<Figures> {
    let members = knob("BENCH_PUBLISH_MEMBERS", 1000) as usize;
    let rate = knob("BENCH_PUBLISH_RATE", 20);
    let seconds = knob("BENCH_SECONDS", 10);
    let topic = create_topic(&cfg.brokers, 1).await;
    let publications = create_topic(&cfg.brokers, 1).await;
    let server = Server::start(
        cfg,
        &topic,
        members + 2,
        &[
            ("ROOMS_PUBLIC", "bench:*"),
            ("CLIENT_PUBLISH_ROOMS", "bench:*=members"),
            ("CLIENT_PUBLISH_TOPIC", &publications),
            ("CLIENT_PUBLISH_PER_SEC", "1000"),
            ("CLIENT_PUBLISH_BURST", "1000"),
        ],
    )
    .await;
    let room = || Some("bench:room".to_string());
    let (sockets, _) = connect_all(cfg, server.port, members, |i| format!("member-{i}"), |_| room()).await;
    let (mut publisher, _) = connect_all(cfg, server.port, 1, |_| "publisher".into(), |_| room()).await;
    let publisher = publisher.pop().unwrap();
    println!("\n[publish] a client publishes to a room of {members} other members through Kafka, {rate}/s for {seconds} s");
    let seen = Arc::new(Seen::default());
    spawn_readers(sockets, seen.clone());
    let (mut sink, mut acks) = publisher.split();
    let acked = Arc::new(AtomicU64::new(0));
    let counted = acked.clone();
    tokio::spawn(async move {
        while let Some(Ok(Message::Text(text))) = acks.next().await {
            if text.contains("\"published\"") {
                counted.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    // Warm-up publications (not measured: no `sent_us`), so the producer and the topic's
    // metadata are up first.
    const WARM: u64 = 5;
    for _ in 0..WARM {
        let msg = json!({"type": "publish", "room": "bench:room", "data": {"warm": true}});
        sink.send(Message::text(msg.to_string())).await.expect("publish");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.load(Ordering::Relaxed) < WARM {
        assert!(Instant::now() < deadline, "warm-up publications not acknowledged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    acked.store(0, Ordering::Relaxed);
    let cpu_start = cpu_now(&server);
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    let first = now_us();
    for seq in 0..rate * seconds {
        tick.tick().await;
        let msg = json!({"type": "publish", "room": "bench:room", "event_type": "chat",
                         "data": {"seq": seq, "sent_us": now_us()}});
        sink.send(Message::text(msg.to_string())).await.expect("publish");
    }
    let published = rate * seconds;
    let run = Run {
        name: "publish",
        first,
        published,
        rate,
        seconds,
        expected: published * members as u64,
        target_p99_ms: 25.0,
    };
    let f = collect(run, &server, cpu_start, &seen).await;
    println!(
        "  acknowledged           {} of {published} publications",
        acked.load(Ordering::Relaxed)
    );
    print_figures(&f);
    Some(f)
}
