//! websocket-service: events from Kafka (or a Dapr sidecar, or a backend's HTTP call) pushed to
//! the sessions of their audience, over WebSocket, Server-Sent Events or long polling.
//!
//! # Layout
//! An event flows one way: [`ingest`] -> [`hub`] -> [`transport`].
//!
//! - [`ingest`]: where events come from: [`ingest::kafka`] (every partition, no consumer
//!   group), [`ingest::dapr`] (subscription discovery, delivery route, app token),
//!   [`ingest::publish`] (the HTTP publish API) and [`ingest::control`] (the state the replicas
//!   share through the control topic).
//! - [`hub`]: who receives what: [`hub::registry`] (sessions, mailboxes, limits),
//!   [`hub::router`] (event -> message -> mailboxes), [`hub::history`] and [`hub::cursor`]
//!   (recent events and resume positions), [`hub::handoff`] (catch-up for cursor-less
//!   clients), [`hub::memberships`] (user-scoped rooms), [`hub::presence`] (who is online,
//!   cluster-wide), [`hub::revocations`] (revoked tokens), [`hub::dedup`] (one event, one
//!   delivery).
//! - [`transport`]: how it reaches the client: [`transport::admission`] (one admission for every
//!   transport), [`transport::feed`] (what a session writes next: its queue, the history),
//!   [`transport::ws`], [`transport::sse`], [`transport::poll`], [`transport::refusals`].
//! - [`upstream`]: what clients send to backends: RPC calls (HTTP or Kafka backends), legacy
//!   request types, room publications through Kafka.
//! - [`protocol`]: the messages on the socket and the close codes.
//! - [`auth`]: JWT verification (HS256 secret, PEM public key, or JWKS), algorithm pinned.
//! - [`http`]: the public and internal listeners and their routes.
//! - [`api`]: the server API for backends (revoke, disconnect, presence); publish is in
//!   [`ingest::publish`].
//! - [`config`]: settings from defaults, an optional TOML file and the environment; validated.
//! - [`health`]: readiness: what holds the replica back, what is degraded.
//! - [`supervise`]: restarts background tasks that panic.
//! - [`telemetry`]: logging, counters and Prometheus metrics, emitted together.
//!
//! [`Gateway`] ties them together; `main.rs` only reads the environment and signals.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod api;
pub mod auth;
pub mod config;
/// Entry points for the fuzz targets in `fuzz/`; not an API.
#[doc(hidden)]
pub mod fuzzing;
pub mod health;
pub mod http;
pub mod hub;
pub mod ingest;
pub mod protocol;
pub mod supervise;
pub mod telemetry;
pub mod transport;
pub mod upstream;

use hub::{dedup, registry, router};
use ingest::kafka;

use std::sync::Arc;

pub use config::Settings;
use tokio_util::sync::CancellationToken;

/// What every request handler and session shares.
pub struct AppState {
    pub settings: Settings,
    pub auth: Arc<auth::Authenticator>,
    pub registry: Arc<registry::Registry>,
    pub stats: Arc<telemetry::Stats>,
    pub readiness: health::Readiness,
    /// Where every source hands its events.
    pub router: Arc<router::Router>,
    /// Set on SIGTERM: new upgrades are refused with 503.
    pub draining: std::sync::atomic::AtomicBool,
    /// Upgrades accepted but not yet admitted or refused (their token is being verified): the
    /// drain waits for them too, so each gets its close.
    pub upgrading: std::sync::atomic::AtomicUsize,
    /// `ROOMS_PUBLIC`, parsed once.
    pub public_rooms: Vec<auth::grants::RoomPattern>,
    /// Writes `POST /api/publish`'s events to Kafka, when Kafka is configured.
    pub publisher: Option<ingest::publish::Producer>,
    /// Tokens refused for good a moment ago (see `transport::refusals`).
    pub refusals: transport::refusals::Refusals,
    /// Rooms that belong to the user (`ROOMS_USER_SCOPED`).
    pub user_rooms: Arc<hub::memberships::UserRooms>,
    /// Where cursor-less sessions that ended stood (`CATCHUP_WINDOW_SECS`).
    pub handoffs: Arc<hub::handoff::Handoffs>,
    /// Writes control records, when the control topic is used.
    pub control: Option<Arc<ingest::control::Control>>,
    /// Who is online, cluster-wide.
    pub presence: Arc<hub::presence::Presence>,
    /// Revoked tokens, cluster-wide.
    pub revocations: Arc<hub::revocations::Revocations>,
    /// `CONNECT_RATE_PER_SEC`: new sessions of this replica, all transports.
    pub connect_limiter: Option<governor::DefaultDirectRateLimiter>,
    /// RPC calls and client publications to backends.
    pub upstream: Arc<upstream::Upstream>,
}

