//! The two HTTP listeners and their routes.
//!
//! - Public (`PORT`, 8005): what browsers and the platform call: `GET /ws`, `GET /events` (SSE),
//!   `GET /events/poll`, `GET /health`, `GET /ready`, and the Dapr routes (`GET /dapr/subscribe`, `POST <DAPR_ROUTE>`), because
//!   existing deployments point their sidecar at 8005 (`dapr.io/app-port`). The Dapr routes are
//!   off unless `DAPR_ENABLED`, and then require the sidecar's app token.
//! - Internal (`INTERNAL_HOST:INTERNAL_PORT`, loopback:9005 by default): what only the cluster
//!   calls: `GET /metrics`, the server API (`POST /api/publish`, with the server API key), plus
//!   `/health`, `/ready` and the Dapr routes, so a sidecar can be pointed here too.

use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::ingest::dapr;
use crate::transport::ws::ws_route;
use crate::AppState;

/// The bound sockets the gateway serves on (tests bind port 0).
pub struct Listeners {
    pub public: std::net::TcpListener,
    pub internal: std::net::TcpListener,
}

impl Listeners {
    /// Binds `HOST:PORT` and `INTERNAL_HOST:INTERNAL_PORT`.
    pub fn bind(settings: &crate::config::ServerSettings) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let public = listen(&settings.host, settings.port, settings.listen_backlog)
            .with_context(|| format!("cannot listen on {}:{}", settings.host, settings.port))?;
        let internal = std::net::TcpListener::bind((settings.internal_host.as_str(), settings.internal_port))
            .with_context(|| {
                format!(
                    "cannot listen on {}:{} (INTERNAL_HOST, INTERNAL_PORT)",
                    settings.internal_host, settings.internal_port
                )
            })?;
        Ok(Listeners { public, internal })
    }
}

/// A listening socket with an accept queue of `backlog` (the kernel caps it at
/// `net.core.somaxconn`): a storm of reconnects waits in it instead of losing SYNs.
fn listen(host: &str, port: u16, backlog: u32) -> std::io::Result<std::net::TcpListener> {
    use std::net::ToSocketAddrs as _;
    let addr = (host, port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address"))?;
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    Ok(socket.into())
}

/// The public server on an already bound listener.
pub fn public_server(state: Arc<AppState>, listener: std::net::TcpListener) -> anyhow::Result<Server> {
    let server = &state.settings.server;
    let workers = match server.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    // actix's own cap is per worker; ours (in the registry) is what clients see. Leave headroom
    // so a refused upgrade can still be answered with a close code.
    let per_worker_cap = (server.max_connections / workers + 1024).max(1024);
    let data = web::Data::from(state.clone());
    let dapr_route = state.settings.dapr.route.clone();
    let origins = state.settings.sse.cors_origins.clone();
    let send_buffer = server.socket_send_buffer_bytes as usize;
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route("/ws", web::get().to(ws_route))
            .service(
                web::scope("/events")
                    .wrap(cors(&origins))
                    .route("", web::get().to(crate::transport::sse::events))
                    .route("/poll", web::get().to(crate::transport::poll::poll)),
            )
            .route("/health", web::get().to(health))
            .route("/ready", web::get().to(ready))
            .configure(|cfg| dapr_routes(cfg, &dapr_route))
            .default_service(web::to(dapr::unknown_route))
    })
    .on_connect(move |conn, _| {
        if send_buffer > 0 {
            if let Some(stream) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
                let _ = socket2::SockRef::from(stream).set_send_buffer_size(send_buffer);
            }
        }
    })
    .workers(workers)
    .max_connections(per_worker_cap)
    .backlog(4096)
    // A peer that never finishes its request head, or never reads our close, is dropped.
    .client_request_timeout(Duration::from_secs(5))
    .client_disconnect_timeout(Duration::from_secs(1))
    .disable_signals()
    .shutdown_timeout(1)
    .listen(listener)?
    .run();
    Ok(server)
}

/// The internal server: one worker is plenty for scrapes and server calls.
pub fn internal_server(state: Arc<AppState>, listener: std::net::TcpListener) -> anyhow::Result<Server> {
    let data = web::Data::from(state.clone());
    let dapr_route = state.settings.dapr.route.clone();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route("/metrics", web::get().to(metrics))
            .route("/api/publish", web::post().to(crate::ingest::publish::publish))
            .route("/api/revoke", web::post().to(crate::api::revoke))
            .route("/api/disconnect", web::post().to(crate::api::disconnect))
            .route("/api/presence", web::get().to(crate::api::presence))
            .route("/health", web::get().to(health))
            .route("/ready", web::get().to(ready))
            .configure(|cfg| dapr_routes(cfg, &dapr_route))
            .default_service(web::to(dapr::unknown_route))
    })
    .workers(1)
    .client_request_timeout(Duration::from_secs(5))
    .disable_signals()
    .shutdown_timeout(1)
    .listen(listener)?
    .run();
    Ok(server)
}

/// CORS for the browser-facing HTTP transports: only the configured origins (none by default),
/// GET, and the Authorization and Last-Event-ID headers; credentials allowed, for a token cookie.
fn cors(origins: &[String]) -> actix_cors::Cors {
    let mut cors = actix_cors::Cors::default()
        .allowed_methods(["GET"])
        .allowed_headers(["authorization", "last-event-id"])
        .max_age(600);
    if origins.iter().any(|o| o == "*") {
        cors = cors.allow_any_origin().send_wildcard();
    } else {
        for origin in origins {
            cors = cors.allowed_origin(origin);
        }
        cors = cors.supports_credentials();
    }
    cors
}

fn dapr_routes(cfg: &mut web::ServiceConfig, route: &str) {
    cfg.route("/dapr/subscribe", web::get().to(dapr::subscribe))
        .service(
            web::resource(route)
                .app_data(web::PayloadConfig::new(dapr::MAX_BODY_BYTES))
                .route(web::post().to(dapr::deliver)),
        );
}

/// Liveness (existing contract): `{"status":"healthy","connections":N}`.
async fn health(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "status": "healthy",
        "connections": state.registry.connections(),
    }))
}

/// Prometheus metrics (OpenMetrics text). With `METRICS_TOKEN` set, a bearer token is required.
async fn metrics(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if let Some(expected) = state
        .settings
        .server
        .metrics_token
        .as_deref()
        .filter(|t| !t.is_empty())
    {
        let given = req
            .headers()
            .get(actix_web::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        if !bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
            return HttpResponse::Unauthorized()
                .json(json!({"error": "metrics need METRICS_TOKEN as a bearer token"}));
        }
    }
    let (history_events, history_bytes) = state.router.history().size();
    let now = crate::telemetry::Snapshot {
        connections: state.registry.connections(),
        users: state.registry.users(),
        history_events,
        history_bytes,
        catchup_sessions: state.handoffs.len(),
        online_users: state.presence.counts().0,
        revocations: state.revocations.len(),
        state_keys: state.router.state().counts().0,
    };
    let body = state.stats.encode(&now, &state.readiness.report());
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(body)
}

/// Readiness: 200 while this replica can serve (possibly degraded, with the reasons), 503 while
/// it starts or drains.
async fn ready(state: web::Data<AppState>) -> HttpResponse {
    let report = state.readiness.report();
    let mut body = if report.ready {
        json!({"status": "ready"})
    } else {
        json!({"status": "not_ready", "reasons": report.gates})
    };
    if !report.degraded.is_empty() {
        body["degraded"] = json!(report.degraded);
    }
    if report.ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}
