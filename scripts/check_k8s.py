#!/usr/bin/env python3
"""Static checks of k8s/, dapr-components/ and deploy/grafana/ (run by scripts/check-k8s.sh).

- every file listed in k8s/kustomization.yaml exists;
- every Kubernetes resource under k8s/ validates against the Kubernetes JSON schemas of a fixed
  version in strict mode (kubernetes-validate); an unknown kind/apiVersion is an error;
- every dapr.io resource under k8s/ and dapr-components/ (recursively) validates against
  scripts/dapr-schemas/;
- no Secret under k8s/ holds anything but REPLACE_ME placeholders;
- the manifests agree with each other (names, ports, secrets, shutdown timing, subscription mode);
- every Ingress under k8s/ (listed or not) serves /ws, /events and /events/poll on the public
  port of a Service the kustomization creates, with ingress-nginx stream settings (buffering
  off, read/send timeouts >= 3600 s), and exposes nothing under /api, /metrics or the Dapr routes;
- the output of `kustomize build k8s/` (when given) validates too and is namespaced, labelled
  and tagged;
- the Grafana dashboard is valid JSON and queries every metric the gateway registers (read
  from services/websocket-service/src/telemetry.rs, so a new metric needs a panel).

Prints one line per checked file (and per cross-check), exits 1 on any failure.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import re
import sys
from pathlib import Path
from typing import Any, Iterable

import jsonschema
import yaml
from referencing import Registry, Resource

import kubernetes_validate.utils as kv

APP = "websocket-service"
PLACEHOLDER = re.compile(r"^REPLACE_ME([_-][A-Za-z0-9_-]*)?$")
SENSITIVE_NAME = re.compile(r"password|secret|token", re.IGNORECASE)
# Kinds that are cluster-scoped, so kustomize gives them no namespace.
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PriorityClass",
                  "StorageClass", "CustomResourceDefinition", "PersistentVolume"}
# The gateway's metrics are read from this file (every `.register(` / `.register_with_unit(` of
# the `Metrics` registry); fewer than this many found means the parser no longer understands it.
TELEMETRY_RS = "services/websocket-service/src/telemetry.rs"
MIN_GATEWAY_METRICS = 20

# The Ingress (k8s/ingress.yaml, or any Ingress under k8s/).
# Routes of the public listener an Ingress must serve (WebSocket, SSE, long polling), and the
# only other ones it may serve (probes). Everything else stays inside the cluster.
INGRESS_REQUIRED = ("/ws", "/events", "/events/poll")
INGRESS_ALLOWED = set(INGRESS_REQUIRED) | {"/health", "/ready"}
# Never reachable from outside (DAPR_ROUTE is added from the ConfigMap): the server API and
# metrics live on the internal port; the Dapr routes are for the sidecar, over localhost.
INGRESS_FORBIDDEN = ("/api", "/metrics", "/dapr")
# WebSocket and SSE streams stay open for long quiet periods (ingress-nginx docs recommend one
# hour or more for WebSockets).
INGRESS_MIN_TIMEOUT_SECS = 3600
NGINX_PREFIX = "nginx.ingress.kubernetes.io/"
# Every annotation ingress-nginx knows (docs/user-guide/nginx-configuration/annotations.md,
# controller v1.15). The controller silently ignores any other name, so a typo would leave
# e.g. the 60 s default timeout in place.
NGINX_ANNOTATIONS = frozenset("""
    affinity affinity-canary-behavior affinity-mode app-root auth-cache-duration auth-cache-key
    auth-keepalive auth-keepalive-requests auth-keepalive-share-vars auth-keepalive-timeout
    auth-proxy-set-headers auth-realm auth-secret auth-secret-type auth-snippet
    auth-tls-error-page auth-tls-match-cn auth-tls-pass-certificate-to-upstream auth-tls-secret
    auth-tls-verify-client auth-tls-verify-depth auth-type auth-url backend-protocol canary
    canary-by-cookie canary-by-header canary-by-header-pattern canary-by-header-value
    canary-weight canary-weight-total client-body-buffer-size configuration-snippet
    connection-proxy-header cors-allow-credentials cors-allow-headers cors-allow-methods
    cors-allow-origin cors-expose-headers cors-max-age custom-headers custom-http-errors
    default-backend denylist-source-range enable-access-log enable-cors enable-global-auth
    enable-modsecurity enable-opentelemetry enable-owasp-core-rules enable-rewrite-log
    force-ssl-redirect from-to-www-redirect http2-push-preload limit-connections limit-rps
    load-balance mirror-host mirror-request-body mirror-target modsecurity-snippet
    modsecurity-transaction-id opentelemetry-trust-incoming-span permanent-redirect
    permanent-redirect-code preserve-trailing-slash proxy-body-size proxy-buffer-size
    proxy-buffering proxy-buffers-number proxy-busy-buffers-size proxy-connect-timeout
    proxy-cookie-domain proxy-cookie-path proxy-http-version proxy-max-temp-file-size
    proxy-next-upstream proxy-next-upstream-timeout proxy-next-upstream-tries
    proxy-read-timeout proxy-redirect-from proxy-redirect-to proxy-request-buffering
    proxy-send-timeout proxy-ssl-ciphers proxy-ssl-name proxy-ssl-protocols proxy-ssl-secret
    proxy-ssl-server-name proxy-ssl-verify proxy-ssl-verify-depth rewrite-target satisfy
    server-alias server-snippet service-upstream session-cookie-change-on-failure
    session-cookie-conditional-samesite-none session-cookie-domain session-cookie-expires
    session-cookie-max-age session-cookie-name session-cookie-path session-cookie-samesite
    session-cookie-secure ssl-ciphers ssl-passthrough ssl-prefer-server-ciphers ssl-redirect
    stream-snippet temporal-redirect temporal-redirect-code upstream-hash-by upstream-vhost
    use-regex whitelist-source-range x-forwarded-prefix
