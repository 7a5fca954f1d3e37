//! Gateway benchmark (not a test): `make bench`.
//!
//! Each workload starts the release `websocket-service` binary as its own process against the
//! broker named by `KAFKA_TEST_BROKERS`, on a topic of its own, and measures on real clients:
//!
//! - `user`: N connections over M users, task events at a fixed rate, each to one user (every
//!   tab of that user receives it). Also connects/s and server RSS per idle connection.
//! - `rooms`: N sessions, each in one of R rooms (joined over the socket), room events at a
//!   fixed rate, each to one room.
//! - `broadcast`: N sessions, `all` events at a fixed rate: every session receives every one.
//! - `skip`: how many events per second one replica reads and skips when none of their audience
//!   is connected to it (every replica reads the whole topic: that is the ceiling of this design
//!   as the cluster grows). E events are written to the topic first; the gateway then reads them
//!   from the log (`KAFKA_START_FROM=earliest`) with no client connected.
//! - `resume`, `connect`, `seedkill`: recovery after a disconnect, with cursors and without
//!   (`recovery.rs` says how each is measured).
//! - `presence`, `revoke`, `revcheck`: what replicas decide together through the control topic
//!   (`cluster.rs`).
//! - `state`: state events with slow and fast readers (`state.rs`).
//! - `rpc`, `publish`: clients to backends: RPC round trips through an HTTP and a Kafka backend
//!   at 1,000 and 10,000 calls/s, and a client's room publication to 1,000 members
//!   (`upstream.rs`).
//! - `chaos` and `soak` (`make chaos`, `make soak`): faults and a long steady load with real
//!   processes (`chaos.rs`); not in the default list.
//!
//! Events carry their publish time; latency is publish-to-deliver on the client. The load
//! generator, the broker and the server share the machine.
//!
//! Knobs (environment): BENCH_WORKLOADS
//! (user,rooms,broadcast,skip,resume,connect,seedkill,presence,revoke,revcheck,state,rpc,publish),
//! BENCH_CONNECTIONS (10000),
//! BENCH_USERS (100), BENCH_ROOMS (100), BENCH_RATE (user and rooms events/s, 200),
//! BENCH_BROADCAST_RATE (10), BENCH_SECONDS (10; 0 = connections and memory only),
//! BENCH_SKIP_EVENTS (1000000), BENCH_SKIP_PARTITIONS (4), BENCH_SERVER_WORKERS (the broadcast
//! server's WORKERS), BENCH_FETCH_WAIT_MS (5), BENCH_CONNECT_CONCURRENCY (128),
//! BENCH_SERVER_BIN (another server to measure, e.g. the `bare_ws` example that gives the floor
//! of the HTTP stack), BENCH_RESUME_AWAY_SECS (5), BENCH_CONNECT_SEQUENTIAL (1000),
//! BENCH_CONNECT_PARALLEL (200), BENCH_PRESENCE_USERS (connections / 10),
//! BENCH_REVOKE_SESSIONS (1000), BENCH_REVCHECK_CONNECTIONS (5000), BENCH_REVOCATIONS (10000),
//! BENCH_STATE_KEYS (50), BENCH_STATE_RATE (changes per key per second, 100), BENCH_STATE_SLOW
//! (1000), BENCH_STATE_FAST (10), BENCH_STATE_SLOW_MS (100),
//! BENCH_RPC_SESSIONS (200), BENCH_RPC_SECONDS (5), BENCH_PUBLISH_MEMBERS (1000),
//! BENCH_PUBLISH_RATE (20),
//! BENCH_SERVER_ENV (settings for every server started:
//! `KEY=value,KEY=value`).

#[path = "../../tests/support/broker.rs"]
mod broker;
mod chaos;
mod cluster;
mod fanout;
mod recovery;
mod state;
mod upstream;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{EncodingKey, Header};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::json;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const SECRET: &str = "bench-secret-0123456789abcdef";

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

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

