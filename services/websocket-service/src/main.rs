//! The `websocket-service` binary: reads configuration, installs logging and signal handling,
//! and runs the [`Gateway`]. Everything else lives in the library.

use std::process::ExitCode;

use tokio_util::sync::CancellationToken;
use websocket_service::config::EXIT_USAGE;
use websocket_service::{telemetry, Gateway, Settings};

fn main() -> ExitCode {
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("websocket-service: {error}");
            return ExitCode::from(EXIT_USAGE as u8);
        }
    };
    telemetry::init_logging(&settings.log.format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("websocket-service: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "websocket-service failed");
            eprintln!("websocket-service: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let addr = (settings.server.host.as_str(), settings.server.port);
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("cannot listen on {}:{}", addr.0, addr.1))?;
    tracing::info!(addr = %listener.local_addr()?, "websocket-service listening");
    let gateway = Gateway::new(settings)?;
    let shutdown = CancellationToken::new();
    tokio::spawn(on_signal(shutdown.clone()));
    gateway.run(listener, shutdown).await
}

/// SIGINT or SIGTERM starts the shutdown.
async fn on_signal(shutdown: CancellationToken) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            shutdown.cancel();
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    shutdown.cancel();
}
