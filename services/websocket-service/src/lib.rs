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

    /// Serves on `listener` until `shutdown` is cancelled, then closes every session with 1001
    /// and stops.
    pub async fn run(
        self,
        listener: std::net::TcpListener,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let settings = &self.state.settings;
        let mut tasks = Vec::new();
        if settings.kafka_enabled() {
            tasks = kafka::start(
                &settings.kafka,
                self.state.router.clone(),
                self.state.readiness.clone(),
                shutdown.clone(),
            )?;
        } else {
            tracing::info!("no KAFKA_BROKERS: direct Kafka source disabled");
        }
        let server = http::server(self.state.clone(), listener)?;
        let handle = server.handle();
        let server = tokio::spawn(server);
        shutdown.cancelled().await;
        tracing::info!("shutting down");
        self.state.registry.kick_all(protocol::close::GOING_AWAY);
        handle.stop(true).await;
        let _ = server.await;
        for task in tasks {
            let _ = task.await;
        }
        Ok(())
    }
}
