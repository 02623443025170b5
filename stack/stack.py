#!/usr/bin/env python3
"""Local service manager for InferenceHub: MariaDB, Redis, Kafka and the app processes.

Usage:
    python3 stack/stack.py install            apt packages, .venv + requirements, Kafka jars
    python3 stack/stack.py up [all|NAME...]   no names: data services; "all": data services + apps
    python3 stack/stack.py down [all|NAME...] no names or "all": everything, in reverse order
    python3 stack/stack.py status             exit code 0 only if every data service is up
    python3 stack/stack.py cluster up|down|status   a three-node KRaft cluster (kafka1..3)

Standard library only, because it runs before .venv exists. All state (data, logs,
pid files) lives in the git-ignored .stack/ folder at the repo root, or in STACK_DIR
(relative to the repo root) so that a second stack, e.g. the fault tests' own, can run
next to the first on other ports (STACK_*_PORT).
"""

import base64
import contextlib
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# App processes started by `up all`, each run from the repo root with its own log
# and pid file, after the data services are ready. Edit freely.
# fmt: off
APP_PROCESSES = {
    # The request-line and header limits refuse oversized heads before Django runs; bodies
    # are capped by REQUEST_MAX_BYTES (inferencehub/limits.py) from their Content-Length.
    "web": [".venv/bin/gunicorn", "inferencehub.wsgi:application", "--bind", "0.0.0.0:8000",
            "--workers", "2", "--threads", "4", "--timeout", "120",
            "--limit-request-line", "4094", "--limit-request-fields", "100",
            "--limit-request-field_size", "8190"],
    "celery": [".venv/bin/celery", "-A", "inferencehub", "worker", "--loglevel", "INFO",
               "--concurrency", "2", "--hostname", "celery@%h"],
    # Its own process, as in production: the schedule (the sweep of stuck jobs) keeps
    # running while a Celery worker is restarted. Exactly one beat may run per cluster.
    # --schedule keeps beat's state file out of the work tree.
    "beat": [".venv/bin/celery", "-A", "inferencehub", "beat", "--loglevel", "INFO",
             "--schedule", ".stack/celery-beat-schedule"],
    "worker1": [".venv/bin/python", "manage.py", "run_worker"],
    "worker2": [".venv/bin/python", "manage.py", "run_worker"],
    "bridge": [".venv/bin/python", "manage.py", "consume_results"],
}
# fmt: on

ROOT = Path(__file__).resolve().parent.parent
STATE = ROOT / os.environ.get("STACK_DIR", ".stack")
LOGS = STATE / "logs"
RUN = STATE / "run"
VENV = ROOT / ".venv"
REQUIREMENTS = ROOT / "requirements.txt"
POM = ROOT / "stack" / "pom.xml"
# Shared by every stack: the jars are the same whatever the state folder.
KAFKA_LIBS = ROOT / ".stack" / "kafka" / "libs"

MARIADB_PORT = int(os.environ.get("STACK_MARIADB_PORT", "13306"))
REDIS_PORT = int(os.environ.get("STACK_REDIS_PORT", "16379"))
KAFKA_PORT = int(os.environ.get("STACK_KAFKA_PORT", "19092"))
KAFKA_CONTROLLER_PORT = int(os.environ.get("STACK_KAFKA_CONTROLLER_PORT", "19093"))
# The cluster's brokers listen on this port and the next two, its controllers 100 higher.
KAFKA_CLUSTER_PORT = int(os.environ.get("STACK_KAFKA_CLUSTER_PORT", "19192"))

APT_PACKAGES = [
    "mariadb-server",
    "redis-server",
    "libmariadb-dev",
    "pkg-config",
    "chromium",
    "chromium-driver",
]
# Present on this machine kind outside apt; installed from apt only if missing.
APT_FOR_MISSING_COMMANDS = {"java": "openjdk-17-jre-headless", "mvn": "maven"}

