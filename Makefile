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
	$(BIN)/ruff check worker operator tests e2e benchmarks
	$(BIN)/mypy

test-unit: setup ## pure-logic unit tests
	$(PYTEST) tests/unit -q

test-integration: setup ## real Postgres (and a real kube-apiserver for the operator)
	$(PYTEST) tests/integration -q

test-browser: setup ## the dashboard in headless Chromium (Debian chromium; screenshots in artifacts/)
	$(PYTEST) tests/browser -q

e2e: setup ## the chaos suite in a real kind cluster, built offline (creates and deletes it)
	bash e2e/run.sh

test: lint test-unit test-integration test-browser e2e ## everything CI runs

bench: setup ## Skiplock vs procrastinate and pgqueuer, same Postgres, same run
	$(BIN)/python -m benchmarks

.PHONY: help setup demo lint test-unit test-integration test-browser e2e test bench
