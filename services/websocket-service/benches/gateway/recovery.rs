//! Recovery workloads.
//!
//! - `resume` (issue 9): N clients in R rooms on replica A; room events at a fixed rate. All of
//!   them drop their sockets at once, stay away long enough to miss about ten events each, and
//!   reconnect to replica B with their cursors (`since=`, and their room in the same request).
//!   Time until all have resumed, events lost and duplicated (every room numbers its events),
//!   live latency during the storm (observers connected to B throughout), and the memory the
//!   history takes per 100,000 events.
//! - `connect` (issue 15): time from dialling to the `connected` message for 1,000 sequential and
//!   200 parallel new connections.
//! - `seedkill` (issue 15): N clients that behave like the existing frontends (no cursor, join
//!   their room once, reconnect after every close after 1 s, 2 s, 4 s ...) on replica A, which is
//!   killed (SIGKILL) while events flow. They reconnect to replica B, which takes over their
//!   sessions (catch-up for cursor-less clients). Time from the kill until each receives again,
//!   events lost and duplicated.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::*;

/// What one client saw of its room's numbered events.
#[derive(Default, Clone)]
pub(crate) struct Track {
    pub(crate) room: usize,
    /// The next room sequence number expected (none before the first event).
    pub(crate) next: Option<u64>,
    pub(crate) got: u64,
    pub(crate) lost: u64,
    pub(crate) dup: u64,
    pub(crate) cursor: Option<String>,
}

impl Track {
    pub(crate) fn see(&mut self, seq: u64) {
        self.got += 1;
        match self.next {
            Some(next) if seq < next => self.dup += 1,
            Some(next) => {
                self.lost += seq - next;
                self.next = Some(seq + 1);
            }
            None => self.next = Some(seq + 1),
        }
    }

    /// After the last event of its room (`last`): what never came counts as lost.
    pub(crate) fn finish(&mut self, last: Option<u64>) {
        if let (Some(last), Some(next)) = (last, self.next) {
            self.lost += (last + 1).saturating_sub(next);
        }
    }
}

/// A room event as the clients see it: (room sequence, publish time, cursor).
pub(crate) fn room_event(text: &str) -> Option<(u64, u64, Option<String>)> {
    if !text.contains("\"room.event\"") {
        return None;
    }
    let v: Value = serde_json::from_str(text).ok()?;
    Some((
        v["data"]["seq"].as_u64()?,
        v["data"]["sent_us"].as_u64()?,
        v["cursor"].as_str().map(String::from),
    ))
}

/// Event `seq` of the run goes to room `seq % rooms` as that room's event `seq / rooms`.
pub(crate) fn publish_rooms(
    brokers: &str,
    topic: &str,
    rooms: usize,
    rate: u64,
    seconds: u64,
) -> tokio::task::JoinHandle<(u64, u64)> {
    let (brokers, topic) = (brokers.to_string(), topic.to_string());
    tokio::spawn(async move {
        publish_at_rate(
            &brokers,
            &topic,
            rate,
            seconds,
            (0..rooms).map(|r| format!("room:/bench-{r}")).collect(),
            |seq| format!("room:/bench-{}", seq as usize % rooms),
            |seq, sent| {
                let room = seq as usize % rooms;
                json!({"event_type": "room.event", "data": {"seq": seq / rooms as u64, "sent_us": sent},
                       "to": {"room": format!("bench-{room}")}})
                .to_string()
            },
        )
        .await
    })
}

/// The last room sequence number of each room after `published` events.
pub(crate) fn last_of_room(published: u64, rooms: usize, room: usize) -> Option<u64> {
    (published > room as u64).then(|| (published - 1 - room as u64) / rooms as u64)
}

pub(crate) async fn dial(url: &str) -> Option<Ws> {
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(4096);
    tokio_tungstenite::connect_async_with_config(url, Some(config), false)
        .await
        .ok()
        .map(|(ws, _)| ws)
}

