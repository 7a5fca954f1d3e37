//! State workload (issue 11): K keys change R times a second each (state events to everyone)
//! while S sessions read slowly (one message per pause) and F read at full speed; once the
//! publishing ends the slow ones read what is left at full speed. Memory per session, whether every
//! reader ends with the last published value of every key, how much conflation spared the slow
//! ones, and the fast readers' publish-to-deliver latency.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::recovery::met;
use crate::*;

/// What one reader ended with: the last version per key, and messages read.
#[derive(Default)]
struct Reader {
    last: HashMap<u64, u64>,
    read: u64,
}

pub async fn state(cfg: &Config) {
    let keys = knob("BENCH_STATE_KEYS", 50);
    let per_key = knob("BENCH_STATE_RATE", 100);
    let slow = knob("BENCH_STATE_SLOW", 1000) as usize;
    let fast = knob("BENCH_STATE_FAST", 10) as usize;
    let seconds = knob("BENCH_SECONDS", 10).max(1);
    let slow_every = Duration::from_millis(knob("BENCH_STATE_SLOW_MS", 100));
    let topic = create_topic(&cfg.brokers, 1).await;
    // Small kernel send buffers: what a slow reader has not taken waits in the history, where a
    // newer value replaces an older one, instead of megabytes of stale values in its socket.
    let server = Server::start(cfg, &topic, 2, &[("SOCKET_SEND_BUFFER_BYTES", "65536")]).await;
    println!(
        "\n[state] {keys} keys x {per_key} changes/s ({} state events/s to everyone); {slow} sessions reading one message every {} ms, {fast} at full speed; SOCKET_SEND_BUFFER_BYTES=65536",
        keys * per_key,
        slow_every.as_millis()
    );
    let rss_idle = server.rss();
    let port = server.port;
    let open = |n: usize, prefix: &'static str| async move {
        let (sockets, _) = connect_all(cfg, port, n, |i| format!("{prefix}{i}"), |_| None).await;
        sockets
    };
    let slow_sockets = open(slow, "slow").await;
    let fast_sockets = open(fast, "fast").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_connected = server.rss();
    let latencies: Arc<Mutex<Vec<u32>>> = Arc::default();
    let done = Arc::new(AtomicU64::new(0));
    let spawn = |ws: Ws, pause: Option<Duration>| {
        let (latencies, done) = (latencies.clone(), done.clone());
        tokio::spawn(async move {
            let mut ws = ws;
            let mut reader = Reader::default();
            let mut mine = Vec::new();
            // Reads until nothing has come for 3 s after the publishing ended.
            loop {
                let next = tokio::time::timeout(Duration::from_secs(3), ws.next()).await;
                let Ok(Some(Ok(Message::Text(text)))) = next else {
                    if done.load(Ordering::Relaxed) > 0 {
                        break;
                    }
                    continue;
                };
                let Ok(msg) = serde_json::from_str::<Value>(&text) else {
                    continue;
                };
                if msg["type"] != "metric" {
                    continue;
                }
                let data = &msg["data"];
                let (k, v) = (data["k"].as_u64().unwrap_or(0), data["v"].as_u64().unwrap_or(0));
                reader.last.insert(k, v);
                reader.read += 1;
                if pause.is_none() && msg.get("snapshot").is_none() {
                    let sent = data["sent_us"].as_u64().unwrap_or(0);
                    mine.push(now_us().saturating_sub(sent) as u32);
                }
                // Slow while the values change; once publishing ended it reads what is left at
                // full speed (a stalled client that resumes).
                if let (Some(pause), 0) = (pause, done.load(Ordering::Relaxed)) {
                    tokio::time::sleep(pause).await;
                }
            }
            latencies.lock().unwrap().extend(mine);
            reader
        })
    };
    let slow_tasks: Vec<_> = slow_sockets
        .into_iter()
        .map(|ws| spawn(ws, Some(slow_every)))
        .collect();
    let fast_tasks: Vec<_> = fast_sockets.into_iter().map(|ws| spawn(ws, None)).collect();
    let started = Instant::now();
    let cpu_start = cpu_now(&server);
    let rate = keys * per_key;
    let (_, failed) = publish_at_rate(
        &cfg.brokers,
        &topic,
        rate,
        seconds,
        (0..keys).map(|k| format!("state:broadcast:k{k}")).collect(),
        |seq| format!("state:broadcast:k{}", seq % keys),
        |seq, now| {
            json!({
                "event_type": "metric",
                "key": format!("k{}", seq % keys),
                "data": {"k": seq % keys, "v": seq / keys, "sent_us": now},
                "to": {"all": true},
            })
            .to_string()
        },
    )
    .await;
    let published = rate * seconds;
    let publish_secs = started.elapsed().as_secs_f64();
    let rss_loaded = server.rss();
    let cpu_end = cpu_now(&server);
    done.store(1, Ordering::Relaxed);
    let expected: HashMap<u64, u64> = (0..keys).map(|k| (k, (published - 1 - k) / keys)).collect();
    let mut exact = 0;
    let mut slow_read = 0;
    for task in slow_tasks {
        let reader = task.await.unwrap();
        slow_read += reader.read;
        exact += usize::from(reader.last == expected);
    }
    let mut fast_exact = 0;
    for task in fast_tasks {
        fast_exact += usize::from(task.await.unwrap().last == expected);
    }
    let mut lat = latencies.lock().unwrap().clone();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    let per_session = |rss: u64| (rss.saturating_sub(rss_idle)) as f64 / (slow + fast) as f64;
    println!("  published              {published} state events in {publish_secs:.1} s ({failed} failed)");
    println!(
        "  server RSS per session  {:.1} KiB connected, {:.1} KiB under load   (bounded: the history is shared; a slow session holds at most its queue)",
        per_session(rss_connected),
        per_session(rss_loaded)
    );
    println!(
        "  last value of every key slow readers {exact} of {slow}, fast readers {fast_exact} of {fast}   (target: all: {})",
        met(exact == slow && fast_exact == fast)
    );
    println!(
        "  slow readers read      {:.0} messages each on average, of {published} published (the rest conflated)",
        slow_read as f64 / slow.max(1) as f64
    );
    println!(
        "  CPU seconds while publishing gateway {:.2}, load generator {:.2}, broker {:.2}",
        cpu_end.0 - cpu_start.0,
        cpu_end.1 - cpu_start.1,
        cpu_end.2 - cpu_start.2
    );
    let p99 = pct(0.99);
    println!(
        "  fast readers           publish-to-deliver p50 {:.2} ms  p99 {p99:.2} ms  max {:.2} ms ({} deliveries)   (target p99 <= 25 ms: {})",
        pct(0.5),
        lat.last().copied().unwrap_or(0) as f64 / 1000.0,
        lat.len(),
        met(p99 <= 25.0)
    );
}
