"""Distributed tests: the app on several hosts (network namespaces, see hosts.py).

`core` runs MariaDB, Redis, web, Celery, beat and the result bridge; broker1..3 a KRaft
cluster (replication factor 3, min.insync.replicas=2); worker1..3 an inference worker each;
the test itself sends its uploads and counts jobs from `client`. Every process listens on its
own host's address only. The data services are the stack package's own command lines with
a bind address (data_services.py), their state in .stack/distributed/; the app processes
are the process table's (stack/processes.py); logs and outcomes in .stack/logs/distributed/.
Jobs are counted as the fault suite counts them.
"""

import contextlib
import dataclasses
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import MySQLdb
import pytest
from confluent_kafka.admin import AdminClient

from kafka_wire.config import kafka_names
from stack import processes
from stack.common import redis_password, redis_url
from stack.harness import PYTHON, ManagedProcess, child_env, manage
from stack.processes import AppProcess
from tests.conftest import REPO
from tests.distributed import hosts
from tests.distributed.hosts import BROKERS, HOSTS, Host
from tests.faults.conftest import App, job_states

LOG_DIR = REPO / ".stack" / "logs" / "distributed"
CORE = HOSTS["core"]
KAFKA_PORT, CONTROLLER_PORT, WEB_PORT = 9092, 9093, 8000
KAFKA = ",".join(f"{broker.address}:{KAFKA_PORT}" for broker in BROKERS)
DATABASE = {
    "host": CORE.address,
    "port": 3306,
    "user": "inferencehub",
    "password": "inferencehub",
    "database": "inferencehub",
}
# The stack package's settings for the hosts' data services (read by data_services.py).
STACK_ENV = {
    "STACK_DIR": ".stack/distributed",
    "STACK_MARIADB_PORT": str(DATABASE["port"]),
    "STACK_REDIS_PORT": "6379",
    "STACK_KAFKA_PORT": str(KAFKA_PORT),
    "STACK_KAFKA_CONTROLLER_PORT": str(CONTROLLER_PORT),
}
STATE = REPO / STACK_ENV["STACK_DIR"]
# Six partitions share evenly between one, two or three worker hosts.
PARTITIONS = 6
# Partitions move off a cut-off worker host well within the 30 s of scenario 2.
SESSION_TIMEOUT_MS = 10_000
# A request to a broker that fell silent (its host cut off) is given up after this long
# and retried elsewhere, so the stream goes on within scenario 4's cut.
SOCKET_TIMEOUT_MS = 5_000


def data_services(*args: str) -> subprocess.CompletedProcess:
    """tests/distributed/data_services.py in a process of its own with the hosts' stack settings."""
    return subprocess.run(
        [sys.executable, "-m", "tests.distributed.data_services", *args],
        cwd=REPO,
        env={**os.environ, **STACK_ENV},
        capture_output=True,
        text=True,
    )


def stop_together(processes: list[ManagedProcess], timeout: float) -> None:
    """SIGTERM to all at once, then SIGKILL to any still running after timeout."""
    for process in processes:
        if process.popen.poll() is None:
            process.popen.terminate()
    for process in processes:
        process.stop(timeout=timeout)


def wait_until(ready: Callable[[], bool], what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.5)
    raise RuntimeError(f"{what} not ready within {timeout:.0f} s")


@pytest.fixture(scope="session")
def network() -> Iterator[dict[str, Host]]:
    """The hosts, built fresh (a killed run's leftovers removed first) and removed after."""
    hosts.check_tools()
    hosts.remove_all()
    try:
        hosts.build()
        # The test's own sockets are the client host's from here on.
        with hosts.inside(HOSTS["client"]):
            yield HOSTS
    finally:
        hosts.remove_all()


@pytest.fixture(scope="session")
def cluster(network) -> Iterator[dict[str, ManagedProcess]]:
    """MariaDB and Redis on core, a Kafka node on each broker host, all started at once;
    stopped after the session."""
    prepared = data_services("prepare", CORE.address, *(broker.address for broker in BROKERS))
    assert prepared.returncode == 0, prepared.stdout + prepared.stderr
    # The stack prints its progress first; the command lines are the last line.
    commands = json.loads(prepared.stdout.splitlines()[-1])
    processes: dict[str, ManagedProcess] = {}

    def start(name: str, host: Host, argv: list[str]) -> ManagedProcess:
        process = ManagedProcess(name, host.exec_argv(argv), dict(os.environ), log_dir=LOG_DIR)
        processes[name] = process.start()
        return process

    try:
        start("mariadb", CORE, commands["mariadb"])
        redis = start("redis", CORE, commands["redis"])
        for i, (node, broker) in enumerate(zip(commands["kafka"], BROKERS, strict=True), 1):
            start(f"kafka{i}", broker, node["argv"])
        wait_until(lambda: data_services("ready").returncode == 0, "mariadb")
        done = data_services("setup", hosts.NETWORK)
        assert done.returncode == 0, done.stdout + done.stderr
        redis.wait_for_log("Ready to accept connections")
        for node in commands["kafka"]:
            log = node["log"]
            wait_until(
                lambda log=Path(log): (
                    log.exists() and commands["kafka_started"] in log.read_text(errors="replace")
                ),
                log,
            )
        yield processes
    finally:
        # The state folder is removed at the next start: no need for a graceful shutdown
        # one by one (a Kafka node left last waits for a quorum that is gone).
        stop_together(list(processes.values()), timeout=20)


