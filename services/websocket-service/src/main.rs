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
    let listeners = websocket_service::http::Listeners::bind(&settings.server)?;
    tracing::info!(
        addr = %listeners.public.local_addr()?,
        internal = %listeners.internal.local_addr()?,
        "websocket-service listening"
    );
    let gateway = match Gateway::new(settings) {
        Ok(gateway) => gateway,
        Err(error) => {
            // What the settings name but the service cannot use (a key, a Kafka property).
            eprintln!("websocket-service: invalid configuration: {error:#}");
            std::process::exit(EXIT_USAGE);
        }
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(on_signal(shutdown.clone()));
    gateway.run(listeners, shutdown).await
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
