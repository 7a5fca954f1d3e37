//! Gateway benchmark (not a test): `make bench`.
//!
//! Starts the release `websocket-service` binary as its own process against the broker named by
//! `KAFKA_TEST_BROKERS`, opens N authenticated WebSocket connections over M users, then publishes
//! events at a fixed rate to the topic and measures, on the clients:
//! connects per second, server RSS per idle connection, deliveries per second and
//! publish-to-deliver latency (p50/p99/max). The load generator runs on the same machine.
//!
//! Knobs (environment): BENCH_CONNECTIONS (10000), BENCH_USERS (100), BENCH_RATE (events/s, 200),
//! BENCH_SECONDS (10; 0 = connections and memory only), BENCH_FETCH_WAIT_MS (5),
//! BENCH_CONNECT_CONCURRENCY (128), BENCH_SERVER_BIN (another server to measure, e.g. the
//! `bare_ws` example that gives the floor of the HTTP stack).

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use jsonwebtoken::{EncodingKey, Header};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "bench-secret-0123456789abcdef";

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let brokers = std::env::var("KAFKA_TEST_BROKERS").expect("KAFKA_TEST_BROKERS: run with `make bench`");
    let connections = knob("BENCH_CONNECTIONS", 10_000) as usize;
    let users = knob("BENCH_USERS", 100) as usize;
    let rate = knob("BENCH_RATE", 200);
    let seconds = knob("BENCH_SECONDS", 10);
    let fetch_wait = knob("BENCH_FETCH_WAIT_MS", 5);
    let concurrency = knob("BENCH_CONNECT_CONCURRENCY", 128) as usize;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());

    // Topic and server.
    let topic = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    admin
        .create_topics(
            &[NewTopic::new(&topic, 4, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    let free_port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let port = free_port();
    let internal_port = free_port();
    let per_user = connections.div_ceil(users) + 1;
    let server = Server(
        Command::new(
            std::env::var("BENCH_SERVER_BIN").unwrap_or(env!("CARGO_BIN_EXE_websocket-service").into()),
        )
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOST", "127.0.0.1")
        .env("PORT", port.to_string())
        .env("INTERNAL_PORT", internal_port.to_string())
        .env("JWT_SECRET", SECRET)
        .env("KAFKA_BROKERS", &brokers)
        .env("KAFKA_TOPICS", &topic)
        .env("MAX_CONNECTIONS", (connections + 1000).to_string())
        .env("MAX_CONNECTIONS_PER_USER", per_user.to_string())
        .env("RDKAFKA_FETCH_WAIT_MAX_MS", fetch_wait.to_string())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start websocket-service"),
    );
    let pid = server.0.id();
    let http = reqwest::Client::new();
    let ready_url = format!("http://127.0.0.1:{port}/ready");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http.get(&ready_url).send().await {
            if r.status().is_success() {
                break;
            }
        }
        assert!(Instant::now() < deadline, "server not ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_idle_server = rss_kib(pid);

    // Connect.
    let tokens: Vec<String> = (0..users)
        .map(|u| {
            let claims = json!({"sub": format!("user-{u}"), "exp": now_us() / 1_000_000 + 3600});
            jsonwebtoken::encode(
                &Header::default(),
                &claims,
                &EncodingKey::from_secret(SECRET.as_bytes()),
            )
            .unwrap()
        })
        .collect();
    let started = Instant::now();
    let sockets: Vec<_> = futures_util::stream::iter(0..connections)
        .map(|i| {
            let url = format!("ws://127.0.0.1:{port}/ws?token={}", tokens[i % users]);
            async move {
                let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("connect");
                match ws.next().await {
                    Some(Ok(Message::Text(t))) if t.contains("\"connected\"") => ws,
                    other => panic!("expected connected, got {other:?}"),
                }
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let connect_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_connected = rss_kib(pid);

    if seconds == 0 {
        print_connect_figures(
            cores,
            connections,
            users,
            concurrency,
            connect_secs,
            rss_idle_server,
            rss_connected,
        );
        return;
    }

    // Readers: count deliveries and record latency from the publish time carried in the task.
    let delivered = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(Mutex::new(Vec::<(u64, u32)>::with_capacity(
        (rate * seconds) as usize * connections / users,
    )));
    let last_delivery = Arc::new(AtomicU64::new(0));
    for mut ws in sockets {
        let delivered = delivered.clone();
        let latencies = latencies.clone();
        let last_delivery = last_delivery.clone();
        tokio::spawn(async move {
            while let Some(Ok(msg)) = ws.next().await {
                if let Message::Text(text) = msg {
                    let now = now_us();
                    let Some(at) = text.find("\"sent_us\":") else {
                        continue;
                    };
                    let digits: String = text[at + 10..]
                        .chars()
                        .take_while(|c| c.is_ascii_digit())
                        .collect();
                    if let Ok(sent) = digits.parse::<u64>() {
                        latencies
                            .lock()
                            .unwrap()
                            .push((sent, now.saturating_sub(sent) as u32));
                        delivered.fetch_add(1, Ordering::Relaxed);
                        last_delivery.fetch_max(now, Ordering::Relaxed);
                    }
                }
            }
        });
    }

    // Publish at a fixed rate, each event keyed by its user.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "0")
        .create()
        .unwrap();
    // Warm-up, untimed: the producer's first send to each partition waits for its connection
    // and metadata, and the gateway's first fetches set up their sessions. One event per user
    // key (so every partition the run uses), addressed to nobody.
    let warm = json!({"event_type": "task.updated", "user_id": "nobody", "task": {}}).to_string();
    for u in 0..users {
        producer
            .send(
                FutureRecord::to(&topic).key(&format!("user-{u}")).payload(&warm),
                Duration::from_secs(10),
            )
            .await
            .expect("warm-up publish");
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let total_events = rate * seconds;
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    let first_publish = now_us();
    let mut acks = Vec::with_capacity(total_events as usize);
    for seq in 0..total_events {
        tick.tick().await;
        let user = format!("user-{}", seq as usize % users);
        let payload = json!({
            "event_type": "task.updated", "user_id": user,
            "task": {"id": seq, "title": "benchmark task", "sent_us": now_us()}
        })
        .to_string();
        let producer = producer.clone();
        let topic = topic.clone();
        acks.push(tokio::spawn(async move {
            producer
                .send(
                    FutureRecord::to(&topic).key(&user).payload(&payload),
                    Duration::from_secs(10),
                )
                .await
                .is_ok()
        }));
    }
    let mut failed = 0;
    for ack in acks {
        if !ack.await.unwrap() {
            failed += 1;
        }
    }
    let per_event = (connections / users) as u64;
    let expected = (total_events - failed) * per_event;
    let deadline = Instant::now() + Duration::from_secs(15);
    while delivered.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rss_loaded = rss_kib(pid);
    let got = delivered.load(Ordering::Relaxed);
    let span_secs = (last_delivery
        .load(Ordering::Relaxed)
        .saturating_sub(first_publish)) as f64
        / 1e6;
    let samples = latencies.lock().unwrap().clone();
    // The worst latency of each second of publishing shows warm-up or periodic stalls.
    let mut worst_per_second = vec![0u32; seconds as usize + 1];
    for (sent, l) in &samples {
        let bucket = (sent.saturating_sub(first_publish) / 1_000_000) as usize;
        if let Some(w) = worst_per_second.get_mut(bucket) {
            *w = (*w).max(*l);
        }
    }
    let mut lat: Vec<u32> = samples.iter().map(|(_, l)| *l).collect();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
    };
    let ms = |v: Option<u32>| v.map_or("n/a".to_string(), |us| format!("{:.2} ms", us as f64 / 1000.0));

    print_connect_figures(
        cores,
        connections,
        users,
        concurrency,
        connect_secs,
        rss_idle_server,
        rss_connected,
    );
    println!("  server RSS under load  {rss_loaded} KiB");
    println!("  events published       {total_events} at {rate}/s ({failed} failed), fetch.wait.max.ms={fetch_wait}");
    println!("  deliveries             {got} of {expected} expected");
    println!(
        "  delivery rate          {:.0} deliveries/s",
        got as f64 / span_secs.max(1e-9)
    );
    println!(
        "  publish-to-deliver     p50 {}  p99 {}  max {}",
        ms(pct(0.50)),
        ms(pct(0.99)),
        ms(lat.last().copied())
    );
    let worst: Vec<String> = worst_per_second
        .iter()
        .map(|us| format!("{:.1}", *us as f64 / 1000.0))
        .collect();
    println!(
        "  worst latency per second of publishing (ms): {}",
        worst.join(" ")
    );
    drop(server);
    if got < expected {
        eprintln!("benchmark: {} deliveries missing", expected - got);
        std::process::exit(1);
    }
}

fn print_connect_figures(
    cores: usize,
    connections: usize,
    users: usize,
    concurrency: usize,
    connect_secs: f64,
    rss_idle: u64,
    rss_connected: u64,
) {
    println!(
        "websocket-service benchmark ({cores} cores; load generator, broker and server on this machine)"
    );
    println!(
        "  connections            {connections} over {users} users ({} per user)",
        connections / users
    );
    println!(
        "  connect rate           {:.0} connects/s ({connections} in {connect_secs:.2} s, {concurrency} in flight)",
        connections as f64 / connect_secs
    );
    println!("  server RSS             idle {rss_idle} KiB, with connections {rss_connected} KiB");
    println!(
        "  RSS per idle connection {:.2} KiB",
        rss_connected.saturating_sub(rss_idle) as f64 / connections as f64
    );
}