pub(crate) fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted
        .get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0)
}

fn sum(tracks: &[Track]) -> (u64, u64, u64) {
    tracks
        .iter()
        .fold((0, 0, 0), |(g, l, d), t| (g + t.got, l + t.lost, d + t.dup))
}

pub(crate) fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT MET"
    }
}

/// Reads room events into a track until `stop`; latency samples of events go to `samples`.
async fn read_until(
    ws: &mut Ws,
    track: &mut Track,
    stop: &mut tokio::sync::watch::Receiver<bool>,
    mut on_event: impl FnMut(u64),
) {
    loop {
        tokio::select! {
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(text))) => {
                    if let Some((seq, sent, cursor)) = room_event(&text) {
                        track.see(seq);
                        if cursor.is_some() {
                            track.cursor = cursor;
                        }
                        on_event(sent);
                    }
                }
                Some(Ok(_)) => {}
                _ => return,
            },
            _ = stop.changed() => return,
        }
    }
}

/// Issue 9: a reconnect storm with cursors, across replicas.
// Each reconnect yields the task that then reads the session, on purpose.
#[allow(clippy::async_yields_async)]
pub async fn resume(cfg: &Config) {
    let n = cfg.connections;
    let rooms = knob("BENCH_ROOMS", 100) as usize;
    let rate = knob("BENCH_RATE", 200);
    let away = knob("BENCH_RESUME_AWAY_SECS", 5);
    let observers = rooms;
    let topic = create_topic(&cfg.brokers, 4).await;
    let env = [("ROOMS_PUBLIC", "bench-*")];
    let a = Server::start(cfg, &topic, 2, &env).await;
    let b = Server::start(cfg, &topic, 2, &env).await;
    println!(
        "\n[resume] {n} clients in {rooms} rooms drop at once and resume on another replica with their cursors; {rate} room events/s"
    );
    // The clients, on A, each in its room (joined in the request).
    let tokens: Vec<String> = (0..n).map(|i| token(&format!("r{i}"))).collect();
    let sockets: Vec<(usize, Ws, Option<String>)> = futures_util::stream::iter(0..n)
        .map(|i| {
            let url = format!(
                "ws://127.0.0.1:{}/ws?token={}&rooms=bench-{}",
                a.port,
                tokens[i],
                i % rooms
            );
            async move {
                let mut ws = dial(&url).await.expect("connect to A");
                // Its first resume position: where it started.
                let cursor = match ws.next().await {
                    Some(Ok(Message::Text(t))) if t.contains("\"connected\"") => {
                        serde_json::from_str::<Value>(&t).unwrap()["cursor"]
                            .as_str()
                            .map(String::from)
                    }
                    other => panic!("expected connected, got {other:?}"),
                };
                (i, ws, cursor)
            }
        })
        .buffer_unordered(cfg.concurrency)
        .collect()
        .await;
    // Observers on B, connected throughout: live latency while the storm hits B.
    let latency: Arc<Mutex<Vec<(u64, u64)>>> = Arc::default();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut observer_tasks = Vec::new();
    for r in 0..observers {
        let url = format!(
            "ws://127.0.0.1:{}/ws?token={}&rooms=bench-{}",
            b.port,
            token(&format!("observer{r}")),
            r % rooms
        );
        let mut ws = dial(&url).await.expect("observer");
        let _connected = ws.next().await;
        let (latency, mut stop) = (latency.clone(), stop_rx.clone());
        observer_tasks.push(tokio::spawn(async move {
            let mut track = Track::default();
            let mut samples = Vec::new();
            read_until(&mut ws, &mut track, &mut stop, |sent| {
                samples.push((sent, now_us().saturating_sub(sent)));
            })
            .await;
            latency.lock().unwrap().extend(samples);
        }));
    }
    // Phase 1: on A, reading.
    let (drop_tx, drop_rx) = tokio::sync::watch::channel(false);
    let readers: Vec<_> = sockets
        .into_iter()
        .map(|(i, mut ws, cursor)| {
            let mut drop = drop_rx.clone();
            tokio::spawn(async move {
                let mut track = Track {
                    room: i % rooms,
                    cursor,
                    ..Track::default()
                };
                read_until(&mut ws, &mut track, &mut drop, |_| {}).await;
                // Dropped without a close: the socket just goes.
                drop_socket(ws);
                (i, track)
            })
        })
        .collect();
    let warm = 3;
    let seconds = warm + away + 10;
    let publisher = publish_rooms(&cfg.brokers, &topic, rooms, rate, seconds);
    tokio::time::sleep(Duration::from_secs(1 + warm)).await;
    let _ = drop_tx.send(true);
    let mut tracks: Vec<(usize, Track)> = Vec::new();
    for r in readers {
        tracks.push(r.await.unwrap());
    }
    let without_cursor = tracks.iter().filter(|(_, t)| t.cursor.is_none()).count();
    tokio::time::sleep(Duration::from_secs(away)).await;
    // Phase 2: the storm, on B.
    let storm_start = now_us();
    let resumed_at: Arc<Mutex<Vec<u64>>> = Arc::default();
    let not_recovered = Arc::new(AtomicU64::new(0));
    let replayed_total = Arc::new(AtomicU64::new(0));
    let resumed: Vec<_> = futures_util::stream::iter(tracks)
        .map(|(i, track)| {
            let url = format!(
                "ws://127.0.0.1:{}/ws?token={}&rooms=bench-{}&since={}",
                b.port,
                tokens[i],
                track.room,
                track.cursor.clone().unwrap_or_default()
            );
            let (resumed_at, not_recovered, replayed_total, stop) = (
                resumed_at.clone(),
                not_recovered.clone(),
                replayed_total.clone(),
                stop_rx.clone(),
            );
            async move {
                let mut ws = dial(&url).await.expect("reconnect to B");
                let replayed = match ws.next().await {
                    Some(Ok(Message::Text(t))) => {
                        let v: Value = serde_json::from_str(&t).unwrap();
                        assert_eq!(v["type"], "connected", "{v}");
                        if v["recovered"] != true {
                            not_recovered.fetch_add(1, Ordering::Relaxed);
                        }
                        v["replayed"].as_u64().unwrap_or(0)
                    }
                    other => panic!("expected connected, got {other:?}"),
                };
                replayed_total.fetch_add(replayed, Ordering::Relaxed);
                if replayed == 0 {
                    resumed_at.lock().unwrap().push(now_us());
                }
                tokio::spawn(async move {
                    let (mut track, mut stop, mut left) = (track, stop, replayed);
                    read_until(&mut ws, &mut track, &mut stop, |_| {
                        if left > 0 {
                            left -= 1;
                            if left == 0 {
                                resumed_at.lock().unwrap().push(now_us());
                            }
                        }
                    })
                    .await;
                    track
                })
            }
        })
        .buffer_unordered(cfg.concurrency)
        .collect()
        .await;
    let reconnected_us = now_us() - storm_start;
    let deadline = Instant::now() + Duration::from_secs(30);
    while resumed_at.lock().unwrap().len() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all_resumed = resumed_at.lock().unwrap().iter().max().copied().unwrap_or(0);
    let (_, failed) = publisher.await.unwrap();
    let published = rate * seconds - failed;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = stop_tx.send(true);
    let mut finished = Vec::new();
    for task in resumed {
        let mut track = task.await.unwrap();
        track.finish(last_of_room(published, rooms, track.room));
        finished.push(track);
    }
    for task in observer_tasks {
        task.await.unwrap();
    }
    let (got, lost, dup) = sum(&finished);
    let mut storm: Vec<u64> = latency
        .lock()
        .unwrap()
        .iter()
        .filter(|(sent, _)| *sent >= storm_start && *sent <= all_resumed.max(storm_start))
        .map(|(_, l)| *l)
        .collect();
    storm.sort_unstable();
    let resumed_n = resumed_at.lock().unwrap().len();
    println!(
        "  missed while away      {} events each on average ({} clients had no cursor yet)",
        replayed_total.load(Ordering::Relaxed) / n.max(1) as u64,
        without_cursor
    );
    println!(
        "  reconnected            {n} in {:.2} s ({} in flight); all {} resumed {:.2} s after the first reconnect",
        reconnected_us as f64 / 1e6,
        cfg.concurrency,
        resumed_n,
        all_resumed.saturating_sub(storm_start) as f64 / 1e6
    );
    println!(
        "  recovered: false       {}   (target 0: {})",
        not_recovered.load(Ordering::Relaxed),
        met(not_recovered.load(Ordering::Relaxed) == 0)
    );
    println!(
        "  events                 {got} received; lost {lost} (target 0: {}), duplicated {dup} (target 0: {})",
        met(lost == 0),
        met(dup == 0)
    );
    println!(
        "  live latency in storm  p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms ({} deliveries to {observers} observers on B)",
        percentile(&storm, 0.5) as f64 / 1000.0,
        percentile(&storm, 0.99) as f64 / 1000.0,
        storm.last().copied().unwrap_or(0) as f64 / 1000.0,
        storm.len()
    );
    drop((a, b));
    history_memory(cfg).await;
}

