"""The data services (MariaDB, Redis; Kafka in stack.kafka), each a process of its own
started in a new session with a pid file under .stack/run, and waited for until ready."""

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from stack.common import (
    MARIADB_PORT,
    REDIS_PORT,
    ROOT,
    RUN,
    SERVICE_USER,
    STATE,
    StackError,
    log_path,
    log_tail,
    quiet,
    redis_password,
    redis_password_file,
    rotate_log,
    say,
    tcp_open,
)
from stack.install import install_service_user


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
    stop_timeout: float = 30.0

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


def mariadb_argv(bind: str = "127.0.0.1") -> list[str]:
    return [
        "mariadbd",
        "--no-defaults",
        f"--datadir={MARIADB_DATA}",
        f"--socket={MARIADB_SOCKET}",
        f"--port={MARIADB_PORT}",
        f"--bind-address={bind}",
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
REDIS_CONF = REDIS_DIR / "redis.conf"


def redis_argv(bind: str = "127.0.0.1") -> list[str]:
    """Redis with a password (redis_password), from a config file readable by its owner
    only, so that `ps` does not show the password. Started as root, it runs as
    SERVICE_USER, which then owns its folder."""
    REDIS_DIR.mkdir(parents=True, exist_ok=True)
    settings = [
        f"port {REDIS_PORT}",
        f"bind {bind}",
        f"dir {REDIS_DIR}",
        "appendonly yes",
        "appendfsync everysec",
        "daemonize no",
        'save ""',
        f"requirepass {redis_password()}",
    ]
    REDIS_CONF.unlink(missing_ok=True)
    fd = os.open(REDIS_CONF, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as conf:
        conf.write("\n".join(settings) + "\n")
    argv = ["redis-server", str(REDIS_CONF)]
    if os.geteuid() != 0:
        return argv
    install_service_user()
    user = pwd.getpwnam(SERVICE_USER)
    for path in [REDIS_DIR, *REDIS_DIR.rglob("*")]:
        os.chown(path, user.pw_uid, user.pw_gid)
    return ["setpriv", f"--reuid={SERVICE_USER}", f"--regid={SERVICE_USER}", "--init-groups", *argv]


def redis_cli(*args: str) -> subprocess.CompletedProcess:
    """redis-cli on the stack's Redis; the password goes in its environment, not argv."""
    env = dict(os.environ)
    if redis_password_file().exists():
        env["REDISCLI_AUTH"] = redis_password()
    return subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", str(REDIS_PORT), *args],
        capture_output=True,
        text=True,
        env=env,
    )


def redis_ready() -> bool:
    return redis_cli("ping").stdout.strip() == "PONG"


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
        if svc.is_ready():
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
