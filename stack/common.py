"""Paths, ports and small helpers every part of the stack uses."""

import os
import secrets
import socket
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# STACK_DIR (relative to the repo root) lets a second stack, e.g. the fault tests' own, run
# next to the first on other ports (STACK_*_PORT).
STATE = ROOT / os.environ.get("STACK_DIR", ".stack")
LOGS = STATE / "logs"
RUN = STATE / "run"
VENV = ROOT / ".venv"
VENV_PYTHON = ".venv/bin/python"  # relative: every process runs from ROOT
# Shared by every stack: the jars are the same whatever the state folder.
KAFKA_LIBS = ROOT / ".stack" / "kafka" / "libs"

MARIADB_PORT = int(os.environ.get("STACK_MARIADB_PORT", "13306"))
REDIS_PORT = int(os.environ.get("STACK_REDIS_PORT", "16379"))
KAFKA_PORT = int(os.environ.get("STACK_KAFKA_PORT", "19092"))
KAFKA_CONTROLLER_PORT = int(os.environ.get("STACK_KAFKA_CONTROLLER_PORT", "19093"))
# The cluster's brokers listen on this port and the next two, its controllers 100 higher.
KAFKA_CLUSTER_PORT = int(os.environ.get("STACK_KAFKA_CLUSTER_PORT", "19192"))
# The secured broker: SASL_SSL on this port, SSL (client certificate only) on the next,
# its controller on the one after.
KAFKA_SECURE_PORT = int(os.environ.get("STACK_KAFKA_SECURE_PORT", "19392"))
# The S3 server (s3proxy) for stored originals shared by several hosts.
S3_PORT = int(os.environ.get("STACK_S3_PORT", "19480"))
# Zipkin, the optional trace backend with a UI (make run TRACES=1).
ZIPKIN_PORT = int(os.environ.get("STACK_ZIPKIN_PORT", "19411"))
# Loopback only unless STACK_WEB_HOST says otherwise: the demo has a staff user, which
# must not be reachable from other machines by default.
WEB_HOST = os.environ.get("STACK_WEB_HOST", "127.0.0.1")
WEB_PORT = int(os.environ.get("STACK_WEB_PORT", "8000"))
# nginx serves WEB_HOST:WEB_PORT; gunicorn behind it listens on loopback only, here.
WEB_APP_PORT = int(os.environ.get("STACK_WEB_APP_PORT", "8001"))
# The held requests' process (uvicorn) behind nginx, on loopback only too.
WEB_HELD_PORT = int(os.environ.get("STACK_WEB_HELD_PORT", "8002"))

# The unprivileged system user (made by `install`) that Redis and nginx's workers run as
# when the stack is started as root.
SERVICE_USER = "inferencehub"

LOG_TAIL_LINES = 30


def redis_password_file(state: Path = STATE) -> Path:
    return state / "redis-password"


def redis_password(state: Path = STATE) -> str:
    """The stack's Redis password: made once (readable by its owner only), when Redis first
    starts with one (stack/services.py)."""
    path = redis_password_file(state)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written whole under another name, then linked into place: a process reading it
        # meanwhile never sees it half written, and of two racing starts one password wins.
        draft = path.with_name(f"{path.name}.{os.getpid()}")
        draft.unlink(missing_ok=True)
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(secrets.token_urlsafe(24) + "\n")
        try:
            os.link(draft, path)
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    return path.read_text().strip()


def redis_url(
    db: int, *, host: str = "127.0.0.1", port: int = REDIS_PORT, state: Path = STATE
) -> str:
    """The URL of database db of the stack's Redis, with its password once it has one
    (the default of CELERY_BROKER_URL and of the tests' settings)."""
    path = redis_password_file(state)
    auth = f":{path.read_text().strip()}@" if path.exists() else ""
    return f"redis://{auth}{host}:{port}/{db}"


class StackError(Exception):
    """A failure to report to the user (already formatted), then exit non-zero."""


def say(msg: str) -> None:
    print(msg, flush=True)


def log_path(name: str) -> Path:
    return LOGS / f"{name}.log"


def log_tail(name: str, lines: int = LOG_TAIL_LINES) -> str:
    path = log_path(name)
    if not path.exists():
        return ""
    text = path.read_text(errors="replace").splitlines()[-lines:]
    return f"--- last {len(text)} lines of {path} ---\n" + "\n".join(text)


def rotate_log(name: str) -> None:
    """Keep the previous run's log as <name>.log.1 so each start has a fresh log."""
    log = log_path(name)
    if log.exists():
        log.replace(log.with_suffix(".log.1"))


def tcp_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def quiet(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True)