/// Closes the TCP connection without a WebSocket close.
fn drop_socket(ws: Ws) {
    drop(ws);
}

/// RSS of a replica with no client before and after 100,000 events went into its history.
async fn history_memory(cfg: &Config) {
    let events = 100_000u64;
    let topic = create_topic(&cfg.brokers, 4).await;
    let server = Server::start(cfg, &topic, 2, &[]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = server.rss();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &cfg.brokers)
        .set("linger.ms", "20")
        .create()
        .unwrap();
    let mut pending = futures_util::stream::FuturesUnordered::new();
    for seq in 0..events {
        // A typical event: a task update of about 300 bytes.
        let user = format!("h{}", seq % 1000);
        let payload = json!({"event_type": "task.updated", "user_id": user,
            "task": {"id": seq, "title": "an ordinary task title", "status": "in_progress",
                     "assignee": "someone@example.com", "updated_at": "2026-12-01T10:00:00Z",
                     "description": "a short description of the task that is about this long"}})
        .to_string();
        let (producer, topic) = (producer.clone(), topic.clone());
        pending.push(async move {
            producer
                .send(
                    FutureRecord::to(&topic).key(&user).payload(&payload),
                    Duration::from_secs(60),
                )
                .await
                .is_ok()
        });
        while pending.len() >= 20_000 {
            pending.next().await;
        }
    }
    while pending.next().await.is_some() {}
    let deadline = Instant::now() + Duration::from_secs(120);
    while server.counter("gateway_kafka_records_consumed_total").await < events && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = server.rss();
    let held = server.counter("gateway_history_events").await;
    let bytes = server.counter("gateway_history_bytes").await;
    println!(
        "  history memory         {:.1} MiB RSS per 100,000 events of about 330 bytes ({held} held, {:.1} MiB counted by the history)",
        after.saturating_sub(before) as f64 / 1024.0 * 100_000.0 / held.max(1) as f64,
        bytes as f64 / 1048576.0
    );
}

