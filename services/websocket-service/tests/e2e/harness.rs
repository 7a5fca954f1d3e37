//! Test harness: a real gateway on port 0, a real Kafka-protocol broker over TCP, real WebSocket
//! clients. The shared broker comes from `make test` (`KAFKA_TEST_BROKERS`); tests that must
//! stop a broker start their own from `TANSU_BIN`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use websocket_service::telemetry::Stats;

use crate::broker::create_topic_retrying;
use websocket_service::{Gateway, Settings};

pub const SECRET: &str = "e2e-test-secret-0123456789";
/// How long a test waits for something that should happen.
pub const WAIT: Duration = Duration::from_secs(20);

/// The shared broker started by `make test`. Missing is a failure, never a skip.
pub fn brokers() -> String {
    std::env::var("KAFKA_TEST_BROKERS").expect(
        "KAFKA_TEST_BROKERS is not set: run the tests with `make test`, which installs and starts a broker",
    )
}

pub fn tansu_bin() -> PathBuf {
    PathBuf::from(std::env::var("TANSU_BIN").expect("TANSU_BIN is not set: run the tests with `make test`"))
}

/// The tests' HTTP client. One, because building one loads the system's CA certificates (tens
/// of milliseconds in a debug build); without a pool, as every test has its own runtime and a
/// pooled connection belongs to the runtime that opened it.
pub fn http() -> reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .expect("http client")
        })
        .clone()
}

