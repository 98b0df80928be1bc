# AI Factory Pipelines: the README's commands.
#   make demo    set up, start the local stack and run the demo pipeline end to end
#   make test    set up and run the whole suite (lint, unit, integration, end to end, the Celery phase)
#   make lint    ruff check of the whole tree (configuration: [tool.ruff] in pyproject.toml)
#   make up | down | status    the local stack (Airflow on Postgres, LocalExecutor)
#   make up EXECUTOR=celery    the same with the CeleryExecutor: Redis and two Celery workers
#                              (make up, or EXECUTOR=local, goes back; make down stops either)
#   make onboard [CHECK=1]     apply every tenant spec (as root on the login node); CHECK=1: dry run
#   make doctor                check every cluster and tenant: host key, login, Slurm, S3; what to fix
SHELL := /bin/bash
STACK := bash include/stack/stack.sh
VENV ?= .venv
PY := $(VENV)/bin/python
RUFF := $(VENV)/bin/ruff
# the executor of make up / demo / test: local (LocalExecutor) or celery (CeleryExecutor + Redis)
EXECUTOR ?= local
STACK_UP := AIFP_EXECUTOR=$(EXECUTOR) $(STACK) up

.PHONY: setup up down status onboard doctor demo test test-celery unit integration e2e lint bench-slurm clean

setup:
	$(STACK) setup

up:
	$(STACK_UP)

down:
	$(STACK) down

status:
	$(STACK) status

# both read the stack's environment (endpoints, the platform's connections, the secrets directory)
STACK_ENV := $${AIFP_STATE_DIR:-.stack}/stack.env

onboard:
	source $(STACK_ENV) && $(PY) -m aifactory.platform.onboard $(if $(CHECK),--check)

doctor:
	source $(STACK_ENV) && $(PY) -m aifactory.platform.doctor

demo: up
	$(PY) -m aifactory.local.demo

# The whole suite: lint and unit tests first (no services), then the tests against the real stack,
# then its Celery phase (test-celery).
test: setup
	$(RUFF) check .
	$(PY) -m pytest -q tests/unit tests/dags
	$(STACK_UP)
	$(PY) -m pytest -q -x tests/integration tests/e2e
	$(MAKE) --no-print-directory test-celery

# The Celery phase: the same stack switched to the CeleryExecutor (Redis, two workers), the tests
# that need that topology (tests/celery), then back to $(EXECUTOR), even when they fail.
test-celery:
	AIFP_EXECUTOR=celery $(STACK) up
	$(PY) -m pytest -q -x tests/celery; rc=$$?; AIFP_EXECUTOR=$(EXECUTOR) $(STACK) up >/dev/null || rc=1; exit $$rc

unit: setup
	$(PY) -m pytest -q tests/unit tests/dags

lint: setup
	$(RUFF) check .

clean: down
	rm -rf .stack
