# AI Factory Pipelines: the README's commands.
#   make demo    set up, start the local stack and run the demo pipeline end to end
#   make test    set up and run the whole suite (lint, unit, integration, end to end)
#   make lint    ruff check of the whole tree (configuration: [tool.ruff] in pyproject.toml)
#   make up | down | status    the local stack
SHELL := /bin/bash
STACK := bash include/stack/stack.sh
VENV ?= .venv
PY := $(VENV)/bin/python
RUFF := $(VENV)/bin/ruff

.PHONY: setup up down status demo test unit integration e2e lint bench-slurm clean

setup:
	$(STACK) setup

up:
	$(STACK) up

down:
	$(STACK) down

status:
	$(STACK) status

demo: up
	$(PY) -m aifactory.local.demo

# The whole suite: lint and unit tests first (no services), then the tests against the real stack.
test: setup
	$(RUFF) check .
	$(PY) -m pytest -q tests/unit tests/dags
	$(STACK) up
	$(PY) -m pytest -q -x tests/integration tests/e2e

unit: setup
	$(PY) -m pytest -q tests/unit tests/dags

lint: setup
	$(RUFF) check .

clean: down
	rm -rf .stack
