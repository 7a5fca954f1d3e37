#!/usr/bin/env bash
# Run the gateway locally against the broker started by scripts/with-broker.sh (use `make run`),
# with the browser client's demo page beside it: what a newcomer sees first.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${KAFKA_TEST_BROKERS:-}" ]]; then
    echo "error: KAFKA_TEST_BROKERS is not set; run this via 'make run' (scripts/with-broker.sh)" >&2
    exit 2
fi

export KAFKA_BROKERS="$KAFKA_TEST_BROKERS"
export PORT="${PORT:-8005}"
export INTERNAL_PORT="${INTERNAL_PORT:-9005}"
export JWT_SECRET="${JWT_SECRET:-dev-secret-change-me}"
export SERVER_API_KEY="${SERVER_API_KEY:-dev-server-api-key-change-me}"
export PRESENCE_ENABLED="${PRESENCE_ENABLED:-true}"
export KAFKA_TOPICS="${KAFKA_TOPICS:-task-updates}"
# Low fetch wait keeps end-to-end latency small on an idle local broker.
export RDKAFKA_FETCH_WAIT_MAX_MS="${RDKAFKA_FETCH_WAIT_MAX_MS:-10}"
# A fresh in-memory broker has no topics; let the service create them.
export KAFKA_CREATE_TOPICS="${KAFKA_CREATE_TOPICS:-true}"
DEMO_PORT="${DEMO_PORT:-8080}"
DEMO_USER="${DEMO_USER:-demo-user}"

cargo build --release -p websocket-service -p publisher --bins

# The demo page: the browser client, built, served with dev tokens and a publish proxy.
"$ROOT/scripts/install-js.sh"
(cd "$ROOT/clients/js" && npm run --silent build)
DEMO_PORT="$DEMO_PORT" GATEWAY_URL="http://127.0.0.1:$PORT" \
    GATEWAY_INTERNAL_URL="http://127.0.0.1:$INTERNAL_PORT" \
    node "$ROOT/clients/js/demo/server.mjs" >/dev/null &
DEMO_PID=$!
trap 'kill "$DEMO_PID" 2>/dev/null || true' EXIT

# A ready development token (HS256 with JWT_SECRET, valid 12 h).
TOKEN="$(python3 - "$DEMO_USER" <<'PY'
import base64, hashlib, hmac, json, os, sys, time
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
now = int(time.time())
body = b64(json.dumps({"sub": sys.argv[1], "iat": now, "exp": now + 12 * 3600}).encode())
sig = hmac.new(os.environ["JWT_SECRET"].encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
print(f"{head}.{body}.{b64(sig)}")
PY
)"

cat <<BANNER
------------------------------------------------------------------
 websocket-service (local)
   Demo page    : http://127.0.0.1:$DEMO_PORT/   (user $DEMO_USER; ?user=<id> for another)
   WebSocket    : ws://127.0.0.1:$PORT/ws?token=<JWT>
   Kafka broker : $KAFKA_BROKERS (topic $KAFKA_TOPICS)
   Metrics, API : http://127.0.0.1:$INTERNAL_PORT/metrics, /api/* (internal listener, loopback;
                  SERVER_API_KEY=$SERVER_API_KEY)

 A development token for $DEMO_USER (HS256 with JWT_SECRET="$JWT_SECRET", 12 h):
   $TOKEN

 Publish an event to $DEMO_USER through Kafka (it appears on the demo page):
   KAFKA_BROKERS=$KAFKA_BROKERS target/release/event-publish --via kafka --topic $KAFKA_TOPICS --type demo.hello --data '{"text":"hello"}' --to '{"user":"$DEMO_USER"}'
 or through the HTTP API:
   curl -s -H 'Authorization: Bearer $SERVER_API_KEY' -H 'Content-Type: application/json' http://127.0.0.1:$INTERNAL_PORT/api/publish -d '{"event_type":"demo.hello","data":{"text":"hello"},"to":{"user":"$DEMO_USER"}}'
------------------------------------------------------------------
BANNER

"$ROOT/target/release/websocket-service"
