//! Fan-out workloads: `user`, `rooms`, `broadcast`, `skip`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::json;

use crate::*;

/// Per-user task events; also connects/s and memory per idle connection.
pub async fn user(cfg: &Config) -> Option<Figures> {
    let users = knob("BENCH_USERS", 100) as usize;
    let rate = knob("BENCH_RATE", 200);
    let seconds = knob("BENCH_SECONDS", 10);
    let n = cfg.connections;
    let topic = create_topic(&cfg.brokers, 4).await;
    let server = Server::start(cfg, &topic, n.div_ceil(users) + 1, &[]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_idle = server.rss();
    let (sockets, connect_secs) =
        connect_all(cfg, server.port, n, |i| format!("user-{}", i % users), |_| None).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_connected = server.rss();
    println!(
        "\n[user] {n} connections over {users} users ({} per user), task events to one user each",
        n / users
    );
    println!(
        "  connect rate           {:.0} connects/s ({n} in {connect_secs:.2} s, {} in flight)",
        n as f64 / connect_secs,
        cfg.concurrency
    );
    println!("  server RSS             idle {rss_idle} KiB, with connections {rss_connected} KiB");
    println!(
        "  RSS per idle connection {:.2} KiB",
        rss_connected.saturating_sub(rss_idle) as f64 / n as f64
    );
    if seconds == 0 {
        return None;
    }
    let seen = Arc::new(Seen::default());
    spawn_readers(sockets, seen.clone());
    let cpu_start = cpu_now(&server);
    let (first, failed) = publish_at_rate(
        &cfg.brokers,
        &topic,
        rate,
        seconds,
        (0..users).map(|u| format!("user-{u}")).collect(),
        |seq| format!("user-{}", seq as usize % users),
        |seq, sent| {
            json!({"event_type": "task.updated", "user_id": format!("user-{}", seq as usize % users),
                   "task": {"id": seq, "title": "benchmark task", "sent_us": sent}})
            .to_string()
        },
    )
    .await;
    let published = rate * seconds - failed;
    let run = Run {
        name: "user",
        first,
        published,
        rate,
        seconds,
        expected: published * (n / users) as u64,
        target_p99_ms: 25.0,
    };
    let f = collect(run, &server, cpu_start, &seen).await;
    println!("  server RSS under load  {} KiB", server.rss());
    print_figures(&f);
    Some(f)
}

/// Room events: every session in one of R rooms.
pub async fn rooms(cfg: &Config) -> Option<Figures> {
    let rooms = knob("BENCH_ROOMS", 100) as usize;
    let rate = knob("BENCH_RATE", 200);
    let seconds = knob("BENCH_SECONDS", 10).max(1);
    let n = cfg.connections;
    let topic = create_topic(&cfg.brokers, 4).await;
    let server = Server::start(cfg, &topic, 2, &[("ROOMS_PUBLIC", "bench-*")]).await;
    let (sockets, secs) = connect_all(
        cfg,
        server.port,
        n,
        |i| format!("u{i}"),
        |i| Some(format!("bench-{}", i % rooms)),
    )
    .await;
    println!(
        "\n[rooms] {n} sessions in {rooms} rooms ({} per room), room events",
        n / rooms
    );
    println!("  connect and join       {:.0} sessions/s", n as f64 / secs);
    let seen = Arc::new(Seen::default());
    spawn_readers(sockets, seen.clone());
    let cpu_start = cpu_now(&server);
    let (first, failed) = publish_at_rate(
        &cfg.brokers,
        &topic,
        rate,
        seconds,
        (0..rooms).map(|r| format!("room:/bench-{r}")).collect(),
        |seq| format!("room:/bench-{}", seq as usize % rooms),
        |seq, sent| {
            json!({"event_type": "room.event", "data": {"seq": seq, "sent_us": sent},
                   "to": {"room": format!("bench-{}", seq as usize % rooms)}})
            .to_string()
        },
    )
    .await;
    let published = rate * seconds - failed;
    let run = Run {
        name: "rooms",
        first,
        published,
        rate,
        seconds,
        expected: published * (n / rooms) as u64,
        target_p99_ms: 25.0,
    };
    let f = collect(run, &server, cpu_start, &seen).await;
    print_figures(&f);
    Some(f)
}

/// `all` broadcasts: every session receives every event.
pub async fn broadcast(cfg: &Config) -> Option<Figures> {
    let rate = knob("BENCH_BROADCAST_RATE", 10);
    let seconds = knob("BENCH_SECONDS", 10).max(1);
    let n = cfg.connections;
    let topic = create_topic(&cfg.brokers, 1).await;
    let server = Server::start(cfg, &topic, 2, &[]).await;
    let (sockets, _) = connect_all(cfg, server.port, n, |i| format!("u{i}"), |_| None).await;
    println!("\n[broadcast] {n} sessions, every event to all of them");
    let seen = Arc::new(Seen::default());
    spawn_readers(sockets, seen.clone());
    let cpu_start = cpu_now(&server);
    let (first, failed) = publish_at_rate(
        &cfg.brokers,
        &topic,
        rate,
        seconds,
        vec!["broadcast".into()],
        |_| "broadcast".into(),
        |seq, sent| {
            json!({"event_type": "announcement", "data": {"seq": seq, "sent_us": sent}, "to": {"all": true}})
                .to_string()
        },
    )
    .await;
    let published = rate * seconds - failed;
    let run = Run {
        name: "broadcast",
        first,
        published,
        rate,
        seconds,
        expected: published * n as u64,
        target_p99_ms: 100.0,
    };
    let f = collect(run, &server, cpu_start, &seen).await;
    print_figures(&f);
    Some(f)
}

/// Read and skip: E events for users connected nowhere, read from the log.
pub async fn skip(cfg: &Config) {
    let events = knob("BENCH_SKIP_EVENTS", 1_000_000);
    let partitions = knob("BENCH_SKIP_PARTITIONS", 4) as i32;
    let topic = create_topic(&cfg.brokers, partitions).await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &cfg.brokers)
        .set("linger.ms", "100")
        .set("batch.size", "4000000")
        .set("batch.num.messages", "100000")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap();
    let started = Instant::now();
    let mut pending = futures_util::stream::FuturesUnordered::new();
    for seq in 0..events {
        let user = format!("ghost-{}", seq % 10_000);
        let payload = if seq % 2 == 0 {
            json!({"event_type": "task.updated", "user_id": user, "task": {"id": seq, "title": "nobody reads this"}})
        } else {
            json!({"event_type": "ticket.updated", "data": {"id": seq}, "to": {"room": format!("room-{}", seq % 500)}})
        }
        .to_string();
        let producer = producer.clone();
        let topic = topic.clone();
        pending.push(async move {
            producer
                .send(
                    FutureRecord::to(&topic).key(&user).payload(&payload),
                    Duration::from_secs(60),
                )
                .await
                .is_ok()
        });
        // Bounded in flight, so the producer queue never overflows.
        while pending.len() >= 100_000 {
            pending.next().await;
        }
    }
    while pending.next().await.is_some() {}
    let produce_secs = started.elapsed().as_secs_f64();
    let server = Server::start(cfg, &topic, 2, &[("KAFKA_START_FROM", "earliest")]).await;
    let broker = broker_pid();
    let cpu_before = (cpu_secs(server.child.id()), broker.map_or(0.0, cpu_secs));
    let mut first_seen: Option<Instant> = None;
    let mut last = 0;
    let deadline = Instant::now() + Duration::from_secs(300);
    while Instant::now() < deadline {
        let consumed = server.counter("gateway_kafka_records_consumed_total").await;
        if consumed > 0 && first_seen.is_none() {
            first_seen = Some(Instant::now());
        }
        last = consumed;
        if consumed >= events {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let secs = first_seen.map_or(f64::NAN, |t| t.elapsed().as_secs_f64());
    println!("\n[skip] {events} events for nobody connected, read from the log ({partitions} partitions)");
    println!(
        "  written by the producer {:.0} events/s (setup, not a gateway figure)",
        events as f64 / produce_secs
    );
    println!(
        "  read and skipped       {last} in {secs:.2} s: {:.0} events/s   (target >= 200000: {})",
        last as f64 / secs,
        if last >= events && last as f64 / secs >= 200_000.0 {
            "met"
        } else {
            "NOT MET"
        }
    );
    let cpu = (
        cpu_secs(server.child.id()) - cpu_before.0,
        broker.map_or(0.0, cpu_secs) - cpu_before.1,
    );
    println!(
        "  CPU while reading      gateway {:.2} s ({:.2} µs per event), broker {:.2} s",
        cpu.0,
        cpu.0 * 1e6 / last.max(1) as f64,
        cpu.1
    );
    println!("  server RSS after       {} KiB", server.rss());
}