/// A configured gateway, not yet serving.
pub struct Gateway {
    state: Arc<AppState>,
    /// The Kafka source, when configured; its discovery runs from construction on.
    kafka: Option<kafka::Source>,
    /// The control topic's consume loop, when it is read (user-scoped rooms with Kafka).
    control_loop: Option<supervise::Restartable>,
    /// What the control records are applied to (also without the control topic).
    shared: Arc<ingest::control::Shared>,
    /// Stops the sources. Cancelled after the drain: they keep feeding the sessions still open.
    sources: CancellationToken,
}

impl Gateway {
    /// Builds every part from the settings. Must be called inside a Tokio runtime (a JWKS is
    /// fetched and Kafka metadata is read in the background right away). An error here is a
    /// configuration the service cannot run with (a key that does not parse, a librdkafka
    /// property it rejects).
    pub fn new(settings: Settings) -> anyhow::Result<Self> {
        let readiness = health::Readiness::default();
        let auth = auth::Authenticator::from_settings(&settings.auth, &readiness)?;
        let registry = Arc::new(registry::Registry::new(registry::Limits {
            max_total: settings.server.max_connections,
            max_per_user: settings.server.max_connections_per_user,
            max_anonymous: settings.anonymous.max_connections,
            queue_capacity: settings.server.session_queue_capacity,
            catch_up: settings.history.max_events > 0,
        }));
        let public_rooms = settings
            .rooms
            .public
            .iter()
            .map(|p| auth::grants::RoomPattern::parse(p))
            .collect();
        let stats = Arc::new(telemetry::Stats::default());
        let dedup = dedup::Dedup::new(
            std::time::Duration::from_secs(settings.dedup.window_secs),
            settings.dedup.capacity,
        );
        let history = hub::history::History::new(hub::history::Limits {
            max_events: settings.history.max_events,
            max_bytes: settings.history.max_bytes,
            max_age: std::time::Duration::from_secs(settings.history.max_age_secs),
        });
        let router = Arc::new(router::Router::new(
            registry.clone(),
            stats.clone(),
            dedup,
            history,
            hub::state::StateStore::new(
                std::time::Duration::from_secs(settings.state.ttl_secs),
                settings.state.max_keys,
            ),
        ));
        let user_rooms = Arc::new(hub::memberships::UserRooms {
            registry: registry.clone(),
            memberships: hub::memberships::Memberships::new(
                settings
                    .rooms
                    .user_scoped
                    .iter()
                    .map(|p| auth::grants::RoomPattern::parse(p))
                    .collect(),
                settings.rooms.user_ttl_secs,
                settings.rooms.max_per_session,
            ),
            max_rooms: settings.rooms.max_per_session,
        });
        let sources = CancellationToken::new();
        let kafka = if settings.kafka_enabled() {
            Some(kafka::start(
                &settings.kafka,
                // What is read back at start: the history's window, and at least the state TTL
                // (so every state key still alive is known before the replica is ready).
                std::time::Duration::from_secs(if settings.history.max_events > 0 {
                    settings.history.max_age_secs.max(settings.state.ttl_secs)
                } else {
                    settings.state.ttl_secs
                }),
                router.clone(),
                stats.clone(),
                readiness.clone(),
                sources.clone(),
            )?)
        } else {
            tracing::info!("no KAFKA_BROKERS: direct Kafka source disabled");
            None
        };
        if settings.dapr.enabled && settings.dapr.app_api_token.as_deref().is_none_or(str::is_empty) {
            tracing::warn!(
                "DAPR_INSECURE_NO_APP_TOKEN=true: anyone who reaches the Dapr route can inject events; \
                 never run like this outside a local experiment"
            );
        }
        let publisher = ingest::publish::Producer::from_settings(&settings)?;
        let settings_refusal_secs = settings.server.refusal_memory_secs;
        let settings_refusal_capacity = settings.server.refusal_memory_capacity;
        let handoffs = {
            use std::time::Duration;
            let history = &settings.history;
            let fetch_wait = settings
                .kafka
                .properties
                .get("fetch.wait.max.ms")
                .and_then(|v| v.parse().ok())
                .unwrap_or(500);
            let timing = hub::handoff::Timing {
                // Catch-up replays from the history: none, no catch-up.
                window: Duration::from_secs(if history.max_events > 0 {
                    history.catchup_window_secs
                } else {
                    0
                }),
                beat: Duration::from_millis(history.catchup_heartbeat_ms),
                slack: Duration::from_millis(fetch_wait),
                keep: Duration::from_secs(settings.cluster.presence_lease_secs * 2),
            };
            Arc::new(hub::handoff::Handoffs::new(
                timing,
                format!("{:x}", router.instance()),
                8,
                history.catchup_max_sessions,
            ))
        };
        let presence = Arc::new(hub::presence::Presence::new(
            &handoffs.replica,
            settings.cluster.presence_enabled,
            std::time::Duration::from_secs(settings.cluster.presence_grace_secs),
            std::time::Duration::from_secs(settings.cluster.presence_lease_secs),
            settings.rooms.max_per_session.min(64),
        ));
        registry.track_presence(presence.clone());
        let revocations = Arc::new(hub::revocations::Revocations::default());
        let shared = Arc::new(ingest::control::Shared {
            rooms: user_rooms.clone(),
            handoffs: handoffs.clone(),
            presence: presence.clone(),
            revocations: revocations.clone(),
            registry: registry.clone(),
            router: router.clone(),
            stats: stats.clone(),
            announce: std::sync::atomic::AtomicBool::new(false),
        });
        // With Kafka, the replicas share state through the control topic (presence and
        // revocations at least); without it, each keeps its own.
        let (control, control_loop) = if settings.kafka_enabled() {
            let (control, run) =
                ingest::control::start(&settings, shared.clone(), readiness.clone(), sources.clone())?;
            (Some(control), Some(run))
        } else {
            shared.announce.store(true, std::sync::atomic::Ordering::Release);
            (None, None)
        };
        let connect_limiter = transport::admission::limiter(
            settings.cluster.connect_rate_per_sec,
            settings.cluster.connect_rate_burst,
        );
        let upstream = Arc::new(upstream::Upstream::from_settings(
            &settings,
            router.replies().clone(),
            stats.clone(),
        )?);
        let state = Arc::new(AppState {
            settings,
            auth,
            registry,
            stats,
            readiness,
            router,
            draining: std::sync::atomic::AtomicBool::new(false),
            upgrading: std::sync::atomic::AtomicUsize::new(0),
            public_rooms,
            publisher,
            user_rooms,
            handoffs,
            control,
            presence,
            revocations,
            connect_limiter,
            upstream,
            refusals: transport::refusals::Refusals::new(
                std::time::Duration::from_secs(settings_refusal_secs),
                settings_refusal_capacity,
            ),
        });
        Ok(Gateway {
            state,
            kafka,
            control_loop,
            shared,
            sources,
        })
    }

