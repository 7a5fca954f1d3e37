#!/usr/bin/env bash
# Installs what the browser tests need, once: Debian's `chromium` package (apt) and the JS
# package's npm dependencies (scripts/install-js.sh: playwright-core, which drives
# /usr/bin/chromium and never downloads a browser).
#
#   scripts/install-browser.sh
#
# Runs as root where apt is needed (CI, the dev container); elsewhere, install chromium yourself.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if [[ ! -x /usr/bin/chromium ]]; then
    if [[ "$(id -u)" != 0 ]]; then
        echo "install-browser: /usr/bin/chromium is missing; install Debian's chromium package (as root: apt-get install chromium)" >&2
        exit 1
    fi
    echo "install-browser: installing Debian's chromium package"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq </dev/null
    apt-get install -y -qq chromium </dev/null >/dev/null
fi
/usr/bin/chromium --version

"$ROOT/scripts/install-js.sh"
