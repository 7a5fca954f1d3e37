//! The direct Kafka source.
//!
//! Every replica must see every event (one user's tabs land on different replicas), so this
//! consumer joins no consumer group: it assigns itself every partition of the configured topics.
//! A shared group would split the events between replicas, which is the bug the seed apps shipped
//! with ("WORKERS=1 required"). Nothing is committed: the gateway starts live (at the end of each
//! partition as it is first seen) and keeps no position across restarts.
//!
//! A discovery task refreshes metadata every `KAFKA_METADATA_REFRESH_SECS`: it assigns topics and
//! partitions that appeared after start from the first record written since the replica started
//! (so nothing written to them before the refresh is missed, and no older history is replayed) and reports the source's health. librdkafka reconnects by itself when
//! brokers come and go.
//!
//! Readiness (see `health`): the source holds the replica back until its first assignment is
//! done; a later broker outage is reported as degraded, not unready.

use std::collections::{BTreeSet, HashMap, HashSet};

use futures_util::StreamExt as _;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::config::KafkaSettings;
use crate::health::Readiness;
use crate::hub::router::Router;
use crate::ingest::Origin;
use crate::telemetry::{partition_labels, Stats};

/// Its readiness part: gated from start until the replica has read the log up to where it stood.
pub const SOURCE: &str = "kafka";

/// Builds the librdkafka configuration: our defaults first, then the operator's pass-through
/// properties, which win.
pub fn client_config(settings: &KafkaSettings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &settings.brokers)
        .set("client.id", "websocket-service")
        // librdkafka only allows incremental (re)assignment with a group handle. This group is
        // never joined (no subscribe) and never committed to: it is unique so it can never be
        // shared, and it leaves nothing behind on the brokers.
        .set(
            "group.id",
            format!("websocket-service-{}", uuid::Uuid::new_v4().simple()),
        )
        // Positions are ours, never committed.
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // Only used when a position falls outside the log (retention, or a broker that lost its
        // data): then everything that is there is newer than what we saw.
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        // When a fetch brings more than `queued.min.messages` (a backlog, a burst, a replica
        // reading back), librdkafka waits this long before the next fetch of that partition;
        // its default (1 s) would stall delivery for a second after every big fetch. The
        // consume loop drains the queue as fast as it fills, so a short pause is enough.
        .set("fetch.queue.backoff.ms", "10")
        // What librdkafka prefetches ahead of the consume loop. Its default (64 MiB) sits on top
        // of the history (HISTORY_MAX_BYTES); 16 MiB still holds tens of thousands of events.
        .set("queued.max.messages.kbytes", "16384")
        .set_log_level(RDKafkaLogLevel::Warning);
    for (key, value) in &settings.properties {
        config.set(key, value);
    }
    config
}

/// A producer's configuration: idempotent, `acks=all`, each send bounded by `timeout`, plus the
/// operator's pass-through properties (security, SASL, TLS; consumer-only ones are ignored by
/// librdkafka with a notice, so its log level is errors only).
pub fn producer_config(
    settings: &crate::config::Settings,
    client_id: &str,
    timeout: Duration,
) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &settings.kafka.brokers)
        .set("client.id", client_id)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "1")
        .set("message.timeout.ms", timeout.as_millis().to_string())
        .set_log_level(RDKafkaLogLevel::Error);
    for (key, value) in &settings.kafka.properties {
        config.set(key, value);
    }
    config
}

/// Receives librdkafka's global errors ("all brokers down" makes the source not ready at once)
/// and its statistics, which carry each partition's consumer lag.
struct Context {
    readiness: Readiness,
    stats: Arc<Stats>,
}

impl ClientContext for Context {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            report(&self.readiness, format!("all brokers down: {reason}"));
        }
        tracing::warn!(%error, reason, "kafka client error");
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                // librdkafka's own consumer_lag counts from the committed offset, which this
                // consumer never has: the lag is the high watermark minus the next offset the
                // application will read. Partition -1 is librdkafka's internal one.
                if *partition >= 0 && p.hi_offset >= 0 && p.app_offset >= 0 {
                    self.stats
                        .metrics
                        .kafka_lag
                        .get_or_create(&partition_labels(topic, *partition))
                        .set((p.hi_offset - p.app_offset).max(0));
                }
            }
        }
    }
}

