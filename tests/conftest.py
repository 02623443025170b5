"""Real services for the suite: MariaDB, Redis and Kafka are started once per run by the
project's own stack script, and only when a selected test needs them; Celery, inference
workers and the result bridge run as real processes against the test database and this
run's own topics.

A test needs the data services when it has one of SERVICE_MARKERS or uses one of
SERVICE_FIXTURES (directly or through another fixture); such tests are marked `services`
at collection. `--no-services` (make test-fast) leaves them out, and the `manifests` and
`slow` tests too, and points the services' settings at an address where nothing listens,
so a test that reaches for one anyway fails instead of quietly using a running stack.

The `domain` tests (tests/domain) are the exception: they run in both tiers, on SQLite in
memory in the fast one and on MariaDB in `make test`, with fakes for the image store,
Celery, Kafka and the notifications (tests/domain/conftest.py)."""

import contextlib
import functools
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from django.conf import settings
from django.db import connection

from stack import processes
from stack.harness import (
    PYTHON,
    ManagedProcess,
    child_env,
    database_url,
    free_port,  # noqa: F401 (imported from here by other test modules)
    manage,  # noqa: F401
    start_ready,
    unique_celery_hostname,
)
from stack.processes import AppProcess

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
LOGS = REPO / ".stack" / "logs" / "tests"


# Markers and fixtures of tests that reach MariaDB, Redis or Kafka.
SERVICE_MARKERS = ("services", "e2e", "faults", "django_db")
SERVICE_FIXTURES = {"django_db_setup", "live_server", "kafka_topics"}
# In the fast tier, what the tests' own settings point at instead of the data services:
# nothing listens there, so a connection is refused at once.
NO_SERVICE = "127.0.0.1:9"
# The fast tier's database, for the domain tests alone (pytest-django lets no other test
# reach it): nothing they show depends on MariaDB, and it needs no server.
FAST_TIER_DATABASE = {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}
# A fast-tier test still running after this long is waiting for something that is not
# there; it is failed rather than left to hang. Generous: the slowest fast test (ResNet50
# weights saved and loaded) takes over a minute on a busy two-core machine.
FAST_TEST_LIMIT_S = 300


def pytest_addoption(parser):
    parser.addoption(
        "--no-services",
        action="store_true",
        help="run only the tests that need no data service (make test-fast)",
    )


def needs_services(item: pytest.Item) -> bool:
    if item.config.getoption("no_services") and item.get_closest_marker("domain"):
        return False
    if any(item.get_closest_marker(name) for name in SERVICE_MARKERS):
        return True
    return not SERVICE_FIXTURES.isdisjoint(getattr(item, "fixturenames", ()))


@pytest.hookimpl(tryfirst=True)  # before -m selects by marker
def pytest_collection_modifyitems(config, items):
    for item in items:
        if needs_services(item):
            item.add_marker(pytest.mark.services)
    if config.getoption("no_services"):
        deselected = [item for item in items if not fast(item)]
        if deselected:
            config.hook.pytest_deselected(items=deselected)
            items[:] = [item for item in items if fast(item)]


def fast(item: pytest.Item) -> bool:
    """Whether the fast tier runs the test: no data service, no manifest to render (a cold
    checkout builds kustomize first), no real model or process started (`slow`)."""
    return not any(item.get_closest_marker(name) for name in ("services", "manifests", "slow"))


def pytest_configure(config):
    if config.getoption("no_services"):
        from django.test import override_settings

        # Processes the tests start inherit these.
        os.environ.update(
            DATABASE_URL=f"mysql://nobody@{NO_SERVICE}/nothing",
            CELERY_BROKER_URL=f"redis://{NO_SERVICE}/1",
            KAFKA_BOOTSTRAP_SERVERS=NO_SERVICE,
        )
        override_settings(
            CELERY_BROKER_URL=f"redis://{NO_SERVICE}/1",
            CACHES={
                "default": {
                    "BACKEND": "django.core.cache.backends.redis.RedisCache",
                    "LOCATION": f"redis://{NO_SERVICE}/2",
                }
            },
            KAFKA_BOOTSTRAP_SERVERS=NO_SERVICE,
        ).enable()
        use_fast_tier_database()


