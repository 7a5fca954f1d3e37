//! A tansu broker of a test's or a workload's own, which it can kill and start again, and topic
//! creation that retries while a broker comes up. Shared by the end-to-end tests
//! (`tests/e2e/`) and the benchmark's chaos workload (`benches/gateway/`) through `#[path]`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::ClientConfig;

/// An in-memory tansu on a port of its own: `kill` and `start` again lose its log, as a broker
/// restart without durable storage does.
pub struct OwnBroker {
    bin: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl OwnBroker {
    /// Not started yet: on a free port, so clients can be pointed at it before it is up.
    pub fn new(bin: PathBuf) -> OwnBroker {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        OwnBroker {
            bin,
            port,
            child: None,
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts it and waits until it accepts connections (20 s at most).
    pub async fn start(&mut self) {
        let url = format!("tcp://{}", self.addr());
        let child = Command::new(&self.bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.bin.display()));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(self.addr()).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "tansu did not start on {}",
                self.addr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL, and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Creates `topic` with `partitions`, retrying for up to `within` while the broker comes up. A
/// topic that already exists counts as created: after a broker restart, a retry whose first
/// answer was lost, or a client's metadata request (brokers may create topics on it), can get
/// there first.
pub async fn create_topic_retrying(brokers: &str, topic: &str, partitions: i32, within: Duration) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client");
    let deadline = Instant::now() + within;
    loop {
        let result = admin
            .create_topics(
                &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(5))),
            )
            .await;
        if matches!(
            result.as_deref(),
            Ok([Ok(_)]) | Ok([Err((_, RDKafkaErrorCode::TopicAlreadyExists))])
        ) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "cannot create topic {topic}: {result:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