def app_env(name: str, **overrides: str) -> dict:
    """Settings for one scenario's processes, wherever they run: topics of its own."""
    return child_env(
        settings_module="inferencehub.settings",
        database_url="mysql://{user}:{password}@{host}:{port}/{database}".format(**DATABASE),
        # bootstrap keeps the demo password in the hosts' state folder.
        STACK_DIR=STACK_ENV["STACK_DIR"],
        DJANGO_ALLOWED_HOSTS=CORE.address,
        # With the password the hosts' Redis made when it started (data_services.py).
        CELERY_BROKER_URL=redis_url(
            0, host=CORE.address, port=int(STACK_ENV["STACK_REDIS_PORT"]), state=STATE
        ),
        KAFKA_BOOTSTRAP_SERVERS=KAFKA,
        KAFKA_REPLICATION_FACTOR="3",
        KAFKA_TOPIC_PARTITIONS=str(PARTITIONS),
        KAFKA_SESSION_TIMEOUT_MS=str(SESSION_TIMEOUT_MS),
        KAFKA_SOCKET_TIMEOUT_MS=str(SOCKET_TIMEOUT_MS),
        **kafka_names(name),
        MEDIA_ROOT=str(REPO / STACK_ENV["STACK_DIR"] / "media"),
        # The scenarios are about the network: a model that answers at once.
        MODEL_NAME="instant",
        **overrides,
    )


@dataclass
class HostedApp(App):
    """One scenario's app, each process on its host."""

    hosts: dict[str, Host] = field(default_factory=dict)
    ready_texts: dict[ManagedProcess, str] = field(default_factory=dict)

    def start_on(self, host: Host, process: AppProcess, wait: bool = True) -> ManagedProcess:
        """A process of the table, run inside host; wait=False: started, not waited for."""
        hosted = dataclasses.replace(process, argv=host.exec_argv(process.argv))
        managed = self.start_process(hosted)
        self.hosts[process.name] = host
        self.ready_texts[managed] = process.ready_text
        if wait:
            self.wait_ready()
        return managed

    def start_worker_host(self, host: Host, wait: bool = True) -> ManagedProcess:
        return self.start_on(host, processes.worker(PYTHON, host.name), wait)

    def wait_ready(self) -> None:
        """Until every process started so far has logged its readiness sign."""
        for process, text in self.ready_texts.items():
            process.wait_for_log(text)

    def stop(self) -> None:
        stop_together(list(self.processes.values()), timeout=30)

    def worker_hosts(self) -> dict[str, str]:
        """The worker id each worker host's process stamps on its jobs -> host name."""
        return {
            f"{os.uname().nodename}:{process.popen.pid}": self.hosts[role].name
            for role, process in self.processes.items()
            if role.startswith("worker")
        }

    def jobs_per_host(self) -> Counter:
        """Succeeded jobs per worker host."""
        connection = MySQLdb.connect(**self.database)
        try:
            cursor = connection.cursor()
            cursor.execute(
                "SELECT j.worker, COUNT(*) FROM predictions_job j"
                " JOIN auth_user u ON u.id = j.owner_id"
                " WHERE u.username = %s AND j.status = 'succeeded' GROUP BY j.worker",
                [self.username],
            )
            names = self.worker_hosts()
            return Counter({names.get(worker, worker): count for worker, count in cursor})
        finally:
            connection.close()

    def succeeded(self) -> int:
        states = job_states(self.username, self.database).values()
        return sum(1 for state in states if state[0] == "succeeded")

    def leader_host(self, partition: int = 0) -> Host:
        """The broker host leading a partition of the requests topic."""
        topic = self.env["KAFKA_REQUESTS_TOPIC"]
        admin = AdminClient({"bootstrap.servers": KAFKA})
        leader = admin.list_topics(topic, timeout=30).topics[topic].partitions[partition].leader
        return BROKERS[leader - 1]


@pytest.fixture
def start_app(cluster) -> Iterator[Callable[..., HostedApp]]:
    """start_app(scenario, workers=2, **settings): core's processes and the first worker
    hosts, started together and waited for; stopped after the test."""
    started: list[HostedApp] = []

    def start_app(scenario: str, workers: int = 2, **overrides: str) -> HostedApp:
        name = f"dist-{scenario}-{uuid.uuid4().hex[:6]}"
        env = app_env(name, **overrides)
        # A previous scenario's leftover tasks would run in this one.
        subprocess.run(
            CORE.exec_argv(["redis-cli", "-h", CORE.address, "flushall"]),
            env={**os.environ, "REDISCLI_AUTH": redis_password(STATE)},
            check=True,
            capture_output=True,
        )
        # Schema, static files, this scenario's topics and its user, as under `make run`.
        done = subprocess.run(
            CORE.exec_argv(manage("bootstrap", "--username", name)),
            env=env,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        token = re.search(r"API token: (\w+)", done.stdout).group(1)
        app = HostedApp(
            name,
            env,
            f"http://{CORE.address}:{WEB_PORT}",
            token,
            name,
            lambda process, name: ManagedProcess(name, process.argv, env, LOG_DIR).start(),
            database=DATABASE,
            outcomes=LOG_DIR / "outcomes.jsonl",
        )
        started.append(app)
        schedule = str(LOG_DIR / f"{name}-beat-schedule")
        for process in (
            processes.web(PYTHON, host=CORE.address, port=WEB_PORT),
            processes.celery(PYTHON, hostname=f"{name}@%h"),
            processes.beat(PYTHON, schedule=schedule),
            processes.bridge(PYTHON),
        ):
            app.start_on(CORE, process, wait=False)
        for i in range(1, workers + 1):
            app.start_worker_host(HOSTS[f"worker{i}"], wait=False)
        app.wait_ready()
        return app

    try:
        yield start_app
    finally:
        for app in reversed(started):
            app.stop()


@contextlib.contextmanager
def link_down(host: Host) -> Iterator[None]:
    """The host's cable pulled for the block, put back after it whatever happens."""
    hosts.set_link(host, up=False)
    try:
        yield
    finally:
        hosts.set_link(host, up=True)
