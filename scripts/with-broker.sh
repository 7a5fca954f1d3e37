#!/usr/bin/env bash
# Usage: scripts/with-broker.sh <command...>
#
# Starts a throwaway in-memory tansu broker on a free 127.0.0.1 port, runs the
# command with KAFKA_TEST_BROKERS and TANSU_BIN exported, then stops the
# broker. Exits with the command's exit status.
set -euo pipefail

if [[ $# -eq 0 ]]; then
    echo "usage: $0 <command...>" >&2
    exit 2
fi

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/install-tansu.sh"
TANSU="$ROOT/.tools/bin/tansu"

# Ask the kernel for a free port. There is a small race between closing this
# socket and tansu binding it, which is acceptable for local/CI use.
PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
mkdir -p "$ROOT/target"
LOG="$ROOT/target/tansu-$PORT.log"

"$TANSU" broker \
    --listener-url "tcp://127.0.0.1:$PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$PORT" \
    --storage-engine "memory://tansu/" \
    >"$LOG" 2>&1 </dev/null &
BROKER_PID=$!

cleanup() {
    if kill -0 "$BROKER_PID" 2>/dev/null; then
        kill "$BROKER_PID" 2>/dev/null || true
        wait "$BROKER_PID" 2>/dev/null || true
    fi
}
trap cleanup EXIT
# On a signal, clean up and exit with the conventional 128+N status
# (the EXIT trap then runs again, harmlessly).
trap 'cleanup; exit 130' INT
trap 'cleanup; exit 143' TERM

# Wait up to 30 s (150 x 0.2 s) for the listener to accept connections.
ready=0
for _ in $(seq 150); do
    if ! kill -0 "$BROKER_PID" 2>/dev/null; then
        break  # broker died; report below
    fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
        ready=1
        break
    fi
    sleep 0.2
done
if [[ $ready -ne 1 ]]; then
    if kill -0 "$BROKER_PID" 2>/dev/null; then
        echo "error: tansu broker did not accept connections on 127.0.0.1:$PORT within 30 s" >&2
    else
        echo "error: tansu broker exited before accepting connections on 127.0.0.1:$PORT" >&2
    fi
    echo "--- last lines of $LOG ---" >&2
    tail -n 40 "$LOG" >&2 || true
    exit 1
fi
echo "tansu broker ready on 127.0.0.1:$PORT (log: $LOG)" >&2

export KAFKA_TEST_BROKERS="127.0.0.1:$PORT"
export TANSU_BIN="$TANSU"

# Run the command without `exec` so the trap can stop the broker afterwards;
# `|| status=$?` keeps set -e from aborting before we capture the status.
status=0
"$@" || status=$?
exit "$status"