impl ConsumerContext for Context {}

type Gateway = StreamConsumer<Context>;

/// A problem of the source: it keeps the replica unready while the source has not caught up once
/// since start, and is reported as degraded afterwards.
fn report(readiness: &Readiness, reason: String) {
    readiness.problem(SOURCE, reason);
}

/// The running source: the consumer and its discovery task. The consume loop is started by the
/// caller under supervision (see [`Source::consume`]).
pub struct Source {
    consumer: Arc<Gateway>,
    backfill: Arc<Backfill>,
    pub discovery: tokio::task::JoinHandle<()>,
}

/// Creates the consumer and starts its discovery task, which stops when `shutdown` is cancelled.
pub fn start(
    settings: &KafkaSettings,
    history_age: Duration,
    router: Arc<Router>,
    stats: Arc<Stats>,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> anyhow::Result<Source> {
    readiness.gate(SOURCE, "connecting to brokers");
    let mut config = client_config(settings);
    // Lag comes from librdkafka's statistics; an operator's own interval wins.
    if !settings.properties.contains_key("statistics.interval.ms") {
        config.set(
            "statistics.interval.ms",
            (settings.metadata_refresh_secs * 1000).to_string(),
        );
    }
    let consumer: Arc<Gateway> = Arc::new(config.create_with_context(Context {
        readiness: readiness.clone(),
        stats,
    })?);
    let admin = if settings.create_topics {
        Some(client_config(settings).create::<AdminClient<DefaultClientContext>>()?)
    } else {
        None
    };
    let backfill = Arc::new(Backfill::new(readiness.clone()));
    let discovery = Discovery {
        consumer: consumer.clone(),
        admin,
        topics: settings.topics.clone(),
        refresh: Duration::from_secs(settings.metadata_refresh_secs),
        readiness,
        assigned: HashSet::new(),
        started: false,
        from_earliest: settings.start_from == "earliest",
        started_at_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
        history_age,
        router,
        backfill: backfill.clone(),
    };
    Ok(Source {
        consumer,
        backfill,
        discovery: tokio::spawn(discovery.run(shutdown)),
    })
}

impl Source {
    /// The consume loop, as a future that can be started again: a restarted loop goes on from
    /// the consumer's position, after the record that was being handled.
    pub fn consume(&self, router: Arc<Router>, shutdown: CancellationToken) -> crate::supervise::Restartable {
        let consumer = self.consumer.clone();
        let backfill = self.backfill.clone();
        Box::new(move || {
            Box::pin(consume(
                consumer.clone(),
                router.clone(),
                backfill.clone(),
                shutdown.clone(),
            ))
        })
    }
}

/// Reads records in partition order and routes each one; a bad record is counted and skipped.
/// Receive errors are retried with a growing pause (100 ms doubling to 5 s), so a broken broker
/// connection does not spin.
async fn consume(
    consumer: Arc<Gateway>,
    router: Arc<Router>,
    backfill: Arc<Backfill>,
    shutdown: CancellationToken,
) {
    let mut failures: u32 = 0;
    let mut partitions = PartitionStats::default();
    loop {
        let received = tokio::select! {
            () = shutdown.cancelled() => return,
            received = consumer.recv() => received,
        };
        let msg = match received {
            Ok(msg) => {
                failures = 0;
                msg
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                let pause = receive_backoff(failures);
                tracing::warn!(%error, failures, pause_ms = pause.as_millis() as u64, "kafka receive failed");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(pause) => continue,
                }
            }
        };
        partitions.record(router.stats(), msg.topic(), msg.partition(), msg.key().is_none());
        let origin = Origin::Kafka {
            topic: msg.topic(),
            partition: msg.partition(),
            offset: msg.offset(),
            timestamp_ms: msg.timestamp().to_millis(),
        };
        let deliver = backfill.delivers(msg.topic(), msg.partition(), msg.offset());
        // A malformed record is logged and counted inside; consumption goes on.
        let _ = router.route_bytes_as(msg.payload().unwrap_or_default(), origin, deliver);
    }
}

