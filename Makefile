# Developer entry points. Run `make` or `make help` for the list.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

.PHONY: help run test lint bench fmt broker clean check-deploy

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
	rm -rf .tools