/// `GET http://{addr}{path}`: the status and the JSON body (null when it is not JSON).
pub async fn get_at(addr: &dyn std::fmt::Display, path: &str) -> (u16, Value) {
    let resp = http()
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .expect("http get");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// The `/metrics` text of the internal listener at `addr`.
pub async fn metrics_at(addr: &dyn std::fmt::Display) -> String {
    http()
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text")
}

/// Waits until the gateway at `addr` answers `/ready` with 200 (a process may not listen yet).
pub async fn wait_ready_at(addr: &dyn std::fmt::Display) {
    let deadline = Instant::now() + WAIT;
    loop {
        let answer = http().get(format!("http://{addr}/ready")).send().await;
        if answer.as_ref().is_ok_and(|r| r.status() == 200) {
            return;
        }
        assert!(Instant::now() < deadline, "{addr} not ready in time: {answer:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the gateway at `addr` reports `n` open connections on `/health`.
pub async fn wait_connections_at(addr: &dyn std::fmt::Display, n: u64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, body) = get_at(addr, "/health").await;
        if body["connections"] == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "expected {n} connections, /health says {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `GET url`, its JSON body.
pub async fn get_json(url: String) -> Value {
    http()
        .get(url)
        .send()
        .await
        .expect("http get")
        .json()
        .await
        .expect("a JSON body")
}

pub fn fixture(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// Environment for a gateway with an HS256 secret and, when given, a Kafka topic.
pub fn env_for(brokers: Option<&str>, topic: Option<&str>) -> Vec<(String, String)> {
    let mut env = vec![
        ("JWT_SECRET", SECRET.to_string()),
        ("HOST", "127.0.0.1".into()),
        ("WORKERS", "1".into()),
        ("KAFKA_METADATA_REFRESH_SECS", "1".into()),
        ("RDKAFKA_FETCH_WAIT_MAX_MS", "10".into()),
        ("RDKAFKA_RECONNECT_BACKOFF_MAX_MS", "500".into()),
    ];
    if let Some(b) = brokers {
        env.push(("KAFKA_BROKERS", b.to_string()));
    }
    if let Some(t) = topic {
        env.push(("KAFKA_TOPICS", t.to_string()));
        env.push(("GATEWAY_CONTROL_TOPIC", control_topic(t)));
    }
    env.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

pub fn set(env: &mut Vec<(String, String)>, key: &str, value: &str) {
    env.retain(|(k, _)| k != key);
    env.push((key.to_string(), value.to_string()));
}

/// A gateway running in this process; stopped on drop.
pub struct TestGateway {
    /// The public listener: `/ws`, `/health`, `/ready`, the Dapr routes.
    pub addr: SocketAddr,
    /// The internal listener: `/metrics` and the server API.
    pub internal: SocketAddr,
    pub stats: Arc<Stats>,
    /// Its router: how many events it has routed (what the tests wait on, not a sleep).
    router: Arc<websocket_service::hub::router::Router>,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestGateway {
    pub async fn start(env: Vec<(String, String)>) -> Self {
        let settings = Settings::load(env).expect("test settings");
        let listeners = websocket_service::http::Listeners {
            public: std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
            internal: std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
        };
        let addr = listeners.public.local_addr().unwrap();
        let internal = listeners.internal.local_addr().unwrap();
        let gateway = Gateway::new(settings).expect("gateway");
        let stats = gateway.stats();
        let router = gateway.router();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(gateway.run(listeners, shutdown.clone()));
        TestGateway {
            addr,
            internal,
            stats,
            router,
            shutdown,
            task: Some(task),
        }
    }

    /// Starts a gateway on `topic` of the shared broker and waits until it is ready.
    pub async fn on_topic(topic: &str) -> Self {
        let gw = Self::start(env_for(Some(&brokers()), Some(topic))).await;
        gw.wait_ready().await;
        gw
    }

    pub fn url(&self, token: &str) -> String {
        format!("ws://{}/ws?token={token}", self.addr)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        get_at(&self.addr, path).await
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        metrics_at(&self.internal).await
    }

    pub async fn wait_ready(&self) {
        wait_ready_at(&self.addr).await;
    }

    /// Events routed so far (every event read or published here, in the history's numbering).
    pub fn routed(&self) -> u64 {
        self.router.history().next_seq()
    }

    /// Waits until this replica has routed `n` events in all (it has read what was published).
    pub async fn wait_routed(&self, n: u64) {
        let deadline = Instant::now() + WAIT;
        while self.routed() < n {
            assert!(
                Instant::now() < deadline,
                "routed {} of {n} events",
                self.routed()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until `/health` reports `n` open connections.
    pub async fn wait_connections(&self, n: u64) {
        wait_connections_at(&self.addr, n).await;
    }

    /// `POST /api/publish` on the internal listener with `key`; returns status and JSON body.
    pub async fn publish(&self, key: &str, body: &Value) -> (u16, Value) {
        if let Some(events) = body.as_array() {
            events.iter().for_each(assert_event_schema);
        } else if body.is_object() {
            assert_event_schema(body);
        }
        self.publish_raw(key, body.to_string()).await
    }

    pub async fn publish_raw(&self, key: &str, body: String) -> (u16, Value) {
        let resp = http()
            .post(format!("http://{}/api/publish", self.internal))
            .bearer_auth(key)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("publish");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await.expect("gateway task").expect("gateway run");
        }
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// An HS256 token for `user`, valid for an hour.
pub fn token(user: &str) -> String {
    token_with(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        json!({"sub": user, "exp": now_secs() + 3600}),
    )
}

/// An HS256 token for `user` with extra claims (roles, rooms, workspace_id, ...).
pub fn token_claims(user: &str, extra: Value) -> String {
    let mut claims = json!({"sub": user, "exp": now_secs() + 3600});
    if let (Some(claims), Some(extra)) = (claims.as_object_mut(), extra.as_object()) {
        claims.extend(extra.clone());
    }
    token_with(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        claims,
    )
}

pub fn token_with(alg: Algorithm, key: &EncodingKey, claims: Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), &claims, key).expect("sign token")
}

// ---- Kafka helpers -------------------------------------------------------------------------

/// A new events topic, and its control topic (see [`env_for`]).
pub async fn create_topic(brokers: &str, partitions: i32) -> String {
    let topic = unique("e2e");
    create_topic_named(brokers, &topic, partitions).await;
    create_topic_named(brokers, &control_topic(&topic), 1).await;
    topic
}

/// The control topic of the gateways reading `topic`: one per test, so that one test's
/// remembered sessions (catch-up), presence and beats never reach another's gateways.
pub fn control_topic(topic: &str) -> String {
    format!("{topic}-control")
}

/// Creates `topic`, retrying while the broker is still coming up.
pub async fn create_topic_named(brokers: &str, topic: &str, partitions: i32) {
    create_topic_retrying(brokers, topic, partitions, WAIT).await;
}

pub fn producer(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "0")
        .set("message.timeout.ms", "20000")
        .create()
        .expect("producer")
}

pub async fn produce(producer: &FutureProducer, topic: &str, key: &str, payload: &[u8]) {
    producer
        .send(
            FutureRecord::to(topic).key(key).payload(payload),
            Duration::from_secs(20),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("produce");
}

pub fn task_event(user: &str, event: &str, task: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({"event_type": event, "user_id": user, "task": task})).unwrap()
}

// ---- WebSocket client ----------------------------------------------------------------------

static SERVER_SCHEMA: OnceLock<jsonschema::Validator> = OnceLock::new();
static EVENT_SCHEMA: OnceLock<jsonschema::Validator> = OnceLock::new();

fn validator(name: &str) -> jsonschema::Validator {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../schemas")
        .join(name);
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .expect("schema compiles")
}

/// Every event a test publishes is checked against the published record schema.
pub fn assert_event_schema(event: &Value) {
    let validator = EVENT_SCHEMA.get_or_init(|| validator("task-event.schema.json"));
    if let Err(error) = validator.validate(event) {
        panic!("event does not match task-event.schema.json: {error}\n{event}");
    }
}

/// Every message a test reads from the gateway is checked against the published schema.
pub fn assert_server_schema(msg: &Value) {
    let validator = SERVER_SCHEMA.get_or_init(|| validator("ws-server-message.schema.json"));
    if let Err(error) = validator.validate(msg) {
        panic!("message does not match ws-server-message.schema.json: {error}\n{msg}");
    }
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub struct Client {
    pub ws: Ws,
    /// The `connected` message.
    pub hello: Value,
}

/// Connects and reads the `connected` message.
pub async fn connect(url: &str) -> Client {
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("websocket connect");
    let hello = recv_json(&mut ws).await;
    assert_eq!(hello["type"], "connected", "first message: {hello}");
    Client { ws, hello }
}

/// The next JSON text message (pings are answered by tungstenite and skipped).
pub async fn recv_json(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("timed out waiting for a message")
            .expect("socket ended")
            .expect("socket error");
        match msg {
            Message::Text(text) => {
                let value: Value = serde_json::from_str(&text).expect("server sent JSON");
                assert_server_schema(&value);
                return value;
            }
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

impl Client {
    pub async fn recv(&mut self) -> Value {
        recv_json(&mut self.ws).await
    }

    pub async fn send(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.expect("send");
    }

    /// Sends a message and returns the next one (its answer, when nothing else is pending).
    pub async fn ask(&mut self, message: Value) -> Value {
        self.send(&message.to_string()).await;
        self.recv().await
    }

    /// Joins `room` and expects `joined_room`.
    pub async fn join(&mut self, room: &str) {
        let reply = self.ask(json!({"type": "join_room", "room": room})).await;
        assert_eq!(reply["type"], "joined_room", "join {room}: {reply}");
        assert_eq!(reply["data"]["room"], room);
    }

    /// Round-trips a ping: everything queued before it has been read once this returns.
    pub async fn assert_nothing_pending(&mut self) {
        self.send(r#"{"type":"ping"}"#).await;
        let next = self.recv().await;
        assert_eq!(next["type"], "pong", "unexpected message before pong: {next}");
    }
}

/// Connects over a socket with a 4 KiB receive buffer (so a client that does not read blocks
/// the server's writes quickly), and reads the `connected` message.
pub async fn connect_small_buffer(url: &str) -> Client {
    let host = url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(host.parse().unwrap()).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream))
        .await
        .expect("websocket connect");
    let hello = recv_json(&mut ws).await;
    assert_eq!(hello["type"], "connected", "first message: {hello}");
    Client { ws, hello }
}

/// Connects and expects the socket to be closed with `code` (after the upgrade). Returns the
/// close reason.
pub async fn expect_close(url: &str, code: u16) -> String {
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("upgrade completes");
    wait_close(&mut ws, code).await
}

/// Connects and expects the upgrade itself to be refused with `status` and a JSON body.
pub async fn expect_refused_at_upgrade(url: &str, status: u16) -> Value {
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), status);
            let body = resp.body().clone().unwrap_or_default();
            serde_json::from_slice(&body).expect("a JSON body")
        }
        other => panic!("expected the upgrade refused with {status}, got {other:?}"),
    }
}

/// Reads until a close frame; asserts its code; no task event may come before it.
pub async fn wait_close(ws: &mut Ws, code: u16) -> String {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("timed out waiting for close");
        match msg {
            Some(Ok(Message::Close(Some(frame)))) => {
                assert_eq!(
                    frame.code,
                    CloseCode::from(code),
                    "close reason: {}",
                    frame.reason
                );
                return frame.reason.to_string();
            }
            Some(Ok(Message::Text(text))) => {
                let value: Value = serde_json::from_str(&text).unwrap();
                assert_server_schema(&value);
                assert_ne!(
                    value["type"], "task_update",
                    "no event may reach this socket: {value}"
                );
            }
            Some(Ok(_)) => continue,
            other => panic!("expected close {code}, got {other:?}"),
        }
    }
}

// ---- the real binary -------------------------------------------------------------------------

/// The `websocket-service` binary as its own process; killed on drop.
pub struct ServiceProcess {
    child: std::process::Child,
    pub port: u16,
    pub internal_port: u16,
}

/// `VmRSS` of a process, in KiB (0 once it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl ServiceProcess {
    /// Starts the binary with an HS256 secret, no Kafka, and `extra`; waits until it answers.
    pub async fn spawn(extra: &[(&str, &str)]) -> Self {
        let (port, internal_port) = (free_port(), free_port());
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_websocket-service"))
            .env_clear()
            .env("HOST", "127.0.0.1")
            .env("PORT", port.to_string())
            .env("INTERNAL_PORT", internal_port.to_string())
            .env("JWT_SECRET", SECRET)
            .env("RUST_LOG", "warn")
            .envs(extra.iter().copied())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start websocket-service");
        let service = ServiceProcess {
            child,
            port,
            internal_port,
        };
        let deadline = Instant::now() + WAIT;
        while http()
            .get(format!("http://127.0.0.1:{port}/health"))
            .send()
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "service did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        service
    }

    /// Starts the binary with the settings of an in-process gateway (`env_for` and what a test
    /// set on top), so both run as one cluster.
    pub async fn spawn_env(env: &[(String, String)]) -> Self {
        let extra: Vec<(&str, &str)> = env
            .iter()
            .filter(|(k, _)| k != "JWT_SECRET" && k != "HOST")
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        Self::spawn(&extra).await
    }

    pub fn base(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its resident memory, in KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid())
    }

    /// Waits until `/ready` answers 200.
    pub async fn wait_ready(&self) {
        wait_ready_at(&self.base()).await;
    }

    /// Waits until `/health` reports `n` open connections.
    pub async fn wait_connections(&self, n: u64) {
        wait_connections_at(&self.base(), n).await;
    }

    /// Its `/metrics` text (internal listener).
    pub async fn metrics(&self) -> String {
        metrics_at(&format!("127.0.0.1:{}", self.internal_port)).await
    }

    pub fn signal(&self, name: &str) {
        let sent = std::process::Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    }

    /// Waits for the process to exit, at most `limit`.
    pub async fn wait_exit(mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "process still running after {limit:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- a JWKS endpoint -------------------------------------------------------------------------

/// A JWKS endpoint whose key set, cache lifetime and answer delay a test can change. Every kid
/// names the Ed25519 fixture key.
pub struct JwksServer {
    addr: SocketAddr,
    state: Arc<std::sync::Mutex<JwksState>>,
    pub fetches: Arc<std::sync::atomic::AtomicUsize>,
}

struct JwksState {
    kids: Vec<String>,
    max_age: Option<u64>,
    delay: Duration,
}

impl JwksServer {
    pub async fn start() -> Self {
        use base64::Engine as _;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let public = fixture("ed25519-public.pem");
        // The raw 32-byte key is the tail of the DER SubjectPublicKeyInfo.
        let der: String = public.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = base64::engine::general_purpose::STANDARD.decode(der).unwrap();
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&der[der.len() - 32..]);
        let state = Arc::new(std::sync::Mutex::new(JwksState {
            kids: vec!["k1".into()],
            max_age: None,
            delay: Duration::ZERO,
        }));
        let fetches = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (st, count) = (state.clone(), fetches.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let (body, max_age, delay) = {
                    let s = st.lock().unwrap();
                    let keys: Vec<Value> = s
                        .kids
                        .iter()
                        .map(|kid| json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig"}))
                        .collect();
                    (json!({ "keys": keys }).to_string(), s.max_age, s.delay)
                };
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = sock.read(&mut buf).await;
                    tokio::time::sleep(delay).await;
                    let cache = max_age.map_or(String::new(), |s| {
                        format!("cache-control: public, max-age={s}\r\n")
                    });
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n{cache}content-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = sock.write_all(resp.as_bytes()).await;
                });
            }
        });
        JwksServer { addr, state, fetches }
    }

    pub fn url(&self) -> String {
        format!("http://{}/.well-known/jwks.json", self.addr)
    }

    pub fn set_keys(&self, kids: &[&str]) {
        self.state.lock().unwrap().kids = kids.iter().map(|k| k.to_string()).collect();
    }

    pub fn set_max_age(&self, secs: u64) {
        self.state.lock().unwrap().max_age = Some(secs);
    }

    pub fn set_delay(&self, delay: Duration) {
        self.state.lock().unwrap().delay = delay;
    }

    /// An EdDSA token for `sub` signed by the fixture key under `kid`.
    pub fn token(&self, kid: &str, sub: &str, exp: u64) -> String {
        let key = EncodingKey::from_ed_pem(fixture("ed25519-private.pem").as_bytes()).unwrap();
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(kid.into());
        jsonwebtoken::encode(&header, &json!({"sub": sub, "exp": exp}), &key).unwrap()
    }
}

/// Runs the binary with exactly `vars` and expects it to exit on its own within 10 s (a bad
/// configuration). Returns the exit code and stderr.
pub fn run_to_exit(vars: &[(&str, &str)]) -> (Option<i32>, String) {
    use std::io::Read as _;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_websocket-service"))
        .env_clear()
        .envs(vars.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the service kept running with {vars:?}; expected it to refuse the configuration");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    (status.code(), stderr)
}

// ---- a client as the existing frontends are written ---------------------------------------

/// What a seed-style client did.
#[derive(Debug, Default, Clone)]
pub struct SeedLog {
    /// Connection attempts made.
    pub attempts: u32,
    /// Attempts whose socket opened.
    pub opened: u32,
    /// Close codes received after an open.
    pub closes: Vec<u16>,
    /// Text messages received, in order.
    pub messages: Vec<Value>,
    /// It stopped trying (five failed tries in a row).
    pub gave_up: bool,
}

/// A client that behaves exactly as the existing frontends do (docs/wire-contract.md): it
/// reconnects after every close whatever the code, resets its retry counter when a socket opens,
/// waits 1 s, 2 s, 4 s, ... between tries, gives up after 5 tries in a row, and reads the token
/// again before each try (`url()` is called per attempt). Never sends a cursor or a join.
pub struct SeedClient {
    pub log: Arc<std::sync::Mutex<SeedLog>>,
    task: tokio::task::JoinHandle<()>,
}

impl SeedClient {
    pub fn start(url: impl Fn() -> String + Send + 'static) -> Self {
        Self::start_with(url, Vec::new())
    }

    /// As [`SeedClient::start`], sending `first` right after the first open only (the helpdesk
    /// client joins its room once and never again).
    pub fn start_with(url: impl Fn() -> String + Send + 'static, first: Vec<String>) -> Self {
        let log = Arc::new(std::sync::Mutex::new(SeedLog::default()));
        let shared = log.clone();
        let task = tokio::spawn(async move {
            let mut retries: u32 = 0;
            loop {
                shared.lock().unwrap().attempts += 1;
                if let Ok((mut ws, _)) = tokio_tungstenite::connect_async(url()).await {
                    // onopen
                    retries = 0;
                    let opened = {
                        let mut log = shared.lock().unwrap();
                        log.opened += 1;
                        log.opened
                    };
                    if opened == 1 {
                        for message in &first {
                            let _ = ws.send(Message::text(message.clone())).await;
                        }
                    }
                    loop {
                        match ws.next().await {
                            Some(Ok(Message::Text(text))) => {
                                let value: Value = serde_json::from_str(&text).unwrap();
                                assert_server_schema(&value);
                                shared.lock().unwrap().messages.push(value);
                            }
                            Some(Ok(Message::Close(frame))) => {
                                let code = frame.map_or(1005, |f| u16::from(f.code));
                                shared.lock().unwrap().closes.push(code);
                                break;
                            }
                            Some(Ok(_)) => {}
                            _ => {
                                shared.lock().unwrap().closes.push(1006);
                                break;
                            }
                        }
                    }
                }
                // onclose (after an open, or a failed try)
                if retries >= 5 {
                    shared.lock().unwrap().gave_up = true;
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1 << retries)).await;
                retries += 1;
            }
        });
        SeedClient { log, task }
    }

    pub fn snapshot(&self) -> SeedLog {
        self.log.lock().unwrap().clone()
    }

    /// Waits until `done(log)` holds, at most `limit`.
    pub async fn wait_for(&self, limit: Duration, done: impl Fn(&SeedLog) -> bool) -> SeedLog {
        let deadline = Instant::now() + limit;
        loop {
            let log = self.snapshot();
            if done(&log) || Instant::now() >= deadline {
                return log;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for SeedClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}
