# Skiplock: `make help` lists the targets.
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST := $(BIN)/pytest

.DEFAULT_GOAL := help

help: ## list targets
	@grep -E '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-18s %s\n", $$1, $$2}'

$(BIN)/.installed: pyproject.toml
	@test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/pip install --progress-bar off -q --upgrade pip
	$(BIN)/pip install --progress-bar off -e ".[dev,embedded,operator,api]"
	@touch $@

setup: $(BIN)/.installed ## create .venv and install Skiplock with every extra

demo: setup ## run the demo: embedded Postgres, workers, a SIGKILL, a summary
	$(BIN)/skiplock demo

lint: setup ## ruff and mypy --strict
	$(BIN)/ruff check worker operator tests e2e benchmarks charts/skiplock/files
	$(BIN)/mypy

test-unit: setup ## pure-logic unit tests
	$(PYTEST) tests/unit -q

toolchain: ## build or reuse kube-apiserver, etcd, kubectl, kind, helm, toxiproxy (cached outside the repo)
	bash e2e/toolchain/tools.sh

toxiproxy: setup ## build (or find) the Toxiproxy server the failure-mode suite uses
	$(BIN)/python -m tests.support.toxiproxy

test-integration: setup toolchain toxiproxy ## real Postgres, real kube-apiserver + etcd, helm chart
	$(PYTEST) tests/integration tests/chart -q --durations=30

test-failures: setup toxiproxy ## only the failure-mode suite: real faults (docs/failure-modes.md)
	$(PYTEST) tests/integration/failures -q

test-operator: setup toolchain ## only the operator: unit, envtest integration and chart tests
	$(PYTEST) tests/unit/test_scaling.py tests/unit/test_resources.py \
	  tests/unit/test_resources_conditions.py tests/integration/operator tests/chart -q

images: setup ## worker and operator images from host-built wheels (no network in docker build)
	bash e2e/toolchain/docker.sh && bash e2e/toolchain/base-images.sh && bash e2e/images.sh

operator: setup ## run the operator against the current kubeconfig
	$(BIN)/python -m skiplock_operator

test-browser: setup ## the dashboard in headless Chromium (Debian chromium; screenshots in artifacts/)
	$(PYTEST) tests/browser -q

e2e: setup ## the chaos suite in a real kind cluster, built offline (creates and deletes it)
	bash e2e/run.sh

test: lint test-unit test-integration test-browser e2e ## everything CI runs

bench: setup ## Skiplock vs procrastinate and pgqueuer, same Postgres, same run
	$(BIN)/python -m benchmarks

bench-claim: setup ## the claim statement with and without its rollout and pause guards (pgbench)
	PYTHONPATH=.:worker $(BIN)/python -m benchmarks.claim_cost

bench-pooler: setup ## enqueue->start latency direct, through PgBouncer with LISTEN direct, and poll-only
	PYTHONPATH=.:worker $(BIN)/python -m benchmarks.pooler_latency 80

bench-replication: setup ## claim commit cost with synchronous_commit on/off, async and sync standby
	PYTHONPATH=.:worker $(BIN)/python -m benchmarks.claim_commit_replication

bench-cancel: setup ## cancel latency (request -> handler sees it), with and without LISTEN
	PYTHONPATH=.:worker $(BIN)/python -m benchmarks.cancel_latency


.PHONY: help setup demo lint toolchain toxiproxy test-unit test-integration test-failures \
	test-operator test-browser images operator e2e test bench bench-claim bench-pooler bench-replication bench-cancel

bench-client: setup ## enqueue latency AsyncClient vs Client; wait() completion->waiter p50/p99
	PYTHONPATH=.:worker $(BIN)/python -m benchmarks.client_latency

bench-claim-limits: setup ## the claim with concurrency limits: no limit, global limit (unlocked, locked), 1,000 keys (pgbench)
	PYTHONPATH=.:worker $(BIN)/python -m benchmarks.claim_cost --limits

bench-wait-trigger: setup ## the completion-notify trigger's cost: claim+complete, lease renewal, single-row claim (pgbench)
	PYTHONPATH=.:worker $(BIN)/python -m benchmarks.wait_trigger_cost

dashboard-snapshot: setup ## the Grafana dashboard evaluated by Prometheus from a real kind run, drawn to docs/img/dashboard.png
	PYTHONPATH=.:worker $(BIN)/python -m benchmarks.dashboard_snapshot

bench-e2e: setup ## end-to-end both ways (harness steady state; from spawning CLI-started workers) vs pgqueuer, CPU per job, and the raw SQL references
	$(BIN)/python -m benchmarks --systems skiplock,pgqueuer --only e2e,e2e-cli,raw

bench-history: setup ## flat with history: claim, end-to-end and stats call at 0 vs 10M finished jobs; stats and overview at 1,000 queues
	PYTHONPATH=.:worker $(BIN)/python -m benchmarks.history_flatness

bench-soak: setup ## sustained run at 80 % of peak, real workers, autovacuum defaults (30 min; MINUTES=10 to shorten)
	PYTHONPATH=.:worker $(BIN)/python -m benchmarks.soak --minutes $(or $(MINUTES),30)
.PHONY: bench-history bench-soak

bench-startup: setup ## CPU and wall time from spawning two `skiplock worker` processes to their first job, asyncio and uvloop
	PYTHONPATH=.:worker $(BIN)/python -m benchmarks.worker_startup
.PHONY: bench-startup
