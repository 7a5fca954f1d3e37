//! Configuration: defaults < optional TOML file (`CONFIG_FILE`) < environment.
//!
//! The environment names in [`ENV_KEYS`] are public contract (deployments set them); the README's
//! configuration table is written from that list. Any librdkafka property can be passed through as
//! `RDKAFKA_<NAME>` (upper case, dots as underscores: `RDKAFKA_FETCH_WAIT_MAX_MS=10` sets
//! `fetch.wait.max.ms`), or in the file under `[kafka.properties]`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

/// Exit code for a configuration error (EX_USAGE from sysexits.h).
pub const EXIT_USAGE: i32 = 64;

/// Environment variable -> configuration key. `BETTER_AUTH_SECRET` is an alias that
/// `JWT_SECRET` overrides when both are set (it comes later in this list); likewise
/// `PUBLISH_API_KEY` and `SERVER_API_KEY`.
pub const ENV_KEYS: &[(&str, &str)] = &[
    ("HOST", "server.host"),
    ("PORT", "server.port"),
    ("WORKERS", "server.workers"),
    ("LISTEN_BACKLOG", "server.listen_backlog"),
    ("SOCKET_SEND_BUFFER_BYTES", "server.socket_send_buffer_bytes"),
    ("INTERNAL_HOST", "server.internal_host"),
    ("INTERNAL_PORT", "server.internal_port"),
    ("METRICS_TOKEN", "server.metrics_token"),
    ("MAX_CONNECTIONS", "server.max_connections"),
    ("MAX_CONNECTIONS_PER_USER", "server.max_connections_per_user"),
    ("MAX_FRAME_BYTES", "server.max_frame_bytes"),
    ("SESSION_QUEUE_CAPACITY", "server.session_queue_capacity"),
    ("HEARTBEAT_INTERVAL_SECS", "server.heartbeat_interval_secs"),
    ("CLIENT_TIMEOUT_SECS", "server.client_timeout_secs"),
    ("WRITE_TIMEOUT_SECS", "server.write_timeout_secs"),
    ("REFUSAL_MEMORY_SECS", "server.refusal_memory_secs"),
    ("REFUSAL_MEMORY_CAPACITY", "server.refusal_memory_capacity"),
    ("OVERLOAD_CLOSE_DELAY_MS", "server.overload_close_delay_ms"),
    ("DRAIN_WINDOW_SECS", "server.drain_window_secs"),
    ("SHUTDOWN_GRACE_SECS", "server.shutdown_grace_secs"),
    ("BETTER_AUTH_SECRET", "auth.jwt_secret"),
    ("JWT_SECRET", "auth.jwt_secret"),
    ("JWT_PUBLIC_KEY", "auth.jwt_public_key"),
    ("JWT_ALGORITHM", "auth.jwt_algorithm"),
    ("JWT_JWKS_URL", "auth.jwt_jwks_url"),
    ("JWT_ISSUER", "auth.jwt_issuer"),
    ("JWT_AUDIENCE", "auth.jwt_audience"),
    ("JWT_LEEWAY_SECS", "auth.leeway_secs"),
    ("JWT_REQUIRE_EXP", "auth.require_exp"),
    ("TOKEN_EXPIRY_POLICY", "auth.expiry_policy"),
    ("JWKS_TIMEOUT_MS", "auth.jwks_timeout_ms"),
    ("JWKS_MIN_REFRESH_SECS", "auth.jwks_min_refresh_secs"),
    ("JWKS_REFRESH_SECS", "auth.jwks_refresh_secs"),
    ("JWKS_MAX_REFRESH_SECS", "auth.jwks_max_refresh_secs"),
    ("KAFKA_BROKERS", "kafka.brokers"),
    ("KAFKA_TOPICS", "kafka.topics"),
    ("KAFKA_METADATA_REFRESH_SECS", "kafka.metadata_refresh_secs"),
    ("KAFKA_CREATE_TOPICS", "kafka.create_topics"),
    ("KAFKA_START_FROM", "kafka.start_from"),
    ("GATEWAY_CONTROL_TOPIC", "kafka.control_topic"),
    ("DAPR_ENABLED", "dapr.enabled"),
    ("DAPR_INSECURE_NO_APP_TOKEN", "dapr.insecure_no_app_token"),
    ("DAPR_SUBSCRIBE", "dapr.subscribe"),
    ("DAPR_PUBSUB_NAME", "dapr.pubsub_name"),
    ("DAPR_TOPIC", "dapr.topic"),
    ("DAPR_ROUTE", "dapr.route"),
    ("DAPR_DEAD_LETTER_TOPIC", "dapr.dead_letter_topic"),
    ("DAPR_BULK_SUBSCRIBE", "dapr.bulk_subscribe"),
    ("DAPR_BULK_MAX_MESSAGES", "dapr.bulk_max_messages"),
    ("DAPR_BULK_MAX_AWAIT_MS", "dapr.bulk_max_await_ms"),
    ("APP_API_TOKEN", "dapr.app_api_token"),
    ("ROOMS_PUBLIC", "rooms.public"),
    ("MAX_ROOMS_PER_SESSION", "rooms.max_per_session"),
    ("ROOMS_USER_SCOPED", "rooms.user_scoped"),
    ("USER_ROOMS_TTL_SECS", "rooms.user_ttl_secs"),
    ("MAX_EVENT_FILTERS", "server.max_event_filters"),
    ("ANONYMOUS_ENABLED", "anonymous.enabled"),
    ("ANONYMOUS_MAX_CONNECTIONS", "anonymous.max_connections"),
    ("PUBLISH_API_KEY", "api.key"),
    ("SERVER_API_KEY", "api.key"),
    ("PUBLISH_TOPIC", "api.publish_topic"),
    ("PUBLISH_MAX_EVENTS", "api.publish_max_events"),
    ("PUBLISH_MAX_BODY_BYTES", "api.publish_max_body_bytes"),
    ("PUBLISH_TIMEOUT_MS", "api.publish_timeout_ms"),
    ("SSE_HEARTBEAT_SECS", "sse.heartbeat_secs"),
    ("SSE_RETRY_MS", "sse.retry_ms"),
    ("SSE_TOKEN_COOKIE", "sse.token_cookie"),
    ("CORS_ORIGINS", "sse.cors_origins"),
    ("POLL_MAX_WAIT_SECS", "poll.max_wait_secs"),
    ("POLL_MAX_EVENTS", "poll.max_events"),
    ("HISTORY_MAX_EVENTS", "history.max_events"),
    ("HISTORY_MAX_BYTES", "history.max_bytes"),
    ("HISTORY_MAX_AGE_SECS", "history.max_age_secs"),
    ("CATCHUP_WINDOW_SECS", "history.catchup_window_secs"),
    ("CATCHUP_HEARTBEAT_MS", "history.catchup_heartbeat_ms"),
    ("CATCHUP_MAX_SESSIONS", "history.catchup_max_sessions"),
    ("PRESENCE_ENABLED", "cluster.presence_enabled"),
    ("PRESENCE_GRACE_SECS", "cluster.presence_grace_secs"),
    ("PRESENCE_LEASE_SECS", "cluster.presence_lease_secs"),
    ("PRESENCE_MAX_LISTED", "cluster.presence_max_listed"),
    ("REVOCATION_TTL_SECS", "cluster.revocation_ttl_secs"),
    ("CLIENT_MESSAGES_PER_SEC", "cluster.client_messages_per_sec"),
    ("CLIENT_MESSAGES_BURST", "cluster.client_messages_burst"),
    ("CONNECT_RATE_PER_SEC", "cluster.connect_rate_per_sec"),
    ("CONNECT_RATE_BURST", "cluster.connect_rate_burst"),
    ("STATE_TTL_SECS", "state.ttl_secs"),
    ("STATE_MAX_KEYS", "state.max_keys"),
    ("STATE_SNAPSHOT_MAX", "state.snapshot_max"),
    ("RPC_ROUTES", "upstream.rpc_routes"),
    ("RPC_LEGACY_TYPES", "upstream.rpc_legacy_types"),
    ("RPC_TIMEOUT_MS", "upstream.rpc_timeout_ms"),
    ("RPC_MAX_IN_FLIGHT", "upstream.max_in_flight"),
    ("RPC_MAX_RESPONSE_BYTES", "upstream.max_response_bytes"),
    ("UPSTREAM_MAX_DATA_BYTES", "upstream.max_data_bytes"),
    ("CLIENT_PUBLISH_ROOMS", "upstream.publish_rooms"),
    ("CLIENT_PUBLISH_TOPIC", "upstream.publish_topic"),
    ("CLIENT_PUBLISH_PER_SEC", "upstream.publish_per_sec"),
    ("CLIENT_PUBLISH_BURST", "upstream.publish_burst"),
    ("BACKEND_TOKEN", "upstream.backend_token"),
    ("BACKEND_CA_FILE", "upstream.backend_ca_file"),
    ("BACKEND_CLIENT_CERT_FILE", "upstream.backend_client_cert_file"),
    ("BACKEND_CLIENT_KEY_FILE", "upstream.backend_client_key_file"),
    ("DEDUP_WINDOW_SECS", "dedup.window_secs"),
    ("DEDUP_CAPACITY", "dedup.capacity"),
    ("LOG_FORMAT", "log.format"),
];

