#!/usr/bin/env bash
# Installs the browser client's npm dependencies (clients/js), from its lockfile, when they are
# missing or older than it. playwright-core never downloads a browser here: the tests drive
# Debian's /usr/bin/chromium (scripts/install-browser.sh).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
command -v npm >/dev/null || { echo "install-js: node and npm (Node 20+) are required" >&2; exit 1; }
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
cd "$ROOT/clients/js"
if [[ ! -f node_modules/.package-lock.json ]] || [[ package-lock.json -nt node_modules/.package-lock.json ]]; then
    npm ci --no-audit --no-fund --loglevel=error
fi