HEARTBEAT_SECONDS = 30  # long install steps print at least this often
APP_MIN_UPTIME = (
    12.0  # an app process that dies sooner is reported as failed (workers load TensorFlow first)
)
LOG_TAIL_LINES = 30


class StackError(Exception):
    """A failure to report to the user (already formatted), then exit non-zero."""


# --------------------------------------------------------------------------- helpers


def say(msg: str) -> None:
    print(msg, flush=True)


def log_path(name: str) -> Path:
    return LOGS / f"{name}.log"


def log_tail(name: str, lines: int = LOG_TAIL_LINES) -> str:
    path = log_path(name)
    if not path.exists():
        return ""
    text = path.read_text(errors="replace").splitlines()[-lines:]
    return f"--- last {len(text)} lines of {path.relative_to(ROOT)} ---\n" + "\n".join(text)


def tcp_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def quiet(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True)


def run_step(label: str, argv: list[str], **kwargs) -> None:
    """Run a long install command with its output visible, plus a heartbeat line
    so that a step whose tool prints nothing for a while (pip downloading a large
    wheel without a terminal) never looks hung."""
    started = time.monotonic()
    proc = subprocess.Popen(argv, **kwargs)
    while True:
        try:
            code = proc.wait(timeout=HEARTBEAT_SECONDS)
            break
        except subprocess.TimeoutExpired:
            say(f"[install] {label}: still running ({time.monotonic() - started:.0f} s)...")
    if code != 0:
        raise StackError(f"[install] {label}: failed with exit code {code}: {' '.join(argv)}")
    say(f"[install] {label}: done in {time.monotonic() - started:.0f} s")


# --------------------------------------------------------------------------- install


def apt_missing() -> list[str]:
    missing = [
        p
        for p in APT_PACKAGES
        if quiet(["dpkg-query", "-W", "-f=${Status}", p]).stdout != "install ok installed"
    ]
    missing += [pkg for cmd, pkg in APT_FOR_MISSING_COMMANDS.items() if not shutil.which(cmd)]
    return missing


