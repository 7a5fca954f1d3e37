//! The direct Kafka source.
//!
//! Every replica must see every event (one user's tabs land on different replicas), so this
//! consumer joins no consumer group: it assigns itself every partition of the configured topics.
//! A shared group would split the events between replicas, which is the bug the seed apps shipped
//! with ("WORKERS=1 required"). Nothing is committed: the gateway starts live (at the end of each
//! partition as it is first seen) and keeps no position across restarts.
//!
//! A discovery task refreshes metadata every `KAFKA_METADATA_REFRESH_SECS`: it assigns partitions
//! that appeared (from their beginning, so nothing written to a new partition is missed) and keeps
//! `/ready` truthful. librdkafka reconnects by itself when brokers come and go.

use std::collections::{BTreeSet, HashSet};
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
use crate::router::{Origin, Router};
use crate::telemetry::{partition_labels, Stats};

const SOURCE: &str = "kafka";

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
        .set_log_level(RDKafkaLogLevel::Warning);
    for (key, value) in &settings.properties {
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
            self.readiness
                .set_not_ready(SOURCE, format!("all brokers down: {reason}"));
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

/// Starts the consumer and its discovery task; both stop when `shutdown` is cancelled.
pub fn start(
    settings: &KafkaSettings,
    router: Arc<Router>,
    stats: Arc<Stats>,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    readiness.set_not_ready(SOURCE, "connecting to brokers");
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
    let discovery = Discovery {
        consumer: consumer.clone(),
        admin,
        topics: settings.topics.clone(),
        refresh: Duration::from_secs(settings.metadata_refresh_secs),
        readiness,
        assigned: HashSet::new(),
        seen_topics: HashSet::new(),
    };
    Ok(vec![
        tokio::spawn(discovery.run(shutdown.clone())),
        tokio::spawn(consume(consumer, router, shutdown)),
    ])
}

/// Reads records in partition order and routes each one; a bad record is counted and skipped.
async fn consume(consumer: Arc<Gateway>, router: Arc<Router>, shutdown: CancellationToken) {
    loop {
        let received = tokio::select! {
            () = shutdown.cancelled() => return,
            received = consumer.recv() => received,
        };
        let msg = match received {
            Ok(msg) => msg,
            Err(error) => {
                tracing::warn!(%error, "kafka receive failed");
                continue;
            }
        };
        router.record_consumed(msg.topic(), msg.partition());
        let origin = Origin::Kafka {
            topic: msg.topic(),
            partition: msg.partition(),
            offset: msg.offset(),
            timestamp_ms: msg.timestamp().to_millis(),
        };
        // A malformed record is logged and counted inside; consumption goes on.
        let _ = router.route_bytes(msg.payload().unwrap_or_default(), origin);
    }
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
    /// Topics whose partitions were seen once: later partitions are new and read from the start.
    seen_topics: HashSet<String>,
}

impl Discovery {
    async fn run(mut self, shutdown: CancellationToken) {
        let mut created = false;
        loop {
            if !created {
                created = self.create_topics().await;
            }
            match self.refresh_once().await {
                Ok(()) => self.readiness.set_ready(SOURCE),
                Err(reason) => {
                    tracing::warn!(reason, "kafka source not ready");
                    self.readiness.set_not_ready(SOURCE, reason);
                }
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

    /// One metadata round: assigns new partitions. `Err` says why the source is not ready.
    async fn refresh_once(&mut self) -> Result<(), String> {
        let consumer = self.consumer.clone();
        let topics = self.topics.clone();
        let timeout = self.refresh.min(Duration::from_secs(5));
        // Metadata calls block: keep them off the async workers.
        let found = tokio::task::spawn_blocking(move || partitions_of(&consumer, &topics, timeout))
            .await
            .map_err(|e| format!("metadata task failed: {e}"))??;

        let (new, missing) = plan(&self.topics, &found, &self.assigned, &self.seen_topics);
        if !new.is_empty() {
            self.assign(new).await?;
        }
        if !missing.is_empty() {
            return Err(format!("topic not found: {}", missing.join(", ")));
        }
        Ok(())
    }

    async fn assign(&mut self, new: Vec<(String, i32, bool)>) -> Result<(), String> {
        let consumer = self.consumer.clone();
        let planned = new.clone();
        // A partition of a topic seen before is new: read it from the beginning. Otherwise start
        // live, at the high watermark read now (not `Offset::End`, which librdkafka resolves
        // later: a record produced in between would be skipped).
        let tpl = tokio::task::spawn_blocking(move || -> Result<TopicPartitionList, String> {
            let mut tpl = TopicPartitionList::new();
            for (topic, partition, from_start) in &planned {
                let offset = if *from_start {
                    Offset::Beginning
                } else {
                    let (_, high) = consumer
                        .fetch_watermarks(topic, *partition, Duration::from_secs(5))
                        .map_err(|e| format!("watermarks of {topic}/{partition}: {e}"))?;
                    Offset::Offset(high)
                };
                tpl.add_partition_offset(topic, *partition, offset)
                    .map_err(|e| e.to_string())?;
            }
            Ok(tpl)
        })
        .await
        .map_err(|e| format!("assignment task failed: {e}"))??;
        self.consumer
            .incremental_assign(&tpl)
            .map_err(|e| format!("assign failed: {e}"))?;
        for (topic, partition, from_start) in new {
            tracing::info!(topic, partition, from_start, "kafka partition assigned");
            self.seen_topics.insert(topic.clone());
            self.assigned.insert((topic, partition));
        }
        Ok(())
    }
}

/// What one metadata round means: partitions to assign, each with whether to read it from the
/// beginning (a new partition of a topic seen before) or live, and the topics that were not found.
fn plan(
    topics: &[String],
    found: &BTreeSet<(String, i32)>,
    assigned: &HashSet<(String, i32)>,
    seen_topics: &HashSet<String>,
) -> (Vec<(String, i32, bool)>, Vec<String>) {
    let mut new = Vec::new();
    let mut missing = Vec::new();
    for topic in topics {
        let mut any = false;
        for (_, partition) in found.iter().filter(|(t, _)| t == topic) {
            any = true;
            if !assigned.contains(&(topic.clone(), *partition)) {
                new.push((topic.clone(), *partition, seen_topics.contains(topic)));
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
    fn first_sight_is_live_later_partitions_from_the_start() {
        let topics = vec!["a".to_string(), "b".to_string()];
        let mut assigned = HashSet::new();
        let mut seen = HashSet::new();

        // First round: a has two partitions, b does not exist yet.
        let (new, missing) = plan(&topics, &set(&[("a", 0), ("a", 1)]), &assigned, &seen);
        assert_eq!(new, vec![("a".into(), 0, false), ("a".into(), 1, false)]);
        assert_eq!(missing, vec!["b".to_string()]);
        for (t, p, _) in new {
            seen.insert(t.clone());
            assigned.insert((t, p));
        }

        // Next round: a grew a partition (read from its beginning), b appeared (live).
        let found = set(&[("a", 0), ("a", 1), ("a", 2), ("b", 0)]);
        let (new, missing) = plan(&topics, &found, &assigned, &seen);
        assert_eq!(new, vec![("a".into(), 2, true), ("b".into(), 0, false)]);
        assert!(missing.is_empty());
    }

    #[test]
    fn a_vanished_topic_keeps_its_assignment_and_is_reported() {
        let topics = vec!["a".to_string()];
        let assigned: HashSet<_> = [("a".to_string(), 0)].into();
        let seen: HashSet<_> = ["a".to_string()].into();
        let (new, missing) = plan(&topics, &BTreeSet::new(), &assigned, &seen);
        assert!(new.is_empty());
        assert_eq!(missing, vec!["a".to_string()]);
    }
}