""".split())


class Report:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.failures = 0
        self.checked = 0

    def rel(self, path: Path | str) -> str:
        p = Path(path)
        try:
            return str(p.resolve().relative_to(self.root))
        except ValueError:
            return str(p)

    def ok(self, what: str, detail: str) -> None:
        self.checked += 1
        print(f"ok    {what}: {detail}")

    def fail(self, what: str, problems: Iterable[str]) -> None:
        self.checked += 1
        self.failures += 1
        problems = list(problems)
        print(f"FAIL  {what}: {problems[0]}")
        for p in problems[1:]:
            print(f"      {what}: {p}")

    def result(self, what: str, problems: list[str], detail: str) -> None:
        if problems:
            self.fail(what, problems)
        else:
            self.ok(what, detail)


def load_docs(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        docs = [d for d in yaml.safe_load_all(f) if d is not None]
    for i, d in enumerate(docs):
        if not isinstance(d, dict):
            raise ValueError(f"document {i + 1} is a {type(d).__name__}, not a mapping")
    return docs


def name_of(doc: dict) -> str:
    meta = doc.get("metadata") or {}
    return f"{doc.get('kind', '?')}/{meta.get('name', '?') if isinstance(meta, dict) else '?'}"


def error_path(err: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in err.absolute_path) or "(top)"


# ---------------------------------------------------------------------------------------------
# validators

class DaprValidator:
    """JSON Schemas from scripts/dapr-schemas/, keyed by (apiVersion, kind)."""

    def __init__(self, schema_dir: Path) -> None:
        resources = []
        self.by_kind: dict[tuple[str, str], dict] = {}
        for path in sorted(schema_dir.glob("*.json")):
            schema = json.loads(path.read_text(encoding="utf-8"))
            jsonschema.Draft202012Validator.check_schema(schema)
            resources.append((schema["$id"], Resource.from_contents(schema)))
            props = schema.get("properties", {})
            api, kind = props.get("apiVersion", {}).get("const"), props.get("kind", {}).get("const")
            if api and kind:
                self.by_kind[(api, kind)] = schema
        self.registry = Registry().with_resources(resources)
        if not self.by_kind:
            raise SystemExit(f"no Dapr schemas found in {schema_dir}")

    def validate(self, doc: dict) -> list[str]:
        key = (doc.get("apiVersion"), doc.get("kind"))
        schema = self.by_kind.get(key)
        if schema is None:
            known = ", ".join(f"{a} {k}" for a, k in sorted(self.by_kind))
            return [f"{name_of(doc)}: no schema for {key[0]} {key[1]} in scripts/dapr-schemas/ "
                    f"(known: {known})"]
        validator = jsonschema.Draft202012Validator(schema, registry=self.registry)
        errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
        problems = [f"{name_of(doc)}: {error_path(e)}: {e.message}" for e in errors]
        return problems + dapr_semantics(doc)


def dapr_semantics(doc: dict) -> list[str]:
    """What the schemas cannot express."""
    problems = []
    kind, spec = doc.get("kind"), doc.get("spec") or {}
    what = name_of(doc)
    if kind == "Component":
        items = spec.get("metadata") or []
        names = [i.get("name") for i in items if isinstance(i, dict)]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            problems.append(f"{what}: metadata names repeated: {', '.join(dupes)}")
        for item in items:
            if (isinstance(item, dict) and SENSITIVE_NAME.search(str(item.get("name", "")))
                    and item.get("value") not in (None, "")):
                problems.append(f"{what}: metadata {item['name']} has an inline value; "
                                "use secretKeyRef")
        if spec.get("type") == "pubsub.kafka":
            # contract section 7: every replica must see every event.
            if "consumerGroup" in names:
                problems.append(f"{what}: pubsub.kafka sets consumerGroup, which wins over "
                                "consumerID and makes replicas share one group (events split "
                                "between pods); remove it")
            if "consumerID" not in names:
                problems.append(f"{what}: pubsub.kafka needs consumerID (e.g. \"{{podName}}\") "
                                "so each replica has its own consumer group")
    if kind == "Resiliency":
        policies = spec.get("policies") or {}
        defined = {
            "timeout": set((policies.get("timeouts") or {}).keys()),
            "retry": set((policies.get("retries") or {}).keys()),
            "circuitBreaker": set((policies.get("circuitBreakers") or {}).keys()),
        }
        targets = spec.get("targets") or {}
        refs: list[tuple[str, dict]] = []
        for group in ("apps", "actors"):
            for name, t in (targets.get(group) or {}).items():
                refs.append((f"targets.{group}.{name}", t or {}))
        for name, t in (targets.get("components") or {}).items():
            for direction, r in (t or {}).items():
                refs.append((f"targets.components.{name}.{direction}", r or {}))
        for where, r in refs:
            for field, names in defined.items():
                ref = r.get(field) if isinstance(r, dict) else None
                if ref is not None and ref not in names:
                    problems.append(f"{what}: {where}.{field} names undefined policy {ref!r}")
    return problems


class KubeValidator:
    def __init__(self, version: str) -> None:
        self.version = version
        self.label = f"k8s {version} strict"
        if version not in kv.all_versions() and f"{version}.0" not in kv.all_versions():
            raise SystemExit(f"kubernetes-validate ships no schemas for {version} "
                             f"(has {kv.all_versions()[0]}..{kv.latest_version()})")

    def validate(self, doc: dict) -> list[str]:
        if not doc.get("apiVersion") or not doc.get("kind"):
            return [f"document without apiVersion/kind: {str(doc)[:80]}"]
        try:
            kv.validate(doc, self.version, strict=True)
        except kv.ValidationError as e:
            return [f"{name_of(doc)}: {error_path(e)}: {e.message}"]
        except kv.SchemaNotFoundError as e:
            return [f"{name_of(doc)}: {e.message} (unknown kind or apiVersion)"]
        return []


class Checker:
    def __init__(self, report: Report, kube: KubeValidator, dapr: DaprValidator) -> None:
        self.r, self.kube, self.dapr = report, kube, dapr

    def validate_doc(self, doc: dict) -> list[str]:
        if str(doc.get("apiVersion", "")).startswith("dapr.io/"):
            return self.dapr.validate(doc)
        return self.kube.validate(doc)

    def check_file(self, path: Path, note: str = "", dapr_only: bool = False) -> list[dict]:
        what = self.r.rel(path)
        try:
            docs = load_docs(path)
        except (yaml.YAMLError, ValueError, OSError) as e:
            self.r.fail(what, [f"cannot parse: {e}".replace("\n", " ")])
            return []
        problems, names, skipped = [], [], 0
        for doc in docs:
            is_dapr = str(doc.get("apiVersion", "")).startswith("dapr.io/")
            if dapr_only and not is_dapr:
                skipped += 1
                continue
            problems += self.validate_doc(doc)
            names.append(f"{name_of(doc)} [{'dapr schema' if is_dapr else self.kube.label}]")
        if not names and not problems:
            print(f"skip  {what}: no Dapr resource in it")
            return docs
        detail = ", ".join(names) + note
        if skipped:
            detail += f"; {skipped} non-Dapr document(s) not checked here"
        self.r.result(what, problems, detail)
        return docs


# ---------------------------------------------------------------------------------------------
# k8s/ checks

def secret_values(doc: dict) -> Iterable[tuple[str, str]]:
    """(where, plain value) of every value in a Secret."""
    for key, value in (doc.get("stringData") or {}).items():
        yield f"stringData.{key}", "" if value is None else str(value)
    for key, value in (doc.get("data") or {}).items():
        try:
            plain = base64.b64decode(str(value), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            plain = "<not base64 of UTF-8 text>"
        yield f"data.{key}", plain


def check_no_real_secrets(r: Report, k8s: Path, kustomization: dict) -> None:
    problems, secrets = [], 0
    for path in sorted(k8s.rglob("*")):
        if path.suffix not in (".yaml", ".yml") or not path.is_file():
            continue
        try:
            docs = load_docs(path)
        except (yaml.YAMLError, ValueError):
            continue  # reported by the file's own check
        for doc in docs:
            if doc.get("kind") != "Secret":
                continue
            secrets += 1
            for where, plain in secret_values(doc):
                if not PLACEHOLDER.match(plain):
                    problems.append(f"{r.rel(path)}: {name_of(doc)} {where} is not a REPLACE_ME "
                                    "placeholder; real secrets never go into the repository")
    for gen in kustomization.get("secretGenerator") or []:
        secrets += 1
        for lit in gen.get("literals") or []:
            value = str(lit).split("=", 1)[1] if "=" in str(lit) else ""
            if not PLACEHOLDER.match(value):
                problems.append(f"kustomization secretGenerator {gen.get('name')}: literal "
                                f"{str(lit).split('=', 1)[0]} is not a REPLACE_ME placeholder")
        if gen.get("files") or gen.get("envs"):
            problems.append(f"kustomization secretGenerator {gen.get('name')}: files/envs would "
                            "read secrets from the repository")
    r.result("k8s/ secrets", problems, f"{secrets} Secret(s), placeholders only")


def first(docs: list[dict], kind: str) -> dict | None:
    return next((d for d in docs if d.get("kind") == kind), None)


def check_consistency(r: Report, listed: list[dict], example_secrets: list[dict]) -> None:
    """The listed manifests agree with each other and with secret.example.yaml."""
    problems: list[str] = []
    dep = first(listed, "Deployment")
    if dep is None:
        r.fail("k8s/ consistency", ["no Deployment among the kustomization's resources"])
        return
    dep_name = dep["metadata"]["name"]
    tmpl = dep["spec"]["template"]
    pod, ann = tmpl["spec"], tmpl["metadata"].get("annotations") or {}
    pod_labels = tmpl["metadata"].get("labels") or {}
    container = next((c for c in pod["containers"] if c["name"] == APP), pod["containers"][0])
    ports = {p.get("name"): p["containerPort"] for p in container.get("ports") or []}

    configmaps = {d["metadata"]["name"]: d.get("data") or {}
                  for d in listed if d.get("kind") == "ConfigMap"}
    config: dict[str, str] = {}
    for src in container.get("envFrom") or []:
        ref = (src.get("configMapRef") or {}).get("name")
        if ref is not None:
            if ref not in configmaps:
                problems.append(f"envFrom configMapRef {ref} is not among the listed ConfigMaps")
            config.update(configmaps.get(ref, {}))

    secret_keys = {d["metadata"]["name"]: set((d.get("stringData") or {}).keys())
                   | set((d.get("data") or {}).keys())
                   for d in example_secrets if d.get("kind") == "Secret"}
    for env in container.get("env") or []:
        ref = ((env.get("valueFrom") or {}).get("secretKeyRef")) or None
        if ref and ref.get("key") not in secret_keys.get(ref.get("name"), set()):
            problems.append(f"env {env['name']} reads Secret {ref.get('name')} key "
                            f"{ref.get('key')}, which secret.example.yaml does not describe")
    token_secret = ann.get("dapr.io/app-token-secret")
    if token_secret and "token" not in secret_keys.get(token_secret, set()):
        problems.append(f"dapr.io/app-token-secret {token_secret} has no key `token` in "
                        "secret.example.yaml (contract section 5)")
    if token_secret:
        app_token = next((e for e in container.get("env") or [] if e["name"] == "APP_API_TOKEN"),
                         None)
        if app_token is None:
            problems.append("the sidecar sends an app token but the app gets no APP_API_TOKEN")

    # Shutdown timing: drain < grace < sidecar grace <= pod grace.
    def as_int(value: Any, what: str) -> int | None:
        try:
            return int(str(value))
        except ValueError:
            problems.append(f"{what} is not an integer: {value!r}")
            return None
    drain = as_int(config.get("DRAIN_WINDOW_SECS", 10), "DRAIN_WINDOW_SECS")
    grace = as_int(config.get("SHUTDOWN_GRACE_SECS", 20), "SHUTDOWN_GRACE_SECS")
    pod_grace = pod.get("terminationGracePeriodSeconds", 30)
    sidecar = as_int(ann.get("dapr.io/graceful-shutdown-seconds", 5),
                     "dapr.io/graceful-shutdown-seconds")
    if None not in (drain, grace, sidecar):
        if not drain < grace:
            problems.append(f"DRAIN_WINDOW_SECS ({drain}) must be below SHUTDOWN_GRACE_SECS "
                            f"({grace}); the app refuses to start otherwise")
        if not grace < pod_grace:
            problems.append(f"SHUTDOWN_GRACE_SECS ({grace}) must be below "
                            f"terminationGracePeriodSeconds ({pod_grace})")
        if ann.get("dapr.io/enabled") == "true" and not sidecar <= pod_grace:
            problems.append(f"dapr.io/graceful-shutdown-seconds ({sidecar}) must be <= "
                            f"terminationGracePeriodSeconds ({pod_grace})")

    # Ports and probes.
    app_port = str(config.get("PORT", "8005"))
    if str(ports.get("http")) != app_port:
        problems.append(f"container port http ({ports.get('http')}) != PORT ({app_port})")
    if "dapr.io/app-port" in ann and ann["dapr.io/app-port"] != app_port:
        problems.append(f"dapr.io/app-port ({ann['dapr.io/app-port']}) != PORT ({app_port})")
    # Metrics live on the internal listener, which must be reachable by the scraper.
    internal_port = str(config.get("INTERNAL_PORT", "9005"))
    if str(ports.get("internal")) != internal_port:
        problems.append(f"container port internal ({ports.get('internal')}) != INTERNAL_PORT "
                        f"({internal_port})")
    if "prometheus.io/port" in ann and ann["prometheus.io/port"] != internal_port:
        problems.append(f"prometheus.io/port ({ann['prometheus.io/port']}) != INTERNAL_PORT "
                        f"({internal_port}): /metrics is only served there")
    if config.get("INTERNAL_HOST", "127.0.0.1") in ("127.0.0.1", "localhost"):
        problems.append("INTERNAL_HOST is loopback: Prometheus could not scrape /metrics")
    policies = [d for d in listed if d.get("kind") == "NetworkPolicy"]
    if config.get("INTERNAL_HOST") == "0.0.0.0" and not any(
            any(int(p.get("port", 0)) == int(internal_port) for rule in
                (pol["spec"].get("ingress") or []) for p in (rule.get("ports") or []))
            for pol in policies):
        problems.append("the internal port is open on the pod network but no NetworkPolicy "
                        "limits who reaches it")
    for svc in (d for d in listed if d.get("kind") == "Service"):
        for p in svc["spec"].get("ports") or []:
            if p.get("targetPort") in ("internal", int(internal_port)):
                problems.append(f"Service {svc['metadata']['name']} exposes the internal port")
    # Dapr delivery must be switched on, with a token, where a sidecar delivers.
    if ann.get("dapr.io/enabled") == "true":
        if str(config.get("DAPR_ENABLED", "false")).lower() != "true":
            problems.append("the pod has a Dapr sidecar but DAPR_ENABLED is not \"true\": "
                            "its deliveries would be answered 503")
        if str(config.get("DAPR_INSECURE_NO_APP_TOKEN", "false")).lower() == "true":
            problems.append("DAPR_INSECURE_NO_APP_TOKEN must not be shipped")
    probes = {"livenessProbe": "/health", "readinessProbe": "/ready"}
    for probe, path in probes.items():
        got = ((container.get(probe) or {}).get("httpGet") or {}).get("path")
        if got != path:
            problems.append(f"{probe} path is {got!r}, expected {path}")
    if ann.get("dapr.io/enable-app-health-check") == "true" and \
            ann.get("dapr.io/app-health-check-path") != "/health":
        problems.append("dapr.io/app-health-check-path must be /health (it needs no app token)")

    # Selectors and targets.
    def selects(selector: dict, what: str) -> None:
        if not selector or any(pod_labels.get(k) != v for k, v in selector.items()):
            problems.append(f"{what} selector {selector} does not match the pod labels")
    selects(dep["spec"]["selector"].get("matchLabels") or {}, "Deployment")
    for svc in (d for d in listed if d.get("kind") == "Service"):
        selects(svc["spec"].get("selector") or {}, f"Service {svc['metadata']['name']}")
        for p in svc["spec"].get("ports") or []:
            tp = p.get("targetPort")
            if isinstance(tp, str) and tp not in ports:
                problems.append(f"Service targetPort {tp} is not a container port name")
    for pdb in (d for d in listed if d.get("kind") == "PodDisruptionBudget"):
        selects((pdb["spec"].get("selector") or {}).get("matchLabels") or {}, "PDB")
    hpas = [d for d in listed if d.get("kind") == "HorizontalPodAutoscaler"]
    for hpa in hpas:
        ref = hpa["spec"]["scaleTargetRef"]
        if (ref.get("kind"), ref.get("name")) != ("Deployment", dep_name):
            problems.append(f"HPA targets {ref.get('kind')}/{ref.get('name')}, not "
                            f"Deployment/{dep_name}")
    if dep["spec"].get("replicas", 0) < 2:
        problems.append("the Deployment must ask for at least 2 replicas (every replica serves "
                        "its own share of the sessions; one pod is a single point of failure)")
    for hpa in hpas:
        if hpa["spec"].get("minReplicas", 1) < 2:
            problems.append("the HPA must keep at least 2 replicas")

    # Dapr mode: the component the app subscribes to is there, and one subscription style.
    if ann.get("dapr.io/enabled") == "true":
        components = {d["metadata"]["name"] for d in listed if d.get("kind") == "Component"}
        pubsub = config.get("DAPR_PUBSUB_NAME", "taskpubsub")
        if components and pubsub not in components:
            problems.append(f"DAPR_PUBSUB_NAME {pubsub} is not a listed Component "
                            f"({', '.join(sorted(components))})")
        subs = [d for d in listed if d.get("kind") == "Subscription"]
        programmatic = str(config.get("DAPR_SUBSCRIBE", "true")).lower() != "false"
        if subs and programmatic:
            problems.append("a declarative Subscription is listed while DAPR_SUBSCRIBE is not "
                            "\"false\": every event would be delivered twice")
        if not subs and not programmatic:
            problems.append("DAPR_SUBSCRIBE is \"false\" but no Subscription is listed: "
                            "nothing would be delivered")
        route = config.get("DAPR_ROUTE", "/task-updates")
        for s in subs:
            if (s["spec"].get("routes") or {}).get("default") != route:
                problems.append(f"Subscription routes.default != DAPR_ROUTE ({route})")
    r.result("k8s/ consistency", problems,
             f"timing drain {drain}s < exit {grace}s < sidecar {sidecar}s <= pod {pod_grace}s; "
             "ports, probes, selectors, secrets, subscription mode agree")


def path_serves(path: str, path_type: str, route: str) -> bool:
    """Whether a request for exactly `route` matches the Ingress path (Kubernetes semantics:
    Prefix matches whole path elements, a trailing slash is ignored)."""
    if path_type == "Exact":
        return path == route
    prefix = path.rstrip("/")
    return route == prefix or route.startswith(prefix + "/")


def path_exposes(path: str, path_type: str, root: str) -> bool:
    """Whether some request for `root` or a path below it matches the Ingress path."""
    below = path == root or path.startswith(root + "/")
    return below or (path_type == "Prefix" and path_serves(path, path_type, root))


def check_ingress(r: Report, k8s_docs: list[tuple[Path, dict]], listed: list[dict],
                  kustomization: dict) -> None:
    """Every Ingress under k8s/ (listed in the kustomization or not) exposes the browser
    transports, on the public port only, with stream-friendly ingress-nginx settings, and
    nothing internal."""
    ingresses = [(p, d) for p, d in k8s_docs if d.get("kind") == "Ingress"]
    if not ingresses:
        print("skip  k8s/ ingress: no Ingress under k8s/")
        return
    # What the gateway listens on, from the Deployment and its ConfigMaps.
    dep = first(listed, "Deployment")
    container = next((c for c in dep["spec"]["template"]["spec"]["containers"]
                      if c["name"] == APP), None) if dep else None
    ports = {p.get("name"): p["containerPort"] for p in (container or {}).get("ports") or []}
    configmaps = {d["metadata"]["name"]: d.get("data") or {}
                  for d in listed if d.get("kind") == "ConfigMap"}
    config: dict[str, str] = {}
    for src in (container or {}).get("envFrom") or []:
        config.update(configmaps.get((src.get("configMapRef") or {}).get("name"), {}))
    public_port = int(config.get("PORT", 8005))
    internal_port = int(config.get("INTERNAL_PORT", 9005))
    heartbeat = int(config.get("HEARTBEAT_INTERVAL_SECS", 20))
    forbidden = list(INGRESS_FORBIDDEN) + [config.get("DAPR_ROUTE", "/task-updates")]
    services = {d["metadata"]["name"]: d for d in listed if d.get("kind") == "Service"}
    unlisted_services = {d["metadata"]["name"] for _, d in k8s_docs
                         if d.get("kind") == "Service"} - set(services)
    namespace = kustomization.get("namespace")
    listed_ids = {id(d) for d in listed}

    for path, ing in ingresses:
        problems: list[str] = []
        meta, spec = ing.get("metadata") or {}, ing.get("spec") or {}
        what = f"k8s/ ingress {meta.get('name', '?')}"
        ann = {str(k): str(v) for k, v in (meta.get("annotations") or {}).items()}
        if namespace and meta.get("namespace") not in (None, namespace):
            problems.append(f"namespace {meta['namespace']} != {namespace}: an Ingress only "
                            "reaches Services of its own namespace")

        # Backends: an existing Service, on its public port only.
        if spec.get("defaultBackend"):
            problems.append("spec.defaultBackend is set: every path without a rule, /api and "
                            "/metrics included, would reach it; remove it")

        def backend_problem(where: str, backend: dict) -> str | None:
            svc_ref = backend.get("service")
            if not svc_ref:
                return f"{where}: backend is not a Service"
            name, port = svc_ref.get("name"), svc_ref.get("port") or {}
            if name not in services:
                hint = (" (it is in k8s/ but not in the kustomization's resources)"
                        if name in unlisted_services else "")
                return (f"{where}: routes to Service {name}, which the kustomization does not "
                        f"create{hint}; known: {', '.join(sorted(services)) or 'none'}")
            if port.get("number") == internal_port or port.get("name") == "internal":
                return (f"{where}: routes to the internal port "
                        f"({port.get('number', port.get('name'))}: /metrics, server API); use "
                        f"the Service's public port ({public_port})")
            svc_port = next((p for p in services[name]["spec"].get("ports") or []
                             if ("number" in port and p.get("port") == port["number"])
                             or ("name" in port and p.get("name") == port["name"])), None)
            if svc_port is None:
                return (f"{where}: Service {name} has no port "
                        f"{port.get('number', port.get('name'))}")
            target = svc_port.get("targetPort", svc_port.get("port"))
            target_num = ports.get(target) if isinstance(target, str) else target
            if target_num != public_port:
                return (f"{where}: Service {name} port {svc_port.get('name') or svc_port['port']}"
                        f" leads to container port {target} ({target_num}), not the public "
                        f"port {public_port}")
            return None

        hosts: list[str] = []
        served: list[tuple[str, str]] = []  # (path, pathType) that reach the public port
        for i, rule in enumerate(spec.get("rules") or []):
            host = rule.get("host")
            if not host:
                problems.append(f"rules[{i}] has no host: it would answer for every host name")
            else:
                hosts.append(host)
            for http_path in (rule.get("http") or {}).get("paths") or []:
                p, ptype = http_path.get("path", "/"), http_path.get("pathType")
                where = f"{host or '*'}{p} ({ptype})"
                if ptype not in ("Exact", "Prefix"):
                    problems.append(f"{where}: use pathType Exact or Prefix; "
                                    f"{ptype} matching is controller-specific and unchecked")
                    continue
                bad = backend_problem(where, http_path.get("backend") or {})
                if bad:
                    problems.append(bad)
                else:
                    served.append((p, ptype))
                exposed = [f for f in forbidden if path_exposes(p, ptype, f)]
                if exposed:
                    problems.append(f"{where}: exposes {', '.join(exposed)}, which must stay "
                                    "inside the cluster (server API, metrics, Dapr routes)")
                elif p.rstrip("/") not in INGRESS_ALLOWED and p not in INGRESS_ALLOWED:
                    problems.append(f"{where}: not a browser route of the gateway (allowed: "
                                    f"{', '.join(sorted(INGRESS_ALLOWED))})")
        for route in INGRESS_REQUIRED:
            if not any(path_serves(p, t, route) for p, t in served):
                problems.append(f"{route} is not served (to the public port of an existing "
                                "Service)")
        tls_hosts = {h for t in spec.get("tls") or [] if t.get("secretName")
                     for h in t.get("hosts") or []}
        for host in hosts:
            if host not in tls_hosts:
                problems.append(f"host {host} has no tls entry with a secretName: browsers on "
                                "an https page cannot open ws:// or plain http streams")

        # ingress-nginx settings for long-lived streams.
        klass = spec.get("ingressClassName") or ann.get("kubernetes.io/ingress.class")
        timeouts = {}
        if klass != "nginx":
            problems.append(f"ingressClassName is {klass!r}: this check knows ingress-nginx "
                            "(nginx) only; adapt check_ingress (timeouts, buffering) to the "
                            "new controller")
        else:
            unknown = sorted(k for k in ann if k.startswith(NGINX_PREFIX)
                             and k[len(NGINX_PREFIX):] not in NGINX_ANNOTATIONS)
            if unknown:
                problems.append(f"unknown ingress-nginx annotation(s), silently ignored by the "
                                f"controller: {', '.join(unknown)}")
            for key in ("proxy-read-timeout", "proxy-send-timeout"):
                raw = ann.get(NGINX_PREFIX + key)
                try:
                    timeouts[key] = int(raw) if raw is not None else 60
                except ValueError:
                    problems.append(f"{key} {raw!r} is not a number of seconds")
                    continue
                if timeouts[key] < INGRESS_MIN_TIMEOUT_SECS or timeouts[key] <= heartbeat:
                    problems.append(f"{key} is {timeouts[key]} s"
                                    f"{'' if raw is not None else ' (the default)'}: quiet "
                                    "WebSocket/SSE streams would be cut; set it to at least "
                                    f"{max(INGRESS_MIN_TIMEOUT_SECS, heartbeat + 1)}")
            buffering = ann.get(NGINX_PREFIX + "proxy-buffering")
            if buffering != "off":
                problems.append(f"proxy-buffering is {buffering!r}, must be \"off\": SSE events "
                                "would wait in nginx's buffers")
            version = ann.get(NGINX_PREFIX + "proxy-http-version", "1.1")
            if version != "1.1":
                problems.append(f"proxy-http-version {version!r}: WebSocket upgrades need 1.1")
            if NGINX_PREFIX + "connection-proxy-header" in ann:
                problems.append("connection-proxy-header replaces the Connection: upgrade "
                                "header ingress-nginx sends; /ws upgrades would fail")
            for key in ("use-regex", "rewrite-target"):
                if NGINX_PREFIX + key in ann and ann[NGINX_PREFIX + key] != "false":
                    problems.append(f"{key} turns every path of the host into a regular "
                                    "expression (a prefix match); the exposure checks above "
                                    "would not hold")

        note = "" if id(ing) in listed_ids else " [not in kustomization]"
        r.result(what, problems,
                 f"{', '.join(hosts)}: {', '.join(p for p, _ in served)} -> public port "
                 f"{public_port} of {', '.join(sorted(services))}; TLS; read/send timeout "
                 f"{timeouts.get('proxy-read-timeout')}/{timeouts.get('proxy-send-timeout')} s, "
                 f"buffering off; {', '.join(forbidden)} not exposed{note}")


def check_rendered(r: Report, checker: Checker, path: Path, kustomization: dict) -> None:
    docs = load_docs(path)
    problems: list[str] = []
    namespace = kustomization.get("namespace")
    tags = {i["name"]: i for i in kustomization.get("images") or []}
    for doc in docs:
        problems += checker.validate_doc(doc)
        meta = doc.get("metadata") or {}
        if doc.get("kind") == "Secret":
            problems.append(f"{name_of(doc)}: the kustomization must not apply Secrets")
        if namespace and doc.get("kind") not in CLUSTER_SCOPED and meta.get("namespace") != namespace:
            problems.append(f"{name_of(doc)}: namespace {meta.get('namespace')!r} != {namespace}")
        if (meta.get("labels") or {}).get("app.kubernetes.io/name") != APP:
            problems.append(f"{name_of(doc)}: no label app.kubernetes.io/name={APP}")
        if doc.get("kind") == "Deployment":
            for c in doc["spec"]["template"]["spec"]["containers"]:
                want = tags.get(APP)
                if want and c["name"] == APP:
                    expected = f"{want.get('newName', APP)}:{want.get('newTag')}"
                    if c["image"] != expected:
                        problems.append(f"container {c['name']} image {c['image']} != {expected}")
                elif ":" not in c["image"].rsplit("/", 1)[-1] and "@" not in c["image"]:
                    problems.append(f"container {c['name']} image {c['image']} has no tag")
    r.result("kustomize build k8s/", problems,
             f"{len(docs)} resources rendered and valid, namespace {namespace}, labelled, "
             "image tagged, no Secret")


# ---------------------------------------------------------------------------------------------
# the gateway's metrics, from telemetry.rs

class MetricsSourceError(Exception):
    pass


# String literals (kept), char literals (kept), comments (blanked), so that a `register(` or a
# quote inside a comment, or a comma or parenthesis inside a help text, confuses nothing.
RUST_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|' r"'(?:[^'\\\n]|\\.)'|" r"//[^\n]*|/\*.*?\*/",
                        re.DOTALL)
# prometheus_client::registry::Unit -> the suffix the encoder appends to the name.
PROM_UNITS = {"Amperes": "amperes", "Bytes": "bytes", "Celsius": "celsius", "Grams": "grams",
              "Joules": "joules", "Meters": "meters", "Ratios": "ratios", "Seconds": "seconds",
              "Volts": "volts"}


def strip_rust_comments(src: str) -> str:
    return RUST_TOKEN.sub(lambda m: m.group(0) if m.group(0)[0] in "\"'" else " ", src)


RUST_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
CLOSING = {")": "(", "]": "[", "}": "{", ">": "<"}


def split_top_level(src: str, start: int, angle: bool) -> tuple[list[str], int]:
    """Split src from start at commas outside brackets and strings, up to the bracket that
    closes one opened before start (or the end of src); returns the parts and where it stopped.
    `angle`: every `<` opens a bracket (types); otherwise only a turbofish `::<` does."""
    parts, current, stack, i = [], [], [], start
    while i < len(src):
        c = src[i]
        if c == '"':
            m = RUST_STRING.match(src, i)
            if not m:
                raise MetricsSourceError(f"unterminated string at offset {i}")
            current.append(m.group(0))
            i = m.end()
            continue
        if c in "([{" or (c == "<" and (angle or src.endswith("::", 0, i))):
            stack.append(c)
        elif c == ">" and (src[i - 1] == "-" or (stack[-1:] != ["<"] and not (angle and not stack))):
            pass  # `->`, or a comparison
        elif c in CLOSING:
            if not stack:
                break
            if stack.pop() != CLOSING[c]:
                raise MetricsSourceError(f"mismatched {c!r} at offset {i}")
        elif c == "," and not stack:
            parts.append("".join(current).strip())
            current = []
            i += 1
            continue
        current.append(c)
        i += 1
    parts.append("".join(current).strip())
    return [x for x in parts if x], i  # a trailing comma leaves an empty part


def call_args(src: str, open_paren: int) -> list[str]:
    """The arguments of the call whose '(' is at open_paren."""
    args, end = split_top_level(src, open_paren + 1, angle=False)
    if end >= len(src) or src[end] != ")":
        raise MetricsSourceError(f"unbalanced parentheses in the call at offset {open_paren}")
    return args


def metric_kind(rust_type: str) -> str:
    """counter, gauge or histogram, from a field type such as `Family<ReasonLabels, Counter>`."""
    t = re.sub(r"\s+", "", rust_type)
    base = lambda ty: re.sub(r"^(?:[A-Za-z_]\w*::)*", "", ty).split("<", 1)[0]
    if base(t) == "Family":
        generics, _ = split_top_level(t, t.index("<") + 1, angle=True)
        if len(generics) < 2:
            raise MetricsSourceError(f"cannot read the metric type of {rust_type!r}")
        t = generics[1]  # Family<LabelSet, Metric, Constructor = ...>
    kinds = {"Counter": "counter", "Gauge": "gauge", "Histogram": "histogram"}
    if base(t) not in kinds:
        raise MetricsSourceError(f"unknown metric type {rust_type!r} (Counter, Gauge, Histogram "
                                 "or a Family of one expected)")
    return kinds[base(t)]


def gateway_metrics(path: Path) -> list[str]:
    """The series a dashboard must query for each metric registered in telemetry.rs:
    `<prefix>_<name>_total` for a counter, `<prefix>_<name>[_<unit>]_bucket` for a histogram,
    `<prefix>_<name>[_<unit>]` for a gauge (prometheus-client's naming)."""
    try:
        src = strip_rust_comments(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise MetricsSourceError(f"cannot read: {e}") from e
    prefixes = re.findall(r'Registry::with_prefix\(\s*"([^"]*)"\s*\)', src)
    if len(prefixes) != 1:
        raise MetricsSourceError(f"expected one Registry::with_prefix(\"...\"), found "
                                 f"{len(prefixes)}")
    if re.search(r"\bsub_registry", src):
        raise MetricsSourceError("uses a sub-registry (a second prefix), which this check does "
                                 "not understand; extend gateway_metrics()")
    struct = re.search(r"pub\s+struct\s+Metrics\s*\{(.*?)\n\}", src, re.DOTALL)
    if not struct:
        raise MetricsSourceError("no `pub struct Metrics { ... }`")
    body = re.sub(r"#\[[^\]]*\]", " ", struct.group(1))  # attributes
    fields = {}
    for part in split_top_level(body, 0, angle=True)[0]:
        field = re.fullmatch(r"(?:pub(?:\([^)]*\))?\s+)?([a-z_]\w*)\s*:\s*(.+)", part, re.DOTALL)
        if not field:
            raise MetricsSourceError(f"cannot read the Metrics field {part[:60]!r}")
        fields[field.group(1)] = field.group(2).strip()
    metrics: list[str] = []
    for call in re.finditer(r"\.(register|register_with_unit)\s*\(", src):
        args = call_args(src, call.end() - 1)
        where = f"line {src.count(chr(10), 0, call.start()) + 1}, {call.group(1)}("
        want = 4 if call.group(1) == "register_with_unit" else 3
        if len(args) != want:
            raise MetricsSourceError(f"{where}: {len(args)} arguments, expected {want}")
        name = re.fullmatch(r'"([a-z_:][a-z0-9_:]*)"', args[0])
        if not name:
            raise MetricsSourceError(f"{where}: the name {args[0][:40]!r} is not a string "
                                     "literal metric name")
        field = re.fullmatch(r"&?(?:[a-z_]\w*\.)+?([a-z_]\w*)(?:\.clone\(\))?",
                             re.sub(r"\s+", "", args[-1]))
        if not field or field.group(1) not in fields:
            raise MetricsSourceError(f"{where}: cannot tell which Metrics field {args[-1]!r} "
                                     "is")
        kind = metric_kind(fields[field.group(1)])
        full = f"{prefixes[0]}_{name.group(1)}" if prefixes[0] else name.group(1)
        if want == 4:
            unit = re.fullmatch(r"(?:[A-Za-z_][A-Za-z0-9_]*::)*Unit::([A-Za-z]+)",
                                re.sub(r"\s+", "", args[2]))
            if not unit or unit.group(1) not in PROM_UNITS:
                raise MetricsSourceError(f"{where}: unknown unit {args[2]!r}")
            full += f"_{PROM_UNITS[unit.group(1)]}"
        metrics.append(full + {"counter": "_total", "histogram": "_bucket", "gauge": ""}[kind])
    dupes = sorted({m for m in metrics if metrics.count(m) > 1})
    if dupes:
        raise MetricsSourceError(f"registered twice: {', '.join(dupes)}")
    if len(metrics) < MIN_GATEWAY_METRICS:
        raise MetricsSourceError(f"found only {len(metrics)} registered metric(s), expected at "
                                 f"least {MIN_GATEWAY_METRICS}: the parser no longer understands "
                                 "the file")
    return metrics


def check_dashboard(r: Report, path: Path, telemetry: Path) -> None:
    what = r.rel(path)
    try:
        metrics = gateway_metrics(telemetry)
    except MetricsSourceError as e:
        r.fail(what, [f"cannot list the gateway's metrics from {r.rel(telemetry)}: {e}"])
        return
    try:
        dash = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        r.fail(what, [f"not valid JSON: {e}"])
        return
    problems = []
    if dash.get("uid") != APP:
        problems.append(f"uid is {dash.get('uid')!r}, expected {APP}")
    if dash.get("schemaVersion") != 39:
        problems.append(f"schemaVersion is {dash.get('schemaVersion')!r}, expected 39")
    variables = {v.get("name"): v for v in (dash.get("templating") or {}).get("list") or []}
    ds = variables.get("DS_PROMETHEUS")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        problems.append("templating needs a datasource variable DS_PROMETHEUS of type prometheus")
    panels = []
    for p in dash.get("panels") or []:
        panels.append(p)
        panels.extend(p.get("panels") or [])  # collapsed rows
    ids = [p.get("id") for p in panels]
    if len(ids) != len(set(ids)):
        problems.append("panel ids are not unique")
    exprs = []
    for p in panels:
        if p.get("type") == "row":
            continue
        if (p.get("datasource") or {}).get("uid") != "${DS_PROMETHEUS}":
            problems.append(f"panel {p.get('title')!r} does not use ${{DS_PROMETHEUS}}")
        if not p.get("targets"):
            problems.append(f"panel {p.get('title')!r} has no query")
        exprs += [t.get("expr", "") for t in p.get("targets") or []]
    text = "\n".join(exprs)
    missing = [m for m in metrics if not re.search(rf"\b{re.escape(m)}\b", text)]
    if missing:
        problems.append(f"no panel queries {', '.join(missing)} (registered in "
                        f"{r.rel(telemetry)})")
    r.result(what, problems, f"{len(panels)} panels; all {len(metrics)} metrics registered in "
             f"{r.rel(telemetry)} queried")


# ---------------------------------------------------------------------------------------------

def guarded(r: Report, what: str, check, *args) -> None:
    """Run a check that walks the manifests' structure; a missing field fails it, not the run."""
    try:
        check(*args)
    except (KeyError, IndexError, TypeError, AttributeError, ValueError, yaml.YAMLError) as e:
        r.fail(what, [f"cannot check, a manifest lacks an expected field: "
                      f"{type(e).__name__}: {e}".replace("\n", " ")])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
    ap.add_argument("--k8s-dir", type=Path, help="default: ROOT/k8s")
    ap.add_argument("--dapr-dir", type=Path, help="default: ROOT/dapr-components")
    ap.add_argument("--dashboard", type=Path,
                    help="default: ROOT/deploy/grafana/websocket-service.json")
    ap.add_argument("--telemetry", type=Path,
                    help=f"where the gateway registers its metrics; default: ROOT/{TELEMETRY_RS}")
    ap.add_argument("--kubernetes-version", default="1.30")
    ap.add_argument("--rendered", type=Path, help="output of `kustomize build k8s/`")
    ap.add_argument("--kustomize-error", type=Path,
                    help="stderr of a failed `kustomize build k8s/`, reported as a failure")
    args = ap.parse_args()

    root = args.root.resolve()
    k8s = (args.k8s_dir or root / "k8s").resolve()
    dapr_dir = (args.dapr_dir or root / "dapr-components").resolve()
    dashboard = (args.dashboard or root / "deploy/grafana/websocket-service.json").resolve()
    telemetry = (args.telemetry or root / TELEMETRY_RS).resolve()
    r = Report(root)
    checker = Checker(r, KubeValidator(args.kubernetes_version),
                      DaprValidator(root / "scripts" / "dapr-schemas"))

    # 1. The kustomization and the files it lists.
    kpath = k8s / "kustomization.yaml"
    try:
        kdocs = load_docs(kpath)
        kustomization = kdocs[0] if kdocs else {}
    except (OSError, yaml.YAMLError, ValueError) as e:
        r.fail(r.rel(kpath), [f"cannot read: {e}"])
        return 1
    listed_names = [str(x) for x in kustomization.get("resources") or []]
    problems = []
    for name in listed_names:
        target = (k8s / name).resolve()
        if "://" in name or not target.is_relative_to(k8s):
            problems.append(f"{name}: resources must be files inside {r.rel(k8s)}/")
        elif not target.is_file():
            problems.append(f"{name}: listed but missing")
    if kustomization.get("kind") != "Kustomization":
        problems.append("kind is not Kustomization")
    if "secret.example.yaml" in listed_names:
        problems.append("secret.example.yaml is listed: its placeholders would be applied")
    r.result(r.rel(kpath), problems,
             f"{len(listed_names)} resources listed, all present; namespace "
             f"{kustomization.get('namespace')}")

    # 2. Every manifest under k8s/: listed ones, the secret template, unlisted extras.
    listed_docs: list[dict] = []
    all_docs: list[tuple[Path, dict]] = []
    listed_paths = {(k8s / n).resolve() for n in listed_names}
    example_secrets: list[dict] = []
    for path in sorted(p for p in k8s.rglob("*") if p.suffix in (".yaml", ".yml")):
        if path.resolve() == kpath:
            continue
        note = "" if path.resolve() in listed_paths else " [not in kustomization]"
        docs = checker.check_file(path, note)
        all_docs += [(path, d) for d in docs]
        if path.resolve() in listed_paths:
            listed_docs += docs
        if path.name == "secret.example.yaml":
            example_secrets = docs
    check_no_real_secrets(r, k8s, kustomization)
    guarded(r, "k8s/ consistency", check_consistency, r, listed_docs, example_secrets)
    guarded(r, "k8s/ ingress", check_ingress, r, all_docs, listed_docs, kustomization)

    # 3. Dapr resources outside k8s/ (dapr-components/, recursively).
    if dapr_dir.is_dir():
        for path in sorted(p for p in dapr_dir.rglob("*") if p.suffix in (".yaml", ".yml")):
            checker.check_file(path, dapr_only=True)
    else:
        print(f"skip  {r.rel(dapr_dir)}: no such directory")

    # 4. The rendered kustomization.
    if args.kustomize_error:
        log = args.kustomize_error.read_text(encoding="utf-8", errors="replace")
        r.fail("kustomize build k8s/", [" ".join(log.split()) or "failed"])
    elif args.rendered:
        guarded(r, "kustomize build k8s/", check_rendered, r, checker, args.rendered,
                kustomization)

    # 5. The dashboard.
    check_dashboard(r, dashboard, telemetry)

    print(f"check-k8s: {r.checked - r.failures} passed, {r.failures} failed")
    return 1 if r.failures else 0


if __name__ == "__main__":
    sys.exit(main())
