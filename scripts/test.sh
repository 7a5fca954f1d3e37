#!/usr/bin/env bash
# Run the workspace tests (meant to be wrapped by scripts/with-broker.sh).
# Benches are excluded on purpose: they are long-running and run via `make bench`.
set -euo pipefail

export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"
cargo test --workspace --lib --bins --tests
cargo test --workspace --doc
