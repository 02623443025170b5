"""Fault tests: real processes, real kills, against the fault tests' own data services.

They stop and kill MariaDB, Redis and Kafka, so they never touch the shared stack other
test runs use: stack/stack.py runs a second stack under .stack/faults/ on other ports
(STACK_DIR, STACK_*_PORT), and every process started here is pointed at it through its
environment (DATABASE_URL, CELERY_BROKER_URL, KAFKA_BOOTSTRAP_SERVERS, ...).

Each scenario runs a stream of uploads through gunicorn, breaks something, repairs it, and
then counts what became of every job: an Outcome, also appended to
.stack/logs/faults/outcomes.jsonl for docs/reliability.md.
"""

import contextlib
import hashlib
import hmac
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import NamedTuple

import MySQLdb
import psutil
import pytest
import requests
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from kafka_wire.config import kafka_names
from stack import processes
from stack.common import redis_password, redis_url
from stack.harness import PYTHON, ManagedProcess, child_env, manage
from stack.processes import AppProcess
from tests.conftest import DATA, REPO, started_processes

LOG_DIR = REPO / ".stack" / "logs" / "faults"
OUTCOMES = LOG_DIR / "outcomes.jsonl"
STACK_ENV = {
    "STACK_DIR": ".stack/faults",
    "STACK_MARIADB_PORT": "23306",
    "STACK_REDIS_PORT": "26379",
    "STACK_KAFKA_PORT": "28092",
    "STACK_KAFKA_CONTROLLER_PORT": "28093",
    # Brokers on 29092-29094, controllers on 29192-29194.
    "STACK_KAFKA_CLUSTER_PORT": "29092",
}
DATABASE = {
    "host": "127.0.0.1",
    "port": 23306,
    "user": "inferencehub",
    "password": "inferencehub",
    "database": "inferencehub",
}
FAULT_STATE = REPO / STACK_ENV["STACK_DIR"]
REDIS_PORT = int(STACK_ENV["STACK_REDIS_PORT"])
SINGLE_KAFKA = "127.0.0.1:28092"
CLUSTER_KAFKA = "127.0.0.1:29092,127.0.0.1:29093,127.0.0.1:29094"
WEB_PORT = 28000
PHOTOS = [(name, (DATA / name).read_bytes()) for name in ("bolete.jpg", "fox.png", "toaster.png")]


