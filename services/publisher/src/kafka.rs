//! The Kafka backend: one idempotent producer, record key = the event's partition key (a task
//! event's user, a generic event's room or user: their events share a partition and keep their
//! order), and `publish` returns only once the broker acknowledged.

use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

use crate::{to_json, Envelope, PublishError};

pub struct KafkaPublisher {
    producer: FutureProducer,
    topic: String,
    timeout: Duration,
}

impl KafkaPublisher {
    /// A producer for `brokers` writing to `topic`. `timeout` bounds each publish, from queueing
    /// to the broker's ack (librdkafka's `message.timeout.ms`).
    pub fn new(brokers: &str, topic: &str, timeout: Duration) -> Result<Self, PublishError> {
        Self::with_properties(brokers, topic, timeout, &[])
    }

    /// As [`KafkaPublisher::new`], plus librdkafka properties (security, SASL, TLS, ...).
    pub fn with_properties(
        brokers: &str,
        topic: &str,
        timeout: Duration,
        properties: &[(&str, &str)],
    ) -> Result<Self, PublishError> {
        if brokers.trim().is_empty() {
            return Err(PublishError::Config(
                "no Kafka brokers given (KAFKA_BROKERS)".into(),
            ));
        }
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", brokers)
            .set("client.id", "task-publisher")
            // Exactly-once per partition from this producer, in order, acked by all replicas.
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("message.timeout.ms", timeout.as_millis().to_string());
        for (key, value) in properties {
            config.set(*key, *value);
        }
        Ok(KafkaPublisher {
            producer: config.create()?,
            topic: topic.to_string(),
            timeout,
        })
    }

    pub async fn publish(&self, event: &impl Envelope) -> Result<(), PublishError> {
        let payload = to_json(event)?;
        let key = event.partition_key();
        let record = FutureRecord::to(&self.topic)
            .key(key.as_bytes())
            .payload(&payload);
        self.producer
            .send(record, self.timeout)
            .await
            .map(|_| ())
            .map_err(|(error, _)| PublishError::Kafka(error))
    }
}