/// Issue 15: how long a new connection takes to get its `connected` message.
pub async fn connect(cfg: &Config) {
    let topic = create_topic(&cfg.brokers, 1).await;
    let server = Server::start(cfg, &topic, 2, &[]).await;
    let sequential = knob("BENCH_CONNECT_SEQUENTIAL", 1000) as usize;
    let parallel = knob("BENCH_CONNECT_PARALLEL", 200) as usize;
    let port = server.port;
    let one = move |i: usize, tok: String| async move {
        let url = format!("ws://127.0.0.1:{port}/ws?token={tok}");
        let started = Instant::now();
        let mut ws = dial(&url).await.unwrap_or_else(|| panic!("connect {i}"));
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.contains("\"connected\"") => {}
            other => panic!("expected connected, got {other:?}"),
        }
        (started.elapsed().as_micros() as u64, ws)
    };
    let mut open = Vec::new();
    let mut seq_times = Vec::new();
    for i in 0..sequential {
        let (t, ws) = one(i, token(&format!("c{i}"))).await;
        seq_times.push(t);
        open.push(ws);
    }
    let tokens: Vec<String> = (0..parallel).map(|i| token(&format!("p{i}"))).collect();
    let par: Vec<(u64, Ws)> =
        futures_util::future::join_all(tokens.into_iter().enumerate().map(|(i, tok)| one(i, tok))).await;
    let mut par_times: Vec<u64> = par.iter().map(|(t, _)| *t).collect();
    seq_times.sort_unstable();
    par_times.sort_unstable();
    println!("\n[connect] time from dialling to the `connected` message (new connections, token verified)");
    for (label, times) in [
        (format!("{sequential} sequential"), &seq_times),
        (format!("{parallel} parallel"), &par_times),
    ] {
        let p99 = percentile(times, 0.99) as f64 / 1000.0;
        println!(
            "  {label:<22} p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms   (target < 500 ms: {})",
            percentile(times, 0.5) as f64 / 1000.0,
            p99,
            times.last().copied().unwrap_or(0) as f64 / 1000.0,
            met(p99 < 500.0)
        );
    }
}