/// Per-partition bookkeeping of the consume loop, kept out of the per-record path: the counter of
/// each partition is looked up once, and keyless records are noticed.
#[derive(Default)]
struct PartitionStats {
    /// Topic -> each partition's consumed counter (by partition number).
    counters: HashMap<String, Vec<Option<prometheus_client::metrics::counter::Counter>>>,
    /// Topics known to have more than one partition (a record was read from partition > 0).
    multi: HashSet<String>,
    /// Topics already warned about keyless records.
    warned: HashSet<String>,
}

impl PartitionStats {
    fn record(&mut self, stats: &Stats, topic: &str, partition: i32, keyless: bool) {
        // The common case: the counter is known (no allocation, no label hashing).
        let index = usize::try_from(partition).unwrap_or(0);
        let known = self
            .counters
            .get(topic)
            .and_then(|by_partition| by_partition.get(index))
            .and_then(Option::as_ref);
        match known {
            Some(counter) => {
                counter.inc();
            }
            None => {
                let counter = stats.kafka_partition_counter(topic, partition);
                counter.inc();
                let by_partition = self.counters.entry(topic.to_string()).or_default();
                if by_partition.len() <= index {
                    by_partition.resize(index + 1, None);
                }
                by_partition[index] = Some(counter);
            }
        }
        stats.kafka_record_seen();
        if partition > 0 && !self.multi.contains(topic) {
            self.multi.insert(topic.to_string());
        }
        if keyless {
            stats.kafka_keyless(topic);
            // Keyless records on a topic of several partitions: one user's events may be spread
            // over partitions and arrive out of order.
            if self.multi.contains(topic) && self.warned.insert(topic.to_string()) {
                tracing::warn!(
                    topic,
                    "records without a key on a topic of several partitions: one user's events may \
                     arrive out of order. Key records by user (the publisher crate does; Dapr \
                     publishers: add ?metadata.partitionKey=<user id>)"
                );
            }
        }
    }
}

/// The pause after `failures` receive errors in a row.
fn receive_backoff(failures: u32) -> Duration {
    let ms = 100u64.saturating_mul(1 << failures.saturating_sub(1).min(6));
    Duration::from_millis(ms.min(5_000))
}

/// Keeps the assignment equal to "every partition of every configured topic".
struct Discovery {
    consumer: Arc<Gateway>,
    admin: Option<AdminClient<DefaultClientContext>>,
    topics: Vec<String>,
    refresh: Duration,
    readiness: Readiness,
    /// Partitions assigned so far; never unassigned (a topic that vanishes comes back).
    assigned: HashSet<(String, i32)>,
    /// Whether the first metadata round succeeded: what it found is read live, whatever appears
    /// after it (a topic or a partition) is read from the replica's start time.
    started: bool,
    /// When the replica started (Unix ms).
    started_at_ms: i64,
    /// `KAFKA_START_FROM=earliest`: what is seen at start is read from its beginning.
    from_earliest: bool,
    /// How far back the history is read at start (`HISTORY_MAX_AGE_SECS`; zero: not at all).
    history_age: Duration,
    router: Arc<Router>,
    backfill: Arc<Backfill>,
}

impl Discovery {
    async fn run(mut self, shutdown: CancellationToken) {
        let mut created = false;
        loop {
            if !created {
                created = self.create_topics().await;
            }
            match self.refresh_once().await {
                Ok(missing) => {
                    // Caught up once the history read back at start is done (the consume loop
                    // opens the gate then) or right away when there is none.
                    if self.backfill.done() {
                        self.readiness.open(SOURCE);
                    }
                    if missing.is_empty() {
                        self.readiness.recover(SOURCE);
                    } else {
                        self.readiness
                            .degrade(SOURCE, format!("topic not found: {}", missing.join(", ")));
                    }
                }
                Err(reason) => report(&self.readiness, reason),
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(self.refresh) => {}
            }
        }
    }