    /// Counters, for tests and the benchmark.
    pub fn stats(&self) -> Arc<telemetry::Stats> {
        self.state.stats.clone()
    }

    /// The event router, so that tests and other sources can inject events.
    pub fn router(&self) -> Arc<router::Router> {
        self.state.router.clone()
    }

    /// Serves until `shutdown` is cancelled, then drains: `/ready` fails at once, new sessions
    /// are refused, open sessions are closed with 1001 spread over `DRAIN_WINDOW_SECS` (the drain
    /// ends as soon as none remains), and it returns within `SHUTDOWN_GRACE_SECS`.
    pub async fn run(
        mut self,
        listeners: http::Listeners,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let settings = &self.state.settings;
        let mut tasks = Vec::new();
        if let Some(source) = &self.kafka {
            let consume = source.consume(self.state.router.clone(), self.sources.clone());
            tasks.push(tokio::spawn(supervise::supervise(
                "kafka_consume",
                self.state.stats.clone(),
                self.sources.clone(),
                consume,
            )));
        }
        if let Some(run) = self.control_loop.take() {
            tasks.push(tokio::spawn(supervise::supervise(
                "control_consume",
                self.state.stats.clone(),
                self.sources.clone(),
                run,
            )));
        }
        if let Some(control) = &self.state.control {
            tasks.push(tokio::spawn(ingest::control::beat(
                control.clone(),
                self.state.handoffs.clone(),
                self.state.router.clone(),
                self.state.registry.clone(),
                self.sources.clone(),
            )));
        }
        tasks.push(tokio::spawn(ingest::control::maintain(
            self.shared.clone(),
            self.state.control.clone(),
            self.sources.clone(),
        )));
        tasks.push(tokio::spawn(ingest::control::cluster(
            self.shared.clone(),
            self.state.control.clone(),
            std::time::Duration::from_secs(self.state.settings.cluster.revocation_ttl_secs),
            self.sources.clone(),
        )));
        let public = http::public_server(self.state.clone(), listeners.public)?;
        let internal = http::internal_server(self.state.clone(), listeners.internal)?;
        let handles = [public.handle(), internal.handle()];
        let servers = [tokio::spawn(public), tokio::spawn(internal)];
        shutdown.cancelled().await;
        let grace = std::time::Duration::from_secs(settings.server.shutdown_grace_secs);
        let deadline = tokio::time::Instant::now() + grace;
        // The drain never outlasts the grace period, whatever the window and the stragglers.
        let _ = tokio::time::timeout_at(deadline, self.drain()).await;
        self.sources.cancel();
        if let Some(source) = self.kafka {
            tasks.push(source.discovery);
        }
        for task in tasks {
            let _ = tokio::time::timeout_at(deadline, task).await;
        }
        // Whatever is still open (a peer that never reads its close) is cut at the deadline.
        for handle in handles {
            if tokio::time::timeout_at(deadline, handle.stop(true))
                .await
                .is_err()
            {
                handle.stop(false).await;
            }
        }
        for server in servers {
            let _ = server.await;
        }
        tracing::info!("stopped");
        Ok(())
    }