/// CPU seconds (user + system) a process has used.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// The broker's pid, to report its CPU beside the gateway's.
fn broker_pid() -> Option<u32> {
    let out = Command::new("pgrep").args(["-f", "tansu broker"]).output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Config {
    brokers: String,
    connections: usize,
    fetch_wait: u64,
    concurrency: usize,
}

/// `BENCH_SERVER_ENV="KEY=value,KEY=value"`: settings for every server the benchmark starts
/// (to compare a setting's cost), applied after the workload's own.
fn server_env() -> Vec<(String, String)> {
    std::env::var("BENCH_SERVER_ENV")
        .unwrap_or_default()
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

struct Server {
    child: Child,
    port: u16,
    internal_port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Starts the server on `topic` and waits until it is ready.
    async fn start(cfg: &Config, topic: &str, per_user: usize, extra: &[(&str, &str)]) -> Server {
        let (port, internal_port) = (free_port(), free_port());
        let child = Command::new(
            std::env::var("BENCH_SERVER_BIN").unwrap_or(env!("CARGO_BIN_EXE_websocket-service").into()),
        )
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOST", "127.0.0.1")
        .env("PORT", port.to_string())
        .env("INTERNAL_PORT", internal_port.to_string())
        .env("JWT_SECRET", SECRET)
        .env("KAFKA_BROKERS", &cfg.brokers)
        .env("KAFKA_TOPICS", topic)
        .env("MAX_CONNECTIONS", (cfg.connections + 1000).to_string())
        .env("MAX_CONNECTIONS_PER_USER", per_user.to_string())
        .env("RDKAFKA_FETCH_WAIT_MAX_MS", cfg.fetch_wait.to_string())
        .env("RUST_LOG", "warn")
        .envs(extra.iter().copied())
        .envs(server_env())
        .stdout(Stdio::null())
        .spawn()
        .expect("start websocket-service");
        let server = Server {
            child,
            port,
            internal_port,
        };
        let http = reqwest::Client::new();
        let ready_url = format!("http://127.0.0.1:{port}/ready");
        // Generous: a replica that starts under load reads the recent log back first.
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            if let Ok(r) = http.get(&ready_url).send().await {
                if r.status().is_success() {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "server not ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        server
    }

    fn rss(&self) -> u64 {
        rss_kib(self.child.id())
    }

    /// The sum of a counter family in `/metrics`.
    async fn counter(&self, name: &str) -> u64 {
        let text = reqwest::get(format!("http://127.0.0.1:{}/metrics", self.internal_port))
            .await
            .and_then(|r| r.error_for_status())
            .map(|r| r.text());
        let Ok(text) = text else { return 0 };
        let text = text.await.unwrap_or_default();
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }
}

fn token(user: &str) -> String {
    let claims = json!({"sub": user, "exp": now_us() / 1_000_000 + 3600});
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

async fn create_topic(brokers: &str, partitions: i32) -> String {
    let topic = format!("bench-{}", uuid::Uuid::new_v4().simple());
    broker::create_topic_retrying(brokers, &topic, partitions, Duration::from_secs(30)).await;
    topic
}

/// Opens `n` sessions; session `i` uses `user(i)`'s token and, when `room(i)` names one, joins
/// it. Returns the sockets and the time it took.
async fn connect_all(
    cfg: &Config,
    port: u16,
    n: usize,
    user: impl Fn(usize) -> String,
    room: impl Fn(usize) -> Option<String>,
) -> (Vec<Ws>, f64) {
    let tokens: std::collections::HashMap<String, String> = (0..n)
        .map(&user)
        .collect::<std::collections::HashSet<_>>()
        .into_iter()
        .map(|u| (u.clone(), token(&u)))
        .collect();
    let started = Instant::now();
    let sockets = futures_util::stream::iter(0..n)
        .map(|i| {
            let url = format!("ws://127.0.0.1:{port}/ws?token={}", tokens[&user(i)]);
            let room = room(i);
            async move {
                // A small read buffer: tungstenite zero-fills its whole read buffer on every read
                // (128 KiB by default), which cost the load generator half its CPU.
                let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
                    .read_buffer_size(4096);
                let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), false)
                    .await
                    .expect("connect");
                match ws.next().await {
                    Some(Ok(Message::Text(t))) if t.contains("\"connected\"") => {}
                    other => panic!("expected connected, got {other:?}"),
                }
                if let Some(room) = room {
                    let join = json!({"type": "join_room", "room": room}).to_string();
                    ws.send(Message::text(join)).await.expect("join");
                    match ws.next().await {
                        Some(Ok(Message::Text(t))) if t.contains("\"joined_room\"") => {}
                        other => panic!("expected joined_room, got {other:?}"),
                    }
                }
                ws
            }
        })
        .buffer_unordered(cfg.concurrency)
        .collect()
        .await;
    (sockets, started.elapsed().as_secs_f64())
}

/// What the readers saw.
#[derive(Default)]
struct Seen {
    delivered: AtomicU64,
    last_us: AtomicU64,
    /// Each reader's (publish time, latency) per delivery.
    buffers: Mutex<Vec<Samples>>,
}

/// One reader's (publish time, latency) per delivery.
type Samples = Arc<Mutex<Vec<(u64, u32)>>>;

/// What a workload published, and what it expects.
struct Run {
    name: &'static str,
    first: u64,
    published: u64,
    rate: u64,
    seconds: u64,
    expected: u64,
    target_p99_ms: f64,
}

/// Reads every socket, recording the latency of each message carrying `"sent_us":`. Each reader
/// has a sample buffer of its own (its lock is never contended), gathered when the figures are.
fn spawn_readers(sockets: Vec<Ws>, seen: Arc<Seen>) {
    for mut ws in sockets {
        let seen = seen.clone();
        let buffer = Arc::new(Mutex::new(Vec::<(u64, u32)>::new()));
        seen.buffers.lock().unwrap().push(buffer.clone());
        tokio::spawn(async move {
            while let Some(Ok(msg)) = ws.next().await {
                let Message::Text(text) = msg else { continue };
                let now = now_us();
                let Some(at) = text.find("\"sent_us\":") else {
                    continue;
                };
                let sent = text[at + 10..]
                    .bytes()
                    .take_while(u8::is_ascii_digit)
                    .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
                buffer
                    .lock()
                    .unwrap()
                    .push((sent, now.saturating_sub(sent) as u32));
                seen.last_us.fetch_max(now, Ordering::Relaxed);
                seen.delivered.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
}

/// A producer that batches for `linger_ms` (thousands of events per second need batches).
fn producer_lingering(brokers: &str, linger_ms: u64) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", linger_ms.to_string())
        .create()
        .unwrap()
}

/// Sends `payload(seq)` keyed `key(seq)` at `rate` per second for `seconds`, after a warm-up that
/// touches every key (addressed to nobody). Returns the first publish time and the failures.
async fn publish_at_rate(
    brokers: &str,
    topic: &str,
    rate: u64,
    seconds: u64,
    warm_keys: Vec<String>,
    key: impl Fn(u64) -> String,
    payload: impl Fn(u64, u64) -> String,
) -> (u64, u64) {
    // Above a few hundred events per second, batches (1 ms) rather than one request each.
    let producer = producer_lingering(brokers, if rate > 1000 { 1 } else { 0 });
    let warm = json!({"event_type": "warm", "data": {}, "to": {"user": "nobody"}}).to_string();
    for k in warm_keys {
        producer
            .send(
                FutureRecord::to(topic).key(&k).payload(&warm),
                Duration::from_secs(10),
            )
            .await
            .expect("warm-up publish");
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    let first = now_us();
    let mut acks = Vec::new();
    for seq in 0..rate * seconds {
        tick.tick().await;
        let (k, p) = (key(seq), payload(seq, now_us()));
        let producer = producer.clone();
        let topic = topic.to_string();
        acks.push(tokio::spawn(async move {
            producer
                .send(
                    FutureRecord::to(&topic).key(&k).payload(&p),
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
    (first, failed)
}

/// One workload's figures.
struct Figures {
    name: &'static str,
    published: u64,
    rate: u64,
    expected: u64,
    got: u64,
    span_secs: f64,
    p50: Option<u32>,
    p99: Option<u32>,
    max: Option<u32>,
    worst_per_second: Vec<u32>,
    target_p99_ms: f64,
    /// CPU seconds used while publishing and delivering: (gateway, load generator, broker).
    cpu: (f64, f64, f64),
}

/// CPU seconds so far of (gateway, this load generator, the broker).
fn cpu_now(server: &Server) -> (f64, f64, f64) {
    (
        cpu_secs(server.child.id()),
        cpu_secs(std::process::id()),
        broker_pid().map_or(0.0, cpu_secs),
    )
}

impl Figures {
    fn ok(&self) -> bool {
        self.got == self.expected
            && self
                .p99
                .is_some_and(|p| f64::from(p) / 1000.0 <= self.target_p99_ms)
    }
}

/// Waits until `expected` deliveries arrived (or 15 s passed) and computes the figures.
async fn collect(run: Run, server: &Server, cpu_start: (f64, f64, f64), seen: &Seen) -> Figures {
    let Run {
        name,
        first,
        published,
        rate,
        seconds,
        expected,
        target_p99_ms,
    } = run;
    let deadline = Instant::now() + Duration::from_secs(15);
    while seen.delivered.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = seen.delivered.load(Ordering::Relaxed);
    let cpu_end = cpu_now(server);
    let cpu = (
        cpu_end.0 - cpu_start.0,
        cpu_end.1 - cpu_start.1,
        cpu_end.2 - cpu_start.2,
    );
    let span_secs = (seen.last_us.load(Ordering::Relaxed).saturating_sub(first)) as f64 / 1e6;
    let samples: Vec<(u64, u32)> = seen
        .buffers
        .lock()
        .unwrap()
        .iter()
        .flat_map(|b| b.lock().unwrap().clone())
        .collect();
    let mut worst_per_second = vec![0u32; seconds as usize + 1];
    for (sent, l) in &samples {
        let bucket = (sent.saturating_sub(first) / 1_000_000) as usize;
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
    Figures {
        name,
        published,
        rate,
        expected,
        got,
        span_secs,
        p50: pct(0.50),
        p99: pct(0.99),
        max: lat.last().copied(),
        worst_per_second,
        target_p99_ms,
        cpu,
    }
}

fn ms(v: Option<u32>) -> String {
    v.map_or("n/a".to_string(), |us| format!("{:.2} ms", us as f64 / 1000.0))
}

fn print_figures(f: &Figures) {
    println!(
        "  events published       {} at {}/s; deliveries {} of {} expected ({:.0}/s)",
        f.published,
        f.rate,
        f.got,
        f.expected,
        f.got as f64 / f.span_secs.max(1e-9)
    );
    println!(
        "  publish-to-deliver     p50 {}  p99 {}  max {}   (target p99 <= {} ms: {})",
        ms(f.p50),
        ms(f.p99),
        ms(f.max),
        f.target_p99_ms,
        if f.ok() { "met" } else { "NOT MET" }
    );
    let worst: Vec<String> = f
        .worst_per_second
        .iter()
        .map(|us| format!("{:.1}", *us as f64 / 1000.0))
        .collect();
    println!(
        "  worst latency per second of publishing (ms): {}",
        worst.join(" ")
    );
    println!(
        "  CPU seconds            gateway {:.2} ({:.2} µs per delivery), load generator {:.2}, broker {:.2}",
        f.cpu.0,
        f.cpu.0 * 1e6 / f.got.max(1) as f64,
        f.cpu.1,
        f.cpu.2
    );
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let cfg = Config {
        brokers: std::env::var("KAFKA_TEST_BROKERS").expect("KAFKA_TEST_BROKERS: run with `make bench`"),
        connections: knob("BENCH_CONNECTIONS", 10_000) as usize,
        fetch_wait: knob("BENCH_FETCH_WAIT_MS", 5),
        concurrency: knob("BENCH_CONNECT_CONCURRENCY", 128) as usize,
    };
    let workloads = std::env::var("BENCH_WORKLOADS").unwrap_or(
        "user,rooms,broadcast,skip,resume,connect,seedkill,presence,revoke,revcheck,state,rpc,publish".into(),
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "websocket-service benchmark ({cores} cores; load generator, broker and server on this machine)"
    );
    println!(
        "fetch.wait.max.ms={} (the broker answers a waiting fetch only then: the latency floor)",
        cfg.fetch_wait
    );
    let mut all = Vec::new();
    for workload in workloads.split(',').map(str::trim) {
        let figures = match workload {
            "user" => fanout::user(&cfg).await,
            "rooms" => fanout::rooms(&cfg).await,
            "broadcast" => fanout::broadcast(&cfg).await,
            "skip" => {
                fanout::skip(&cfg).await;
                None
            }
            "resume" => {
                recovery::resume(&cfg).await;
                None
            }
            "connect" => {
                recovery::connect(&cfg).await;
                None
            }
            "seedkill" => {
                recovery::seedkill(&cfg).await;
                None
            }
            "presence" => {
                cluster::presence(&cfg).await;
                None
            }
            "revoke" => {
                cluster::revoke(&cfg).await;
                None
            }
            "revcheck" => {
                cluster::revcheck(&cfg).await;
                None
            }
            "state" => {
                state::state(&cfg).await;
                None
            }
            "rpc" => {
                upstream::rpc(&cfg).await;
                None
            }
            "publish" => upstream::publish(&cfg).await,
            "chaos" => {
                chaos::chaos(&cfg).await;
                None
            }
            "soak" => {
                chaos::soak(&cfg).await;
                None
            }
            other => panic!("unknown workload {other}"),
        };
        all.extend(figures);
    }
    let missing: Vec<&Figures> = all.iter().filter(|f| f.got < f.expected).collect();
    if !missing.is_empty() {
        for f in missing {
            eprintln!("benchmark {}: {} deliveries missing", f.name, f.expected - f.got);
        }
        std::process::exit(1);
    }
}
