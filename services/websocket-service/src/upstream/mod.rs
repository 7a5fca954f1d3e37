//! Upstream: what clients send to backends over the socket they already have.
//!
//! - RPC: `{"type":"rpc","id":..,"method":M,"data":..}` is answered by exactly one `rpc_result`
//!   or `rpc_error` within `RPC_TIMEOUT_MS`. [`routes`] maps the method to a backend: an HTTP
//!   endpoint (POST, the JSON answer goes back) or a Kafka request topic (the answer comes back
//!   through the log, see [`crate::hub::replies`]).
//! - Legacy request types (`RPC_LEGACY_TYPES`): an old client message is an RPC call, and the
//!   answer is the frame the old client expects.
//! - Client publications: `{"type":"publish","room":R,"data":..}` is authorized per room
//!   pattern, then written to `CLIENT_PUBLISH_TOPIC` keyed by room, and reaches the room's
//!   other members on every replica from there, with a position like any event.
//!
//! What a backend receives is stamped by the gateway from the verified token (user, session,
//! workspace, roles); the client's own message only ever travels as `data`. Every call is
//! bounded: `UPSTREAM_MAX_DATA_BYTES` in, `RPC_MAX_RESPONSE_BYTES` out, `RPC_MAX_IN_FLIGHT` per
//! session, the session's message rate, and the deadline.

pub mod routes;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::FutureExt as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::config::Settings;
use crate::hub::replies::{Answer, Replies};
use crate::telemetry::Stats;
use routes::{Backend, Routes};

/// Message types of the protocol itself: a legacy mapping may not take them, and a client
/// publication may not use them as its event type.
pub const RESERVED_TYPES: &[&str] = &[
    "ping",
    "pong",
    "connected",
    "error",
    "heartbeat",
    "join_room",
    "leave_room",
    "joined_room",
    "left_room",
    "subscribe",
    "unsubscribe",
    "subscribed",
    "unsubscribed",
    "presence",
    "rpc",
    "rpc_result",
    "rpc_error",
    "publish",
    "published",
    "task_update",
    "user.online",
    "user.offline",
];

/// The error codes the gateway itself gives (a backend may give others).
pub const GATEWAY_CODES: &[&str] = &[
    "unknown_method",
    "invalid_request",
    "request_too_large",
    "forbidden",
    "too_many_requests",
    "rate_limited",
    "timeout",
    "backend_unavailable",
    "backend_error",
    "response_too_large",
    "unavailable",
];

/// Why a call or a publication failed: the code the client gets (`rpc_error.error.code`, or
/// `error.code` for a publication), and a message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub code: String,
    pub message: String,
}

impl Failure {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Failure {
            code: code.to_string(),
            message: message.into(),
        }
    }
}

/// Who is calling, as the verified token says: what the gateway stamps on what it forwards.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user: Arc<str>,
    pub session: u128,
    pub workspace: Option<Arc<str>>,
    pub roles: Box<[Arc<str>]>,
}

impl Caller {
    pub fn session_text(&self) -> String {
        uuid::Uuid::from_u128(self.session).to_string()
    }
}

/// What a backend receives for a call (HTTP body, or Kafka record value).
#[derive(Serialize)]
struct CallRequest<'a> {
    request_id: &'a str,
    method: &'a str,
    data: &'a RawValue,
    user: &'a str,
    session: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    workspace: Option<&'a str>,
    roles: Vec<&'a str>,
    /// Unix ms after which nobody waits for the answer.
    deadline_ms: u64,
    /// Kafka backends: where and to whom to answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    reply_to: Option<ReplyTo<'a>>,
}

#[derive(Serialize)]
struct ReplyTo<'a> {
    topic: &'a str,
    session: &'a str,
}

/// The upstream side of the gateway, shared by every session.
pub struct Upstream {
    routes: Routes,
    http: reqwest::Client,
    /// Writes Kafka requests and client publications, when Kafka is configured.
    producer: Option<FutureProducer>,
    /// Where Kafka backends answer: a topic every replica reads.
    reply_topic: Option<String>,
    /// `CLIENT_PUBLISH_TOPIC`, when Kafka is configured.
    publish_topic: Option<String>,
    replies: Arc<Replies>,
    stats: Arc<Stats>,
    timeout: Duration,
    max_response_bytes: usize,
    backend_token: Option<String>,
}

