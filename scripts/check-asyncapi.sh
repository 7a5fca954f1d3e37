#!/usr/bin/env bash
# Validates the AsyncAPI 3.0 document of both wires, schemas/asyncapi.yaml.
#
#   scripts/check-asyncapi.sh
#
# - Parses it with @asyncapi/parser (`fromFile`, so the relative $refs to the JSON Schemas in
#   schemas/ are resolved), prints every diagnostic and fails on any error;
# - checks that every message type of ws-client-message.schema.json,
#   ws-server-message.schema.json and task-event.schema.json is the payload of some message,
#   so the catalogue cannot drift from the schemas.
#
# Tools go into .tools/asyncapi (a private package.json there), pinned; the install is skipped
# when those exact versions are already present, so later runs need no network. Needs Node 20+.
# Prints the diagnostics and one summary line; exits non-zero on any failure.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.tools/asyncapi"
PACKAGES=(
    "@asyncapi/parser@3.6.6"
    "ajv@8.20.0"
    "ajv-formats@2.1.1"
    "js-yaml@4.3.2"
)

command -v node >/dev/null || { echo "check-asyncapi: node (20+) is required" >&2; exit 1; }

installed() {
    node - "$TOOLS" "${PACKAGES[@]}" <<'JS' >/dev/null 2>&1
const fs = require('fs');
const path = require('path');
const [tools, ...pkgs] = process.argv.slice(2);
for (const spec of pkgs) {
  const at = spec.lastIndexOf('@');
  const name = spec.slice(0, at);
  const want = spec.slice(at + 1);
  const file = path.join(tools, 'node_modules', name, 'package.json');
  if (JSON.parse(fs.readFileSync(file, 'utf8')).version !== want) process.exit(1);
}
JS
}

if ! installed; then
    mkdir -p "$TOOLS"
    [[ -f "$TOOLS/package.json" ]] ||
        printf '{\n  "name": "asyncapi-tools",\n  "private": true\n}\n' >"$TOOLS/package.json"
    echo "installing ${PACKAGES[*]} into $TOOLS" >&2
    npm install --no-audit --no-fund --ignore-scripts --save-exact --loglevel=error \
        --prefix "$TOOLS" "${PACKAGES[@]}" </dev/null >&2
    installed || { echo "check-asyncapi: install into $TOOLS did not give ${PACKAGES[*]}" >&2; exit 1; }
fi

cd "$ROOT"
exec node scripts/check-asyncapi.mjs "$TOOLS" schemas/asyncapi.yaml </dev/null
