# Developer entry points. Run `make` or `make help` for the list.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

.PHONY: help run test lint bench chaos soak fuzz fmt broker clean check-deploy

help: ## Show this help
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*## "}; {printf "  %-8s %s\n", $$1, $$2}'

run: ## Run the gateway locally against a throwaway tansu broker
	scripts/with-broker.sh scripts/run-local.sh

test: ## Run unit, integration and doc tests against a throwaway tansu broker
	RUST_BACKTRACE=1 scripts/with-broker.sh scripts/test.sh

check-deploy: ## Validate Dockerfile (hadolint), docker-compose.yml (Compose), k8s/ and Dapr resources offline
	scripts/check-deploy-image.sh
	scripts/check-k8s.sh

lint: ## Check formatting, clippy with warnings as errors, and the browser client's lint and types
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	scripts/install-js.sh
	cd clients/js && npm run --silent lint

# The benchmark opens many sockets at once; fall back to the hard limit
# where 65536 is not allowed.
bench: ## Run the gateway benchmark against a throwaway tansu broker
	{ ulimit -n 65536 2>/dev/null || ulimit -n "$$(ulimit -Hn)"; } && scripts/with-broker.sh cargo bench -p websocket-service --bench gateway

# Faults with real processes (two replicas, a broker of its own): lost/duplicated events, time to
# recover and memory per fault.
chaos: ## Kill a replica, restart the broker, stall clients, malformed records, a reconnect storm
	{ ulimit -n 65536 2>/dev/null || ulimit -n "$$(ulimit -Hn)"; } && BENCH_WORKLOADS=chaos scripts/with-broker.sh cargo bench -p websocket-service --bench gateway

DURATION ?= 5m
soak: ## Steady load for DURATION (30m, 1h, 600s; default 5m); fails if memory, fds or queues keep growing
	d="$(DURATION)"; case "$$d" in *h) s=$$(( $${d%h} * 3600 ));; *m) s=$$(( $${d%m} * 60 ));; *s) s=$${d%s};; *) s=$$d;; esac; \
	{ ulimit -n 65536 2>/dev/null || ulimit -n "$$(ulimit -Hn)"; } && \
	BENCH_WORKLOADS=soak BENCH_SOAK_SECS="$$s" BENCH_FETCH_WAIT_MS="$${BENCH_FETCH_WAIT_MS:-100}" \
	scripts/with-broker.sh cargo bench -p websocket-service --bench gateway

FUZZ_SECONDS ?= 60
FUZZ_ARGS ?=
fuzz: ## Run every fuzz target (fuzz/, libFuzzer) for FUZZ_SECONDS each (default 60); FUZZ_ARGS: targets, --quick; prints executions per target
	FUZZ_SECONDS="$(FUZZ_SECONDS)" scripts/fuzz.sh $(FUZZ_ARGS)

fmt: ## Format all Rust code
	cargo fmt --all

broker: ## Run a tansu broker in the foreground on 127.0.0.1:9092 (in-memory)
	scripts/install-tansu.sh
	exec .tools/bin/tansu broker \
		--listener-url tcp://127.0.0.1:9092 \
		--advertised-listener-url tcp://127.0.0.1:9092 \
		--storage-engine memory://tansu/

clean: ## Remove build artifacts and downloaded tools
	cargo clean
	rm -rf fuzz/target
	rm -rf .tools