impl Upstream {
    pub fn from_settings(
        settings: &Settings,
        replies: Arc<Replies>,
        stats: Arc<Stats>,
    ) -> anyhow::Result<Self> {
        let u = &settings.upstream;
        let routes = settings.upstream_routes()?;
        let timeout = Duration::from_millis(u.rpc_timeout_ms);
        let mut http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .pool_max_idle_per_host(64)
            .user_agent(concat!("websocket-service/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = u.backend_ca_file.as_deref().filter(|p| !p.is_empty()) {
            let pem = std::fs::read(path).map_err(|e| anyhow::anyhow!("BACKEND_CA_FILE {path}: {e}"))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)? {
                http = http.add_root_certificate(cert);
            }
        }
        let set = |v: &Option<String>| v.clone().filter(|p| !p.is_empty());
        if let (Some(cert), Some(key)) = (set(&u.backend_client_cert_file), set(&u.backend_client_key_file)) {
            let read = |p: &str| std::fs::read(p).map_err(|e| anyhow::anyhow!("{p}: {e}"));
            http = http.identity(reqwest::Identity::from_pkcs8_pem(&read(&cert)?, &read(&key)?)?);
        }
        let kafka = settings.kafka_enabled() && (routes.uses_kafka() || routes.publishes());
        let producer = if kafka {
            let config =
                crate::ingest::kafka::producer_config(settings, "websocket-service-upstream", timeout);
            Some(config.create()?)
        } else {
            None
        };
        Ok(Upstream {
            routes,
            http: http.build()?,
            producer,
            reply_topic: settings.publish_topic().map(String::from),
            publish_topic: settings.kafka_enabled().then(|| u.publish_topic.clone()),
            replies,
            stats,
            timeout,
            max_response_bytes: u.max_response_bytes,
            backend_token: u.backend_token.clone().filter(|t| !t.is_empty()),
        })
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn routes(&self) -> &Routes {
        &self.routes
    }

    /// Whether client publications can be written (they need Kafka).
    pub fn can_publish(&self) -> bool {
        self.producer.is_some() && self.publish_topic.is_some()
    }

    /// One RPC call, end to end, bounded by `RPC_TIMEOUT_MS`: the backend's answer, or why not.
    pub async fn call(
        &self,
        caller: &Caller,
        method: &str,
        data: &RawValue,
    ) -> Result<Box<RawValue>, Failure> {
        let started = Instant::now();
        let (label, result) = match self.routes.backend(method) {
            None => (
                "none",
                Err(Failure::new(
                    "unknown_method",
                    format!("no backend answers method {method:?}"),
                )),
            ),
            Some(backend) => {
                let request_id = uuid::Uuid::new_v4().to_string();
                let session = caller.session_text();
                let deadline_ms = unix_ms() + self.timeout.as_millis() as u64;
                let mut request = CallRequest {
                    request_id: &request_id,
                    method,
                    data,
                    user: &caller.user,
                    session: &session,
                    workspace: caller.workspace.as_deref(),
                    roles: caller.roles.iter().map(|r| &**r).collect(),
                    deadline_ms,
                    reply_to: None,
                };
                let (label, call) = match backend {
                    Backend::Http(url) => ("http", self.http_call(url, &request).left_future()),
                    Backend::Kafka(topic) => {
                        request.reply_to = self.reply_topic.as_deref().map(|topic| ReplyTo {
                            topic,
                            session: &session,
                        });
                        (
                            "kafka",
                            self.kafka_call(topic, caller.session, &request).right_future(),
                        )
                    }
                };
                let result = match tokio::time::timeout(self.timeout, call).await {
                    Ok(result) => result,
                    Err(_) => Err(Failure::new(
                        "timeout",
                        format!(
                            "the backend did not answer within {} ms",
                            self.timeout.as_millis()
                        ),
                    )),
                };
                (label, result)
            }
        };
        let outcome = result.as_ref().map_or_else(|f| f.code.as_str(), |_| "ok");
        self.stats.rpc_call(label, outcome, started.elapsed());
        result
    }

    async fn http_call(&self, url: &str, request: &CallRequest<'_>) -> Result<Box<RawValue>, Failure> {
        let mut builder = self
            .http
            .post(url)
            .header("X-Request-Id", request.request_id)
            .json(request);
        if let Some(token) = &self.backend_token {
            builder = builder.bearer_auth(token);
        }
        let mut response = builder.send().await.map_err(|e| {
            if e.is_timeout() {
                Failure::new("timeout", "the backend did not answer in time")
            } else {
                Failure::new(
                    "backend_unavailable",
                    format!("the backend cannot be reached: {}", root(&e)),
                )
            }
        })?;
        let status = response.status();
        if response
            .content_length()
            .is_some_and(|n| n > self.max_response_bytes as u64)
        {
            return Err(too_large(self.max_response_bytes));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| Failure::new("backend_error", format!("the answer broke off: {}", root(&e))))?
        {
            if body.len() + chunk.len() > self.max_response_bytes {
                return Err(too_large(self.max_response_bytes));
            }
            body.extend_from_slice(&chunk);
        }
        if status.is_success() {
            let text = String::from_utf8(body)
                .map_err(|_| Failure::new("backend_error", "the backend's answer is not UTF-8 JSON"))?;
            return RawValue::from_string(text)
                .map_err(|_| Failure::new("backend_error", "the backend's answer is not JSON"));
        }
        #[derive(serde::Deserialize)]
        struct Problem {
            error: crate::hub::replies::ReplyError,
        }
        if let Ok(problem) = serde_json::from_slice::<Problem>(&body) {
            let code: String = problem.error.code.chars().take(64).collect();
            if !code.is_empty() {
                return Err(Failure::new(
                    &code,
                    problem.error.message.chars().take(1024).collect::<String>(),
                ));
            }
        }
        let code = match status.as_u16() {
            502..=504 => "backend_unavailable",
            _ => "backend_error",
        };
        Err(Failure::new(
            code,
            format!("the backend answered HTTP {}", status.as_u16()),
        ))
    }

    async fn kafka_call(
        &self,
        topic: &str,
        session: u128,
        request: &CallRequest<'_>,
    ) -> Result<Box<RawValue>, Failure> {
        let (Some(producer), Some(_)) = (&self.producer, &self.reply_topic) else {
            return Err(Failure::new(
                "unavailable",
                "Kafka is not configured on this gateway",
            ));
        };
        let value = serde_json::to_string(request).expect("a call request serialises");
        // Waiting before the request is written: the answer cannot come before the waiter.
        let answer = self.replies.wait(request.request_id, session);
        let _forget = Forget(&self.replies, request.request_id);
        let record = FutureRecord::to(topic).key(request.session).payload(&value);
        producer.send(record, self.timeout).await.map_err(|(e, _)| {
            Failure::new("backend_unavailable", format!("the request was not written: {e}"))
        })?;
        match answer.await {
            Ok(Answer::Result(data)) if data.get().len() > self.max_response_bytes => {
                Err(too_large(self.max_response_bytes))
            }
            Ok(Answer::Result(data)) => Ok(data),
            Ok(Answer::Error { code, message }) => Err(Failure { code, message }),
            Err(_) => Err(Failure::new("backend_unavailable", "the call was dropped")),
        }
    }

    /// Writes a client publication to `CLIENT_PUBLISH_TOPIC`, keyed by room, and returns its
    /// event id once the broker acknowledged it.
    pub async fn publish(
        &self,
        caller: &Caller,
        room: &str,
        event_type: &str,
        data: &RawValue,
        ephemeral: bool,
    ) -> Result<String, Failure> {
        let (Some(producer), Some(topic)) = (&self.producer, &self.publish_topic) else {
            return Err(Failure::new("unavailable", "client publications need Kafka"));
        };
        let id = uuid::Uuid::now_v7().to_string();
        let session = caller.session_text();
        let mut to = serde_json::json!({ "room": room });
        if let Some(ws) = caller.workspace.as_deref() {
            to["workspace"] = ws.into();
        }
        let mut envelope = serde_json::json!({
            "id": id,
            "event_type": event_type,
            "data": data,
            "to": to,
            "occurred_at": crate::protocol::now_rfc3339(),
            "from": {"user": &*caller.user, "session": session},
        });
        if ephemeral {
            envelope["ephemeral"] = true.into();
        }
        let key = format!("room:{}/{room}", caller.workspace.as_deref().unwrap_or(""));
        let value = envelope.to_string();
        let record = FutureRecord::to(topic).key(&key).payload(&value);
        match tokio::time::timeout(self.timeout, producer.send(record, self.timeout)).await {
            Ok(Ok(_)) => Ok(id),
            Ok(Err((e, _))) => Err(Failure::new("unavailable", format!("not written: {e}"))),
            Err(_) => Err(Failure::new(
                "unavailable",
                "the broker did not acknowledge in time",
            )),
        }
    }
}

/// Removes a call's waiter however the call ends (answered, failed, timed out).
struct Forget<'a>(&'a Replies, &'a str);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0.forget(self.1);
    }
}

fn too_large(max: usize) -> Failure {
    Failure::new(
        "response_too_large",
        format!("the backend's answer is larger than RPC_MAX_RESPONSE_BYTES ({max})"),
    )
}

/// The innermost cause of an error (reqwest's own message is only "error sending request").
fn root(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}
