#!/usr/bin/env bash
# Run every test (meant to be wrapped by scripts/with-broker.sh): the AsyncAPI check, the Rust
# workspace (unit, end-to-end, doc), then the browser client: its unit tests, its size budget,
# and its end-to-end tests in headless Chromium against the real gateway binary and the broker.
# Benches are excluded on purpose: they are long-running and run via `make bench`.
# The last line sums every test run, so the total is one line to read.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
# The AsyncAPI catalogue of both wires, checked by the AsyncAPI parser from npm.
"$ROOT/scripts/check-asyncapi.sh"
cargo test --workspace --lib --bins --tests 2>&1 | tee -a "$log"
cargo test --workspace --doc 2>&1 | tee -a "$log"

# The browser client. Chromium (Debian's package) and the npm dependencies are installed here
# when missing; nothing downloads a browser.
"$ROOT/scripts/install-browser.sh"
cargo build -p websocket-service -p publisher --bins 2>&1 | tail -n 1
(
    cd "$ROOT/clients/js"
    npm run --silent build
    npm run --silent build:e2e
    npm run --silent size
    npm test -- --test-reporter=tap
    GATEWAY_BIN="$ROOT/target/debug/websocket-service" \
        EVENT_PUBLISH_BIN="$ROOT/target/debug/event-publish" \
        node --test --test-reporter=tap e2e/
) 2>&1 | tee -a "$log"

{
    grep -E '^test result:' "$log" | awk '{print $4, $6}'
    grep -E '^# (pass|fail) ' "$log" | awk '$2 == "pass" {print $3, 0} $2 == "fail" {print 0, $3}'
} | awk '{p += $1; f += $2} END {printf "tests: %d passed, %d failed\n", p, f}'