/// Keys whose environment value is a comma-separated list.
const LIST_KEYS: &[&str] = &[
    "kafka.topics",
    "rooms.public",
    "rooms.user_scoped",
    "sse.cors_origins",
    "upstream.rpc_routes",
    "upstream.rpc_legacy_types",
    "upstream.publish_rooms",
];

/// Prefix of librdkafka pass-through properties in the environment.
pub const RDKAFKA_ENV_PREFIX: &str = "RDKAFKA_";

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub auth: AuthSettings,
    pub kafka: KafkaSettings,
    pub dapr: DaprSettings,
    pub dedup: DedupSettings,
    pub history: HistorySettings,
    pub sse: SseSettings,
    pub poll: PollSettings,
    pub rooms: RoomsSettings,
    pub anonymous: AnonymousSettings,
    pub api: ApiSettings,
    pub cluster: ClusterSettings,
    pub state: StateSettings,
    pub upstream: UpstreamSettings,
    pub log: LogSettings,
}

/// What clients send to backends through the gateway: RPC calls and room publications (see
/// `upstream::routes` for the syntax of the lists).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSettings {
    /// `method=backend` / `prefix*=backend`: an http(s) URL or `kafka:<topic>`.
    pub rpc_routes: Vec<String>,
    /// `client_type=method:answer_type`: old request messages answered through RPC.
    pub rpc_legacy_types: Vec<String>,
    /// How long a call may take, end to end; then `rpc_error` `timeout`.
    pub rpc_timeout_ms: u64,
    /// Calls and publications one session may have waiting at once; one more is answered
    /// `too_many_requests`.
    pub max_in_flight: usize,
    /// Largest answer taken from a backend; a larger one is `response_too_large`.
    pub max_response_bytes: usize,
    /// Largest `data` a client may send upstream (an RPC call or a publication).
    pub max_data_bytes: usize,
    /// `pattern=deny|members|rpc:<method>`: who may publish to which rooms (unmatched: deny).
    pub publish_rooms: Vec<String>,
    /// The topic client publications are written to (keyed by room) and read from.
    pub publish_topic: String,
    /// Publications per second per session, and the burst above it.
    pub publish_per_sec: u32,
    pub publish_burst: u32,
    /// Sent to HTTP backends as `Authorization: Bearer <token>`, so they know the gateway.
    pub backend_token: Option<String>,
    /// PEM CA bundle HTTP backends' certificates are checked against (besides the system's).
    pub backend_ca_file: Option<String>,
    /// PEM client certificate and PKCS#8 key the gateway presents to HTTP backends (mTLS).
    pub backend_client_cert_file: Option<String>,
    pub backend_client_key_file: Option<String>,
}

/// State events (a generic envelope with a `key`): the latest value per key and audience.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateSettings {
    /// A key not updated for this long is forgotten (no longer in snapshots). A replica that
    /// starts reads at least this much of the log back, so it knows every key still alive.
    pub ttl_secs: u64,
    /// Most keys held; beyond, a new key is delivered but not remembered (no snapshot, no
    /// compare-before-send).
    pub max_keys: usize,
    /// Most values in one snapshot (oldest updates first).
    pub snapshot_max: usize,
}

/// Presence, revocation and rate limits: what the replicas decide together (through the control
/// topic) or each for itself.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSettings {
    /// `user.online` / `user.offline` to the users who share a workspace (everyone, for users
    /// without one), and the `presence` query. Off by default: telling every user who else is
    /// online is the deployment's decision (a helpdesk wants it, a task app's users would not).
    pub presence_enabled: bool,
    /// A user whose last session closed stays online this long (a reload sends nothing); also how
    /// long a drained replica's users stay online, the time they have to reconnect elsewhere.
    pub presence_grace_secs: u64,
    /// A replica whose beats stopped this long ago is dead: its users go offline (unless they are
    /// connected elsewhere).
    pub presence_lease_secs: u64,
    /// Most users listed in a `presence` answer (the rest: `truncated`).
    pub presence_max_listed: usize,
    /// How long a revocation is kept when the request gives no `exp`: the longest lifetime of the
    /// tokens it may name.
    pub revocation_ttl_secs: u64,
    /// Client messages per second per session (0: no limit).
    pub client_messages_per_sec: u32,
    /// Messages a session may send at once above the rate (a client that joins its rooms one
    /// message each right after connecting); also the refusals within 10 s before 4009.
    pub client_messages_burst: u32,
    /// New connections per second per replica, all transports (0: no limit).
    pub connect_rate_per_sec: u32,
    /// Connections that may arrive at once above the rate.
    pub connect_rate_burst: u32,
}

