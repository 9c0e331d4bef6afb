# crypto-streaming-pipeline — every command installs what it needs first.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
HOST ?= 127.0.0.1
PORT ?= 8000
SIM_PORT ?= 9443
PYTEST_ARGS ?=

TOOLS := .tools
POETRY := $(TOOLS)/poetry/bin/poetry
VENV := .venv
BIN := $(VENV)/bin
STACK_ENV := .stack/env
export POETRY_VIRTUALENVS_IN_PROJECT := true
export POETRY_NO_INTERACTION := 1

.PHONY: help install run demo test chaos bench stack-up stack-down migrate lint format dist \
	kafka-jars-lock browser fresh-check

help: ## list the commands
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

# Needs only python3: no python3-venv, no system pip (devtools/bootstrap.py says how).
$(POETRY):
	@echo "installing Poetry into $(TOOLS)/poetry (first run only)"
	@$(PYTHON) devtools/bootstrap.py $(TOOLS)/poetry 'poetry>=2.1,<3'

$(VENV)/.installed: pyproject.toml poetry.lock | $(POETRY)
	@echo "installing dependencies from poetry.lock into $(VENV)"
	@$(POETRY) install -q --with dev,stack
	@touch $@

install: $(VENV)/.installed ## install Python dependencies (Poetry, lock file) into .venv

stack-up: install ## start local Kafka + PostgreSQL in the background, write .stack/env
	@$(BIN)/python -m devtools.stack up

stack-down: ## stop the local Kafka + PostgreSQL
	@if [ -x $(BIN)/python ]; then $(BIN)/python -m devtools.stack down; fi

migrate: stack-up ## alembic upgrade head
	@source $(STACK_ENV) && $(BIN)/alembic upgrade head

run: migrate ## run the service against live Binance on HOST:PORT
	@source $(STACK_ENV) && exec $(BIN)/uvicorn api.main:app --host $(HOST) --port $(PORT) --no-access-log

demo: migrate ## run the service against the built-in Binance simulator
	@source $(STACK_ENV) && \
	  $(BIN)/python -m devtools.simulator --port $(SIM_PORT) --history-days 7 & sim=$$!; \
	  trap 'kill $$sim 2>/dev/null' EXIT INT TERM; \
	  source $(STACK_ENV) && \
	  BINANCE_WS_URL=ws://127.0.0.1:$(SIM_PORT) BINANCE_REST_URL=http://127.0.0.1:$(SIM_PORT) \
	  $(BIN)/uvicorn api.main:app --host $(HOST) --port $(PORT) --no-access-log

test: install browser ## run the whole suite (starts and stops its own Kafka + PostgreSQL)
	@$(BIN)/pytest $(PYTEST_ARGS)

# The dashboard's browser test drives Debian's Chromium headless: installed here when possible.
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing chromium and chromium-driver from Debian (first run only)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null; \
	  else \
	    echo "the browser test needs Chromium: install chromium and chromium-driver (Debian: sudo apt-get install chromium chromium-driver)"; \
	  fi; \
	fi

chaos: install ## the full fault-injection suite (longer than the CI-sized run)
	@CHAOS_FULL=1 $(BIN)/pytest tests/chaos $(PYTEST_ARGS)

bench: install ## the one-run benchmark (see docs/perf.md); QUICK=1 for a smoke run
	@$(BIN)/python -m bench $(if $(QUICK),--quick,)

lint: install ## ruff + mypy + deptry (every import declared)
	@$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy api pipeline devtools \
	  && $(BIN)/deptry api pipeline --ignore DEP002 && $(BIN)/deptry devtools bench --ignore DEP002,DEP004

format: install
	@$(BIN)/ruff format . && $(BIN)/ruff check --fix .

dist: install ## build the wheel into dist/ (the product only: api and pipeline, with defaults and migrations)
	@$(POETRY) build -q -f wheel && ls dist/*.whl

kafka-jars-lock: install ## maintainers: re-resolve devtools/stack/kafka-pom.xml with Maven into kafka-jars.lock
	@$(BIN)/python -m devtools.stack lock-jars

fresh-check: ## a bare Debian (python3, make, git, curl) runs `make demo` and `make test` (root, debootstrap)
	@bash devtools/fresh-check.sh
