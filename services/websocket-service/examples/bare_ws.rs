//! Baseline for the benchmark, not part of the service: actix-web + actix-ws holding idle
//! sessions and nothing else. It measures the floor of per-connection memory that the HTTP stack
//! itself costs, so the gateway's own share can be told apart:
//!
//! ```text
//! cargo build --release --example bare_ws
//! BENCH_SERVER_BIN=target/release/examples/bare_ws BENCH_SECONDS=0 make bench
//! ```

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};

async fn ws(req: HttpRequest, body: web::Payload) -> actix_web::Result<HttpResponse> {
    let (response, mut session, mut stream) = actix_ws::handle(&req, body)?;
    actix_web::rt::spawn(async move {
        let _ = session.text(r#"{"type":"connected"}"#).await;
        while let Some(Ok(_)) = stream.recv().await {}
    });
    Ok(response)
}

async fn ready() -> HttpResponse {
    HttpResponse::Ok().finish()
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(8005);
    HttpServer::new(|| {
        App::new()
            .route("/ws", web::get().to(ws))
            .route("/ready", web::get().to(ready))
    })
    .workers(2)
    .max_connections(50_000)
    .bind(("127.0.0.1", port))?
    .run()
    .await
}