def use_fast_tier_database() -> None:
    """Point the default database at FAST_TIER_DATABASE. tests.settings names MariaDB, and
    Django made (without opening it) that connection while loading the models, before this
    conftest could have a say: it is dropped, and the next use makes the SQLite one."""
    from django.db import connections

    settings.DATABASES["default"] = FAST_TIER_DATABASE
    connections.configure_settings(settings.DATABASES)
    del connections["default"]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    if item.get_closest_marker("services"):
        start_data_services()
    with fast_tier_limit(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    with fast_tier_limit(item):
        return (yield)


@contextlib.contextmanager
def fast_tier_limit(item: pytest.Item) -> Iterator[None]:
    """In the fast tier, a test (or its set-up) still running after FAST_TEST_LIMIT_S
    fails, naming the likely reason."""
    if not item.config.getoption("no_services"):
        yield
        return

    def give_up(_signum, _frame):
        raise TimeoutError(
            f"{item.nodeid} ran over {FAST_TEST_LIMIT_S} s in the fast tier (--no-services): "
            "if it waits for MariaDB, Redis or Kafka, mark it `services`"
        )

    previous = signal.signal(signal.SIGALRM, give_up)
    signal.alarm(FAST_TEST_LIMIT_S)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@functools.cache
def start_data_services() -> None:
    started = subprocess.run(
        [sys.executable, str(REPO / "stack" / "stack.py"), "up"], capture_output=True, text=True
    )
    if started.returncode != 0:
        pytest.exit(
            "The test services could not start (python3 stack/stack.py up):\n"
            + started.stdout[-4000:]
            + started.stderr[-4000:],
            returncode=3,
        )


@pytest.fixture(scope="session")
def kafka_topics(django_db_blocker):
    from kafka_wire.topics import ensure_topics, wait_for_group_coordinators

    ensure_topics()
    wait_for_group_coordinators()
    return settings.KAFKA_REQUESTS_TOPIC, settings.KAFKA_RESULTS_TOPIC


@pytest.fixture(scope="session")
def process_env(django_db_setup) -> dict:
    """Environment for processes the tests start: same settings, the test database."""
    return child_env(
        settings_module="tests.settings",
        database_url=database_url(connection.settings_dict),
    )


@contextlib.contextmanager
def started_processes(base_env: dict, log_dir: Path = LOGS) -> Iterator[Callable]:
    """A start(process, name=..., **env) function that starts a process of the table (or
    another AppProcess) and waits for its readiness sign; everything it started is stopped
    on leaving the block, newest first."""
    started: list[ManagedProcess] = []

    def start(process: AppProcess, name: str = "", **env_overrides: str) -> ManagedProcess:
        managed = start_ready(process, {**base_env, **env_overrides}, log_dir, name=name)
        started.append(managed)
        return managed

    try:
        yield start
    finally:
        for process in reversed(started):
            process.stop()


@pytest.fixture(scope="session")
def start_process(process_env):
    with started_processes(process_env) as start:
        yield start


def start_front_door(
    start: Callable, name: str = "front-door", directory: str = "", **env: str
) -> str:
    """The front door as `make run` starts it: nginx (the process table's proxy) in front of
    gunicorn and the held-requests process, of the test settings, on free ports, each with
    env on top of the tests' own; returns nginx's base URL. nginx's files (its access log
    among them) go to directory, by default a new temporary one."""
    app_port, held_port, port = free_port(), free_port(), free_port()
    start(processes.web(PYTHON, port=app_port, name=f"{name}-app"), **env)
    start(processes.held(PYTHON, port=held_port, name=f"{name}-held"), **env)
    start(
        processes.proxy(
            PYTHON,
            port=port,
            app=f"127.0.0.1:{app_port}",
            held=f"127.0.0.1:{held_port}",
            directory=directory or tempfile.mkdtemp(prefix=f"inferencehub-{name}-"),
        ),
        name=name,
        **env,
    )
    return f"http://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def front_door(start_process) -> str:
    """The base URL of the app as users reach it: through nginx."""
    return start_front_door(start_process)


@pytest.fixture(scope="session")
def results_celery(start_process):
    """The Celery worker of the results queue alone (stores and fails results)."""
    return start_process(
        processes.results_celery(PYTHON, hostname=unique_celery_hostname("test-results"))
    )


@pytest.fixture(scope="session")
def celery_worker(start_process, results_celery):
    """Both Celery workers, as `make run` has them: preprocessing, and results."""
    return start_process(
        processes.preprocess_celery(PYTHON, hostname=unique_celery_hostname("test"))
    )


@pytest.fixture(scope="session")
def pipeline(kafka_topics, celery_worker, start_process):
    """Celery, two inference workers (random-weight ResNet50) and the result bridge.

    Each worker serves Prometheus metrics on the port in "worker_metrics_ports"."""
    ports = [free_port(), free_port()]
    workers = [
        start_process(processes.worker(PYTHON, f"worker{i}", "--metrics-port", str(port)))
        for i, port in zip((1, 2), ports, strict=True)
    ]
    bridge = start_process(processes.bridge(PYTHON))
    return {
        "celery": celery_worker,
        "workers": workers,
        "bridge": bridge,
        "worker_metrics_ports": ports,
    }


@pytest.fixture(autouse=True)
def fresh_routes():
    """Uploads are routed by a reading of the model registry kept a few seconds per process
    (registry/selectors.py); a test's registry is rolled back without saying so."""
    from registry.selectors import forget_routes

    forget_routes()


@pytest.fixture(autouse=True)
def fresh_tokens():
    """API token lookups are kept a few seconds per process (predictions/authentication.py);
    a test's tokens and users are rolled back without saying so."""
    from predictions.authentication import forget_tokens

    forget_tokens()


@pytest.fixture
def image_bytes():
    return {name: (DATA / name).read_bytes() for name in ("bolete.jpg", "fox.png", "toaster.png")}


@pytest.fixture
def user(django_user_model):
    return django_user_model.objects.create_user("alice", password="alice-password")


@pytest.fixture
def api(live_server, user):
    """A requests session authenticated with alice's token against the live server."""
    from rest_framework.authtoken.models import Token

    session = requests.Session()
    session.headers["Authorization"] = f"Token {Token.objects.create(user=user).key}"
    session.base_url = live_server.url
    return session


@pytest.fixture
def spans(monkeypatch):
    """The spans finished during the test, from a tracer of the SDK's own put in place of
    the project's (common/tracing.py) for this test only: installing a global provider
    would turn tracing on for every later test of the run."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from common import tracing

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing, "tracer", provider.get_tracer("tests"))
    yield exporter
    provider.shutdown()


def random_resnet_version(name: str):
    """A registered ResNet50 version of random weights, its topics made: what a worker
    started with --model name serves."""
    from kafka_wire.topics import ensure_topics
    from registry.models import ModelVersion
    from registry.services import register_version

    registered = register_version(
        name=name,
        source=ModelVersion.Source.BUILTIN,
        weights="random",
        input_size=224,
        classes=1000,
    )
    ensure_topics(models=[registered.route])
    return registered