    /// For local runs: creates missing topics once. Returns whether that is done.
    async fn create_topics(&self) -> bool {
        let Some(admin) = &self.admin else { return true };
        let topics: Vec<NewTopic<'_>> = self
            .topics
            .iter()
            .map(|t| NewTopic::new(t, 1, TopicReplication::Fixed(1)))
            .collect();
        match admin.create_topics(&topics, &AdminOptions::new()).await {
            Ok(results) => {
                for result in results {
                    match result {
                        Ok(topic) => tracing::info!(topic, "kafka topic created"),
                        Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => {
                            tracing::debug!(topic, "kafka topic exists")
                        }
                        Err((topic, code)) => tracing::warn!(topic, %code, "kafka topic not created"),
                    }
                }
                true
            }
            Err(error) => {
                tracing::warn!(%error, "kafka topic creation failed; will retry");
                false
            }
        }
    }

    /// One metadata round: assigns new partitions. Returns the topics that were not found, or
    /// why the round failed.
    async fn refresh_once(&mut self) -> Result<Vec<String>, String> {
        let consumer = self.consumer.clone();
        let topics = self.topics.clone();
        let timeout = self.refresh.min(Duration::from_secs(5));
        // Metadata calls block: keep them off the async workers.
        let found = tokio::task::spawn_blocking(move || partitions_of(&consumer, &topics, timeout))
            .await
            .map_err(|e| format!("metadata task failed: {e}"))??;

        let (new, missing) = plan(&self.topics, &found, &self.assigned, self.started);
        if !new.is_empty() {
            self.assign(new).await?;
        }
        self.started = true;
        Ok(missing)
    }

    async fn assign(&mut self, new: Vec<(String, i32, bool)>) -> Result<(), String> {
        // Where each new partition is read from, and from where its events are delivered:
        // - first seen at start: delivered live, from the high watermark read now (not
        //   `Offset::End`, which librdkafka resolves later: a record produced in between would
        //   be skipped); read from `HISTORY_MAX_AGE_SECS` ago, so the history holds the recent
        //   log from the first minute (those records go to the history only);
        // - first seen after start (a topic created later, a partition added, a topic whose
        //   metadata failed in the first round): read and delivered from the first record
        //   written since the replica started (minus a clock margin), so nothing written to it
        //   since is missed and nothing older (up to the topic's retention) is replayed;
        // - `KAFKA_START_FROM=earliest`: everything, delivered.
        let timeout = self.refresh.min(Duration::from_secs(5));
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let at_start: Vec<(String, i32)> = new.iter().filter(|n| !n.2).map(|n| (n.0.clone(), n.1)).collect();
        let late: Vec<(String, i32)> = new.iter().filter(|n| n.2).map(|n| (n.0.clone(), n.1)).collect();
        let lookup = |partitions: Vec<(String, i32)>, since_ms: i64| {
            let consumer = self.consumer.clone();
            async move {
                if partitions.is_empty() {
                    return Ok(HashMap::new());
                }
                tokio::task::spawn_blocking(move || offsets_since(&consumer, &partitions, since_ms, timeout))
                    .await
                    .map_err(|e| format!("offset lookup task failed: {e}"))?
            }
        };
        let late_from = lookup(late, self.started_at_ms - START_MARGIN.as_millis() as i64).await?;
        if self.from_earliest {
            // The whole log is read: the history is complete (until it evicts).
            self.router.history().complete_since(0);
        }
        let history_from = if self.history_age.is_zero() || self.from_earliest {
            HashMap::new()
        } else {
            let since = now_ms - self.history_age.as_millis() as i64;
            let found = lookup(at_start, since).await?;
            self.router.history().complete_since(since.max(0) as u64);
            found
        };
        let consumer = self.consumer.clone();
        let watermarks: Vec<Result<(String, i32, i64, i64), String>> =
            futures_util::stream::iter(new.iter().cloned())
                .map(|(topic, partition, _)| {
                    let consumer = consumer.clone();
                    async move {
                        tokio::task::spawn_blocking(move || {
                            consumer
                                .fetch_watermarks(&topic, partition, timeout)
                                .map(|(low, high)| (topic.clone(), partition, low, high))
                                .map_err(|e| format!("watermarks of {topic}/{partition}: {e}"))
                        })
                        .await
                        .map_err(|e| format!("watermark task failed: {e}"))?
                    }
                })
                .buffer_unordered(16)
                .collect()
                .await;
        let mut tpl = TopicPartitionList::new();
        let mut plans = Vec::new();
        for w in watermarks {
            let (topic, partition, low, high) = w?;
            let key = (topic.clone(), partition);
            let late =
                late_from.contains_key(&key) || new.iter().any(|n| n.0 == topic && n.1 == partition && n.2);
            let (read_from, deliver_from) = if late {
                let from = late_from.get(&key).copied().unwrap_or(high);
                (from, from)
            } else if self.from_earliest {
                (low, low)
            } else {
                (history_from.get(&key).copied().unwrap_or(high).min(high), high)
            };
            tpl.add_partition_offset(&topic, partition, Offset::Offset(read_from))
                .map_err(|e| e.to_string())?;
            plans.push((topic, partition, late, read_from, deliver_from));
        }
        for (topic, partition, _, read_from, deliver_from) in &plans {
            self.router.start_partition(topic, *partition, *read_from);
            self.backfill.expect(topic, *partition, *read_from, *deliver_from);
        }
        self.consumer
            .incremental_assign(&tpl)
            .map_err(|e| format!("assign failed: {e}"))?;
        for (topic, partition, late, read_from, deliver_from) in plans {
            tracing::info!(
                topic,
                partition,
                from_start = late,
                read_from,
                deliver_from,
                "kafka partition assigned"
            );
            self.assigned.insert((topic, partition));
        }
        Ok(())
    }
}

