//! The Dapr backend: `POST /v1.0/publish/{pubsub}/{topic}` on the sidecar, with the user id as
//! the Kafka partition key. 5xx answers and connection errors are retried a bounded number of
//! times with exponential backoff; a 4xx is returned at once with Dapr's `errorCode`.

use std::time::Duration;

use reqwest::header::CONTENT_TYPE;
use reqwest::Url;

use crate::{to_json, Envelope, PublishError};

pub struct DaprPublisher {
    client: reqwest::Client,
    url: Url,
    api_token: Option<String>,
    attempts: u32,
    backoff: Duration,
}

impl DaprPublisher {
    /// Publishes through the sidecar at `base` (e.g. `http://localhost:3500`).
    pub fn new(
        base: &str,
        pubsub: &str,
        topic: &str,
        api_token: Option<String>,
    ) -> Result<Self, PublishError> {
        let mut url =
            Url::parse(base).map_err(|e| PublishError::Config(format!("sidecar url {base}: {e}")))?;
        url.path_segments_mut()
            .map_err(|_| PublishError::Config(format!("sidecar url {base} cannot take a path")))?
            .pop_if_empty()
            .extend(["v1.0", "publish", pubsub, topic]);
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| PublishError::Config(e.to_string()))?;
        Ok(DaprPublisher {
            client,
            url,
            api_token: api_token.filter(|t| !t.is_empty()),
            attempts: 4,
            backoff: Duration::from_millis(100),
        })
    }

    /// The sidecar on `localhost:$DAPR_HTTP_PORT` (default 3500), with `DAPR_API_TOKEN` when set.
    pub fn from_env(pubsub: &str, topic: &str) -> Result<Self, PublishError> {
        let port = std::env::var("DAPR_HTTP_PORT").unwrap_or_else(|_| "3500".into());
        let port: u16 = port
            .parse()
            .map_err(|_| PublishError::Config(format!("DAPR_HTTP_PORT={port} is not a port number")))?;
        Self::new(
            &format!("http://localhost:{port}"),
            pubsub,
            topic,
            std::env::var("DAPR_API_TOKEN").ok(),
        )
    }

    /// How many times a publish is tried in all (at least 1), and the first backoff (doubled
    /// after each failure).
    pub fn with_retries(mut self, attempts: u32, first_backoff: Duration) -> Self {
        self.attempts = attempts.max(1);
        self.backoff = first_backoff;
        self
    }

    /// Bounds each HTTP request.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Result<Self, PublishError> {
        self.client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| PublishError::Config(e.to_string()))?;
        Ok(self)
    }

    pub async fn publish(&self, event: &impl Envelope) -> Result<(), PublishError> {
        let body = to_json(event)?;
        let key = event.partition_key();
        let mut backoff = self.backoff;
        let mut last_error = String::new();
        for attempt in 1..=self.attempts {
            let mut request = self
                .client
                .post(self.url.clone())
                .query(&[("metadata.partitionKey", key.as_str())])
                .header(CONTENT_TYPE, "application/json")
                .body(body.clone());
            if let Some(token) = &self.api_token {
                request = request.header("dapr-api-token", token);
            }
            match request.send().await {
                Ok(resp) if resp.status().is_success() => return Ok(()),
                Ok(resp) if resp.status().is_client_error() => return Err(rejected(resp).await),
                Ok(resp) => last_error = format!("HTTP {}", resp.status()),
                Err(error) => last_error = error.to_string(),
            }
            if attempt < self.attempts {
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
        }
        Err(PublishError::Unavailable {
            attempts: self.attempts,
            last_error,
        })
    }
}

/// Dapr's error body: `{"errorCode":"ERR_...","message":"..."}`.
async fn rejected(resp: reqwest::Response) -> PublishError {
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    PublishError::Rejected {
        status: status.as_u16(),
        error_code: body["errorCode"].as_str().map(String::from),
        message: body["message"]
            .as_str()
            .map(String::from)
            .unwrap_or_else(|| status.canonical_reason().unwrap_or("").to_string()),
    }
}
