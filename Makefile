# Local development and CI entry points; `make help` lists them.
# stack/stack.py does the work: it installs packages and manages MariaDB, Redis,
# Kafka and the app processes, with all their state in .stack/.
STACK := python3 stack/stack.py
PY := .venv/bin/python
PYTEST_ARGS ?=
BENCH_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install services run test test-faults bench stop status lint format clean

help: ## Show this list of targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  make %-9s %s\n", $$1, $$2}'

install: ## Install apt packages, .venv with requirements, Kafka jars (skips what is done)
	$(STACK) install

services: install ## Start MariaDB, Redis and Kafka (idempotent)
	$(STACK) up

run: services ## Migrate, create topics and demo user, start web/celery/workers/bridge
	$(PY) manage.py migrate --noinput
	$(PY) manage.py collectstatic --noinput --verbosity 0
	$(PY) manage.py kafka_topics create
	$(PY) manage.py ensure_demo_user
	@echo "Checking that the workers' model weights load (falls back to random weights)..."
	MODEL_WEIGHTS=$$($(PY) manage.py resolve_weights) $(STACK) up all
	@echo ""
	@echo "InferenceHub is running:"
	@echo "  upload page  http://127.0.0.1:8000/"
	@echo "  API          http://127.0.0.1:8000/api/"
	@echo "  admin        http://127.0.0.1:8000/admin/"
	@echo "  readiness    http://127.0.0.1:8000/readyz"
	@echo "Logs in .stack/logs/, stop with 'make stop'."

test: services ## Run the tests (extra pytest args: make test PYTEST_ARGS="-k upload -x")
	$(PY) -m pytest $(PYTEST_ARGS)

test-faults: install ## Kill and stop services on purpose, on a stack of their own (.stack/faults/)
	$(PY) -m pytest -m faults tests/faults $(PYTEST_ARGS)

bench: services ## Benchmark against the model's ceiling, the seed and Ray Serve (docs/performance.md)
	$(PY) -m pip install --quiet -r requirements-bench.txt
	$(PY) manage.py benchmark $(BENCH_ARGS)

stop: ## Stop the app processes and the data services
	$(STACK) down all

status: ## Show each service as running/stopped with port and pid
	$(STACK) status

lint: ## Check code style with ruff
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

format: ## Reformat code and apply safe ruff fixes
	.venv/bin/ruff check --fix . && .venv/bin/ruff format .

clean: stop ## Stop everything and delete .stack/ (data, logs, Kafka jars; keeps .venv)
	rm -rf .stack