/// The recent events every replica keeps: what resumes replay and slow sessions catch up from.
/// The oldest go first when any bound is reached.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistorySettings {
    /// Most events held; 0 turns history off (no resume; a full session queue closes it, 4008).
    pub max_events: usize,
    /// Most bytes held (approximate: payloads plus about 256 bytes each).
    pub max_bytes: usize,
    /// Oldest event held, in seconds; a replica that starts reads this much of the log back.
    pub max_age_secs: u64,
    /// A session that sent no cursor and ends is remembered this long: the next session of the
    /// same user that connects without a cursor, on any replica, takes over from it (replay,
    /// rooms, filter). 0 turns it off.
    pub catchup_window_secs: u64,
    /// How often each replica writes its beat (where its open sessions stand) to the control
    /// topic; a replica whose beats stop for four periods (plus the fetch wait) is dead, and its
    /// cursor-less sessions are taken over from its last beat.
    pub catchup_heartbeat_ms: u64,
    /// Most sessions of cursor-less clients remembered cluster-wide (about 200 bytes each);
    /// beyond, new ones get no catch-up and `gateway_catchups_total{reason="unrecorded"}` counts them.
    pub catchup_max_sessions: usize,
}

/// Server-Sent Events (`GET /events`) and the browser-facing HTTP transports.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SseSettings {
    /// A comment and the current `id:` are sent this often, so proxies keep the stream open and
    /// the browser's Last-Event-ID stays current.
    pub heartbeat_secs: u64,
    /// The `retry:` hint: how long an `EventSource` waits before it reconnects.
    pub retry_ms: u64,
    /// A cookie the token may come in (for `EventSource`, which cannot set headers).
    pub token_cookie: Option<String>,
    /// Origins allowed to call `/events` and `/events/poll` from a browser (`*` for any).
    pub cors_origins: Vec<String>,
}

/// Long polling (`GET /events/poll`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollSettings {
    /// The longest `wait` a poll may ask for.
    pub max_wait_secs: u64,
    /// Most events in one answer; the rest come with the next poll.
    pub max_events: usize,
}

/// Rooms: who may join what, and how many.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoomsSettings {
    /// Room names or `prefix*` patterns anyone may join (besides what a token's `rooms` claim
    /// grants), e.g. `lobby,public:*`.
    pub public: Vec<String>,
    /// Rooms one session may be in at once; one more is answered `limit`.
    pub max_per_session: usize,
    /// Room names or `prefix*` patterns joined by the user rather than the session: a join
    /// applies to all of the user's sessions on every replica and survives reconnects, until
    /// `leave_room` or `user_ttl_secs` after the user's last session ended.
    pub user_scoped: Vec<String>,
    /// How long a user-scoped membership outlives the user's last session.
    pub user_ttl_secs: u64,
}

/// Sessions without a token (status dashboards). Off by default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnonymousSettings {
    /// Accept a connection without a token as an anonymous session: it receives `all`
    /// broadcasts and public rooms only, and can send pings, joins of public rooms and filters.
    pub enabled: bool,
    /// Anonymous sessions allowed on this instance (counted apart from `MAX_CONNECTIONS`'s
    /// share); one more is closed with 1013.
    pub max_connections: usize,
}

/// The server API on the internal listener (`/api/...`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSettings {
    /// Key a backend sends as `Authorization: Bearer <key>` (or `X-API-Key`). The server API is
    /// off while it is unset.
    pub key: Option<String>,
    /// Topic `POST /api/publish` writes to; empty means the first of `KAFKA_TOPICS`.
    pub publish_topic: String,
    /// Most events in one publish request.
    pub publish_max_events: usize,
    /// Largest publish request body.
    pub publish_max_body_bytes: usize,
    /// How long a publish waits for the broker's acknowledgement before answering 503.
    pub publish_timeout_ms: u64,
}

/// The HTTP/WebSocket listener and per-session limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Address to bind.
    pub host: String,
    /// Port to bind (the existing clients use 8005).
    pub port: u16,
    /// HTTP worker threads; 0 means one per CPU core.
    pub workers: usize,
    /// Accept queue of the public listener (the kernel caps it at `net.core.somaxconn`).
    pub listen_backlog: u32,
    /// The kernel send buffer of each public connection (0: the kernel's autotuning, which lets
    /// a client that stopped reading hold megabytes before the gateway notices). What a slow
    /// client has not read waits in the history instead, where newer state replaces older.
    pub socket_send_buffer_bytes: u32,
    /// Address of the internal listener (metrics, the server API, the Dapr routes too). Loopback
    /// by default, so that nothing internal is reachable from outside the host unless the
    /// operator says so (Kubernetes: `0.0.0.0` behind a NetworkPolicy).
    pub internal_host: String,
    /// Port of the internal listener.
    pub internal_port: u16,
    /// When set, `/metrics` requires `Authorization: Bearer <token>`.
    pub metrics_token: Option<String>,
    /// Open WebSocket sessions allowed on this instance; the next one is closed with 1013.
    pub max_connections: usize,
    /// Open sessions allowed per user on this instance; the next one is closed with 4029.
    pub max_connections_per_user: usize,
    /// Largest inbound frame (and reassembled message) in bytes; larger closes with 1009.
    pub max_frame_bytes: usize,
    /// Outbound messages queued per session before it counts as a slow consumer (close 4008).
    pub session_queue_capacity: usize,
    /// Event types one session may subscribe to at once; more is answered `limit`.
    pub max_event_filters: usize,
    /// How often the server pings each session.
    pub heartbeat_interval_secs: u64,
    /// A session that sends nothing (not even a pong) for this long is dropped as dead.
    pub client_timeout_secs: u64,
    /// Longest one write to a session may wait for the peer to read (every frame: events,
    /// replies, pings). Past it the session is closed as a slow consumer (4008).
    pub write_timeout_secs: u64,
    /// How long a token refused for good (4001, 4003, 4029) is refused again at the upgrade with
    /// an HTTP status instead of a close after open (clients that reconnect after every close
    /// then stop within their retries). Longer than such a client's whole backoff (31 s).
    pub refusal_memory_secs: u64,
    /// Most refusals remembered; the oldest are forgotten first.
    pub refusal_memory_capacity: usize,
    /// How long a refusal for overload (1013) is held open first, jittered by half either way,
    /// so clients that reconnect at once are spread out; 0 closes at once.
    pub overload_close_delay_ms: u64,
    /// On SIGTERM, open sessions are closed with 1001 spread over this window, so the clients
    /// reconnecting to other replicas do not arrive as one herd.
    pub drain_window_secs: u64,
    /// The process exits within this long after SIGTERM (keep it below the pod's
    /// terminationGracePeriodSeconds).
    pub shutdown_grace_secs: u64,
}