/// Which records are read back into the history only (those before where delivery starts), and
/// whether the read-back at start is done: the source holds the replica unready until it is.
pub struct Backfill {
    /// (topic, partition) -> the first offset delivered live, while records before it remain.
    pending: parking_lot::Mutex<HashMap<(String, i32), i64>>,
    /// Quick check for the consume loop: nothing pending.
    idle: std::sync::atomic::AtomicBool,
    readiness: Readiness,
}

impl Backfill {
    fn new(readiness: Readiness) -> Self {
        Backfill {
            pending: parking_lot::Mutex::new(HashMap::new()),
            idle: std::sync::atomic::AtomicBool::new(true),
            readiness,
        }
    }

    /// Partition `topic/partition` is read from `read_from`, delivered from `deliver_from`.
    fn expect(&self, topic: &str, partition: i32, read_from: i64, deliver_from: i64) {
        if deliver_from > read_from {
            self.pending
                .lock()
                .insert((topic.to_string(), partition), deliver_from);
            self.idle.store(false, std::sync::atomic::Ordering::Release);
        }
    }

    /// Whether a record is delivered (`false`: read back into the history only). Opens the
    /// readiness gate when the last read-back completes.
    fn delivers(&self, topic: &str, partition: i32, offset: i64) -> bool {
        if self.idle.load(std::sync::atomic::Ordering::Acquire) {
            return true;
        }
        let mut pending = self.pending.lock();
        let key = (topic.to_string(), partition);
        let Some(deliver_from) = pending.get(&key).copied() else {
            return true;
        };
        if offset + 1 >= deliver_from {
            pending.remove(&key);
            if pending.is_empty() {
                self.idle.store(true, std::sync::atomic::Ordering::Release);
                tracing::info!("kafka history read back");
                self.readiness.open(SOURCE);
            }
        }
        offset >= deliver_from
    }

