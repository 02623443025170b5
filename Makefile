# Local development and CI entry points; `make help` lists them.
# stack/ does the work (python3 stack/stack.py): it installs packages and manages MariaDB,
# Redis, Kafka and the app processes (under supervisord), with all their state in .stack/.
STACK := python3 stack/stack.py
PY := .venv/bin/python
PYTEST_ARGS ?=
BENCH_ARGS ?=
WEB_URL = http://127.0.0.1:$(or $(STACK_WEB_PORT),8000)
# The registered model make run serves; stack/processes.py names it for the workers too.
SERVED_MODEL = $(shell python3 -c 'from stack.processes import SERVED_MODEL; print(SERVED_MODEL)')
# The bearer token the web's /metrics asks for (METRICS_TOKEN), made on the first run.
METRICS_TOKEN_FILE = $(or $(STACK_DIR),.stack)/metrics-token
# The app runs with DEBUG off, as in production (plain HTTP on loopback: no HTTPS
# redirect, cookies not marked secure), with a secret key made on the first run.
SECRET_KEY_FILE = $(or $(STACK_DIR),.stack)/secret-key
# make run TRACES=1: Zipkin too, and every app process sending it its spans (README, Operations).
TRACES ?=
TRACE_ENV = $(if $(TRACES),$(shell python3 -c 'from stack.optional import ZIPKIN_CLIENT_ENV as e; print(*(f"{k}={v}" for k, v in e.items()))'))

.DEFAULT_GOAL := help
.PHONY: help install install-dev services run test test-fast test-faults test-distributed test-compose bench k8s-render stop status lint format clean

help: ## Show this list of targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  make %-11s %s\n", $$1, $$2}'

install: ## Install apt packages, .venv with what running needs (requirements.txt), Kafka jars (skips what is done)
	$(STACK) install

install-dev: install ## Also the test and lint tools (requirements-dev.txt); the test and lint targets run it
	$(STACK) install dev

services: install ## Start MariaDB, Redis and Kafka (idempotent)
	$(STACK) up

run: services ## Bootstrap (schema, static, the served model, topics, demo user), start the app under supervisord
	@echo "Checking that the workers' model weights load (falls back to random weights)..."
	@echo "Exporting the fastest model package that passes the faithfulness gate (once, cached in .stack/)..."
	test -s $(METRICS_TOKEN_FILE) || (umask 077 && python3 -c 'import secrets; print(secrets.token_urlsafe(24))' > $(METRICS_TOKEN_FILE))
	test -s $(SECRET_KEY_FILE) || (umask 077 && python3 -c 'import secrets; print(secrets.token_urlsafe(50))' > $(SECRET_KEY_FILE))
	$(if $(TRACES),$(STACK) up zipkin)
	weights=$$($(PY) manage.py resolve_weights) && \
	  package=$$($(PY) manage.py ensure_model_package --weights $$weights) && \
	  $(PY) manage.py bootstrap --model $(SERVED_MODEL) --package "$$package" --weights $$weights && \
	  MODEL_WEIGHTS=$$weights SEED_API_ANONYMOUS=$${SEED_API_ANONYMOUS:-true} \
	  DJANGO_DEBUG=$${DJANGO_DEBUG:-false} DJANGO_SECRET_KEY=$${DJANGO_SECRET_KEY:-$$(cat $(SECRET_KEY_FILE))} \
	  DJANGO_SECURE_SSL_REDIRECT=$${DJANGO_SECURE_SSL_REDIRECT:-false} DJANGO_SECURE_COOKIES=$${DJANGO_SECURE_COOKIES:-false} \
	  METRICS_TOKEN=$${METRICS_TOKEN:-$$(cat $(METRICS_TOKEN_FILE))} $(TRACE_ENV) $(STACK) up all && \
	  echo "" && echo "Workers serve $(SERVED_MODEL): $$($(PY) manage.py ensure_model_package --weights $$weights --describe)"
	@echo ""
	@echo "InferenceHub is running on $(WEB_URL) (loopback only unless STACK_WEB_HOST is set):"
	@echo "  upload page  $(WEB_URL)/"
	@echo "  API          $(WEB_URL)/api/"
	@echo "  admin        $(WEB_URL)/admin/"
	@echo "  readiness    $(WEB_URL)/readyz"
	@echo "  models       $(WEB_URL)/api/models/"
	@$(if $(TRACES),echo "  traces       http://127.0.0.1:$(or $(STACK_ZIPKIN_PORT),19411)/zipkin/ (a job's trace_id in its API answer finds it)")
	@echo '  metrics      curl -H "Authorization: Bearer $$(cat $(METRICS_TOKEN_FILE))" $(WEB_URL)/metrics'
	@$(PY) manage.py ensure_demo_user
	@echo "Logs in $(or $(STACK_DIR),.stack)/logs/, stop with 'make stop'$(if $(STACK_DIR), (with the same STACK_DIR and STACK_*_PORT settings; a bare one stops .stack))."

# The data services start first: the tests' settings read Redis's password, which Redis
# gets when it first starts.
test: services install-dev ## Run the tests, starting the services they need (extra pytest args: make test PYTEST_ARGS="-k upload -x")
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: install-dev ## Run only the tests that need no data service; starts nothing
	$(PY) -m pytest --no-services $(PYTEST_ARGS)

test-faults: install-dev ## Kill and stop services on purpose, on a stack of their own (.stack/faults/)
	$(PY) -m pytest -m faults tests/faults $(PYTEST_ARGS)

test-distributed: install-dev ## Several hosts in network namespaces, links cut (docs/distributed.md)
	$(PY) -m pytest -m distributed tests/distributed $(PYTEST_ARGS)

# Podman, the images and Docker Compose are built once and kept (.stack/containers/).
test-compose: install-dev ## Start docker/compose.yaml under Podman, test it, remove it (docs/compose.md)
	python3 -m stack.containers install
	$(PY) -m pytest -m compose tests/compose $(PYTEST_ARGS)

bench: services ## Benchmark against the model's ceiling, the seed and Ray Serve (docs/performance.md)
	$(PY) -m pip install --quiet -r requirements-bench.txt
	$(PY) manage.py benchmark $(BENCH_ARGS)

k8s-render: ## Render the Kubernetes manifests (OVERLAY=dev|production; installs kustomize)
	deploy/kubernetes/render.sh $(or $(OVERLAY),production)

stop: ## Stop the app processes and the data services
	$(STACK) down all

status: ## Show each service and app process; exits 1 if one is down or restarting
	$(STACK) status

lint: install-dev ## Check code style with ruff, and the import arrows with import-linter (pyproject.toml)
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/lint-imports

format: install-dev ## Reformat code and apply safe ruff fixes
	.venv/bin/ruff check --fix . && .venv/bin/ruff format .

clean: stop ## Stop everything and delete .stack/ (data, logs, Kafka jars; keeps .venv)
	rm -rf $(or $(STACK_DIR),.stack)