    /// Refuses new sessions and closes the open ones with 1001, in steps spread over the drain
    /// window, and returns as soon as none remains (at most 2 s after the window).
    async fn drain(&self) {
        use std::sync::atomic::Ordering;
        use tokio::time::{Duration, Instant};
        let state = &self.state;
        state.draining.store(true, Ordering::SeqCst);
        // From here on a session is either in the snapshots below or refused with 1001.
        state.registry.close_admission();
        state.readiness.gate("shutdown", "draining: shutting down");
        let window = Duration::from_secs(state.settings.server.drain_window_secs);
        let started = Instant::now();
        let open = state.registry.connections();
        tracing::info!(sessions = open, window_secs = window.as_secs(), "draining");
        let steps = open.clamp(1, 20) as u32;
        for step in 0..steps {
            let waiting: Vec<_> = state
                .registry
                .sessions()
                .into_iter()
                .filter(|m| m.kicked().is_none())
                .collect();
            if waiting.is_empty() {
                break;
            }
            let batch = waiting.len().div_ceil((steps - step) as usize);
            for mailbox in waiting.iter().take(batch) {
                state.router.kick(mailbox, protocol::close::GOING_AWAY);
            }
            self.until_no_session(started + window * (step + 1) / steps).await;
        }
        // The last closes, and upgrades still verifying their token (bounded by JWKS_TIMEOUT_MS).
        let verify = Duration::from_millis(state.settings.auth.jwks_timeout_ms);
        self.until_no_session(Instant::now() + verify.max(Duration::from_secs(2)))
            .await;
    }

    /// Waits until no session is left (nor an upgrade on its way to becoming one), or
    /// `deadline`.
    async fn until_no_session(&self, deadline: tokio::time::Instant) {
        let busy = || {
            self.state.registry.connections() > 0
                || self.state.upgrading.load(std::sync::atomic::Ordering::SeqCst) > 0
        };
        while busy() && tokio::time::Instant::now() < deadline {
            let step = tokio::time::Instant::now() + std::time::Duration::from_millis(20);
            tokio::time::sleep_until(step.min(deadline)).await;
        }
    }
}