/// Issue 15: a replica with seed-style clients is killed.
pub async fn seedkill(cfg: &Config) {
    let n = cfg.connections;
    let rooms = knob("BENCH_ROOMS", 100) as usize;
    let rate = knob("BENCH_RATE", 200);
    let topic = create_topic(&cfg.brokers, 4).await;
    let control = create_topic(&cfg.brokers, 1).await;
    let env = [
        ("ROOMS_PUBLIC", "bench-*"),
        ("GATEWAY_CONTROL_TOPIC", control.as_str()),
    ];
    let mut a = Server::start(cfg, &topic, 2, &env).await;
    let b = Server::start(cfg, &topic, 2, &env).await;
    println!(
        "\n[seedkill] {n} clients like the existing frontends (no cursor, room joined once, reconnect after 1 s, 2 s ...) on a replica that is killed; {rate} room events/s"
    );
    let target = Arc::new(AtomicU64::new(u64::from(a.port)));
    let killed_at = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let joined = Arc::new(tokio::sync::Semaphore::new(0));
    let gate = Arc::new(tokio::sync::Semaphore::new(cfg.concurrency));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let clients: Vec<_> = (0..n)
        .map(|i| {
            let tok = token(&format!("s{i}"));
            let room = i % rooms;
            let (target, killed_at, stop, joined, gate, mut stop_rx) = (
                target.clone(),
                killed_at.clone(),
                stop.clone(),
                joined.clone(),
                gate.clone(),
                stop_rx.clone(),
            );
            tokio::spawn(async move {
                let mut track = Track {
                    room,
                    ..Track::default()
                };
                let (mut retries, mut opened, mut again_us, mut gave_up) = (0u32, 0u32, None, false);
                let mut phases: (u64, u64) = (0, 0);
                while !stop.load(Ordering::Relaxed) {
                    let url = format!("ws://127.0.0.1:{}/ws?token={tok}", target.load(Ordering::Relaxed));
                    // Only the first connect of the run is paced, so the start does not overrun
                    // the listener; reconnects come as the frontends send them.
                    let permit = if opened == 0 {
                        gate.acquire().await.ok()
                    } else {
                        None
                    };
                    let ws = dial(&url).await;
                    if let Some(mut ws) = ws {
                        retries = 0;
                        opened += 1;
                        if opened == 2 {
                            phases.1 = now_us().saturating_sub(killed_at.load(Ordering::Relaxed));
                        }
                        if opened == 1 {
                            let join = json!({"type": "join_room", "room": format!("bench-{room}")});
                            let _ = ws.send(Message::text(join.to_string())).await;
                            while let Some(Ok(msg)) = ws.next().await {
                                if msg.to_text().is_ok_and(|t| t.contains("joined_room")) {
                                    break;
                                }
                            }
                            drop(permit);
                            joined.add_permits(1);
                        }
                        let reopened = opened > 1;
                        read_until(&mut ws, &mut track, &mut stop_rx, |_| {
                            if reopened && again_us.is_none() {
                                again_us = Some(now_us().saturating_sub(killed_at.load(Ordering::Relaxed)));
                            }
                        })
                        .await;
                    }
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    if opened == 1 && phases.0 == 0 {
                        phases.0 = now_us().saturating_sub(killed_at.load(Ordering::Relaxed));
                    }
                    if retries >= 5 {
                        gave_up = true;
                        break;
                    }
                    tokio::time::sleep(Duration::from_secs(1 << retries)).await;
                    retries += 1;
                }
                (track, again_us, gave_up, phases)
            })
        })
        .collect();
    let _ = joined.acquire_many(n as u32).await.expect("all joined");
    let seconds = 12;
    let publisher = publish_rooms(&cfg.brokers, &topic, rooms, rate, seconds);
    tokio::time::sleep(Duration::from_secs(4)).await;
    // The kill: the Service stops routing to A at the same moment.
    target.store(u64::from(b.port), Ordering::Relaxed);
    killed_at.store(now_us(), Ordering::Relaxed);
    let _ = a.child.kill();
    let _ = a.child.wait();
    let (_, failed) = publisher.await.unwrap();
    let published = rate * seconds - failed;
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let _ = stop_tx.send(true);
    let mut tracks = Vec::new();
    let mut again = Vec::new();
    let mut gave_up = 0;
    let (mut closed_at, mut opened_at) = (Vec::new(), Vec::new());
    for c in clients {
        let (mut track, again_us, g, phases) = c.await.unwrap();
        closed_at.push(phases.0);
        opened_at.push(phases.1);
        track.finish(last_of_room(published, rooms, track.room));
        tracks.push(track);
        again.extend(again_us);
        gave_up += u64::from(g);
    }
    again.sort_unstable();
    closed_at.sort_unstable();
    opened_at.sort_unstable();
    println!(
        "  after the kill         the client saw its socket close: p50 {:.2} s  p99 {:.2} s; reopened: p50 {:.2} s  p99 {:.2} s",
        percentile(&closed_at, 0.5) as f64 / 1e6,
        percentile(&closed_at, 0.99) as f64 / 1e6,
        percentile(&opened_at, 0.5) as f64 / 1e6,
        percentile(&opened_at, 0.99) as f64 / 1e6,
    );
    let (got, lost, dup) = sum(&tracks);
    let worst = again.last().copied().unwrap_or(0) as f64 / 1e6;
    println!(
        "  receiving again        {} of {n} clients; after the kill p50 {:.2} s  p99 {:.2} s  all {:.2} s   (target < 2 s per client: {})",
        again.len(),
        percentile(&again, 0.5) as f64 / 1e6,
        percentile(&again, 0.99) as f64 / 1e6,
        worst,
        met(again.len() == n && worst < 2.0)
    );
    println!(
        "  events                 {got} received; lost {lost} (target 0: {}), duplicated {dup} (target 0: {}); {gave_up} gave up",
        met(lost == 0),
        met(dup == 0)
    );
    println!(
        "  (a killed replica's clients replay from its last beat, CATCHUP_HEARTBEAT_MS: at least once; see README, Catch-up)"
    );
    drop(b);
}
