"""Real services for the suite: MariaDB, Redis and Kafka are started once per run by the
project's own stack script; Celery, inference workers and the result bridge run as real
processes against the test database and this run's own topics."""

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from django.conf import settings
from django.db import connection

# Imported from here by other test modules too.
from inferencehub.processes import ManagedProcess, celery_worker_argv, manage  # noqa: F401

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
LOGS = REPO / ".stack" / "logs" / "tests"


def pytest_sessionstart(session):
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
    from kafka_bridge.topics import ensure_topics

    ensure_topics()
    return settings.KAFKA_REQUESTS_TOPIC, settings.KAFKA_RESULTS_TOPIC


@pytest.fixture(scope="session")
def process_env(django_db_setup) -> dict:
    """Environment for processes the tests start: same settings, the test database."""
    db = connection.settings_dict
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="inferencehub.test_settings",
        DATABASE_URL=(
            f"mysql://{db['USER']}:{db['PASSWORD']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
        ),
        PYTHONUNBUFFERED="1",
    )
    return env


@contextlib.contextmanager
def started_processes(base_env: dict, log_dir: Path = LOGS) -> Iterator[Callable]:
    """A start(name, argv, ready_text, **env) function; everything it started is stopped
    on leaving the block, newest first."""
    started: list[ManagedProcess] = []

    def start(name: str, argv: list[str], ready_text: str, **env_overrides) -> ManagedProcess:
        env = {**base_env, **env_overrides}
        process = ManagedProcess(name, argv, env, log_dir=log_dir).start()
        started.append(process)
        process.wait_for_log(ready_text)
        return process

    try:
        yield start
    finally:
        for process in reversed(started):
            process.stop()


@pytest.fixture(scope="session")
def start_process(process_env):
    with started_processes(process_env) as start:
        yield start


@pytest.fixture(scope="session")
def celery_worker(start_process):
    return start_process("celery", celery_worker_argv("test"), "ready.")


@pytest.fixture(scope="session")
def pipeline(kafka_topics, celery_worker, start_process):
    """Celery, two inference workers (random-weight ResNet50) and the result bridge.

    Each worker serves Prometheus metrics on the port in "worker_metrics_ports"."""
    ports = [free_port(), free_port()]
    workers = [
        start_process(
            f"worker{i}", manage("run_worker", "--metrics-port", str(port)), "starting with"
        )
        for i, port in zip((1, 2), ports, strict=True)
    ]
    bridge = start_process("bridge", manage("consume_results"), "starting with")
    return {
        "celery": celery_worker,
        "workers": workers,
        "bridge": bridge,
        "worker_metrics_ports": ports,
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


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
