//! `event-publish`: publish one generic event from the command line (any event type, to any
//! audience), straight to Kafka or through the Dapr sidecar. `task-publish`'s sibling. Prints the
//! event id; any failure exits non-zero with one line on stderr.
//!
//! ```text
//! event-publish --via kafka --type ticket.created --data '{"id":42}' --to '{"all":true,"roles":["agent"]}'
//! event-publish --via kafka --message '{"type":"queue_update","queue_id":3}' --to '{"room":"support:7"}'
//! ```

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use publisher::{new_generic_event, new_message_event, Audience, Envelope, Publisher};

#[derive(Clone, Copy, ValueEnum)]
enum Via {
    /// Straight to Kafka: KAFKA_BROKERS.
    Kafka,
    /// Through the sidecar on localhost:$DAPR_HTTP_PORT (default 3500), DAPR_API_TOKEN if set.
    Dapr,
}

/// Publish one generic event and print its id.
#[derive(Parser)]
#[command(name = "event-publish", version)]
struct Args {
    /// Kafka or Dapr.
    #[arg(long, value_enum)]
    via: Via,
    /// The event type (`type` and `event` of the delivered message). Not with --message.
    #[arg(long = "type", required_unless_present = "message")]
    event_type: Option<String>,
    /// The payload, any JSON value, delivered under `data`.
    #[arg(long, required_unless_present = "message", conflicts_with = "message")]
    data: Option<String>,
    /// An object with a string `type`, delivered as the frame itself, unchanged.
    #[arg(long)]
    message: Option<String>,
    /// The audience, a JSON object: user/users, room/rooms, workspace, all, roles, exclude_users.
    #[arg(long)]
    to: String,
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
    match run(Args::parse()).await {
        Ok(id) => {
            println!("{id}");
            ExitCode::SUCCESS
        }
        Err(reason) => {
            eprintln!("event-publish: {}", reason.replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

fn json(flag: &str, text: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(text).map_err(|e| format!("{flag} is not valid JSON: {e}"))
}

async fn run(args: Args) -> Result<String, String> {
    let to: Audience = serde_json::from_value(json("--to", &args.to)?).map_err(|e| format!("--to: {e}"))?;
    let event = match (&args.message, &args.data, &args.event_type) {
        (Some(message), _, _) => new_message_event(json("--message", message)?, to),
        (None, Some(data), Some(event_type)) => new_generic_event(event_type, json("--data", data)?, to),
        _ => return Err("give --type and --data, or --message".into()),
    }
    .map_err(|e| e.to_string())?;
    let timeout = Duration::from_secs(args.timeout_secs.max(1));
    let via = match args.via {
        Via::Kafka => publisher::Via::Kafka,
        Via::Dapr => publisher::Via::Dapr,
    };
    let publisher =
        Publisher::from_env(via, &args.topic, &args.pubsub, timeout).map_err(|e| e.to_string())?;
    match tokio::time::timeout(timeout, publisher.publish(&event)).await {
        Ok(Ok(())) => Ok(event.event_id().unwrap_or_default().to_string()),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err(format!(
            "no broker or sidecar accepted the event within {} s",
            timeout.as_secs()
        )),
    }
}
