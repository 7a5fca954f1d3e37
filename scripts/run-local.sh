#!/usr/bin/env bash
# Run the gateway locally against the broker started by scripts/with-broker.sh
# (use `make run`).
set -euo pipefail

if [[ -z "${KAFKA_TEST_BROKERS:-}" ]]; then
    echo "error: KAFKA_TEST_BROKERS is not set; run this via 'make run' (scripts/with-broker.sh)" >&2
    exit 2
fi

export KAFKA_BROKERS="$KAFKA_TEST_BROKERS"
export PORT="${PORT:-8005}"
export INTERNAL_PORT="${INTERNAL_PORT:-9005}"
export JWT_SECRET="${JWT_SECRET:-dev-secret-change-me}"
# Low fetch wait keeps end-to-end latency small on an idle local broker.
export RDKAFKA_FETCH_WAIT_MAX_MS="${RDKAFKA_FETCH_WAIT_MAX_MS:-10}"
# A fresh in-memory broker has no topics; let the service create them.
export KAFKA_CREATE_TOPICS="${KAFKA_CREATE_TOPICS:-true}"

cat <<BANNER
------------------------------------------------------------------
 websocket-service (local)
   Kafka broker : $KAFKA_BROKERS
   WebSocket    : ws://127.0.0.1:$PORT/ws?token=<JWT>
   Metrics      : http://127.0.0.1:$INTERNAL_PORT/metrics (internal listener, loopback)
   The token is a JWT signed HS256 with JWT_SECRET ("$JWT_SECRET"),
   whose "sub" claim is the user id.
------------------------------------------------------------------
BANNER

exec cargo run --release -p websocket-service --bin websocket-service