/// How tokens are verified. Exactly one of secret, public key and JWKS URL must be set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// HS256 shared secret (`JWT_SECRET`, or `BETTER_AUTH_SECRET` as the seed apps call it).
    pub jwt_secret: Option<String>,
    /// PEM public key (or a path to a PEM file) for RS256, ES256 or EdDSA tokens.
    pub jwt_public_key: Option<String>,
    /// Algorithm for `jwt_public_key`; guessed from the key type when unset.
    pub jwt_algorithm: Option<String>,
    /// JWKS endpoint; keys are cached and refetched only for an unknown `kid`.
    pub jwt_jwks_url: Option<String>,
    /// Required `iss` claim, when set.
    pub jwt_issuer: Option<String>,
    /// Required `aud` claim, when set.
    pub jwt_audience: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
    /// Refuse tokens without `exp`. Off only for issuers that cannot set one; such sessions end
    /// only when the client leaves (or is disconnected).
    pub require_exp: bool,
    /// `close`: a session ends (4002) when its token expires, for clients that refresh tokens;
    /// `connect`: the token is checked at connect only, for frontends that cannot refresh.
    pub expiry_policy: String,
    /// Timeout of one JWKS fetch.
    pub jwks_timeout_ms: u64,
    /// Minimum time between two JWKS fetches, so unknown `kid`s cannot hammer the issuer.
    pub jwks_min_refresh_secs: u64,
    /// How often the JWKS is refetched when its answer gives no cache lifetime.
    pub jwks_refresh_secs: u64,
    /// Upper bound on a cache lifetime (`Cache-Control: max-age`) announced by the JWKS, so that a
    /// removed key stops working within this time whatever the issuer says.
    pub jwks_max_refresh_secs: u64,
}

/// The direct Kafka source. Empty `brokers` disables it (Dapr-only deployments).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSettings {
    /// Bootstrap servers, comma-separated (`bootstrap.servers`).
    pub brokers: String,
    /// Topics to consume, every partition of each.
    pub topics: Vec<String>,
    /// How often partition metadata is refreshed: new partitions and broker health are seen at
    /// this pace.
    pub metadata_refresh_secs: u64,
    /// Create missing topics at start (for local runs; production topics are provisioned).
    pub create_topics: bool,
    /// Where the partitions seen at start are read from: `live` (their end: only what is
    /// produced from now on) or `earliest` (every retained record; for benchmarks and drills:
    /// connected clients would receive old events).
    pub start_from: String,
    /// The topic the replicas share state through (user-scoped rooms, the sessions of cursor-less
    /// clients, replica beats); compacted. Read from its beginning at start.
    pub control_topic: String,
    /// librdkafka properties passed through as they are (security.protocol, sasl.*, ssl.*,
    /// fetch.wait.max.ms, ...).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

/// The Dapr pub/sub delivery path (`GET /dapr/subscribe`, `POST <route>`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaprSettings {
    /// Whether this gateway takes deliveries from a Dapr sidecar. Off, the delivery route answers
    /// 503 (which the sidecar retries) and the subscription is empty.
    pub enabled: bool,
    /// Accept deliveries without an app token. Only for local experiments: anyone who reaches the
    /// port can then inject events. Logged loudly at start.
    pub insecure_no_app_token: bool,
    /// Whether `/dapr/subscribe` offers the subscription. Off when the deployment declares it
    /// with a Subscription resource instead: declaring both delivers twice.
    pub subscribe: bool,
    /// The pub/sub component's name.
    pub pubsub_name: String,
    /// The topic to subscribe to.
    pub topic: String,
    /// The path the sidecar delivers to.
    pub route: String,
    /// Where the sidecar sends events answered with DROP, when set.
    pub dead_letter_topic: Option<String>,
    /// Ask the sidecar for bulk deliveries.
    pub bulk_subscribe: bool,
    /// Most events in one bulk delivery.
    pub bulk_max_messages: u32,
    /// Longest the sidecar waits to fill a bulk delivery.
    pub bulk_max_await_ms: u32,
    /// The sidecar's app token (`dapr.io/app-token-secret`); when set, every Dapr-facing route
    /// requires it in `dapr-api-token`.
    pub app_api_token: Option<String>,
}

/// The window in which a repeated event id is delivered once (Kafka and Dapr both enabled, or a
/// redelivery).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DedupSettings {
    /// How long an id is remembered.
    pub window_secs: u64,
    /// Most ids remembered; the oldest are forgotten first beyond it.
    pub capacity: usize,
}

/// Logging.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// `text` or `json`.
    pub format: String,
}

/// Every default, in one place.
const DEFAULTS: &[(&str, DefaultValue)] = &[
    ("server.host", DefaultValue::Str("0.0.0.0")),
    ("server.port", DefaultValue::Int(8005)),
    ("server.workers", DefaultValue::Int(0)),
    ("server.listen_backlog", DefaultValue::Int(4096)),
    ("server.socket_send_buffer_bytes", DefaultValue::Int(0)),
    ("server.internal_host", DefaultValue::Str("127.0.0.1")),
    ("server.internal_port", DefaultValue::Int(9005)),
    ("server.max_connections", DefaultValue::Int(50_000)),
    ("server.max_connections_per_user", DefaultValue::Int(20)),
    ("server.max_frame_bytes", DefaultValue::Int(64 * 1024)),
    ("server.session_queue_capacity", DefaultValue::Int(256)),
    ("server.heartbeat_interval_secs", DefaultValue::Int(20)),
    ("server.client_timeout_secs", DefaultValue::Int(60)),
    ("server.write_timeout_secs", DefaultValue::Int(10)),
    ("server.refusal_memory_secs", DefaultValue::Int(120)),
    ("server.refusal_memory_capacity", DefaultValue::Int(100_000)),
    ("server.overload_close_delay_ms", DefaultValue::Int(2000)),
    ("server.drain_window_secs", DefaultValue::Int(10)),
    ("server.shutdown_grace_secs", DefaultValue::Int(20)),
    ("auth.leeway_secs", DefaultValue::Int(30)),
    ("auth.require_exp", DefaultValue::Bool(true)),
    ("auth.expiry_policy", DefaultValue::Str("close")),
    ("auth.jwks_timeout_ms", DefaultValue::Int(5_000)),
    ("auth.jwks_min_refresh_secs", DefaultValue::Int(30)),
    ("auth.jwks_refresh_secs", DefaultValue::Int(300)),
    ("auth.jwks_max_refresh_secs", DefaultValue::Int(3600)),
    ("kafka.brokers", DefaultValue::Str("")),
    ("kafka.topics", DefaultValue::List(&["task-updates"])),
    ("kafka.metadata_refresh_secs", DefaultValue::Int(10)),
    ("kafka.create_topics", DefaultValue::Bool(false)),
    ("kafka.start_from", DefaultValue::Str("live")),
    ("kafka.control_topic", DefaultValue::Str("gateway-control")),
    ("dapr.enabled", DefaultValue::Bool(false)),
    ("dapr.insecure_no_app_token", DefaultValue::Bool(false)),
    ("dapr.subscribe", DefaultValue::Bool(true)),
    ("dapr.pubsub_name", DefaultValue::Str("taskpubsub")),
    ("dapr.topic", DefaultValue::Str("task-updates")),
    ("dapr.route", DefaultValue::Str("/task-updates")),
    ("dapr.bulk_subscribe", DefaultValue::Bool(false)),
    ("dapr.bulk_max_messages", DefaultValue::Int(100)),
    ("dapr.bulk_max_await_ms", DefaultValue::Int(1000)),
    ("server.max_event_filters", DefaultValue::Int(100)),
    ("rooms.public", DefaultValue::List(&[])),
    ("rooms.max_per_session", DefaultValue::Int(100)),
    ("rooms.user_scoped", DefaultValue::List(&[])),
    ("rooms.user_ttl_secs", DefaultValue::Int(86_400)),
    ("anonymous.enabled", DefaultValue::Bool(false)),
    ("anonymous.max_connections", DefaultValue::Int(1000)),
    ("api.publish_topic", DefaultValue::Str("")),
    ("api.publish_max_events", DefaultValue::Int(100)),
    ("api.publish_max_body_bytes", DefaultValue::Int(1024 * 1024)),
    ("api.publish_timeout_ms", DefaultValue::Int(5000)),
    ("sse.heartbeat_secs", DefaultValue::Int(15)),
    ("sse.retry_ms", DefaultValue::Int(3000)),
    ("sse.cors_origins", DefaultValue::List(&[])),
    ("poll.max_wait_secs", DefaultValue::Int(30)),
    ("poll.max_events", DefaultValue::Int(100)),
    ("history.max_events", DefaultValue::Int(100_000)),
    ("history.max_bytes", DefaultValue::Int(64 * 1024 * 1024)),
    ("history.max_age_secs", DefaultValue::Int(300)),
    ("history.catchup_window_secs", DefaultValue::Int(60)),
    ("history.catchup_heartbeat_ms", DefaultValue::Int(100)),
    ("history.catchup_max_sessions", DefaultValue::Int(1_000_000)),
    ("cluster.presence_enabled", DefaultValue::Bool(false)),
    ("cluster.presence_grace_secs", DefaultValue::Int(5)),
    ("cluster.presence_lease_secs", DefaultValue::Int(15)),
    ("cluster.presence_max_listed", DefaultValue::Int(1000)),
    ("cluster.revocation_ttl_secs", DefaultValue::Int(86_400)),
    ("cluster.client_messages_per_sec", DefaultValue::Int(50)),
    ("cluster.client_messages_burst", DefaultValue::Int(200)),
    ("cluster.connect_rate_per_sec", DefaultValue::Int(0)),
    ("cluster.connect_rate_burst", DefaultValue::Int(1000)),
    ("state.ttl_secs", DefaultValue::Int(300)),
    ("state.max_keys", DefaultValue::Int(100_000)),
    ("state.snapshot_max", DefaultValue::Int(1000)),
    ("upstream.rpc_routes", DefaultValue::List(&[])),
    ("upstream.rpc_legacy_types", DefaultValue::List(&[])),
    ("upstream.rpc_timeout_ms", DefaultValue::Int(5_000)),
    ("upstream.max_in_flight", DefaultValue::Int(16)),
    ("upstream.max_response_bytes", DefaultValue::Int(64 * 1024)),
    ("upstream.max_data_bytes", DefaultValue::Int(16 * 1024)),
    ("upstream.publish_rooms", DefaultValue::List(&[])),
    (
        "upstream.publish_topic",
        DefaultValue::Str("gateway-client-publish"),
    ),
    ("upstream.publish_per_sec", DefaultValue::Int(10)),
    ("upstream.publish_burst", DefaultValue::Int(20)),
    ("dedup.window_secs", DefaultValue::Int(120)),
    ("dedup.capacity", DefaultValue::Int(100_000)),
    ("log.format", DefaultValue::Str("text")),
];

