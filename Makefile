# recofleet: `make run` starts the fleet on the bundled sample, `make test` checks it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install run test test-unit test-integration lint format protos bench bench-profiles clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-17s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install recofleet with its dev tools

run: $(STAMP) ## load the bundled sample, train, serve the gateway on 127.0.0.1:8080
	$(BIN)/recofleet up

test: $(STAMP) ## every test: unit, conformance, integration (starts the fleet)
	$(BIN)/pytest

test-unit: $(STAMP) ## the fast in-process tests only
	$(BIN)/pytest tests/unit

test-integration: $(STAMP) ## the tests that start real processes and servers
	$(BIN)/pytest tests/integration tests/conformance

lint: $(STAMP) ## ruff check, ruff format --check, mypy on services/ and bench/
	$(BIN)/ruff check services tests bench proto
	$(BIN)/ruff format --check services tests bench proto
	$(BIN)/mypy services bench

format: $(STAMP) ## apply ruff fixes and formatting
	$(BIN)/ruff check --fix services tests bench proto
	$(BIN)/ruff format services tests bench proto

protos: $(STAMP) ## regenerate services/gen from proto/
	$(BIN)/python proto/generate.py

bench: $(STAMP) ## run the benchmarks in bench/ and print their figures (see BENCHMARKS.md)
	$(BIN)/python -m bench.recommend
	$(BIN)/python -m bench.ingest --bus both
	$(BIN)/python -m bench.profiles --quick

bench-profiles: $(STAMP) ## profiles at scale: 1,000,000 members on SQLite and PostgreSQL (hours)
	$(BIN)/python -m bench.profiles --json bench-profiles.json

clean: ## remove the environment and local data (var/)
	rm -rf $(VENV) var
