//! websocket-service: task-update events from Kafka pushed to the WebSocket sessions of the users
//! they are addressed to.
//!
//! # Layout
//! - [`config`]: settings from defaults, an optional TOML file and the environment; validated.
//! - [`auth`]: JWT verification (HS256 secret, PEM public key, or JWKS), algorithm pinned.
//! - [`http`]: the HTTP server: `/ws`, `/health`, `/ready`.
//! - [`session`]: one WebSocket connection: upgrade, auth, write loop, heartbeat, close codes.
//! - [`protocol`]: the messages on the socket and the close codes.
//! - [`registry`]: user id -> open sessions, each with a bounded mailbox; connection limits.
//! - [`router`]: decoded event -> message -> the user's mailboxes; shared by every source.
//! - [`kafka`]: the direct Kafka source (every partition, no consumer group).
//! - [`dapr`]: the Dapr pub/sub path: subscription discovery, delivery route, app token.
//! - [`dedup`]: one event, one delivery, within a bounded window.
//! - [`health`]: readiness of each source.
//! - [`telemetry`]: logging and counters.
//!
//! [`Gateway`] ties them together; `main.rs` only reads the environment and signals.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod auth;
pub mod config;
pub mod dapr;
pub mod dedup;
pub mod health;
pub mod http;
pub mod kafka;
pub mod protocol;
pub mod registry;
pub mod router;
pub mod session;
pub mod telemetry;

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
}

/// A configured gateway, not yet serving.
pub struct Gateway {
    state: Arc<AppState>,
}

impl Gateway {
    /// Builds every part from the settings. Must be called inside a Tokio runtime (a JWKS is
    /// fetched in the background right away).
    pub fn new(settings: Settings) -> anyhow::Result<Self> {
        let readiness = health::Readiness::default();
        let auth = auth::Authenticator::from_settings(&settings.auth, &readiness)?;
        let registry = Arc::new(registry::Registry::new(
            settings.server.max_connections,
            settings.server.max_connections_per_user,
            settings.server.session_queue_capacity,
        ));
        let stats = Arc::new(telemetry::Stats::default());
        let dedup = dedup::Dedup::new(
            std::time::Duration::from_secs(settings.dedup.window_secs),
            settings.dedup.capacity,
        );
        let router = Arc::new(router::Router::new(registry.clone(), stats.clone(), dedup));
        let state = Arc::new(AppState {
            settings,
            auth,
            registry,
            stats,
            readiness,
            router,
            draining: std::sync::atomic::AtomicBool::new(false),
        });
        Ok(Gateway { state })
    }

    /// Counters, for tests and the benchmark.
    pub fn stats(&self) -> Arc<telemetry::Stats> {
        self.state.stats.clone()
    }

    /// The event router, so that tests and other sources can inject events.
    pub fn router(&self) -> Arc<router::Router> {
        self.state.router.clone()
    }

    /// Serves on `listener` until `shutdown` is cancelled, then drains: `/ready` fails at once,
    /// new upgrades are refused, open sessions are closed with 1001 spread over
    /// `DRAIN_WINDOW_SECS`, and it returns within `SHUTDOWN_GRACE_SECS`.
    pub async fn run(
        self,
        listener: std::net::TcpListener,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let settings = &self.state.settings;
        let mut tasks = Vec::new();
        // Sources keep feeding the sessions that are still open during the drain.
        let sources = CancellationToken::new();
        if settings.kafka_enabled() {
            tasks = kafka::start(
                &settings.kafka,
                self.state.router.clone(),
                self.state.stats.clone(),
                self.state.readiness.clone(),
                sources.clone(),
            )?;
        } else {
            tracing::info!("no KAFKA_BROKERS: direct Kafka source disabled");
        }
        let server = http::server(self.state.clone(), listener)?;
        let handle = server.handle();
        let server = tokio::spawn(server);
        shutdown.cancelled().await;
        let grace = std::time::Duration::from_secs(settings.server.shutdown_grace_secs);
        let deadline = tokio::time::Instant::now() + grace;
        self.drain().await;
        sources.cancel();
        for task in tasks {
            let _ = tokio::time::timeout_at(deadline, task).await;
        }
        // Whatever is still open (a peer that never reads its close) is cut at the deadline.
        if tokio::time::timeout_at(deadline, handle.stop(true))
            .await
            .is_err()
        {
            handle.stop(false).await;
        }
        let _ = server.await;
        tracing::info!("stopped");
        Ok(())
    }

    /// Refuses new sessions and closes the open ones with 1001, in steps spread over the drain
    /// window, then waits briefly for them to go.
    async fn drain(&self) {
        use std::sync::atomic::Ordering;
        let state = &self.state;
        state.draining.store(true, Ordering::SeqCst);
        state
            .readiness
            .set_not_ready("shutdown", "draining: shutting down");
        let window = std::time::Duration::from_secs(state.settings.server.drain_window_secs);
        let sessions = state.registry.sessions();
        tracing::info!(
            sessions = sessions.len(),
            window_secs = window.as_secs(),
            "draining"
        );
        let steps = sessions.len().clamp(1, 20);
        let per_step = sessions.len().div_ceil(steps).max(1);
        let pause = window / steps as u32;
        for batch in sessions.chunks(per_step) {
            for mailbox in batch {
                mailbox.kick(protocol::close::GOING_AWAY);
            }
            tokio::time::sleep(pause).await;
        }
        let until = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
        while state.registry.connections() > 0 && tokio::time::Instant::now() < until {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}