enum DefaultValue {
    Str(&'static str),
    Int(i64),
    Bool(bool),
    List(&'static [&'static str]),
}

/// A configuration problem, worded for the operator: the key at fault and how to fix it.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

impl ConfigError {
    pub fn new(message: String) -> Self {
        ConfigError(message)
    }
}

impl Settings {
    /// Loads from the process environment (and `CONFIG_FILE` when set).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::load(std::env::vars())
    }

    /// Loads from the given environment; tests pass their own.
    pub fn load(env: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        let env: BTreeMap<String, String> = env.into_iter().collect();
        let mut builder = config::Config::builder();
        for (key, value) in DEFAULTS {
            builder = match value {
                DefaultValue::Str(s) => builder.set_default(*key, *s),
                DefaultValue::Int(i) => builder.set_default(*key, *i),
                DefaultValue::Bool(b) => builder.set_default(*key, *b),
                DefaultValue::List(l) => builder.set_default(*key, l.to_vec()),
            }
            .map_err(|e| ConfigError(e.to_string()))?;
        }
        if let Some(path) = env.get("CONFIG_FILE").filter(|p| !p.is_empty()) {
            if !std::path::Path::new(path).is_file() {
                return Err(ConfigError(format!(
                    "CONFIG_FILE: {path} is not a readable file; fix the path or unset CONFIG_FILE"
                )));
            }
            builder = builder.add_source(config::File::new(path, config::FileFormat::Toml));
        }
        for (name, key) in ENV_KEYS {
            let Some(value) = env.get(*name) else { continue };
            builder = if LIST_KEYS.contains(key) {
                let items: Vec<String> = value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect();
                builder.set_override(*key, items)
            } else {
                builder.set_override(*key, value.as_str())
            }
            .map_err(|e| ConfigError(e.to_string()))?;
        }
        let mut settings: Settings = builder
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| ConfigError(with_env_name(e.to_string())))?;
        // librdkafka names hold dots, which the config crate reads as nesting: merge these
        // after it, still over the file's values.
        for (name, value) in &env {
            if let Some(prop) = name.strip_prefix(RDKAFKA_ENV_PREFIX) {
                let prop = prop.to_ascii_lowercase().replace('_', ".");
                settings.kafka.properties.insert(prop, value.clone());
            }
        }
        settings.validate()?;
        // Client publications are read back from their topic like any event.
        let routes = settings.upstream_routes()?;
        let topic = &settings.upstream.publish_topic;
        if routes.publishes() && settings.kafka_enabled() && !settings.kafka.topics.contains(topic) {
            settings.kafka.topics.push(topic.clone());
        }
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let fail = |msg: &str| Err(ConfigError(msg.to_string()));
        let s = &self.server;
        if s.max_connections == 0 {
            return fail("MAX_CONNECTIONS (server.max_connections) must be at least 1");
        }
        if s.max_connections_per_user == 0 {
            return fail("MAX_CONNECTIONS_PER_USER (server.max_connections_per_user) must be at least 1");
        }
        within(
            "MAX_FRAME_BYTES",
            s.max_frame_bytes as u64,
            1024,
            16 * 1024 * 1024,
        )?;
        within("LISTEN_BACKLOG", s.listen_backlog.into(), 16, 1 << 20)?;
        if s.session_queue_capacity == 0 {
            return fail("SESSION_QUEUE_CAPACITY (server.session_queue_capacity) must be at least 1");
        }
        if s.heartbeat_interval_secs == 0 || s.client_timeout_secs <= s.heartbeat_interval_secs {
            return fail(
                "CLIENT_TIMEOUT_SECS must be greater than HEARTBEAT_INTERVAL_SECS, and both above 0",
            );
        }
        // Upper bounds keep every duration sum far from overflowing an Instant, and catch typos
        // (milliseconds given as seconds) at start instead of as a session that never pings.
        within("HEARTBEAT_INTERVAL_SECS", s.heartbeat_interval_secs, 1, HOUR)?;
        within("CLIENT_TIMEOUT_SECS", s.client_timeout_secs, 2, DAY)?;
        within("WRITE_TIMEOUT_SECS", s.write_timeout_secs, 1, HOUR)?;
        within("REFUSAL_MEMORY_SECS", s.refusal_memory_secs, 0, DAY)?;
        within(
            "REFUSAL_MEMORY_CAPACITY",
            s.refusal_memory_capacity as u64,
            0,
            10_000_000,
        )?;
        within("OVERLOAD_CLOSE_DELAY_MS", s.overload_close_delay_ms, 0, 60_000)?;
        within("DRAIN_WINDOW_SECS", s.drain_window_secs, 0, HOUR)?;
        within("SHUTDOWN_GRACE_SECS", s.shutdown_grace_secs, 1, HOUR)?;
        if s.drain_window_secs >= s.shutdown_grace_secs {
            return fail("DRAIN_WINDOW_SECS must be shorter than SHUTDOWN_GRACE_SECS");
        }
        let overlap = s.host == s.internal_host
            || [&s.host, &s.internal_host]
                .iter()
                .any(|h| h.as_str() == "0.0.0.0" || h.as_str() == "::");
        if s.port != 0 && s.port == s.internal_port && overlap {
            return fail("INTERNAL_PORT must differ from PORT: internal routes get their own listener");
        }
        let a = &self.auth;
        let verifiers = [&a.jwt_secret, &a.jwt_public_key, &a.jwt_jwks_url]
            .iter()
            .filter(|v| v.as_deref().is_some_and(|v| !v.is_empty()))
            .count();
        if verifiers != 1 {
            return fail(
                "set exactly one token verifier: JWT_SECRET (or BETTER_AUTH_SECRET) for HS256, \
                 JWT_PUBLIC_KEY for RS256/ES256/EdDSA, or JWT_JWKS_URL",
            );
        }
        if a.jwt_secret.as_deref().is_some_and(|s| s.len() < 16) {
            return fail("JWT_SECRET is shorter than 16 bytes; use a longer random secret");
        }
        within("JWT_LEEWAY_SECS", a.leeway_secs, 0, HOUR)?;
        if !matches!(a.expiry_policy.as_str(), "close" | "connect") {
            return fail("TOKEN_EXPIRY_POLICY must be `close` (end sessions at exp) or `connect` (check at connect only)");
        }
        within("JWKS_TIMEOUT_MS", a.jwks_timeout_ms, 1, 60_000)?;
        within("JWKS_MIN_REFRESH_SECS", a.jwks_min_refresh_secs, 0, DAY)?;
        within("JWKS_MAX_REFRESH_SECS", a.jwks_max_refresh_secs, 1, DAY)?;
        within("JWKS_REFRESH_SECS", a.jwks_refresh_secs, 1, DAY)?;
        if a.jwks_min_refresh_secs > a.jwks_max_refresh_secs {
            return fail("JWKS_MIN_REFRESH_SECS must not exceed JWKS_MAX_REFRESH_SECS");
        }
        if let Some(url) = a.jwt_jwks_url.as_deref().filter(|u| !u.is_empty()) {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return fail("JWT_JWKS_URL must be an http:// or https:// URL");
            }
        }
        if self.kafka_enabled() {
            if self.kafka.topics.is_empty() {
                return fail("KAFKA_TOPICS is empty; name at least one topic (default task-updates)");
            }
            if !matches!(self.kafka.start_from.as_str(), "live" | "earliest") {
                return fail("KAFKA_START_FROM must be live or earliest");
            }
            within(
                "KAFKA_METADATA_REFRESH_SECS",
                self.kafka.metadata_refresh_secs,
                1,
                HOUR,
            )?;
        }
        let d = &self.dapr;
        validate_route(&d.route)?;
        if d.enabled && !d.insecure_no_app_token && d.app_api_token.as_deref().is_none_or(str::is_empty) {
            return fail(
                "DAPR_ENABLED=true needs APP_API_TOKEN (the sidecar's app token, dapr.io/app-token-secret); \
                 without it anyone who reaches the port could inject events. For a local experiment \
                 only, DAPR_INSECURE_NO_APP_TOKEN=true accepts deliveries without it",
            );
        }
        if d.pubsub_name.is_empty() || d.topic.is_empty() {
            return fail("DAPR_PUBSUB_NAME and DAPR_TOPIC must not be empty");
        }
        within(
            "MAX_ROOMS_PER_SESSION",
            self.rooms.max_per_session as u64,
            1,
            10_000,
        )?;
        within("MAX_EVENT_FILTERS", s.max_event_filters as u64, 1, 10_000)?;
        within(
            "ANONYMOUS_MAX_CONNECTIONS",
            self.anonymous.max_connections as u64,
            0,
            10_000_000,
        )?;
        within("USER_ROOMS_TTL_SECS", self.rooms.user_ttl_secs, 4, 30 * DAY)?;
        if self.kafka_enabled() && self.kafka.control_topic.is_empty() {
            return fail("GATEWAY_CONTROL_TOPIC must not be empty");
        }
        if self.kafka.topics.contains(&self.kafka.control_topic) {
            return fail("GATEWAY_CONTROL_TOPIC must not be one of KAFKA_TOPICS");
        }
        for pattern in self.rooms.public.iter().chain(&self.rooms.user_scoped) {
            let name = pattern.strip_suffix('*').unwrap_or(pattern);
            let every_room = pattern == "*";
            if !every_room && !task_events::valid_room_name(name) {
                return fail(&format!(
                    "ROOMS_PUBLIC / ROOMS_USER_SCOPED: {pattern:?} is not a room name or `prefix*` pattern (letters, digits, _ - . : @ /)"
                ));
            }
        }
        let api = &self.api;
        if api.key.as_deref().is_some_and(|k| k.len() < 16) {
            return fail(
                "SERVER_API_KEY (PUBLISH_API_KEY) is shorter than 16 bytes; use a longer random key",
            );
        }
        if !api.publish_topic.is_empty()
            && self.kafka_enabled()
            && !self.kafka.topics.contains(&api.publish_topic)
        {
            return fail("PUBLISH_TOPIC must be one of KAFKA_TOPICS, or the gateway would never deliver what it publishes");
        }
        within("PUBLISH_MAX_EVENTS", api.publish_max_events as u64, 1, 10_000)?;
        within(
            "PUBLISH_MAX_BODY_BYTES",
            api.publish_max_body_bytes as u64,
            1024,
            64 * 1024 * 1024,
        )?;
        within("PUBLISH_TIMEOUT_MS", api.publish_timeout_ms, 100, 120_000)?;
        let u = &self.upstream;
        self.upstream_routes()?;
        within("RPC_TIMEOUT_MS", u.rpc_timeout_ms, 10, 600_000)?;
        within("RPC_MAX_IN_FLIGHT", u.max_in_flight as u64, 1, 10_000)?;
        within(
            "RPC_MAX_RESPONSE_BYTES",
            u.max_response_bytes as u64,
            256,
            16 * 1024 * 1024,
        )?;
        within(
            "UPSTREAM_MAX_DATA_BYTES",
            u.max_data_bytes as u64,
            16,
            16 * 1024 * 1024,
        )?;
        within("CLIENT_PUBLISH_BURST", u64::from(u.publish_burst), 1, 1_000_000)?;
        if u.publish_topic.is_empty() || u.publish_topic == self.kafka.control_topic {
            return fail("CLIENT_PUBLISH_TOPIC must be set and differ from GATEWAY_CONTROL_TOPIC");
        }
        if u.backend_token
            .as_deref()
            .is_some_and(|t| !t.is_empty() && t.len() < 16)
        {
            return fail("BACKEND_TOKEN is shorter than 16 bytes; use a longer random token");
        }
        let set = |v: &Option<String>| v.as_deref().is_some_and(|p| !p.is_empty());
        if set(&u.backend_client_cert_file) != set(&u.backend_client_key_file) {
            return fail("BACKEND_CLIENT_CERT_FILE and BACKEND_CLIENT_KEY_FILE go together");
        }
        within(
            "HISTORY_MAX_EVENTS",
            self.history.max_events as u64,
            0,
            100_000_000,
        )?;
        within(
            "HISTORY_MAX_BYTES",
            self.history.max_bytes as u64,
            1024 * 1024,
            1 << 40,
        )?;
        within("HISTORY_MAX_AGE_SECS", self.history.max_age_secs, 1, DAY)?;
        within("CATCHUP_WINDOW_SECS", self.history.catchup_window_secs, 0, DAY)?;
        within(
            "CATCHUP_HEARTBEAT_MS",
            self.history.catchup_heartbeat_ms,
            10,
            60_000,
        )?;
        within(
            "CATCHUP_MAX_SESSIONS",
            self.history.catchup_max_sessions as u64,
            1,
            100_000_000,
        )?;
        if self.server.socket_send_buffer_bytes != 0 {
            within(
                "SOCKET_SEND_BUFFER_BYTES",
                self.server.socket_send_buffer_bytes.into(),
                4096,
                64 * 1024 * 1024,
            )?;
        }
        let cluster = &self.cluster;
        within("PRESENCE_GRACE_SECS", cluster.presence_grace_secs, 0, 3600)?;
        within("PRESENCE_LEASE_SECS", cluster.presence_lease_secs, 1, 3600)?;
        within(
            "PRESENCE_MAX_LISTED",
            cluster.presence_max_listed as u64,
            1,
            100_000,
        )?;
        within("REVOCATION_TTL_SECS", cluster.revocation_ttl_secs, 60, 365 * DAY)?;
        within(
            "CLIENT_MESSAGES_PER_SEC",
            cluster.client_messages_per_sec.into(),
            0,
            100_000,
        )?;
        within(
            "CLIENT_MESSAGES_BURST",
            cluster.client_messages_burst.into(),
            1,
            100_000,
        )?;
        within(
            "CONNECT_RATE_PER_SEC",
            cluster.connect_rate_per_sec.into(),
            0,
            1_000_000,
        )?;
        within(
            "CONNECT_RATE_BURST",
            cluster.connect_rate_burst.into(),
            1,
            1_000_000,
        )?;
        within("STATE_TTL_SECS", self.state.ttl_secs, 1, DAY)?;
        within("STATE_MAX_KEYS", self.state.max_keys as u64, 0, 10_000_000)?;
        within("STATE_SNAPSHOT_MAX", self.state.snapshot_max as u64, 0, 100_000)?;
        within("DEDUP_WINDOW_SECS", self.dedup.window_secs, 1, DAY)?;
        within("DEDUP_CAPACITY", self.dedup.capacity as u64, 1, 10_000_000)?;
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return fail("LOG_FORMAT must be `text` or `json`");
        }
        Ok(())
    }

    /// Whether the direct Kafka source runs.
    pub fn kafka_enabled(&self) -> bool {
        !self.kafka.brokers.trim().is_empty()
    }

    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_secs(self.server.heartbeat_interval_secs)
    }

    pub fn client_timeout(&self) -> Duration {
        Duration::from_secs(self.server.client_timeout_secs)
    }

    /// The topic `POST /api/publish` writes to, when Kafka is configured.
    pub fn publish_topic(&self) -> Option<&str> {
        if !self.kafka_enabled() {
            return None;
        }
        match self.api.publish_topic.as_str() {
            "" => self.kafka.topics.first().map(String::as_str),
            topic => Some(topic),
        }
    }

    /// The upstream lists, parsed (validated at load).
    pub fn upstream_routes(&self) -> Result<crate::upstream::routes::Routes, ConfigError> {
        let u = &self.upstream;
        crate::upstream::routes::Routes::parse(&u.rpc_routes, &u.rpc_legacy_types, &u.publish_rooms)
    }

    pub fn write_timeout(&self) -> Duration {
        Duration::from_secs(self.server.write_timeout_secs)
    }
}

