//! The HTTP server and its routes: `GET /ws`, `GET /health`, `GET /ready`, and the Dapr routes
//! `GET /dapr/subscribe` and `POST <DAPR_ROUTE>`.

use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::{web, App, HttpResponse, HttpServer};
use serde_json::json;

use crate::dapr;
use crate::session::ws_route;
use crate::AppState;

/// Builds the server on an already bound listener (tests bind port 0).
pub fn server(state: Arc<AppState>, listener: std::net::TcpListener) -> anyhow::Result<Server> {
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
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route("/ws", web::get().to(ws_route))
            .route("/health", web::get().to(health))
            .route("/ready", web::get().to(ready))
            .route("/metrics", web::get().to(metrics))
            .route("/dapr/subscribe", web::get().to(dapr::subscribe))
            .service(
                web::resource(dapr_route.as_str())
                    .app_data(web::PayloadConfig::new(dapr::MAX_BODY_BYTES))
                    .route(web::post().to(dapr::deliver)),
            )
    })
    .workers(workers)
    .max_connections(per_worker_cap)
    .backlog(4096)
    // A peer that never finishes its request head, or never reads our close, is dropped.
    .client_request_timeout(Duration::from_secs(5))
    .client_disconnect_timeout(Duration::from_secs(1))
    .disable_signals()
    .shutdown_timeout(5)
    .listen(listener)?
    .run();
    Ok(server)
}

/// Liveness (existing contract): `{"status":"healthy","connections":N}`.
async fn health(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "status": "healthy",
        "connections": state.registry.connections(),
    }))
}

/// Prometheus metrics (OpenMetrics text).
async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let body = state.stats.encode(
        state.registry.connections(),
        state.registry.users(),
        state.readiness.problems().is_empty(),
    );
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(body)
}

/// Readiness: 200 when every configured source works, else 503 with the reasons.
async fn ready(state: web::Data<AppState>) -> HttpResponse {
    let problems = state.readiness.problems();
    if problems.is_empty() {
        HttpResponse::Ok().json(json!({"status": "ready"}))
    } else {
        HttpResponse::ServiceUnavailable().json(json!({"status": "not_ready", "reasons": problems}))
    }
}