    /// Whether the read-back at start is done.
    fn done(&self) -> bool {
        self.idle.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// Clock margin when a partition first seen after start is read from the replica's start time:
/// producers' clocks may run a little behind ours.
const START_MARGIN: Duration = Duration::from_secs(5);

/// The first offset of each partition whose record timestamp is at or after `since_ms` (one
/// ListOffsets request for all of them). A partition with no such record is left out: it is
/// then read from its high watermark, which is the same place.
fn offsets_since(
    consumer: &Gateway,
    partitions: &[(String, i32)],
    since_ms: i64,
    timeout: Duration,
) -> Result<HashMap<(String, i32), i64>, String> {
    let mut tpl = TopicPartitionList::new();
    for (topic, partition) in partitions {
        tpl.add_partition_offset(topic, *partition, Offset::Offset(since_ms))
            .map_err(|e| e.to_string())?;
    }
    let found = consumer
        .offsets_for_times(tpl, timeout)
        .map_err(|e| format!("offsets by time: {e}"))?;
    let mut offsets = HashMap::new();
    for element in found.elements() {
        if let Offset::Offset(offset) = element.offset() {
            if offset >= 0 && element.error().is_ok() {
                offsets.insert((element.topic().to_string(), element.partition()), offset);
            }
        }
    }
    Ok(offsets)
}

/// What one metadata round means: partitions to assign, each with whether to read it from the
/// beginning (anything first seen after the first round, `started`) or live, and the topics that
/// were not found.
fn plan(
    topics: &[String],
    found: &BTreeSet<(String, i32)>,
    assigned: &HashSet<(String, i32)>,
    started: bool,
) -> (Vec<(String, i32, bool)>, Vec<String>) {
    let mut new = Vec::new();
    let mut missing = Vec::new();
    for topic in topics {
        let mut any = false;
        for (_, partition) in found.iter().filter(|(t, _)| t == topic) {
            any = true;
            if !assigned.contains(&(topic.clone(), *partition)) {
                new.push((topic.clone(), *partition, started));
            }
        }
        if !any {
            missing.push(topic.clone());
        }
    }
    (new, missing)
}

/// (topic, partition) pairs the brokers report for `topics`.
fn partitions_of(
    consumer: &Gateway,
    topics: &[String],
    timeout: Duration,
) -> Result<BTreeSet<(String, i32)>, String> {
    let mut found = BTreeSet::new();
    for topic in topics {
        let metadata = consumer
            .fetch_metadata(Some(topic), timeout)
            .map_err(|e| format!("metadata request failed: {e}"))?;
        for t in metadata.topics() {
            if t.error().is_some() {
                continue;
            }
            for p in t.partitions() {
                found.insert((t.name().to_string(), p.id()));
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(pairs: &[(&str, i32)]) -> BTreeSet<(String, i32)> {
        pairs.iter().map(|(t, p)| (t.to_string(), *p)).collect()
    }

    #[test]
    fn first_round_is_live_everything_later_from_the_start() {
        let topics = vec!["a".to_string(), "b".to_string()];
        let mut assigned = HashSet::new();

        // First round: a has two partitions, b does not exist yet.
        let (new, missing) = plan(&topics, &set(&[("a", 0), ("a", 1)]), &assigned, false);
        assert_eq!(new, vec![("a".into(), 0, false), ("a".into(), 1, false)]);
        assert_eq!(missing, vec!["b".to_string()]);
        for (t, p, _) in new {
            assigned.insert((t, p));
        }

        // Next round: a grew a partition, b appeared: both read from their beginning.
        let found = set(&[("a", 0), ("a", 1), ("a", 2), ("b", 0)]);
        let (new, missing) = plan(&topics, &found, &assigned, true);
        assert_eq!(new, vec![("a".into(), 2, true), ("b".into(), 0, true)]);
        assert!(missing.is_empty());
    }

    #[test]
    fn a_vanished_topic_keeps_its_assignment_and_is_reported() {
        let topics = vec!["a".to_string()];
        let assigned: HashSet<_> = [("a".to_string(), 0)].into();
        let (new, missing) = plan(&topics, &BTreeSet::new(), &assigned, true);
        assert!(new.is_empty());
        assert_eq!(missing, vec!["a".to_string()]);
    }

    #[test]
    fn receive_errors_back_off() {
        let pauses: Vec<u64> = (1..=9).map(|n| receive_backoff(n).as_millis() as u64).collect();
        assert_eq!(pauses, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
    }
}
