#!/usr/bin/env bash
# Run the workspace tests (meant to be wrapped by scripts/with-broker.sh).
# Benches are excluded on purpose: they are long-running and run via `make bench`.
# The last line sums every cargo test run, so the total is one line to read.
set -euo pipefail

export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
# The AsyncAPI catalogue of both wires, checked by the AsyncAPI parser from npm.
"$(dirname "${BASH_SOURCE[0]}")/check-asyncapi.sh"
cargo test --workspace --lib --bins --tests 2>&1 | tee -a "$log"
cargo test --workspace --doc 2>&1 | tee -a "$log"
grep -E '^test result:' "$log" | awk '{p += $4; f += $6} END {printf "tests: %d passed, %d failed\n", p, f}'
