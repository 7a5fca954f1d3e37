//! `task-publish`: publish one task-update event from the command line, straight to Kafka or
//! through the Dapr sidecar. Prints the event id; any failure exits non-zero with one line on
//! stderr.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use publisher::{new_event, EventType, Publisher};

#[derive(Clone, Copy, ValueEnum)]
enum Via {
    /// Straight to Kafka: KAFKA_BROKERS.
    Kafka,
    /// Through the sidecar on localhost:$DAPR_HTTP_PORT (default 3500), DAPR_API_TOKEN if set.
    Dapr,
}

impl From<Via> for publisher::Via {
    fn from(via: Via) -> Self {
        match via {
            Via::Kafka => publisher::Via::Kafka,
            Via::Dapr => publisher::Via::Dapr,
        }
    }
}

/// Publish one task-update event and print its id.
#[derive(Parser)]
#[command(name = "task-publish", version)]
struct Args {
    /// Kafka or Dapr.
    #[arg(long, value_enum)]
    via: Via,
    /// The user the event is addressed to.
    #[arg(long)]
    user: String,
    /// created, updated, deleted, completed (or task.created, ...), or any custom type.
    #[arg(long)]
    event: String,
    /// The task, a JSON object.
    #[arg(long)]
    task: String,
    /// Topic to publish to.
    #[arg(long, default_value = "task-updates")]
    topic: String,
    /// Dapr pub/sub component (with --via dapr).
    #[arg(long, default_value = "taskpubsub")]
    pubsub: String,
    /// Give up after this long (broker or sidecar unreachable).
    #[arg(long, default_value_t = 10)]
    timeout_secs: u64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(id) => {
            println!("{id}");
            ExitCode::SUCCESS
        }
        Err(reason) => {
            eprintln!("task-publish: {}", reason.replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<String, String> {
    let task: serde_json::Value =
        serde_json::from_str(&args.task).map_err(|e| format!("--task is not valid JSON: {e}"))?;
    let event_type: EventType = args.event.parse().unwrap_or_else(|never| match never {});
    let event = new_event(event_type, args.user, task).map_err(|e| e.to_string())?;
    let timeout = Duration::from_secs(args.timeout_secs.max(1));
    let publisher = Publisher::from_env(args.via.into(), &args.topic, &args.pubsub, timeout)
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(timeout, publisher.publish(&event)).await {
        Ok(Ok(())) => Ok(event.id.unwrap_or_default()),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err(match args.via {
            Via::Kafka => format!(
                "kafka: no broker acknowledged the event within {} s",
                timeout.as_secs()
            ),
            Via::Dapr => format!(
                "dapr: the sidecar did not accept the event within {} s",
                timeout.as_secs()
            ),
        }),
    }
}
