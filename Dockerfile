# syntax=docker/dockerfile:1
#
# Image for websocket-service (the gateway, ENTRYPOINT) and task-publish (the CLI).
#
#   docker build -t websocket-service:dev .
#   docker build --build-arg VCS_URL=https://example.org/repo --build-arg VCS_REF=$(git rev-parse HEAD) .
#
# Needs BuildKit (the default builder since Docker 23) for the cache mounts.
# The image holds no secrets: JWT_SECRET / JWT_PUBLIC_KEY / JWT_JWKS_URL, APP_API_TOKEN and
# KAFKA_BROKERS are given at run time (k8s Secret / compose environment).

# Toolchain. The locked dependencies need rustc >= 1.89 (actix-web 4.18, uuid 1.29), so the
# workspace MSRV alone (1.88) is not enough for `--locked`.
ARG RUST_VERSION=1.95.0
ARG DEBIAN_RELEASE=bookworm

# ---------------------------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder

# rdkafka-sys builds librdkafka 2.3.0 from its vendored source with ./configure + make
# (C and C++), links OpenSSL (rdkafka "ssl", reqwest native-tls) and zlib through pkg-config.
# No cmake: the cmake-build feature is off. The rust image already has most of these; they are
# named so the build does not depend on what the base image happens to ship.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        gcc g++ make pkg-config libssl-dev zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app

# Only what the build reads. .dockerignore keeps target/ and .tools/ out of the context anyway.
COPY Cargo.toml Cargo.lock ./
COPY services ./services

# The registry and target dir live in BuildKit cache mounts, so a rebuild after a source change
# only recompiles the workspace crates. A cache mount is not part of the image: the binaries
# are copied out of it in this same RUN.
RUN --mount=type=cache,id=cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=cargo-git,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,id=websocket-service-target,target=/app/target,sharing=locked \
    cargo build --release --locked \
        -p websocket-service --bin websocket-service \
        -p publisher --bin task-publish \
    && install -D -m 0755 target/release/websocket-service /out/websocket-service \
    && install -D -m 0755 target/release/task-publish /out/task-publish

# ---------------------------------------------------------------------------------------------
FROM debian:${DEBIAN_RELEASE}-slim AS runtime

ARG VCS_URL=""
ARG VCS_REF=""
LABEL org.opencontainers.image.title="websocket-service" \
      org.opencontainers.image.description="Realtime WebSocket gateway: Kafka / Dapr task events pushed to per-user sessions; also ships the task-publish CLI" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="${VCS_URL}" \
      org.opencontainers.image.revision="${VCS_REF}"

# Runtime libraries only: libssl3 (librdkafka TLS, reqwest native-tls) and the CA bundle for
# TLS to brokers / JWKS endpoints. zlib1g and libc are already part of the slim base.
# A fixed non-root uid/gid 10001 (matches runAsUser in k8s), no home, no login shell.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 app \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin app

COPY --from=builder /out/websocket-service /out/task-publish /usr/local/bin/

USER 10001:10001
EXPOSE 8005
ENV PORT=8005 \
    LOG_FORMAT=json

# Liveness/readiness are checked from outside: k8s probes on /health and /ready, compose by
# its own means. The slim image has no HTTP client to probe with anyway.
HEALTHCHECK NONE

ENTRYPOINT ["/usr/local/bin/websocket-service"]