class FaultStack:
    """The fault tests' MariaDB, Redis and Kafka, driven through stack/stack.py."""

    def run(self, *args: str) -> None:
        done = subprocess.run(
            [sys.executable, str(REPO / "stack" / "stack.py"), *args],
            env={**os.environ, **STACK_ENV},
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise RuntimeError(f"stack.py {' '.join(args)} failed:\n{done.stdout}{done.stderr}")

    def up(self, *names: str) -> None:
        self.run("up", *names)

    def down(self, *names: str) -> None:
        """A clean stop (SIGTERM), as an operator or an orchestrator would do it."""
        self.run("down", *names)

    def pid(self, name: str) -> int:
        return int((REPO / STACK_ENV["STACK_DIR"] / "run" / f"{name}.pid").read_text().split()[0])

    def kill(self, name: str) -> None:
        """SIGKILL the service's whole process group: a crash, not a stop."""
        pid = self.pid(name)
        os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(pid).wait(30)


@dataclass
class App:
    """One scenario's app processes (web, two Celery, beat, two workers, bridge) and its user."""

    name: str
    env: dict
    url: str
    token: str
    username: str
    start: Callable[..., ManagedProcess]
    processes: dict[str, ManagedProcess] = field(default_factory=dict)
    # Where its jobs are counted and its outcomes recorded (the distributed tests' own).
    database: dict = field(default_factory=lambda: DATABASE)
    outcomes: Path = OUTCOMES

    def start_process(self, process: AppProcess) -> ManagedProcess:
        # A restarted role gets a fresh log (bridge.log, then bridge-2.log, ...).
        role = process.name
        runs = len(self.runs_of(role))
        name = role if runs == 0 else f"{role}-{runs + 1}"
        managed = self.start(process, name=f"{self.name}-{name}")
        self.processes[name] = managed
        return managed

    def runs_of(self, role: str) -> list[ManagedProcess]:
        """The processes started for a role (celery: celery, celery-2, ...; not celery-results)."""
        return [p for name, p in self.processes.items() if re.fullmatch(rf"{role}(-\d+)?", name)]

    def start_web(self) -> ManagedProcess:
        return self.start_process(processes.web(PYTHON, port=WEB_PORT))

    def start_celery(self) -> list[ManagedProcess]:
        """Both Celery workers, as `make run` has them: preprocessing, and results."""
        return [
            self.start_process(processes.preprocess_celery(PYTHON, hostname=f"{self.name}@%h")),
            self.start_process(
                processes.results_celery(PYTHON, hostname=f"{self.name}-results@%h")
            ),
        ]

    def start_webhooks(self) -> ManagedProcess:
        """The completion webhooks' Celery worker, which only scenarios with callbacks need."""
        return self.start_process(
            processes.webhooks_celery(PYTHON, hostname=f"{self.name}-webhooks@%h")
        )

    def start_beat(self) -> ManagedProcess:
        schedule = str(LOG_DIR / f"{self.name}-beat-schedule")
        return self.start_process(processes.beat(PYTHON, schedule=schedule))

    def start_worker(self, role: str, *options: str) -> ManagedProcess:
        """An inference worker; options are run_worker's (e.g. --model NAME)."""
        return self.start_process(processes.worker(PYTHON, role, *options))

    def manage(self, *args: str) -> str:
        return run_manage(self.env, *args)

    def start_bridge(self) -> ManagedProcess:
        return self.start_process(processes.bridge(PYTHON))

    def current(self, role: str) -> ManagedProcess:
        """The latest process started for a role."""
        return self.runs_of(role)[-1]

    def log_text(self) -> str:
        return "\n".join(p.log_path.read_text(errors="replace") for p in self.processes.values())


def run_manage(env: dict, *args: str) -> str:
    """A one-off management command; its output, once it succeeded."""
    done = subprocess.run(manage(*args), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture(scope="session")
def fault_stack() -> Iterator[FaultStack]:
    """Started for the session and stopped after it (the cluster too, if a test started it)."""
    stack = FaultStack()
    stack.up()
    yield stack
    stack.run("cluster", "down")
    stack.down()


def app_env(name: str, kafka: str, **overrides: str) -> dict:
    """Settings for one scenario's processes: the fault stack, and topics of its own."""
    return child_env(
        settings_module="inferencehub.settings",
        database_url="mysql://{user}:{password}@{host}:{port}/{database}".format(**DATABASE),
        # The demo password file of bootstrap goes to the fault stack's folder.
        STACK_DIR=STACK_ENV["STACK_DIR"],
        # With the password the fault stack's Redis made when it first started.
        CELERY_BROKER_URL=redis_url(0, port=REDIS_PORT, state=FAULT_STATE),
        KAFKA_BOOTSTRAP_SERVERS=kafka,
        **kafka_names(name),
        MEDIA_ROOT=str(REPO / STACK_ENV["STACK_DIR"] / "media"),
        MODEL_WEIGHTS="random",
        **overrides,
    )


def redis_cli(*args: str) -> str:
    """redis-cli on the fault stack's Redis, its password in the environment, not argv."""
    return subprocess.run(
        ["redis-cli", "-p", str(REDIS_PORT), *args],
        env={**os.environ, "REDISCLI_AUTH": redis_password(FAULT_STATE)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


@pytest.fixture(scope="session")
def model_package() -> str:
    """ResNet50 (random weights) as the model package `make run` would serve: the fastest
    precision that passes the faithfulness gate, exported once and kept in
    .stack/faults/model-packages/ (a later run reuses it)."""
    package = run_manage(app_env("faults-package", SINGLE_KAFKA), "ensure_model_package")
    assert package.strip(), "no model package passed the faithfulness gate"
    return package.strip()


@pytest.fixture
def start_app(fault_stack) -> Iterator[Callable[..., App]]:
    """start_app(name, kafka=..., workers=(...), **settings) starts one scenario's app, with
    the unregistered path's workers named in workers; stopped after the test."""
    with started_processes({}, log_dir=LOG_DIR) as start:

        def start_app(
            scenario: str,
            kafka: str = SINGLE_KAFKA,
            workers: tuple[str, ...] = ("worker1", "worker2"),
            **overrides: str,
        ) -> App:
            name = f"faults-{scenario}-{uuid.uuid4().hex[:6]}"
            env = app_env(name, kafka, **overrides)
            # A previous scenario's leftover tasks would run in this one.
            redis_cli("flushall")
            # Schema, static files, this scenario's topics and its user, as under `make run`.
            output = run_manage(env, "bootstrap", "--username", name)
            clear_leftovers()
            token = re.search(r"API token: (\w+)", output).group(1)
            bound = lambda process, name: start(process, name=name, **env)  # noqa: E731
            app = App(name, env, f"http://127.0.0.1:{WEB_PORT}", token, name, bound)
            app.start_web()
            app.start_celery()
            app.start_beat()
            for role in workers:
                app.start_worker(role)
            app.start_bridge()
            return app

        yield start_app


def clear_leftovers() -> None:
    """Remove what earlier scenarios (or an interrupted run) left in the database that would
    act in this one: unfinished jobs, which its sweep would resubmit to its own topics, and
    registered models, the default of which would take its uploads that name no model.
    Jobs routed to a model go with it (they keep their version)."""
    leftover = "j.routed_to_id IS NOT NULL OR j.status NOT IN %s"
    connection = MySQLdb.connect(**DATABASE)
    try:
        cursor = connection.cursor()
        cursor.execute(
            "DELETE p FROM predictions_prediction p JOIN predictions_job j ON j.id = p.job_id"
            f" WHERE {leftover}",
            [FINISHED],
        )
        cursor.execute(f"DELETE j FROM predictions_job j WHERE {leftover}", [FINISHED])
        cursor.execute("DELETE FROM workers_modelversion")
        cursor.execute("DELETE FROM workers_registeredmodel")
        connection.commit()
    finally:
        connection.close()


class JobStream:
    """Uploads photos through the API from background threads and records every answer.

    rate: uploads per second in all (None: as fast as the threads go); limit: stop after
    this many uploads; model: the registered model each upload names (None: the default).
    A 503 must carry Retry-After; it counts as refused, not lost.
    resend_for: seconds to keep sending an unanswered upload again, with the same
    Idempotency-Key (as predictions/client.py does); 0: once more only, without a key.
    extra: the n-th upload's further form fields (callback_url, timeout_s, ...)."""

    def __init__(
        self,
        app: App,
        *,
        rate: float | None = 4.0,
        threads: int = 1,
        limit: int | None = None,
        resend_for: float = 0,
        model: str | None = None,
        extra: Callable[[int], dict[str, str]] | None = None,
    ) -> None:
        self.app = app
        self.fields = {"top_k": "3"} if model is None else {"top_k": "3", "model": model}
        self.extra = extra
        self.model = model
        self.resend_for = resend_for
        self.interval = threads / rate if rate else 0.0
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(threads)]
        self.limit = limit
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.counter = itertools.count()
        self.accepted: list[str] = []
        self.refused = 0
        self.refused_without_retry_after = 0
        self.errors: Counter[str] = Counter()
        self.connection_retries: Counter[str] = Counter()

    @property
    def sent(self) -> int:
        return len(self.accepted) + self.refused + sum(self.errors.values())

    def __enter__(self) -> "JobStream":
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join()

    def done(self) -> bool:
        return all(not thread.is_alive() for thread in self.threads)

    def run(self) -> None:
        session = requests.Session()
        session.headers["Authorization"] = f"Token {self.app.token}"
        while not self.stopping.is_set():
            number = next(self.counter)
            if self.limit is not None and number >= self.limit:
                return
            name, content = PHOTOS[number % len(PHOTOS)]
            fields = {**self.fields, **(self.extra(number) if self.extra else {})}
            started = time.monotonic()
            self.upload(session, name, content, fields)
            self.stopping.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def upload(
        self, session: requests.Session, name: str, content: bytes, fields: dict[str, str]
    ) -> None:
        headers = {"Idempotency-Key": uuid.uuid4().hex} if self.resend_for else {}
        resend_until = time.monotonic() + self.resend_for
        attempt = 0
        while True:
            attempt += 1
            may_resend = attempt == 1 or time.monotonic() < resend_until
            try:
                response = session.post(
                    f"{self.app.url}/api/jobs/",
                    files={"image": (name, content)},
                    data=fields,
                    headers=headers,
                    timeout=120,
                )
                # After an unanswered attempt, 409 means that attempt is still being stored.
                if response.status_code == 409 and headers and attempt > 1 and may_resend:
                    time.sleep(0.5)
                    continue
                break
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as error:
                # No answer, or half of one (the server died while sending it). Like any
                # HTTP client, once more on a fresh connection: a kept-alive one may have
                # been closed by the server just as the request went out. Had the first
                # try been stored, it would show up as an unacknowledged job.
                with self.lock:
                    self.connection_retries[str(error)[:160]] += 1
                if not may_resend:
                    with self.lock:
                        self.errors[type(error).__name__] += 1
                    return
                if attempt > 1:
                    time.sleep(0.5)
            except requests.RequestException as error:
                with self.lock:
                    self.errors[type(error).__name__] += 1
                return
        with self.lock:
            if response.status_code == 202:
                self.accepted.append(response.json()["id"])
            elif response.status_code == 503:
                self.refused += 1
                self.refused_without_retry_after += "Retry-After" not in response.headers
            else:
                self.errors[f"{response.status_code} {response.text[:120]}"] += 1

    def snapshot(self) -> list[str]:
        with self.lock:
            return list(self.accepted)


class JobState(NamedTuple):
    status: str
    error: str
    top_k: int
    predictions: int
    # The model that answered, as its result named it: "name:version" (or "name:-" for the
    # unregistered path); "" until answered.
    answered_by: str


def job_states(
    username: str, database: dict = DATABASE, model: str | None = None
) -> dict[str, JobState]:
    """Every job of the scenario's user (routed to the registered model `model`, if given)."""
    routed = " AND m.name = %s" if model is not None else ""
    connection = MySQLdb.connect(**database)
    try:
        cursor = connection.cursor()
        cursor.execute(
            "SELECT j.id, j.status, j.error, j.top_k, COUNT(p.id),"
            " CONCAT(j.model_name, ':', COALESCE(j.model_version, '-'))"
            " FROM predictions_job j JOIN auth_user u ON u.id = j.owner_id"
            " LEFT JOIN workers_modelversion v ON v.id = j.routed_to_id"
            " LEFT JOIN workers_registeredmodel m ON m.id = v.model_id"
            " LEFT JOIN predictions_prediction p ON p.job_id = j.id"
            f" WHERE u.username = %s{routed} GROUP BY j.id",
            [username] if model is None else [username, model],
        )
        # The id column is a native uuid or 32 hex digits depending on the server version.
        return {
            str(uuid.UUID(str(row[0]))): JobState(*row[1:5], row[5] if row[5] != ":-" else "")
            for row in cursor.fetchall()
        }
    finally:
        connection.close()


# Job.FINISHED: cancelled and expired jobs are done with too.
FINISHED = ("succeeded", "failed", "cancelled", "expired")


def wait_until_finished(
    app: App, job_ids: list[str], timeout: float, model: str | None = None
) -> float | None:
    """Seconds until every job is finished, or None at the timeout."""
    started = time.monotonic()
    wanted = set(job_ids)
    while time.monotonic() - started < timeout:
        states = job_states(app.username, app.database, model)
        if all(job in states and states[job][0] in FINISHED for job in wanted):
            return time.monotonic() - started
        time.sleep(2)
    return None


def result_key_counts(app: App) -> Counter:
    """How many results the results topic holds per job id (more than one: a redelivery)."""
    consumer = Consumer(
        {
            "bootstrap.servers": app.env["KAFKA_BOOTSTRAP_SERVERS"],
            "group.id": f"{app.name}-audit",
            "enable.auto.commit": False,
        }
    )
    topic = app.env["KAFKA_RESULTS_TOPIC"]
    try:
        partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        ends = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1]
            for p in partitions
        }
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        counts: Counter = Counter()
        remaining = {p for p, end in ends.items() if end > 0}
        deadline = time.monotonic() + 300
        while remaining and time.monotonic() < deadline:
            for message in consumer.consume(500, timeout=1):
                if message.error() is None:
                    counts[message.key().decode()] += 1
                    if message.offset() + 1 >= ends[message.partition()]:
                        remaining.discard(message.partition())
        return counts
    finally:
        consumer.close()


class WebhookReceiver:
    """A callback URL on loopback (the app started with WEBHOOK_ALLOWED_NETWORKS=127.0.0.1):
    answers every webhook 200 and keeps it, its signature checked as docs/webhooks.md tells
    a receiver to, with the secret the app's user reads from the API."""

    def __init__(self, app: App) -> None:
        answer = requests.get(
            f"{app.url}/api/webhook-secret/",
            headers={"Authorization": f"Token {app.token}"},
            timeout=30,
        )
        answer.raise_for_status()
        self.secret = answer.json()["secret"]
        self.lock = threading.Lock()
        # Per job id, each POST of it: its delivery id, the status it told, signed rightly.
        self.received: dict[str, list[tuple[str, str, bool]]] = {}
        self.unreadable = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.keep(self.headers, body)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "WebhookReceiver":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def keep(self, headers, body: bytes) -> None:
        try:
            job = json.loads(body)
            job_id, status = job["id"], job["status"]
        except (ValueError, KeyError, TypeError):
            with self.lock:
                self.unreadable += 1
            return
        signed = signed_by(headers.get("InferenceHub-Signature"), body, self.secret)
        post = (headers.get("InferenceHub-Delivery", ""), status, signed)
        with self.lock:
            self.received.setdefault(job_id, []).append(post)

    def told(self, job_id: str) -> list[tuple[str, str, bool]]:
        with self.lock:
            return list(self.received.get(job_id, []))

    def tally(self, finished: dict[str, JobState], timeout: float = 180) -> dict:
        """Once every finished job was told in a rightly signed webhook (or at the timeout),
        what was received: repeats are allowed (delivery is at least once), counted."""
        started = time.monotonic()
        untold = set(finished)
        while True:
            untold = {job for job in untold if not any(s for *_, s in self.told(job))}
            if not untold or time.monotonic() - started > timeout:
                break
            time.sleep(1)
        with self.lock:
            received = {job: list(posts) for job, posts in self.received.items()}
        posts = [post for job in finished for post in received.get(job, [])]
        return {
            "received": sum(len(p) for p in received.values()) + self.unreadable,
            "untold": len(untold),
            "told_s": None if untold else round(time.monotonic() - started, 1),
            "wrong_status": sum(
                1
                for job, state in finished.items()
                if any(status != state.status for _, status, _ in received.get(job, []))
            ),
            "bad_signature": sum(1 for *_, signed in posts if not signed),
            # POSTs beyond a job's first: a delivery sent again (its answer lost, its task
            # redone), or a second delivery.
            "duplicates": len(posts) - sum(1 for job in finished if received.get(job)),
            # A job told in more than one delivery: a second one made for the same attempt.
            "second_deliveries": sum(
                1 for job in finished if len({d for d, *_ in received.get(job, [])}) > 1
            ),
            "unknown_jobs": len(received.keys() - finished.keys()),
            "unreadable": self.unreadable,
        }


def signed_by(header: str | None, body: bytes, secret: str, tolerance_s: int = 300) -> bool:
    """docs/webhooks.md's receiver check: HMAC-SHA256 of "<t>.<body>" under the secret, in
    v1, and t fresh."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        timestamp = int(fields["t"])
        given = fields["v1"]
    except (AttributeError, KeyError, ValueError):
        return False
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    fresh = abs(time.time() - timestamp) <= tolerance_s
    return fresh and hmac.compare_digest(expected.hexdigest(), given)


@dataclass
class Outcome:
    scenario: str
    sent: int
    accepted: int
    refused_503: int
    succeeded: int
    failed: int
    cancelled: int
    expired: int
    lost: int
    duplicated: int
    redeliveries: int
    recovery_s: float | None
    errors: dict
    connection_retries: dict
    failure_reasons: dict
    unacknowledged_jobs: int
    # Finished jobs per model that answered ("name:version"; "name:-" unregistered).
    answered_by: dict
    # What the scenario's webhook receiver got (WebhookReceiver.tally); {} without one.
    webhooks: dict = field(default_factory=dict)
    notes: str = ""


def settle(
    scenario: str,
    app: App,
    stream: JobStream,
    *,
    fault_at: float,
    timeout: float = 600,
    notes: str = "",
    webhooks: "WebhookReceiver | None" = None,
) -> Outcome:
    """Wait for every accepted job, count what became of each, record and print the outcome.

    Counts the jobs routed to the stream's model, when it names one. recovery_s: from the
    fault until every job accepted so far had finished. webhooks: the receiver of the
    stream's callback URL, then waited for until it was told of every finished job."""
    waited = wait_until_finished(app, stream.snapshot(), timeout, stream.model)
    recovery = None if waited is None else time.monotonic() - fault_at
    states = job_states(app.username, app.database, stream.model)
    accepted = set(stream.accepted)
    finished = {job: s for job, s in states.items() if job in accepted and s.status in FINISHED}
    duplicated = sum(1 for s in finished.values() if s.predictions > s.top_k)
    redeliveries = sum(n - 1 for job, n in result_key_counts(app).items() if job in accepted)
    outcome = Outcome(
        scenario=scenario,
        sent=stream.sent,
        accepted=len(accepted),
        refused_503=stream.refused,
        succeeded=sum(1 for s in finished.values() if s.status == "succeeded"),
        failed=sum(1 for s in finished.values() if s.status == "failed"),
        cancelled=sum(1 for s in finished.values() if s.status == "cancelled"),
        expired=sum(1 for s in finished.values() if s.status == "expired"),
        lost=len(accepted) - len(finished),
        duplicated=duplicated,
        redeliveries=redeliveries,
        recovery_s=None if recovery is None else round(recovery, 1),
        errors=dict(stream.errors),
        connection_retries=dict(stream.connection_retries),
        failure_reasons=dict(
            Counter(s.error[:100] for s in finished.values() if s.status == "failed")
        ),
        # Jobs stored although their upload was not answered 202: a client would not know them.
        unacknowledged_jobs=len(set(states) - accepted),
        answered_by=dict(Counter(s.answered_by for s in finished.values() if s.answered_by)),
        webhooks={} if webhooks is None else webhooks.tally(finished),
        notes=notes,
    )
    app.outcomes.parent.mkdir(parents=True, exist_ok=True)
    with app.outcomes.open("a") as file:
        file.write(json.dumps({"at": time.strftime("%Y-%m-%d %H:%M:%S"), **asdict(outcome)}) + "\n")
    print(json.dumps(asdict(outcome), indent=1))
    assert stream.refused_without_retry_after == 0
    return outcome


def wait_for_progress(app: App, count: int, timeout: float = 300, model: str | None = None) -> None:
    """Until at least `count` of the scenario's jobs (routed to `model`, if given)
    succeeded: the pipeline is warm."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = job_states(app.username, app.database, model).values()
        if sum(1 for s in states if s.status == "succeeded") >= count:
            return
        time.sleep(1)
    raise AssertionError(f"fewer than {count} jobs succeeded within {timeout}s")


def assert_nothing_lost(outcome: Outcome, *, failures_allowed: bool = False) -> None:
    assert outcome.lost == 0, outcome
    assert outcome.duplicated == 0, outcome
    assert outcome.unacknowledged_jobs == 0, outcome
    if not failures_allowed:
        assert outcome.failed == 0, outcome
    assert not outcome.errors, outcome


def tree_usage(process: psutil.Process, children: bool = True) -> tuple[int, float]:
    """Resident memory (bytes) and CPU time so far (seconds, reaped children's included) of
    a process and, unless told otherwise, all its children."""
    try:
        tree = [process, *(process.children(recursive=True) if children else [])]
        rss = sum(p.memory_info().rss for p in tree)
        cpu = sum(sum(p.cpu_times()[:4]) for p in tree)  # user, system and reaped children's
        return rss, cpu
    except psutil.NoSuchProcess:
        return 0, 0.0


class MemorySampler:
    """Samples the RSS and CPU time of the app's processes, of the data services and of this
    test process (the client) every few seconds."""

    def __init__(self, app: App, stack: FaultStack, services: tuple[str, ...], every: float = 5):
        self.app, self.stack, self.services, self.every = app, stack, services, every
        self.samples: dict[str, list[tuple[int, float]]] = {}
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def __enter__(self) -> "MemorySampler":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self.thread.join()
        self.sample()

    def run(self) -> None:
        while not self.stopping.is_set():
            self.sample()
            self.stopping.wait(self.every)

    def sample(self) -> None:
        processes = {name: p.popen.pid for name, p in self.app.processes.items()}
        for name in self.services:
            with contextlib.suppress(FileNotFoundError):
                processes[name] = self.stack.pid(name)
        for name, pid in processes.items():
            with contextlib.suppress(psutil.NoSuchProcess):
                self.samples.setdefault(name, []).append(tree_usage(psutil.Process(pid)))
        # This process alone: the app's processes are its children.
        client = tree_usage(psutil.Process(), children=False)
        self.samples.setdefault("client", []).append(client)

    def report(self) -> dict[str, dict[str, float]]:
        """start / peak / end RSS in MB and CPU seconds used while sampling, per process."""
        mb = 1024 * 1024
        return {
            name: {
                "start": s[0][0] // mb,
                "peak": max(rss for rss, _ in s) // mb,
                "end": s[-1][0] // mb,
                "cpu_s": round(s[-1][1] - s[0][1], 1),
            }
            for name, s in self.samples.items()
            if s
        }
