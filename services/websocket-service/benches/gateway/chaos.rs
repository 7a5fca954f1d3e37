//! Bad days, with real processes: `chaos` (`make chaos`) and `soak` (`make soak DURATION=...`).
//!
//! Both run a fleet of clients that behave like our browser client: each follows its room,
//! keeps the latest cursor (events, `pong` and `heartbeat` carry it), and after any close or
//! failed dial reconnects (to the next live replica) with `since=<cursor>` and its room in the
//! URL. Every room numbers its events, so each client counts what it lost and what it got twice.
//!
//! - `chaos`: two replicas on a broker of the workload's own; events at a fixed rate throughout;
//!   faults one after the other, each reported with the events lost and duplicated for the
//!   clients (all of them stay or resume), the time until every client is connected again, and
//!   the replicas' memory: malformed records at 10% of the producer rate, 10% of the clients
//!   stalled (they stop reading for longer than `WRITE_TIMEOUT_SECS`), `kill -9` of a replica,
//!   a broker restart, and a reconnect storm.
//! - `soak`: one replica, steady load for `BENCH_SOAK_SECS` (connections churning, events
//!   flowing, some slow clients), sampling RSS, open file descriptors and queue lengths (consumer
//!   lag, history) every 5 s; it fails when one keeps growing over the second half.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::broker::{create_topic_retrying, OwnBroker};
use crate::recovery::{dial, last_of_room, room_event, Track};
use crate::*;

/// What the fleet shares with the workload that drives it.
#[derive(Default)]
struct Control {
    /// The replicas' ports clients may dial (a killed one is removed).
    ports: Mutex<Vec<u16>>,
    stop: AtomicBool,
    /// Clients `i` with `i % 10 == 0` stop reading while set.
    stall: AtomicBool,
    /// Bumped to make every client drop its socket and reconnect at once.
    storm: AtomicU64,
    /// Clients connected (got `connected`) now.
    connected: AtomicUsize,
    /// `connected` answers with `recovered: false`.
    unrecovered: AtomicU64,
    /// Sessions closed by the server or failed dials, and reconnects.
    reconnects: AtomicU64,
    /// Soak: each client drops its socket after a random life (mean seconds), 0 = never.
    churn_mean_secs: AtomicU64,
}

