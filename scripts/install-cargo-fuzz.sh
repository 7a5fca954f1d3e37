#!/usr/bin/env bash
# Ensure cargo-fuzz (the libFuzzer driver for Rust) exists at .tools/cargo-fuzz/bin/cargo-fuzz,
# at a pinned version, built from crates.io with its own lock file. Installs only when the binary
# is missing or reports another version; idempotent and non-interactive. Prints the binary's path
# on stdout (last line), so callers can run it as "$(scripts/install-cargo-fuzz.sh | tail -n 1)".
#
# Stable toolchain notes (checked on rustc 1.95, no nightly toolchain used):
# - cargo-fuzz passes nightly-only flags (-Zsanitizer=..., sancov passes) to rustc.
#   RUSTC_BOOTSTRAP=1 makes the stable compiler accept them; scripts/fuzz.sh sets it.
# - AddressSanitizer works that way: its runtime (librustc-stable_rt.asan.a) ships with the
#   standard library, so scripts/fuzz.sh keeps cargo-fuzz's default `--sanitizer address`
#   (FUZZ_SANITIZER=none turns it off). `--build-std` is not used (it needs the rust-src
#   component).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VERSION="0.13.2"
PREFIX="$ROOT/.tools/cargo-fuzz"
BIN="$PREFIX/bin/cargo-fuzz"

if [[ -x "$BIN" ]] && have="$("$BIN" --version 2>/dev/null)" && [[ "$have" == *" $VERSION"* ]]; then
    echo "using $have at $BIN" >&2
    echo "$BIN"
    exit 0
fi

echo "installing cargo-fuzz $VERSION into $PREFIX" >&2
# Its own target dir under .tools, so the workspace target (and another build using it) is not
# locked while cargo-fuzz compiles.
CARGO_TARGET_DIR="$PREFIX/build" cargo install cargo-fuzz --version "=$VERSION" --locked \
    --root "$PREFIX" --quiet </dev/null >&2
rm -rf "$PREFIX/build"
echo "using $("$BIN" --version) at $BIN" >&2
echo "$BIN"