def install_apt() -> None:
    missing = apt_missing()
    if not missing:
        say("[install] apt: all packages present, skipping")
        return
    if os.geteuid() != 0:
        raise StackError(f"[install] apt: missing {' '.join(missing)}; run as root or install them")
    say(f"[install] apt: installing {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run_step("apt-get update", ["apt-get", "update"], env=env)
    run_step("apt-get install", ["apt-get", "install", "-y", *missing], env=env)


def install_venv() -> None:
    if (VENV / "bin" / "python").exists():
        say("[install] venv: .venv exists, skipping")
        return
    say("[install] venv: creating .venv")
    run_step("venv", [sys.executable, "-m", "venv", str(VENV)])


def install_requirements() -> None:
    if not REQUIREMENTS.exists():
        raise StackError(f"[install] pip: {REQUIREMENTS} not found")
    stamp = STATE / "requirements.sha256"
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text().strip() == digest:
        say("[install] pip: requirements.txt unchanged since last install, skipping")
        return
    say("[install] pip: installing requirements (first run downloads ~700 MB: TensorFlow)...")
    run_step(
        "pip",
        [
            str(VENV / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "-r",
            str(REQUIREMENTS),
        ],
    )
    # Written only after success, so a failed or interrupted install is retried.
    stamp.write_text(digest + "\n")


def install_kafka_jars() -> None:
    # The stamp holds the pom's hash: editing the pom (e.g. a new Kafka version)
    # re-copies the jars into an emptied folder, so old versions don't linger.
    stamp = KAFKA_LIBS / ".pom.sha256"
    digest = hashlib.sha256(POM.read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text().strip() == digest:
        say("[install] kafka: jars present in .stack/kafka/libs, skipping")
        return
    say("[install] kafka: resolving Kafka broker jars with Maven (first run downloads ~60 MB)...")
    shutil.rmtree(KAFKA_LIBS, ignore_errors=True)
    run_step(
        "maven",
        [
            "mvn",
            "-B",
            "-Dstyle.color=never",
            "-f",
            str(POM),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={KAFKA_LIBS}",
        ],
    )
    stamp.write_text(digest + "\n")


def cmd_install(_names: list[str]) -> int:
    STATE.mkdir(exist_ok=True)
    install_apt()
    install_venv()
    install_requirements()
    install_kafka_jars()
    say("[install] all done")
    return 0


# --------------------------------------------------------------------------- services


@dataclass
class Service:
    name: str
    argv: Callable[[], list[str]]  # built at start time, after prepare()
    port: int | None  # shown in messages; must be free before a start
    waits_for: str  # printed while waiting for readiness
    is_ready: Callable[[], bool]
    ready_timeout: float
    prepare: Callable[[], None] = lambda: None  # config files, first-time init
    after_ready: Callable[[], None] = lambda: None  # idempotent setup once it answers
    min_uptime: float = 0.0
    stop_timeout: float = 30.0
    env: dict | None = None

    @property
    def where(self) -> str:
        return f" on 127.0.0.1:{self.port}" if self.port else ""


# MariaDB ------------------------------------------------------------------

MARIADB_DIR = STATE / "mariadb"
MARIADB_DATA = MARIADB_DIR / "data"
MARIADB_SOCKET = MARIADB_DIR / "mysqld.sock"
MARIADB_INITIALISED = MARIADB_DIR / "initialised"

# pytest-django creates test_inferencehub (and test_inferencehub_gw0... with xdist).
MARIADB_SETUP_SQL = """
CREATE DATABASE IF NOT EXISTS inferencehub CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
CREATE USER IF NOT EXISTS 'inferencehub'@'127.0.0.1' IDENTIFIED BY 'inferencehub';
CREATE USER IF NOT EXISTS 'inferencehub'@'localhost' IDENTIFIED BY 'inferencehub';
GRANT ALL ON inferencehub.* TO 'inferencehub'@'127.0.0.1', 'inferencehub'@'localhost';
GRANT ALL ON `test\\_inferencehub%`.* TO 'inferencehub'@'127.0.0.1', 'inferencehub'@'localhost';
"""


def mariadb_client(*args: str) -> subprocess.CompletedProcess:
    return quiet(["mariadb", "--no-defaults", "-S", str(MARIADB_SOCKET), "-uroot", *args])


def mariadb_prepare() -> None:
    if MARIADB_INITIALISED.exists():
        return
    say("mariadb: first start, initialising data directory (mariadb-install-db)...")
    # Start from an empty folder so a half-finished earlier attempt cannot confuse it.
    shutil.rmtree(MARIADB_DATA, ignore_errors=True)
    MARIADB_DATA.mkdir(parents=True)
    with open(log_path("mariadb"), "ab") as log:
        code = subprocess.call(
            [
                "mariadb-install-db",
                "--no-defaults",
                f"--datadir={MARIADB_DATA}",
                "--user=root",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    if code != 0:
        raise StackError(f"mariadb: mariadb-install-db failed (exit {code})\n{log_tail('mariadb')}")
    MARIADB_INITIALISED.touch()


def mariadb_argv() -> list[str]:
    return [
        "mariadbd",
        "--no-defaults",
        f"--datadir={MARIADB_DATA}",
        f"--socket={MARIADB_SOCKET}",
        f"--port={MARIADB_PORT}",
        "--bind-address=127.0.0.1",
        "--user=root",
        "--character-set-server=utf8mb4",
        "--collation-server=utf8mb4_unicode_ci",
        "--sql-mode=STRICT_TRANS_TABLES,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION",
        "--innodb-buffer-pool-size=256M",
        "--max-connections=500",
        f"--log-error={log_path('mariadb')}",
        f"--pid-file={MARIADB_DIR / 'mariadbd.pid'}",
    ]


def mariadb_ready() -> bool:
    return mariadb_client("-e", "select 1").returncode == 0


def mariadb_setup() -> None:
    result = mariadb_client("-e", MARIADB_SETUP_SQL)
    if result.returncode != 0:
        raise StackError(f"mariadb: creating database/user failed:\n{result.stderr}")


# Redis --------------------------------------------------------------------

REDIS_DIR = STATE / "redis"


def redis_argv() -> list[str]:
    REDIS_DIR.mkdir(parents=True, exist_ok=True)
    return [
        "redis-server",
        "--port",
        str(REDIS_PORT),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(REDIS_DIR),
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--daemonize",
        "no",
        "--save",
        "",
    ]


def redis_ready() -> bool:
    return (
        quiet(["redis-cli", "-h", "127.0.0.1", "-p", str(REDIS_PORT), "ping"]).stdout.strip()
        == "PONG"
    )


# Kafka (KRaft, every node acting as broker and controller) ------------------

KAFKA_STARTED_LINE = "Kafka Server started"


@dataclass
class KafkaNode:
    """One Kafka process: the single node of the stack, or one of the cluster's three."""

    name: str  # service name, also its log file and its folder under STATE
    node_id: int
    port: int
    controller_port: int
    # Other voters as "id@host:port"; empty for the single node, which formats itself
    # as the one voter of a dynamic quorum.
    voters: tuple[str, ...] = ()
    cluster_id_file: Path = STATE / "kafka" / "cluster-id"

    @property
    def dir(self) -> Path:
        return STATE / self.name

    @property
    def config(self) -> Path:
        return self.dir / "server.properties"

    @property
    def log4j(self) -> Path:
        return self.dir / "log4j2.properties"

    def server_properties(self) -> str:
        replicas, min_isr = (3, 2) if self.voters else (1, 1)
        quorum = (
            f"controller.quorum.voters={','.join(self.voters)}"
            if self.voters
            else f"controller.quorum.bootstrap.servers=127.0.0.1:{self.controller_port}"
        )
        return f"""\
# Written by stack/stack.py on every start; edit the script, not this file.
process.roles=broker,controller
node.id={self.node_id}
{quorum}
listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs={self.dir / "data"}
num.partitions=4
auto.create.topics.enable=false
# A write with acks=all needs min.insync.replicas copies: on the cluster a write
# survives the loss of one broker, and is refused rather than half-made with two down.
default.replication.factor={replicas}
min.insync.replicas={min_isr}
unclean.leader.election.enable=false
offsets.topic.replication.factor={replicas}
transaction.state.log.replication.factor={replicas}
transaction.state.log.min.isr={min_isr}
share.coordinator.state.topic.replication.factor={replicas}
share.coordinator.state.topic.min.isr={min_isr}
group.initial.rebalance.delay.ms=0
"""

    def log4j_properties(self) -> str:
        return f"""\
# Written by stack/stack.py on every start.
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = {log_path(self.name)}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
"""

    def java(self, main: str, *args: str, jvm_options: tuple[str, ...] = ()) -> list[str]:
        return [
            "java",
            *jvm_options,
            "-cp",
            f"{KAFKA_LIBS}/*",
            f"-Dlog4j2.configurationFile={self.log4j}",
            main,
            *args,
        ]

    def cluster_id(self) -> str:
        """Generated once and kept: the storage is formatted with it (the same on every node)."""
        if not self.cluster_id_file.exists():
            self.cluster_id_file.parent.mkdir(parents=True, exist_ok=True)
            # Kafka's Uuid text form: URL-safe base64 of 16 random bytes, unpadded.
            self.cluster_id_file.write_text(
                base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=") + "\n"
            )
        return self.cluster_id_file.read_text().strip()

    def prepare(self) -> None:
        if not (KAFKA_LIBS / ".pom.sha256").exists():
            raise StackError(
                f"{self.name}: jars missing in .stack/kafka/libs; "
                "run `python3 stack/stack.py install`"
            )
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config.write_text(self.server_properties())
        self.log4j.write_text(self.log4j_properties())
        if (self.dir / "data" / "meta.properties").exists():
            return
        cluster_id = self.cluster_id()
        say(f"{self.name}: first start, formatting storage (cluster id {cluster_id})...")
        # --standalone makes the single node the one voter of a dynamic KRaft quorum;
        # cluster nodes list their static voters in the config instead.
        standalone = () if self.voters else ("--standalone",)
        result = quiet(
            self.java(
                "kafka.tools.StorageTool",
                "format",
                "-t",
                cluster_id,
                "-c",
                str(self.config),
                *standalone,
            )
        )
        if result.returncode != 0:
            raise StackError(f"{self.name}: storage format failed:\n{result.stdout}{result.stderr}")

    def argv(self) -> list[str]:
        return self.java(
            "kafka.Kafka",
            str(self.config),
            jvm_options=("-Xms256m", "-Xmx512m", "-Djava.awt.headless=true"),
        )

    def ready(self) -> bool:
        # The log is moved aside before each start, so the line is from this run.
        log = log_path(self.name)
        return (
            tcp_open(self.port)
            and log.exists()
            and KAFKA_STARTED_LINE in log.read_text(errors="replace")
        )

    def service(self) -> "Service":
        return Service(
            self.name,
            self.argv,
            self.port,
            f"TCP {self.port} open and '{KAFKA_STARTED_LINE}' in its log",
            self.ready,
            ready_timeout=90,
            prepare=self.prepare,
            stop_timeout=60,
        )


KAFKA = KafkaNode("kafka", 1, KAFKA_PORT, KAFKA_CONTROLLER_PORT)
CLUSTER_VOTERS = tuple(f"{i}@127.0.0.1:{KAFKA_CLUSTER_PORT + 99 + i}" for i in (1, 2, 3))
KAFKA_CLUSTER = [
    KafkaNode(
        f"kafka{i}",
        i,
        KAFKA_CLUSTER_PORT + i - 1,
        KAFKA_CLUSTER_PORT + 99 + i,
        voters=CLUSTER_VOTERS,
        cluster_id_file=STATE / "kafka-cluster-id",
    )
    for i in (1, 2, 3)
]


# Table ----------------------------------------------------------------------

DATA_SERVICES = [
    Service(
        "mariadb",
        mariadb_argv,
        MARIADB_PORT,
        f"`select 1` through {MARIADB_SOCKET.relative_to(ROOT)}",
        mariadb_ready,
        ready_timeout=60,
        prepare=mariadb_prepare,
        after_ready=mariadb_setup,
        stop_timeout=60,
    ),
    Service(
        "redis",
        redis_argv,
        REDIS_PORT,
        f"`redis-cli -p {REDIS_PORT} ping` == PONG",
        redis_ready,
        ready_timeout=30,
    ),
    KAFKA.service(),
]

APP_SERVICES = [
    # PYTHONUNBUFFERED: output goes to a log file, which Python would otherwise block-buffer.
    Service(
        name,
        (lambda argv=argv: argv),
        None,
        f"process alive after {APP_MIN_UPTIME:.0f} s",
        lambda: True,
        ready_timeout=APP_MIN_UPTIME + 5,
        min_uptime=APP_MIN_UPTIME,
        stop_timeout=20,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    for name, argv in APP_PROCESSES.items()
]

# Not started by `up`: the three-node cluster is for the fault tests and for trying
# replication (`cluster up`); its nodes can also be named one by one (`up kafka2`).
CLUSTER_SERVICES = [node.service() for node in KAFKA_CLUSTER]

SERVICES = {s.name: s for s in DATA_SERVICES + APP_SERVICES + CLUSTER_SERVICES}


# --------------------------------------------------------------------------- processes


def pid_file(name: str) -> Path:
    return RUN / f"{name}.pid"


def proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state first), None if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None


def start_time(pid: int) -> str | None:
    """Kernel start time of a live (non-zombie) process, None if it is gone.
    Stored next to the pid so a pid reused after a reboot is not mistaken for ours."""
    fields = proc_stat(pid)
    return None if fields is None or fields[0] == "Z" else fields[19]


def group_members(pgid: int) -> list[int]:
    """Live processes of a process group. Zombies don't count: here pid 1 may reap
    orphans only after a while, and a zombie holds no port or file."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = proc_stat(int(entry.name))
            if fields and fields[0] != "Z" and fields[2] == str(pgid):
                members.append(int(entry.name))
    return members


def running_pid(name: str) -> int | None:
    """Pid of the service's live process, or None (a stale pid file is removed)."""
    path = pid_file(name)
    if not path.exists():
        return None
    pid_text, _, started = path.read_text().partition(" ")
    pid = int(pid_text)
    if start_time(pid) == started.strip():
        return pid
    path.unlink()
    return None


def rotate_log(name: str) -> None:
    """Keep the previous run's log as <name>.log.1 so each start has a fresh log."""
    log = log_path(name)
    if log.exists():
        log.replace(log.with_suffix(".log.1"))


# Processes started by this run and when, so uptime counts from the start and a
# quick death can be reported with its exit code.
spawned: dict[int, tuple[subprocess.Popen, float]] = {}


def spawn(svc: Service) -> int:
    rotate_log(svc.name)
    argv = svc.argv()
    with open(log_path(svc.name), "ab") as log:
        # A new session makes the pid a process-group id, so `down` can stop the
        # process together with its children (gunicorn/celery workers).
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=svc.env,
        )
    spawned[proc.pid] = (proc, time.monotonic())
    pid_file(svc.name).write_text(f"{proc.pid} {start_time(proc.pid)}\n")
    return proc.pid


def fail(svc: Service, why: str) -> StackError:
    return StackError(f"FAILED: {svc.name}{svc.where}: {why}\n{log_tail(svc.name)}".rstrip())


def launch(svc: Service) -> int | None:
    """Start the service unless it is already running and ready (then None).
    Returns the pid to wait for; a started but not yet ready one is waited for too."""
    pid = running_pid(svc.name)
    if pid and svc.is_ready():
        say(f"{svc.name}: already running{svc.where} (pid {pid})")
        svc.after_ready()
        return None
    if pid is None:
        if svc.port and tcp_open(svc.port):
            raise fail(
                svc,
                f"port {svc.port} is already in use by a process stack.py did not start "
                "(another checkout's stack? stop it there, or set the STACK_*_PORT variable)",
            )
        svc.prepare()
        say(f"{svc.name}: starting{svc.where}")
        pid = spawn(svc)
    return pid


def wait_ready(svc: Service, pid: int) -> None:
    say(f"{svc.name}: waiting for {svc.waits_for} (timeout {svc.ready_timeout:.0f} s)...")
    proc, started = spawned.get(pid, (None, time.monotonic()))
    while True:
        elapsed = time.monotonic() - started
        if start_time(pid) is None:
            pid_file(svc.name).unlink(missing_ok=True)
            code = proc.poll() if proc else "unknown"
            raise fail(
                svc, f"process {pid} exited (code {code}) within {elapsed:.1f} s of its start"
            )
        if elapsed >= svc.min_uptime and svc.is_ready():
            say(f"{svc.name}: ready{svc.where} (pid {pid}, {elapsed:.1f} s)")
            svc.after_ready()
            return
        if elapsed > svc.ready_timeout:
            stop(svc)
            raise fail(
                svc,
                f"not ready within {svc.ready_timeout:.0f} s ({svc.waits_for}); stopped it",
            )
        time.sleep(0.5)


def signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # it may have exited meanwhile
        os.killpg(pgid, sig)


def stop(svc: Service) -> None:
    pid = running_pid(svc.name)
    if pid is None:
        say(f"{svc.name}: not running")
        return
    say(f"{svc.name}: stopping pid {pid} (SIGTERM, SIGKILL after {svc.stop_timeout:.0f} s)...")
    started = time.monotonic()
    signal_group(pid, signal.SIGTERM)
    while group_members(pid) and time.monotonic() - started < svc.stop_timeout:
        time.sleep(0.2)
    if group_members(pid):
        say(f"{svc.name}: still running after {svc.stop_timeout:.0f} s, sending SIGKILL")
        signal_group(pid, signal.SIGKILL)
        while group_members(pid):
            time.sleep(0.2)
    pid_file(svc.name).unlink(missing_ok=True)
    say(f"{svc.name}: stopped ({time.monotonic() - started:.1f} s)")


# --------------------------------------------------------------------------- commands


def select(names: list[str], default: list[Service]) -> list[Service]:
    """Services named on the command line (or "all"), in table order."""
    if not names:
        return default
    if "all" in names:
        return DATA_SERVICES + APP_SERVICES
    unknown = [n for n in names if n not in SERVICES]
    if unknown:
        raise StackError(
            f"unknown service(s): {', '.join(unknown)}; known: all, {', '.join(SERVICES)}"
        )
    return [s for s in SERVICES.values() if s.name in names]


def cmd_up(names: list[str]) -> int:
    for directory in (LOGS, RUN):
        directory.mkdir(parents=True, exist_ok=True)
    chosen = select(names, DATA_SERVICES)
    apps = [s for s in chosen if s.name in APP_PROCESSES]
    # App processes need every data service, so those always come first, one by
    # one as each may depend on the previous being ready.
    for svc in DATA_SERVICES if apps else chosen:
        pid = launch(svc)
        if pid:
            wait_ready(svc, pid)
    # Apps are independent: start them all, then watch them through their first seconds together.
    launched = [(svc, launch(svc)) for svc in apps]
    failures = []
    for svc, pid in launched:
        try:
            if pid:
                wait_ready(svc, pid)
        except StackError as err:
            failures.append(str(err))
    if failures:
        raise StackError("\n\n".join(failures))
    return 0


def cmd_down(names: list[str]) -> int:
    # With no names everything stops: app processes left without their data services are useless.
    for svc in reversed(select(names, DATA_SERVICES + APP_SERVICES)):
        stop(svc)
    return 0


def cmd_status(_names: list[str]) -> int:
    return report(DATA_SERVICES + APP_SERVICES)


def report(services: list[Service]) -> int:
    """Print one line per service; 0 only if every data service among them is up."""
    all_data_up = True
    for svc in services:
        pid = running_pid(svc.name)
        where = f"127.0.0.1:{svc.port}" if svc.port else ""
        if pid is None:
            state = "stopped"
            if svc.port and tcp_open(svc.port):
                state += f" (port {svc.port} in use by a process stack.py did not start)"
        elif svc.name in APP_PROCESSES or svc.is_ready():
            state = f"running  pid {pid}"
        else:
            state = f"starting pid {pid} (not ready yet)"
        say(f"{svc.name:<8} {where:<16} {state}")
        if svc.name not in APP_PROCESSES and not state.startswith("running"):
            all_data_up = False
    return 0 if all_data_up else 1


def cmd_cluster(args: list[str]) -> int:
    if args not in (["up"], ["down"], ["status"]):
        raise StackError("usage: stack.py cluster up|down|status")
    if args == ["status"]:
        return report(CLUSTER_SERVICES)
    if args == ["down"]:
        for svc in reversed(CLUSTER_SERVICES):
            stop(svc)
        return 0
    for directory in (LOGS, RUN):
        directory.mkdir(parents=True, exist_ok=True)
    # All three first: no node is ready before a majority of the quorum runs.
    launched = [(svc, launch(svc)) for svc in CLUSTER_SERVICES]
    for svc, pid in launched:
        if pid:
            wait_ready(svc, pid)
    return 0


COMMANDS = {
    "install": cmd_install,
    "up": cmd_up,
    "down": cmd_down,
    "status": cmd_status,
    "cluster": cmd_cluster,
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        say(__doc__)
        return 2
    try:
        return COMMANDS[argv[0]](argv[1:])
    except StackError as err:
        say(str(err))
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
