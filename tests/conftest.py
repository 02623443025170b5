"""Real services for the suite: MariaDB, Redis and Kafka are started once per run by the
project's own stack script; Celery, inference workers and the result bridge run as real
processes against the test database and this run's own topics."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from django.conf import settings
from django.db import connection

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


class ManagedProcess:
    """A project process started by a test, with its output in .stack/logs/tests/."""

    def __init__(self, name: str, argv: list[str], env: dict) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = LOGS / f"{name}.log"
        self.popen: subprocess.Popen | None = None

    def start(self) -> "ManagedProcess":
        LOGS.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:  # the child keeps its own copy of the fd
            self.popen = subprocess.Popen(
                self.argv, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        return self

    def wait_for_log(self, text: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log_path.read_text(errors="replace"):
                return
            if self.popen.poll() is not None:
                break
            time.sleep(0.2)
        tail = self.log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{self.name} did not log {text!r} (exit {self.popen.poll()}):\n{tail}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        if self.popen is None or self.popen.poll() is not None:
            return None if self.popen is None else self.popen.returncode
        self.popen.send_signal(sig)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.popen.wait()


def manage(*args: str) -> list[str]:
    return [sys.executable, str(REPO / "manage.py"), *args]


def celery_worker_argv(name: str, concurrency: int = 2) -> list[str]:
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "inferencehub",
        "worker",
        "--loglevel",
        "INFO",
        "--concurrency",
        str(concurrency),
        "--hostname",
        f"{name}-{os.getpid()}@%h",
        "--without-gossip",
        "--without-mingle",
    ]


@pytest.fixture(scope="session")
def start_process(process_env):
    started: list[ManagedProcess] = []

    def start(name: str, argv: list[str], ready_text: str, **env_overrides) -> ManagedProcess:
        process = ManagedProcess(name, argv, {**process_env, **env_overrides}).start()
        started.append(process)
        process.wait_for_log(ready_text)
        return process

    yield start
    for process in reversed(started):
        process.stop()


@pytest.fixture(scope="session")
def celery_worker(start_process):
    return start_process("celery", celery_worker_argv("test"), "ready.")


@pytest.fixture(scope="session")
def pipeline(kafka_topics, celery_worker, start_process):
    """Celery, two inference workers (random-weight ResNet50) and the result bridge."""
    workers = [start_process(f"worker{i}", manage("run_worker"), "starting with") for i in (1, 2)]
    bridge = start_process("bridge", manage("consume_results"), "starting with")
    return {"celery": celery_worker, "workers": workers, "bridge": bridge}


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
