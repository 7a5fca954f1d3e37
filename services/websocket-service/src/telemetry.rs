//! Logging set-up, the service's counters, and the Prometheus metrics served at `/metrics`.
//!
//! Each noteworthy event has one method here that logs it, counts it and updates its metric
//! together, so the log and the figure never drift apart.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tracing_subscriber::EnvFilter;

use crate::auth::AuthError;

/// Installs the global tracing subscriber: `RUST_LOG` filters (default `info`), `format` is
/// `text` or `json`.
pub fn init_logging(format: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let result = if format == "json" {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
    // Already installed (tests start several gateways in one process): keep the first.
    let _ = result;
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    pub topic: String,
    pub partition: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub status: String,
}

/// The exported metrics (Prometheus conventions: base units, `_total` on counters, which the
/// encoder appends).
pub struct Metrics {
    pub registry: Registry,
    pub connections: Gauge,
    pub connected_users: Gauge,
    pub ready: Gauge,
    pub sessions_closed: Family<ReasonLabels, Counter>,
    pub connections_rejected: Family<ReasonLabels, Counter>,
    pub catchups: Family<ReasonLabels, Counter>,
    pub history_events: Gauge,
    pub history_bytes: Gauge,
    pub catchup_sessions: Gauge,
    pub messages_delivered: Counter,
    pub messages_dropped: Family<ReasonLabels, Counter>,
    pub slow_client_disconnects: Counter,
    pub kafka_consumed: Family<PartitionLabels, Counter>,
    pub kafka_malformed: Family<PartitionLabels, Counter>,
    pub kafka_lag: Family<PartitionLabels, Gauge>,
    pub dapr_deliveries: Family<StatusLabels, Counter>,
    pub auth_failures: Family<ReasonLabels, Counter>,
    pub delivery_latency: Histogram,
    pub degraded: Family<PartLabels, Gauge>,
    pub api_publish: Family<ResultLabels, Counter>,
    pub kafka_keyless: Family<TopicLabels, Counter>,
    pub task_restarts: Family<TaskLabels, Counter>,
    pub presence_online_users: Gauge,
    pub presence_transitions: Family<KindLabels, Counter>,
    pub presence_records: Counter,
    pub revocations: Gauge,
    pub revoked_sessions: Counter,
    pub disconnected_sessions: Counter,
    pub rate_limited: Family<KindLabels, Counter>,
    pub state_keys: Gauge,
    pub state_unchanged: Counter,
    pub state_conflated: Counter,
    pub state_snapshot_messages: Counter,
    pub rpc_calls: Family<RpcLabels, Counter>,
    pub rpc_duration: Family<BackendLabels, Histogram>,
    pub rpc_replies: Family<ResultLabels, Counter>,
    pub client_publishes: Family<ResultLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    pub backend: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    pub backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabels {
    pub topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartLabels {
    pub part: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabels {
    pub task: String,
}

impl Default for Metrics {
    fn default() -> Self {
        let m = Metrics {
            registry: Registry::with_prefix("gateway"),
            connections: Gauge::default(),
            connected_users: Gauge::default(),
            ready: Gauge::default(),
            sessions_closed: Family::default(),
            connections_rejected: Family::default(),
            catchups: Family::default(),
            history_events: Gauge::default(),
            history_bytes: Gauge::default(),
            catchup_sessions: Gauge::default(),
            messages_delivered: Counter::default(),
            messages_dropped: Family::default(),
            slow_client_disconnects: Counter::default(),
            kafka_consumed: Family::default(),
            kafka_malformed: Family::default(),
            kafka_lag: Family::default(),
            dapr_deliveries: Family::default(),
            auth_failures: Family::default(),
            // 1 ms .. ~16 s.
            delivery_latency: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            degraded: Family::default(),
            api_publish: Family::default(),
            kafka_keyless: Family::default(),
            task_restarts: Family::default(),
            presence_online_users: Gauge::default(),
            presence_transitions: Family::default(),
            presence_records: Counter::default(),
            revocations: Gauge::default(),
            revoked_sessions: Counter::default(),
            disconnected_sessions: Counter::default(),
            rate_limited: Family::default(),
            state_keys: Gauge::default(),
            state_unchanged: Counter::default(),
            state_conflated: Counter::default(),
            state_snapshot_messages: Counter::default(),
            rpc_calls: Family::default(),
            rpc_duration: Family::new_with_constructor(|| {
                Histogram::new([
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                ])
            }),
            rpc_replies: Family::default(),
            client_publishes: Family::default(),
        };
        let mut m = m;
        let r = &mut m.registry;
        r.register(
            "connections",
            "Open sessions (WebSocket, SSE streams and waiting polls)",
            m.connections.clone(),
        );
        r.register(
            "connected_users",
            "Users with at least one open session",
            m.connected_users.clone(),
        );
        r.register(
            "ready",
            "1 when every configured source works (what /ready answers)",
            m.ready.clone(),
        );
        r.register(
            "sessions_closed",
            "Sessions closed, by reason",
            m.sessions_closed.clone(),
        );
        r.register(
            "connections_rejected",
            "Upgrades refused by a limit or a drain, by reason",
            m.connections_rejected.clone(),
        );
        r.register(
            "catchups",
            "Cursor-less sessions that took over an earlier one (reason: here, elsewhere: the \
             replica that served it), or that could not be remembered (unrecorded: \
             CATCHUP_MAX_SESSIONS)",
            m.catchups.clone(),
        );
        r.register(
            "history_events",
            "Events held in the history (what resumes and catch-up read)",
            m.history_events.clone(),
        );
        r.register(
            "history_bytes",
            "Approximate bytes held in the history",
            m.history_bytes.clone(),
        );
        r.register(
            "catchup_sessions",
            "Sessions of cursor-less clients remembered, open and ended, cluster-wide",
            m.catchup_sessions.clone(),
        );
        r.register(
            "messages_delivered",
            "Messages written to sessions",
            m.messages_delivered.clone(),
        );
        r.register(
            "messages_dropped",
            "Messages not delivered, by reason",
            m.messages_dropped.clone(),
        );
        r.register(
            "slow_client_disconnects",
            "Sessions closed as slow consumers (4008): behind the history window, writes stuck, or a full queue without history",
            m.slow_client_disconnects.clone(),
        );
        r.register(
            "kafka_records_consumed",
            "Kafka records read",
            m.kafka_consumed.clone(),
        );
        r.register(
            "kafka_records_malformed",
            "Kafka records skipped as not a task event",
            m.kafka_malformed.clone(),
        );
        r.register(
            "kafka_consumer_lag",
            "Records behind the partition's high watermark",
            m.kafka_lag.clone(),
        );
        r.register(
            "dapr_deliveries",
            "Dapr deliveries, by answer",
            m.dapr_deliveries.clone(),
        );
        r.register(
            "auth_failures",
            "Upgrades refused for a bad token, by reason",
            m.auth_failures.clone(),
        );
        r.register(
            "degraded",
            "1 for each part that works badly although the replica is ready (see /ready)",
            m.degraded.clone(),
        );
        r.register(
            "kafka_records_keyless",
            "Records without a key (one user's events may be spread over partitions)",
            m.kafka_keyless.clone(),
        );
        r.register(
            "api_publish_events",
            "Events handled by POST /api/publish, by result (per request for refusals)",
            m.api_publish.clone(),
        );
        r.register(
            "task_restarts",
            "Background tasks restarted after a panic",
            m.task_restarts.clone(),
        );
        r.register(
            "presence_online_users",
            "Users online in the whole cluster, as this replica sees it (per workspace counted apart)",
            m.presence_online_users.clone(),
        );
        r.register(
            "presence_transitions",
            "Users that came online or went offline cluster-wide (kind: online, offline)",
            m.presence_transitions.clone(),
        );
        r.register(
            "presence_records_written",
            "Presence records this replica wrote to the control topic",
            m.presence_records.clone(),
        );
        r.register(
            "revocations",
            "Revocations in force (by user or jti)",
            m.revocations.clone(),
        );
        r.register(
            "revoked_sessions",
            "Sessions of this replica closed by a revocation (4001)",
            m.revoked_sessions.clone(),
        );
        r.register(
            "disconnected_sessions",
            "Sessions of this replica closed by POST /api/disconnect",
            m.disconnected_sessions.clone(),
        );
        r.register(
            "rate_limited",
            "Rate limits hit (kind: message, a client message refused; message_close, a session \
             closed for it; connect, a connection refused)",
            m.rate_limited.clone(),
        );
        r.register(
            "state_keys",
            "State keys held (the latest value per key and audience)",
            m.state_keys.clone(),
        );
        r.register(
            "state_unchanged",
            "State events not delivered: identical to the value held (compare-before-send)",
            m.state_unchanged.clone(),
        );
        r.register(
            "state_conflated",
            "State values not written to a session because a newer value of the key came first",
            m.state_conflated.clone(),
        );
        r.register(
            "state_snapshot_messages",
            "State values sent as snapshots (at connect, join, subscribe, or a resume that could not recover)",
            m.state_snapshot_messages.clone(),
        );
        r.register(
            "rpc_calls",
            "RPC calls from clients, by backend (http, kafka, none) and result (ok or the error code)",
            m.rpc_calls.clone(),
        );
        r.register(
            "rpc_duration_seconds",
            "RPC calls from clients: time from the call to the backend's answer, by backend",
            m.rpc_duration.clone(),
        );
        r.register(
            "rpc_replies",
            "RPC answers read from the log: answered (a call here waited for it), no_waiter, malformed",
            m.rpc_replies.clone(),
        );
        r.register(
            "client_publishes",
            "Room publications from clients, by result (published or the error code)",
            m.client_publishes.clone(),
        );
        r.register_with_unit(
            "delivery_latency",
            "From the event's timestamp to its hand-off to the sessions' queues",
            prometheus_client::registry::Unit::Seconds,
            m.delivery_latency.clone(),
        );
        m
    }
}

pub fn partition_labels(topic: &str, partition: i32) -> PartitionLabels {
    PartitionLabels {
        topic: topic.to_string(),
        partition: partition.to_string(),
    }
}

pub fn reason(reason: &str) -> ReasonLabels {
    ReasonLabels {
        reason: reason.to_string(),
    }
}

/// Gauges read from the state at scrape time.
pub struct Snapshot {
    pub connections: usize,
    pub users: usize,
    pub history_events: usize,
    pub history_bytes: usize,
    pub catchup_sessions: usize,
    pub online_users: usize,
    pub revocations: usize,
    pub state_keys: usize,
}

/// Counters since start, read by tests and the benchmark, and the exported metrics.
#[derive(Default)]
pub struct Stats {
    pub metrics: Metrics,
    /// Upgrades refused for a bad token (closed with 4001).
    pub auth_failures: AtomicU64,
    /// Sessions closed as slow consumers (4008).
    pub slow_client_disconnects: AtomicU64,
    /// Kafka records read.
    pub records_consumed: AtomicU64,
    /// Records or deliveries skipped as not a task event, from any source.
    pub records_malformed: AtomicU64,
    /// Events not delivered again: their id was seen within the de-duplication window.
    pub duplicates: AtomicU64,
    /// Background tasks restarted after a panic.
    pub task_restarts: AtomicU64,
}

impl Stats {
    pub fn auth_failed(&self, error: &AuthError, peer: Option<&str>) {
        self.auth_failures.fetch_add(1, Relaxed);
        self.metrics
            .auth_failures
            .get_or_create(&reason(error.label()))
            .inc();
        tracing::info!(reason = error.label(), peer, "websocket auth failed");
    }

    /// A record or delivery that is not a task event: counted, logged with where it came from.
    pub fn event_malformed(&self, origin: &crate::ingest::Origin<'_>, error: &dyn std::fmt::Display) {
        self.records_malformed.fetch_add(1, Relaxed);
        match *origin {
            crate::ingest::Origin::Kafka {
                topic,
                partition,
                offset,
                ..
            } => {
                self.metrics
                    .kafka_malformed
                    .get_or_create(&partition_labels(topic, partition))
                    .inc();
                tracing::warn!(topic, partition, offset, %error, "malformed kafka record skipped")
            }
            crate::ingest::Origin::Dapr {
                topic,
                partition,
                offset,
                ..
            } => {
                tracing::warn!(topic, partition, offset, %error, "malformed dapr event dropped")
            }
            crate::ingest::Origin::Api => tracing::info!(%error, "invalid event refused by the publish API"),
        }
    }

    /// Events handled by `POST /api/publish`, by outcome (written, delivered_locally, invalid,
    /// unauthorized, too_large, broker_failed).
    pub fn api_publish(&self, result: &str, count: u64) {
        self.metrics
            .api_publish
            .get_or_create(&ResultLabels {
                result: result.to_string(),
            })
            .inc_by(count);
    }

    pub fn slow_client(&self, user_id: &str) {
        self.slow_client_disconnects.fetch_add(1, Relaxed);
        self.metrics.slow_client_disconnects.inc();
        tracing::warn!(user_id, "slow client disconnected (4008)");
    }

    /// The consumed-records counter of one partition (cheap to clone: the consume loop keeps
    /// it, so the per-record path does no label lookup).
    pub fn kafka_partition_counter(&self, topic: &str, partition: i32) -> Counter {
        self.metrics
            .kafka_consumed
            .get_or_create(&partition_labels(topic, partition))
            .clone()
    }

    pub fn kafka_record_seen(&self) {
        self.records_consumed.fetch_add(1, Relaxed);
    }

    /// A record without a key (from Kafka, or a Dapr delivery without `__key`).
    pub fn kafka_keyless(&self, topic: &str) {
        self.metrics
            .kafka_keyless
            .get_or_create(&TopicLabels {
                topic: topic.to_string(),
            })
            .inc();
    }

    pub fn task_restarted(&self, task: &str, panic: &str, pause: Duration) {
        self.task_restarts.fetch_add(1, Relaxed);
        self.metrics
            .task_restarts
            .get_or_create(&TaskLabels {
                task: task.to_string(),
            })
            .inc();
        tracing::error!(
            task,
            panic,
            pause_ms = pause.as_millis() as u64,
            "background task panicked; restarting"
        );
    }

    pub fn session_closed(&self, why: &str) {
        self.metrics.sessions_closed.get_or_create(&reason(why)).inc();
    }

    pub fn connection_rejected(&self, why: &str) {
        self.metrics
            .connections_rejected
            .get_or_create(&reason(why))
            .inc();
    }

    pub fn presence_transition(&self, online: bool) {
        let kind = if online { "online" } else { "offline" };
        self.metrics
            .presence_transitions
            .get_or_create(&KindLabels { kind: kind.into() })
            .inc();
    }

    /// Presence records written so far (the cluster task reports them every period).
    pub fn presence_records(&self, records_written: u64) {
        let counted = self.metrics.presence_records.get();
        self.metrics
            .presence_records
            .inc_by(records_written.saturating_sub(counted));
    }

    pub fn revoked_sessions(&self, count: usize) {
        if count > 0 {
            tracing::info!(count, "sessions closed: token revoked");
        }
        self.metrics.revoked_sessions.inc_by(count as u64);
    }

    pub fn disconnected_sessions(&self, count: usize) {
        if count > 0 {
            tracing::info!(count, "sessions closed by a disconnect order");
        }
        self.metrics.disconnected_sessions.inc_by(count as u64);
    }

    /// An RPC call ended: `backend` (`http`, `kafka`, `none` for one refused before any backend
    /// was asked) and its result: `ok`, the gateway's error code, or `backend_code` for a code
    /// of the backend's own (not a label value: their number is unbounded).
    pub fn rpc_call(&self, backend: &str, result: &str, took: std::time::Duration) {
        let result = if result == "ok" || crate::upstream::GATEWAY_CODES.contains(&result) {
            result
        } else {
            "backend_code"
        };
        self.metrics
            .rpc_calls
            .get_or_create(&RpcLabels {
                backend: backend.to_string(),
                result: result.to_string(),
            })
            .inc();
        if backend != "none" {
            self.metrics
                .rpc_duration
                .get_or_create(&BackendLabels {
                    backend: backend.to_string(),
                })
                .observe(took.as_secs_f64());
        }
    }

    /// An RPC answer read from the log.
    pub fn rpc_reply(&self, taken: crate::hub::replies::Taken) {
        use crate::hub::replies::Taken;
        let result = match taken {
            Taken::Answered => "answered",
            Taken::NoWaiter => "no_waiter",
            Taken::Malformed => "malformed",
        };
        self.metrics
            .rpc_replies
            .get_or_create(&ResultLabels {
                result: result.to_string(),
            })
            .inc();
    }

    /// A client publication: `published` or the error code the client got.
    pub fn client_publish(&self, result: &str) {
        self.metrics
            .client_publishes
            .get_or_create(&ResultLabels {
                result: result.to_string(),
            })
            .inc();
    }

    /// A rate limit hit: `message` (a client message refused), `message_close` (a session
    /// closed for it), `publish` or `connect`.
    pub fn rate_limited(&self, kind: &str) {
        self.metrics
            .rate_limited
            .get_or_create(&KindLabels { kind: kind.into() })
            .inc();
    }

    pub fn state_unchanged(&self) {
        self.metrics.state_unchanged.inc();
    }

    pub fn state_conflated(&self) {
        self.metrics.state_conflated.inc();
    }

    pub fn state_snapshot(&self, count: usize) {
        self.metrics.state_snapshot_messages.inc_by(count as u64);
    }

    pub fn catchup(&self, how: &str) {
        self.metrics.catchups.get_or_create(&reason(how)).inc();
    }

    pub fn message_delivered(&self) {
        self.metrics.messages_delivered.inc();
    }

    pub fn messages_dropped(&self, why: &str, count: u64) {
        self.metrics
            .messages_dropped
            .get_or_create(&reason(why))
            .inc_by(count);
    }

    pub fn duplicate(&self) {
        self.duplicates.fetch_add(1, Relaxed);
        self.messages_dropped("duplicate", 1);
    }

    pub fn dapr_answer(&self, status: &str) {
        self.metrics
            .dapr_deliveries
            .get_or_create(&StatusLabels {
                status: status.to_string(),
            })
            .inc();
    }

    /// Publish-to-deliver: from when the event happened to now.
    pub fn observe_latency(&self, at: Option<SystemTime>) {
        let Some(at) = at else { return };
        if let Ok(age) = SystemTime::now().duration_since(at) {
            // An event older than a day is a replay or a bad clock, not latency.
            if age < Duration::from_secs(86_400) {
                self.metrics.delivery_latency.observe(age.as_secs_f64());
            }
        }
    }

    /// The metrics in the OpenMetrics text format.
    pub fn encode(&self, now: &Snapshot, health: &crate::health::Report) -> String {
        self.metrics.connections.set(now.connections as i64);
        self.metrics.connected_users.set(now.users as i64);
        self.metrics.history_events.set(now.history_events as i64);
        self.metrics.history_bytes.set(now.history_bytes as i64);
        self.metrics.catchup_sessions.set(now.catchup_sessions as i64);
        self.metrics.presence_online_users.set(now.online_users as i64);
        self.metrics.revocations.set(now.revocations as i64);
        self.metrics.state_keys.set(now.state_keys as i64);
        self.metrics.ready.set(i64::from(health.ready));
        // Parts that recovered read 0, not their last value.
        self.metrics.degraded.clear();
        for part in health.degraded.keys() {
            self.metrics
                .degraded
                .get_or_create(&PartLabels {
                    part: part.to_string(),
                })
                .set(1);
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.metrics.registry);
        out
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Relaxed)
    }
}