const HOUR: u64 = 3600;
const DAY: u64 = 24 * HOUR;

/// Paths the gateway serves itself; `DAPR_ROUTE` may not take one of them.
pub const RESERVED_PATHS: &[&str] = &["/ws", "/health", "/ready", "/metrics", "/dapr/subscribe"];

/// Prefixes the gateway keeps for its own routes.
const RESERVED_PREFIXES: &[&str] = &["/api/", "/events", "/dapr/"];

fn within(name: &str, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        return Ok(());
    }
    Err(ConfigError(format!(
        "{name} must be between {min} and {max}, got {value}"
    )))
}

/// The Dapr delivery path: a plain absolute path that does not shadow one of the gateway's own.
fn validate_route(route: &str) -> Result<(), ConfigError> {
    let plain = route.len() <= 256
        && route.starts_with('/')
        && route.len() > 1
        && !route.contains("//")
        && route
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/-_.~".contains(&b));
    if !plain {
        return Err(ConfigError(format!(
            "DAPR_ROUTE must be a path such as /task-updates (letters, digits, / - _ . ~), got {route:?}"
        )));
    }
    if RESERVED_PATHS.contains(&route) || RESERVED_PREFIXES.iter().any(|p| route.starts_with(p)) {
        return Err(ConfigError(format!(
            "DAPR_ROUTE {route} collides with one of the gateway's own routes ({}, {}*); choose another path",
            RESERVED_PATHS.join(", "),
            RESERVED_PREFIXES.join("*, ")
        )));
    }
    Ok(())
}

