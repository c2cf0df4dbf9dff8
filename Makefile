# Developer and CI entry points. `make help` lists the targets; a target's
# one-line description is its `## ` comment.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

CARGO ?= cargo
# `docker compose` (plugin) when present, else the standalone docker-compose.
# Recursive (=) so that only the targets using it run the probe.
COMPOSE_CMD = $(shell if docker compose version >/dev/null 2>&1; then echo "docker compose"; else echo docker-compose; fi)
# Machines here reach no container registry or public site: the local override
# adds a sample web server and points the checker at it. With internet access:
# make up COMPOSE_FILES=docker-compose.yml
COMPOSE_FILES ?= docker-compose.yml $(wildcard docker-compose.local.yml)
# The project: .env's COMPOSE_PROJECT_NAME, with `-standin` appended while the base images are
# the local stand-ins (own containers, network and volumes: docker/README.md, "Local stand-ins").
COMPOSE_PROJECT = $(shell scripts/compose-project.sh)
COMPOSE = $(COMPOSE_CMD) -p $(COMPOSE_PROJECT) $(addprefix -f ,$(COMPOSE_FILES))

# Runs a script that another part of the repository provides, with a clear
# message when it is not there (yet).
run_script = if [ -x "$(1)" ]; then "$(1)"; elif [ -f "$(1)" ]; then bash "$(1)"; \
	else echo "make: $(1) not found: this target needs it" >&2; exit 1; fi

.PHONY: help build test lint fmt demo images up down logs e2e ui-test k8s-validate bench fuzz clean \
	stack-up stack-down stack-status

help: ## List the targets
	@echo "Usage: make <target>"
	@echo
	@awk 'BEGIN { FS = ":[^#]*## " } /^[a-zA-Z0-9_.-]+:[^#]*## / { printf "  %-14s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

build: ## Build the release binaries (target/release/checker, target/release/sink)
	$(CARGO) build --workspace --release

# NEXTEST_ARGS: extra arguments, e.g. NEXTEST_ARGS="-E 'test(readiness)'"
test: ## Run every test against a throwaway PostgreSQL + tansu broker (KEEP_STACK=1 leaves it up)
	@scripts/stack.sh install
	@scripts/promtool-test.sh
	@if scripts/stack.sh status >/dev/null 2>&1; then \
		echo "make test: using the test stack that already runs (left running)"; \
	elif [ -z "$${KEEP_STACK:-}" ]; then \
		trap 'scripts/stack.sh down' EXIT; \
	fi; \
	scripts/stack.sh up; \
	eval "$$(scripts/stack.sh env)"; \
	echo "TEST_DATABASE_URL=$$TEST_DATABASE_URL TEST_KAFKA_BOOTSTRAP_SERVERS=$$TEST_KAFKA_BOOTSTRAP_SERVERS"; \
	if $(CARGO) nextest --version >/dev/null 2>&1; then \
		doc_rc=0; $(CARGO) test --workspace --doc || doc_rc=$$?; \
		$(CARGO) nextest run --workspace --no-fail-fast $(NEXTEST_ARGS); \
		exit "$$doc_rc"; \
	else \
		echo "cargo-nextest not found; using cargo test"; \
		$(CARGO) test --workspace --no-fail-fast; \
	fi

lint: ## Check formatting (rustfmt) and lints (clippy, warnings are errors)
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt: ## Format the code in place
	$(CARGO) fmt --all

demo: ## Run checker + sink locally against demo targets, with a live summary (DEMO_SECONDS=N to stop after N s; DEMO_BROKER=tansu for the tests' broker)
	@scripts/demo.sh

images: ## Build the container images (base images from Debian's packages first, when missing)
	@if [ -e scripts/base-images.sh ]; then $(call run_script,scripts/base-images.sh); fi
	@$(call run_script,scripts/images.sh)

up: images ## Build the images and start the Docker Compose stack in the background
	@# Prometheus (user nobody) reads its bind mounts: world-readable whatever the umask was.
	@chmod a+r docker/prometheus/prometheus.yml deploy/mixin/alerts.yaml
	$(COMPOSE) up -d
	$(COMPOSE) ps

down: ## Stop the Docker Compose stack
	$(COMPOSE) down --remove-orphans

logs: ## Follow the Docker Compose stack's logs
	$(COMPOSE) logs -f --tail=100

ui-test: ## Status page in headless Chromium (DOM vs JSON vs SQL, screenshots in .tmp/ui/) + schemathesis on the JSON API
	@scripts/ui-test.sh

e2e: ## Run the end-to-end test against the containerised stack
	@$(call run_script,scripts/e2e.sh)

k8s-validate: ## Validate the Kubernetes manifests
	@$(call run_script,scripts/k8s-validate.sh)

bench: ## Run the benchmarks
	@$(call run_script,scripts/bench.sh)

# Fuzzing (fuzz/, its own workspace): each target of FUZZ_TARGETS runs FUZZ_SECONDS,
# growing fuzz/corpus/<target> from the seeds in fuzz/seeds/ (a crash stops it and
# leaves the input in fuzz/artifacts/<target>/). cargo-fuzz needs unstable rustc
# flags (-Zsanitizer, sanitizer coverage); RUSTC_BOOTSTRAP=1 lets the stable
# toolchain accept them (checked with rustc 1.95.0). No sanitizer: the code fuzzed
# is safe Rust; -a keeps debug assertions and overflow checks on. -fork=1: the
# target list's compiled-regex cache (checker::target, kept for the process's
# life by design) grows with every new pattern and reaches libFuzzer's 2 GB RSS
# limit after a minute or two; in fork mode a worker that does is restarted
# (-ignore_ooms), while a crash still stops the run.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= probe_result targets_json targets_yaml
fuzz_seeds = $(if $(filter probe_result,$(1)),probe_result,targets)

fuzz: ## Fuzz the probe-result decoder and the target-list parser (FUZZ_SECONDS per target, default 60)
	@command -v cargo-fuzz >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked
	@$(foreach t,$(FUZZ_TARGETS),mkdir -p fuzz/corpus/$(t) && \
		echo "fuzz: $(t) for $(FUZZ_SECONDS)s" && \
		RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run --fuzz-dir fuzz --sanitizer none -a $(t) \
			fuzz/corpus/$(t) fuzz/seeds/$(call fuzz_seeds,$(t)) \
			-- -fork=1 -max_total_time=$(FUZZ_SECONDS) -timeout=10 -print_final_stats=1 &&) true

stack-up: ## Start the throwaway PostgreSQL + broker used by tests and print their TEST_* variables
	@scripts/stack.sh install
	@scripts/stack.sh up
	@scripts/stack.sh env

stack-down: ## Stop the throwaway PostgreSQL + broker and delete their data
	@scripts/stack.sh down

stack-status: ## Show whether the throwaway PostgreSQL + broker run
	@scripts/stack.sh status

clean: ## Stop the test and demo stacks, delete their data, demo logs and cargo's target/
	@scripts/stack.sh down
	@PG_PORT=54330 BROKER_PORT=19093 scripts/stack.sh down
	rm -rf .tmp/demo
	$(CARGO) clean