/// One client: its room's events, across every close, with its cursor.
async fn follow(
    i: usize,
    room: usize,
    token: String,
    track: Arc<Mutex<Track>>,
    ctl: Arc<Control>,
    slow: bool,
) {
    let mut attempt = 0usize;
    let mut storm_seen = ctl.storm.load(Ordering::Relaxed);
    while !ctl.stop.load(Ordering::Relaxed) {
        let port = {
            let ports = ctl.ports.lock().unwrap();
            ports[(i + attempt) % ports.len()]
        };
        let since = track.lock().unwrap().cursor.clone().unwrap_or_default();
        let url = format!(
            "ws://127.0.0.1:{port}/ws?token={token}&rooms=bench-{room}&since={}",
            urlencode(&since)
        );
        attempt += 1;
        let Some(mut ws) = dial(&url).await else {
            ctl.reconnects.fetch_add(1, Ordering::Relaxed);
            // Full jitter up to 1 s: a fleet that lost its replica does not come back as one herd.
            tokio::time::sleep(Duration::from_millis(50 + fastrand_ms(i, attempt, 950))).await;
            continue;
        };
        let mut connected = false;
        let life = match ctl.churn_mean_secs.load(Ordering::Relaxed) {
            0 => Duration::from_secs(86_400),
            mean => Duration::from_millis(fastrand_ms(i, attempt, mean * 2000) + 1000),
        };
        let until = tokio::time::Instant::now() + life;
        loop {
            if ctl.stall.load(Ordering::Relaxed) && i.is_multiple_of(10) {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            let storm = ctl.storm.load(Ordering::Relaxed);
            if storm != storm_seen || ctl.stop.load(Ordering::Relaxed) {
                storm_seen = storm;
                break;
            }
            let msg = tokio::select! {
                msg = ws.next() => msg,
                () = tokio::time::sleep_until(until) => break,
                () = tokio::time::sleep(Duration::from_millis(200)) => continue,
            };
            let Some(Ok(Message::Text(text))) = msg else {
                match msg {
                    Some(Ok(_)) => continue,
                    _ => break,
                }
            };
            if let Some((seq, _sent, cursor)) = room_event(&text) {
                {
                    let mut t = track.lock().unwrap();
                    t.see(seq);
                    if cursor.is_some() {
                        t.cursor = cursor;
                    }
                }
                if slow {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                continue;
            }
            let Ok(v) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            if let Some(cursor) = v["cursor"].as_str() {
                track.lock().unwrap().cursor = Some(cursor.to_string());
            }
            if v["type"] == "connected" && !connected {
                connected = true;
                ctl.connected.fetch_add(1, Ordering::Relaxed);
                if v["recovered"] == false {
                    ctl.unrecovered.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if connected {
            ctl.connected.fetch_sub(1, Ordering::Relaxed);
        }
        ctl.reconnects.fetch_add(1, Ordering::Relaxed);
        let _ = ws.close(None).await;
    }
}

/// A cheap deterministic spread (no rand dependency): 0..max ms.
fn fastrand_ms(i: usize, attempt: usize, max: u64) -> u64 {
    let mut x =
        (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (attempt as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 31;
    x % max.max(1)
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Starts `n` clients over `rooms` rooms; slow ones read one event per 200 ms.
fn fleet(n: usize, rooms: usize, slow_every: usize, ctl: &Arc<Control>) -> Vec<Arc<Mutex<Track>>> {
    (0..n)
        .map(|i| {
            let track = Arc::new(Mutex::new(Track {
                room: i % rooms,
                ..Track::default()
            }));
            let slow = slow_every > 0 && i % slow_every == 1;
            tokio::spawn(follow(
                i,
                i % rooms,
                token(&format!("c{i}")),
                track.clone(),
                ctl.clone(),
                slow,
            ));
            track
        })
        .collect()
}

/// Lost and duplicated so far, over every client.
fn totals(tracks: &[Arc<Mutex<Track>>]) -> (u64, u64, u64) {
    tracks.iter().fold((0, 0, 0), |(g, l, d), t| {
        let t = t.lock().unwrap();
        (g + t.got, l + t.lost, d + t.dup)
    })
}

/// Publishes numbered room events at `rate` until stopped, pausing while `paused`; an event whose
/// write fails is written again (the producer loses nothing: any loss is the gateway's).
struct Publisher {
    published: Arc<AtomicU64>,
    paused: Arc<AtomicBool>,
    /// Set by the task when it saw `paused` with no send in flight.
    idle: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    /// Malformed records per 10 events (0 or 1).
    malformed: Arc<AtomicBool>,
    malformed_sent: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Publisher {
    fn start(brokers: &str, topic: &str, rooms: usize, rate: u64) -> Publisher {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("linger.ms", "1")
            .set("message.timeout.ms", "3000")
            .create()
            .unwrap();
        let (published, paused, stop) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let malformed = Arc::new(AtomicBool::new(false));
        let malformed_sent = Arc::new(AtomicU64::new(0));
        let idle = Arc::new(AtomicBool::new(false));
        let id = idle.clone();
        let (p, pa, st, ma, ms) = (
            published.clone(),
            paused.clone(),
            stop.clone(),
            malformed.clone(),
            malformed_sent.clone(),
        );
        let topic = topic.to_string();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
            let mut seq = 0u64;
            while !st.load(Ordering::Relaxed) {
                tick.tick().await;
                if pa.load(Ordering::Acquire) {
                    id.store(true, Ordering::Release);
                    continue;
                }
                id.store(false, Ordering::Release);
                let room = seq as usize % rooms;
                let key = format!("room:/bench-{room}");
                let value = json!({"event_type": "room.event", "to": {"room": format!("bench-{room}")},
                                   "data": {"seq": seq / rooms as u64, "sent_us": now_us()}})
                .to_string();
                // In order, one at a time: a retried event never overtakes the next one.
                loop {
                    let sent = producer
                        .send(
                            FutureRecord::to(&topic).key(&key).payload(&value),
                            Duration::from_secs(3),
                        )
                        .await;
                    if sent.is_ok() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                seq += 1;
                p.store(seq, Ordering::Relaxed);
                if ma.load(Ordering::Relaxed) && seq.is_multiple_of(10) {
                    let garbage = [
                        "{\"event_type\":",
                        "not json",
                        "{\"to\":{\"romm\":\"x\"},\"data\":{}}",
                        "\u{0}\u{1}",
                    ];
                    let bad = garbage[(seq / 10) as usize % garbage.len()];
                    let _ = producer
                        .send(
                            FutureRecord::to(&topic).key("junk").payload(bad),
                            Duration::from_secs(3),
                        )
                        .await;
                    ms.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Publisher {
            published,
            paused,
            idle,
            stop,
            malformed,
            malformed_sent,
            task,
        }
    }

    /// Pauses, and returns once no send is in flight (every event published so far is acked).
    async fn pause(&self) {
        self.idle.store(false, Ordering::Release);
        self.paused.store(true, Ordering::Release);
        while !self.idle.load(Ordering::Acquire) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        self.published.load(Ordering::Relaxed)
    }
}

fn high_watermark(brokers: &str, topic: &str) -> i64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "chaos-watermarks")
        .create()
        .unwrap();
    consumer
        .fetch_watermarks(topic, 0, Duration::from_secs(5))
        .map_or(0, |(_, high)| high)
}

/// Waits until every client received an event published at or after global sequence `from`
/// (its room's events come every `rooms / rate` seconds): the time since `since`, or None after
/// a minute. That is when every client receives live events again.
async fn live_again(tracks: &[Arc<Mutex<Track>>], rooms: usize, from: u64, since: Instant) -> Option<f64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let reached = tracks.iter().all(|tr| {
            let tr = tr.lock().unwrap();
            tr.next
                .is_some_and(|next| (next - 1) * rooms as u64 + tr.room as u64 >= from)
        });
        if reached {
            return Some(since.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// Waits until every client has its room's last event of `published` (or ten seconds passed):
/// what has not come by then is counted lost.
async fn settle(tracks: &[Arc<Mutex<Track>>], rooms: usize, published: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let done = tracks.iter().all(|tr| {
            let tr = tr.lock().unwrap();
            last_of_room(published, rooms, tr.room).is_none_or(|last| tr.next.is_some_and(|next| next > last))
        });
        if done {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every one of `n` clients is connected; the time it took, or None after `limit`.
async fn all_connected(ctl: &Control, n: usize, since: Instant, limit: Duration) -> Option<f64> {
    while since.elapsed() < limit {
        if ctl.connected.load(Ordering::Relaxed) >= n {
            return Some(since.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

fn rss_of(server: &Server) -> String {
    format!("{:.1} MiB", server.rss() as f64 / 1024.0)
}

/// `make chaos`.
pub async fn chaos(cfg: &Config) {
    let n = knob("BENCH_CHAOS_CLIENTS", 2000) as usize;
    let rooms = knob("BENCH_ROOMS", 100) as usize;
    // One partition (the broker restart pads its offsets back), which tansu serves one record
    // batch per fetch: about 150 records/s here, so the rate stays below that.
    let rate = knob("BENCH_CHAOS_RATE", 100);
    let phase = Duration::from_secs(knob("BENCH_CHAOS_PHASE_SECS", 10));
    let tansu = std::env::var("TANSU_BIN").expect("TANSU_BIN: run with `make chaos`");
    let mut broker = OwnBroker::new(tansu.into());
    broker.start().await;
    let cfg = Config {
        brokers: broker.addr(),
        connections: cfg.connections,
        fetch_wait: cfg.fetch_wait,
        concurrency: cfg.concurrency,
    };
    let topic = create_topic(&cfg.brokers, 1).await;
    // A broker outage is noticed and left as fast as the deployment's Kafka settings allow: the
    // metadata refresh (10 s by default) and librdkafka's reconnect backoff (up to 10 s by default)
    // bound the time to recover from a broker restart; these are what a deployment that wants
    // seconds sets.
    let env = [
        ("ROOMS_PUBLIC", "bench-*"),
        ("WRITE_TIMEOUT_SECS", "5"),
        ("KAFKA_METADATA_REFRESH_SECS", "1"),
        ("RDKAFKA_RECONNECT_BACKOFF_MAX_MS", "500"),
    ];
    let mut a = Server::start(&cfg, &topic, 4, &env).await;
    let b = Server::start(&cfg, &topic, 4, &env).await;
    let ctl = Arc::new(Control::default());
    *ctl.ports.lock().unwrap() = vec![a.port, b.port];
    println!(
        "\n[chaos] {n} clients (cursor, room, reconnect with backoff to the next replica) over 2 replicas, {rooms} rooms, {rate} events/s; each fault about {} s",
        phase.as_secs()
    );
    let publisher = Publisher::start(&cfg.brokers, &topic, rooms, rate);
    let tracks = fleet(n, rooms, 0, &ctl);
    let started = Instant::now();
    assert!(
        all_connected(&ctl, n, started, Duration::from_secs(60))
            .await
            .is_some(),
        "the fleet did not connect"
    );
    println!("  fleet connected in {:.2} s", started.elapsed().as_secs_f64());
    tokio::time::sleep(phase / 2).await;
    println!(
        "  {:<38} {:>6} {:>6} {:>10} {:>16} {:>16}",
        "fault", "lost", "dup", "recovered", "RSS A", "RSS B"
    );
    let mut before = totals(&tracks);
    let report =
        |name: &str, recovered: Option<f64>, a: &Server, b: &Server, before: &mut (u64, u64, u64)| {
            let now = totals(&tracks);
            let recovered = recovered.map_or("NO".to_string(), |s| format!("{s:.2} s"));
            println!(
                "  {name:<38} {:>6} {:>6} {recovered:>10} {:>16} {:>16}",
                now.1 - before.1,
                now.2 - before.2,
                rss_of(a),
                rss_of(b)
            );
            *before = now;
        };

    // 1. Malformed records at 10% of the producer rate.
    publisher.malformed.store(true, Ordering::Relaxed);
    tokio::time::sleep(phase).await;
    publisher.malformed.store(false, Ordering::Relaxed);
    report(
        "malformed records (10% of the rate)",
        Some(0.0),
        &a,
        &b,
        &mut before,
    );
    println!(
        "    {} malformed records written; the replicas counted {} and {} as skipped",
        publisher.malformed_sent.load(Ordering::Relaxed),
        a.counter("gateway_kafka_records_malformed").await,
        b.counter("gateway_kafka_records_malformed").await
    );

    // 2. 10% of the clients stop reading for longer than the write timeout.
    ctl.stall.store(true, Ordering::Relaxed);
    tokio::time::sleep(phase).await;
    let from = publisher.published.load(Ordering::Relaxed);
    let t = Instant::now();
    ctl.stall.store(false, Ordering::Relaxed);
    let recovered = live_again(&tracks, rooms, from, t).await;
    tokio::time::sleep(phase / 2).await;
    report(
        "10% of clients stalled, then reading",
        recovered,
        &a,
        &b,
        &mut before,
    );

    // 3. kill -9 of replica A; its clients go to B.
    let from = publisher.published.load(Ordering::Relaxed);
    let t = Instant::now();
    let _ = a.child.kill();
    let _ = a.child.wait();
    ctl.ports.lock().unwrap().retain(|p| *p != a.port);
    let recovered = live_again(&tracks, rooms, from, t).await;
    tokio::time::sleep(phase / 2).await;
    a = Server::start(&cfg, &topic, 4, &env).await;
    ctl.ports.lock().unwrap().push(a.port);
    report(
        "kill -9 of replica A (restarted after)",
        recovered,
        &a,
        &b,
        &mut before,
    );

    // 4. Broker restart. This tansu build keeps its log in memory only: the restart loses it, so
    // the topic is recreated and its offsets padded to where they stood, as a broker with durable
    // storage would come back. The producer waits meanwhile (its events are not lost, only later).
    publisher.pause().await;
    let high = high_watermark(&cfg.brokers, &topic);
    let t = Instant::now();
    broker.kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    broker.start().await;
    create_topic_retrying(&cfg.brokers, &topic, 1, Duration::from_secs(30)).await;
    let pad: FutureProducer = producer_lingering(&cfg.brokers, 5);
    let filler = json!({"event_type": "filler", "data": {}, "to": {"user": "nobody"}}).to_string();
    let sends = (0..high).map(|_| {
        pad.send(
            FutureRecord::to(&topic).key("nobody").payload(&filler),
            Duration::from_secs(10),
        )
    });
    for sent in futures_util::future::join_all(sends).await {
        sent.expect("pad");
    }
    let back = t.elapsed().as_secs_f64();
    let from = publisher.published.load(Ordering::Relaxed);
    publisher.paused.store(false, Ordering::Release);
    // Recovered: events published after the restart reach every client.
    let recovered = live_again(&tracks, rooms, from, t).await;
    tokio::time::sleep(phase / 2).await;
    report("broker restart (3 s down)", recovered, &a, &b, &mut before);
    println!("    the broker was back (restarted, topic recreated and padded) {back:.2} s after the kill");

    // 5. A reconnect storm: every client drops its socket and comes back at once.
    let from = publisher.published.load(Ordering::Relaxed);
    let t = Instant::now();
    ctl.storm.fetch_add(1, Ordering::Relaxed);
    let recovered = live_again(&tracks, rooms, from, t).await;
    tokio::time::sleep(phase / 2).await;
    report(
        "reconnect storm (all clients at once)",
        recovered,
        &a,
        &b,
        &mut before,
    );

    let published = publisher.finish().await;
    settle(&tracks, rooms, published).await;
    ctl.stop.store(true, Ordering::Relaxed);
    for (room, tr) in tracks.iter().enumerate().map(|(i, t)| (i % rooms, t)) {
        tr.lock().unwrap().finish(last_of_room(published, rooms, room));
    }
    let (got, lost, dup) = totals(&tracks);
    println!(
        "  in all: {published} events published, {got} received, lost {lost}, duplicated {dup} (target 0 and 0: {}); recovered:false {}; reconnects {}",
        crate::recovery::met(lost == 0 && dup == 0),
        ctl.unrecovered.load(Ordering::Relaxed),
        ctl.reconnects.load(Ordering::Relaxed)
    );
}

/// A soak sample: (seconds, RSS KiB, open fds, connections, consumer lag, history events).
type Sample = (f64, u64, u64, u64, u64, u64);

/// A soak series: its name, its value in a sample, the growth per minute allowed as a share of
/// its mean, and at least.
type Series<'a> = (&'a str, &'a dyn Fn(&Sample) -> f64, f64, f64);

/// `make soak DURATION=...`.
pub async fn soak(cfg: &Config) {
    let secs = knob("BENCH_SOAK_SECS", 300);
    let n = knob("BENCH_SOAK_CLIENTS", 2000) as usize;
    let rooms = knob("BENCH_ROOMS", 100) as usize;
    // 50 events/s and `make soak`'s fetch wait of 100 ms by default: tansu's in-memory log costs
    // it more CPU per fetch as it grows. At 200 events/s with 5 ms fetches the broker took a
    // full core after about 3 minutes, at 50 events/s after about 11, and the replica's
    // consumer lag grew from then on (the broker's ceiling, not the gateway's: it used 5% of a
    // core). Fewer fetches keep the broker below its ceiling for the whole soak.
    let rate = knob("BENCH_SOAK_RATE", 50);
    // Four partitions: tansu answers a fetch with one record batch per partition, and this
    // producer writes one record per batch, so one partition is read at about 150 records/s
    // (a fetch per `fetch.wait.max.ms` plus the round trip); the rooms' keys spread the load.
    let topic = create_topic(&cfg.brokers, 4).await;
    // A short history window, so the history reaches its bound early: the soak looks for leaks,
    // not for the history filling up to HISTORY_MAX_AGE_SECS.
    let server = Server::start(
        cfg,
        &topic,
        4,
        &[("ROOMS_PUBLIC", "bench-*"), ("HISTORY_MAX_AGE_SECS", "60")],
    )
    .await;
    let ctl = Arc::new(Control::default());
    *ctl.ports.lock().unwrap() = vec![server.port];
    ctl.churn_mean_secs.store(60, Ordering::Relaxed);
    println!(
        "\n[soak] {secs} s: {n} clients over {rooms} rooms (each reconnects with its cursor after a random life of 1 s to 2 min; 1 in 20 reads one event per 200 ms), {rate} events/s"
    );
    let publisher = Publisher::start(&cfg.brokers, &topic, rooms, rate);
    let tracks = fleet(n, rooms, 20, &ctl);
    let pid = server.child.id();
    let fds = || std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64);
    let started = Instant::now();
    let cpu_start = cpu_now(&server);
    let mut samples: Vec<Sample> = Vec::new();
    println!(
        "  {:>6} {:>10} {:>6} {:>8} {:>9} {:>10} {:>10}",
        "t (s)", "RSS KiB", "fds", "conns", "lag", "history", "reconnects"
    );
    while started.elapsed().as_secs() < secs {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let t = started.elapsed().as_secs_f64();
        let sample = (
            t,
            server.rss(),
            fds(),
            server.counter("gateway_connections ").await,
            server.counter("gateway_kafka_consumer_lag").await,
            server.counter("gateway_history_events").await,
        );
        if samples.len().is_multiple_of(12) {
            println!(
                "  {:>6.0} {:>10} {:>6} {:>8} {:>9} {:>10} {:>10}",
                sample.0,
                sample.1,
                sample.2,
                sample.3,
                sample.4,
                sample.5,
                ctl.reconnects.load(Ordering::Relaxed)
            );
        }
        samples.push(sample);
    }
    let cpu = cpu_now(&server);
    println!(
        "  CPU seconds            gateway {:.1}, load generator {:.1}, broker {:.1} in {secs} s",
        cpu.0 - cpu_start.0,
        cpu.1 - cpu_start.1,
        cpu.2 - cpu_start.2
    );
    let published = publisher.finish().await;
    // Let the replica read what was published last before counting what never came.
    let drained = Instant::now();
    while server.counter("gateway_kafka_consumer_lag").await > 0
        && drained.elapsed() < Duration::from_secs(60)
    {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    settle(&tracks, rooms, published).await;
    ctl.stop.store(true, Ordering::Relaxed);
    for (i, tr) in tracks.iter().enumerate() {
        tr.lock()
            .unwrap()
            .finish(last_of_room(published, rooms, i % rooms));
    }
    let (got, lost, dup) = totals(&tracks);
    // Growth over the second half: the least-squares slope, per minute, against the mean.
    let half: Vec<_> = samples[samples.len() / 2..].to_vec();
    let slope = |f: &dyn Fn(&Sample) -> f64| {
        let k = half.len() as f64;
        let mx = half.iter().map(|s| s.0).sum::<f64>() / k;
        let my = half.iter().map(f).sum::<f64>() / k;
        let cov: f64 = half.iter().map(|s| (s.0 - mx) * (f(s) - my)).sum();
        let var: f64 = half.iter().map(|s| (s.0 - mx).powi(2)).sum();
        let per_min = if var > 0.0 { cov / var * 60.0 } else { 0.0 };
        (per_min, my)
    };
    let mut failed = Vec::new();
    // (name, value, allowed growth per minute as a share of the mean, and at least)
    let series: [Series<'_>; 4] = [
        ("RSS (KiB)", &|s| s.1 as f64, 0.01, 256.0),
        ("open fds", &|s| s.2 as f64, 0.01, 2.0),
        ("consumer lag", &|s| s.4 as f64, 0.05, 50.0),
        ("history events", &|s| s.5 as f64, 0.01, 100.0),
    ];
    for (name, f, share, floor) in series {
        let (per_min, mean) = slope(f);
        // Growing: more than the allowed share of its mean per minute, and more than noise.
        let growing = per_min > (share * mean).max(floor) && half.len() >= 6;
        // A share of a mean near 0 (the lag) says nothing.
        let share_of_mean = if mean >= 1.0 {
            format!("{:+.2}% of the mean", per_min / mean * 100.0)
        } else {
            "mean under 1".to_string()
        };
        println!(
            "  {name:<15} second half: mean {mean:.0}, slope {per_min:+.1} per minute ({share_of_mean}){}",
            if growing { "  GROWING" } else { "" }
        );
        if growing {
            failed.push(name);
        }
    }
    println!(
        "  events: {published} published, {got} received; lost {lost}, duplicated {dup}; recovered:false {}; reconnects {}",
        ctl.unrecovered.load(Ordering::Relaxed),
        ctl.reconnects.load(Ordering::Relaxed)
    );
    if !failed.is_empty() || lost > 0 || dup > 0 {
        println!("  soak FAILED: {failed:?} lost {lost} dup {dup}");
        std::process::exit(1);
    }
    println!("  soak passed: nothing keeps growing, nothing lost or duplicated");
}
