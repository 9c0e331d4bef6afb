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

.PHONY: help install run demo test chaos bench stack-up stack-down migrate lint format

help: ## list the commands
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

$(POETRY):
	@echo "installing Poetry into $(TOOLS)/poetry (first run only)"
	@$(PYTHON) -m venv $(TOOLS)/poetry
	@$(TOOLS)/poetry/bin/pip install -q 'poetry>=2.1,<3'

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
	  $(BIN)/python -m devtools.simulator --port $(SIM_PORT) & sim=$$!; \
	  trap 'kill $$sim 2>/dev/null' EXIT INT TERM; \
	  source $(STACK_ENV) && \
	  BINANCE_WS_URL=ws://127.0.0.1:$(SIM_PORT) BINANCE_REST_URL=http://127.0.0.1:$(SIM_PORT) \
	  $(BIN)/uvicorn api.main:app --host $(HOST) --port $(PORT) --no-access-log

test: install ## run the whole suite (starts and stops its own Kafka + PostgreSQL)
	@$(BIN)/pytest $(PYTEST_ARGS)

chaos: install ## the full fault-injection suite (longer than the CI-sized run)
	@CHAOS_FULL=1 $(BIN)/pytest tests/chaos $(PYTEST_ARGS)

bench: install ## the one-run benchmark (see docs/perf.md); QUICK=1 for a smoke run
	@$(BIN)/python -m bench $(if $(QUICK),--quick,)

lint: install ## ruff + mypy
	@$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy api pipeline

format: install
	@$(BIN)/ruff format . && $(BIN)/ruff check --fix .