/// The config crate names the key (`server.port`); operators know the variable (`PORT`).
fn with_env_name(message: String) -> String {
    for (name, key) in ENV_KEYS {
        if message.contains(&format!("`{key}`")) {
            return format!("{message} (environment variable {name})");
        }
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Every range the validation holds (each `within` call here) is stated in the README's
    /// table as `range MIN to MAX`, and both ends are exactly where the code draws the line.
    #[test]
    fn the_readme_states_every_range_the_code_holds() {
        let readme = include_str!("../../../README.md");
        let source = include_str!("config.rs");
        let call = concat!("with", "in(");
        let names: Vec<&str> = source
            .split(call)
            .skip(1)
            .filter_map(|rest| rest.trim_start().strip_prefix('"'))
            .filter_map(|rest| rest.split('"').next())
            .collect();
        assert!(names.len() > 40, "{names:?}");
        let base = [("JWT_SECRET", "0123456789abcdef"), ("KAFKA_BROKERS", "k:9092")];
        for name in names {
            let row = readme
                .lines()
                .find(|l| l.starts_with(&format!("| `{name}` |")))
                .unwrap_or_else(|| panic!("{name} has no row in the README's table"));
            let range = row
                .split("range ")
                .nth(1)
                .unwrap_or_else(|| panic!("{name}'s row states no `range MIN to MAX`: {row}"));
            let number = |s: &str| -> u64 {
                let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
                digits
                    .parse()
                    .unwrap_or_else(|_| panic!("{name}: not a number in {range:?}"))
            };
            let min = number(range);
            let max = number(
                range
                    .split(" to ")
                    .nth(1)
                    .unwrap_or_else(|| panic!("{name}: {range:?}")),
            );
            let refused = format!("{name} must be between");
            // Settings bound to this one by a rule of their own (a timeout longer than the
            // interval it follows) are set where that rule holds at both ends.
            let companions: &[(&str, &str)] = match name {
                "HEARTBEAT_INTERVAL_SECS" => &[("CLIENT_TIMEOUT_SECS", "86400")],
                "CLIENT_TIMEOUT_SECS" => &[("HEARTBEAT_INTERVAL_SECS", "1")],
                "DRAIN_WINDOW_SECS" => &[("SHUTDOWN_GRACE_SECS", "3600")],
                "SHUTDOWN_GRACE_SECS" => &[("DRAIN_WINDOW_SECS", "0")],
                _ => &[],
            };
            let load = |value: u64| {
                let value = value.to_string();
                let mut pairs = base.to_vec();
                pairs.extend_from_slice(companions);
                pairs.push((name, &value));
                match Settings::load(env(&pairs)) {
                    Ok(_) => String::new(),
                    Err(e) => e.to_string(),
                }
            };
            for value in [min, max] {
                let answer = load(value);
                assert!(
                    !answer.contains(&refused),
                    "{name}={value} is in the README's range: {answer}"
                );
            }
            let mut outside = vec![max + 1];
            if min > 0 {
                outside.push(min - 1);
            }
            for value in outside {
                let answer = load(value);
                assert!(
                    answer.contains(name),
                    "{name}={value} is outside the README's range: {answer:?}"
                );
            }
        }
    }

    #[test]
    fn defaults_with_a_secret() {
        let s = Settings::load(env(&[("JWT_SECRET", "0123456789abcdef")])).unwrap();
        assert_eq!(s.server.port, 8005);
        assert_eq!(s.kafka.topics, vec!["task-updates"]);
        assert!(!s.kafka_enabled());
    }

    #[test]
    fn better_auth_secret_is_an_alias() {
        let s = Settings::load(env(&[("BETTER_AUTH_SECRET", "0123456789abcdef")])).unwrap();
        assert_eq!(s.auth.jwt_secret.as_deref(), Some("0123456789abcdef"));
    }

    #[test]
    fn absurd_durations_and_colliding_routes_are_refused() {
        let secret = ("JWT_SECRET", "0123456789abcdef");
        for (name, value) in [
            ("HEARTBEAT_INTERVAL_SECS", "18446744073709551615"),
            ("CLIENT_TIMEOUT_SECS", "99999999999"),
            ("KAFKA_METADATA_REFRESH_SECS", "18446744073709551615"),
            ("WRITE_TIMEOUT_SECS", "0"),
            ("DEDUP_WINDOW_SECS", "0"),
            ("KAFKA_START_FROM", "latest"),
        ] {
            let err = Settings::load(env(&[secret, ("KAFKA_BROKERS", "k:9092"), (name, value)]))
                .unwrap_err()
                .to_string();
            assert!(err.contains(name), "{name}={value}: {err}");
        }
        for route in [
            "/ws",
            "/metrics",
            "/api/publish",
            "/events/poll",
            "tasks",
            "/a b",
            "/dapr/x",
        ] {
            let err = Settings::load(env(&[secret, ("DAPR_ROUTE", route)]))
                .unwrap_err()
                .to_string();
            assert!(err.contains("DAPR_ROUTE"), "{route}: {err}");
        }
        assert!(Settings::load(env(&[secret, ("DAPR_ROUTE", "/orders/v1")])).is_ok());
    }

    #[test]
    fn dapr_delivery_needs_an_app_token_or_an_explicit_opt_out() {
        let secret = ("JWT_SECRET", "0123456789abcdef");
        let err = Settings::load(env(&[secret, ("DAPR_ENABLED", "true")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("APP_API_TOKEN"), "{err}");
        let with_token = Settings::load(env(&[secret, ("DAPR_ENABLED", "true"), ("APP_API_TOKEN", "t")]));
        assert!(with_token.unwrap().dapr.enabled);
        let opted_out = Settings::load(env(&[
            secret,
            ("DAPR_ENABLED", "true"),
            ("DAPR_INSECURE_NO_APP_TOKEN", "true"),
        ]));
        assert!(opted_out.unwrap().dapr.insecure_no_app_token);
    }

    #[test]
    fn rdkafka_properties_pass_through() {
        let s = Settings::load(env(&[
            ("JWT_SECRET", "0123456789abcdef"),
            ("KAFKA_BROKERS", "a:9092"),
            ("KAFKA_TOPICS", "one, two"),
            ("RDKAFKA_FETCH_WAIT_MAX_MS", "10"),
            ("RDKAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
        ]))
        .unwrap();
        assert_eq!(s.kafka.topics, vec!["one", "two"]);
        assert_eq!(s.kafka.properties["fetch.wait.max.ms"], "10");
        assert_eq!(s.kafka.properties["security.protocol"], "SASL_SSL");
    }

    #[test]
    fn errors_name_the_variable() {
        let err = Settings::load(env(&[("JWT_SECRET", "0123456789abcdef"), ("PORT", "eighty")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("PORT"), "{err}");
        let err = Settings::load(env(&[])).unwrap_err().to_string();
        assert!(err.contains("JWT_SECRET"), "{err}");
        let err = Settings::load(env(&[("JWT_SECRET", "short")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("16 bytes"), "{err}");
    }

    #[test]
    fn file_then_environment() {
        let dir = std::env::temp_dir().join(format!("wsconf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("gateway.toml");
        std::fs::write(
            &path,
            "[server]\nport = 9000\nmax_connections_per_user = 3\n[kafka.properties]\n\"fetch.wait.max.ms\" = \"25\"\n",
        )
        .unwrap();
        let s = Settings::load(env(&[
            ("CONFIG_FILE", path.to_str().unwrap()),
            ("JWT_SECRET", "0123456789abcdef"),
            ("PORT", "9001"),
        ]))
        .unwrap();
        assert_eq!(s.server.port, 9001, "environment wins over the file");
        assert_eq!(s.server.max_connections_per_user, 3, "file wins over defaults");
        assert_eq!(s.kafka.properties["fetch.wait.max.ms"], "25");

        std::fs::write(&path, "[server]\nprot = 1\n").unwrap();
        let err = Settings::load(env(&[
            ("CONFIG_FILE", path.to_str().unwrap()),
            ("JWT_SECRET", "0123456789abcdef"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(err.contains("prot"), "unknown keys are rejected: {err}");
    }
}
