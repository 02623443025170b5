"""Starting and stopping the project's own processes from Python, for the tests, the fault
suite and the benchmark. What to start (command lines, readiness signs) is the process
table, stack/processes.py; this module runs its entries and gives them their environment."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from stack.processes import AppProcess

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
# A worker imports TensorFlow and warms its model up before it is ready: over two minutes
# when the machine is busy, and a slow start is not a failure.
READY_TIMEOUT_S = 300


class ManagedProcess:
    """A project process with its output in log_dir/<name>.log."""

    def __init__(self, name: str, argv: list[str], env: dict, log_dir: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self.popen: subprocess.Popen | None = None

    def start(self) -> "ManagedProcess":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:  # the child keeps its own copy of the fd
            self.popen = subprocess.Popen(
                self.argv, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        return self

    def wait_for_log(self, text: str, timeout: float = READY_TIMEOUT_S) -> None:
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


def start_ready(
    process: AppProcess,
    env: dict,
    log_dir: Path,
    *,
    name: str = "",
    timeout: float = READY_TIMEOUT_S,
) -> ManagedProcess:
    """Start a process of the table and wait for its readiness sign in its log."""
    managed = ManagedProcess(name or process.name, process.argv, env, log_dir).start()
    try:
        managed.wait_for_log(process.ready_text, timeout)
    except RuntimeError:
        managed.stop()
        raise
    return managed


def manage(*args: str) -> list[str]:
    """A one-off management command (the long-running ones are in the process table)."""
    return [PYTHON, str(REPO / "manage.py"), *args]


def unique_celery_hostname(name: str) -> str:
    """Celery nodes of parallel runs on one machine must not share a name."""
    return f"{name}-{os.getpid()}@%h"


def database_url(db: dict) -> str:
    """A Django DATABASES entry as the DATABASE_URL a child process reads."""
    return f"mysql://{db['USER']}:{db['PASSWORD']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


def child_env(*, settings_module: str, database_url: str, **overrides: str) -> dict:
    """This process's environment for a child: given settings and database, output unbuffered
    (it goes to a log file, which Python would otherwise block-buffer)."""
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": settings_module,
        "DATABASE_URL": database_url,
        "PYTHONUNBUFFERED": "1",
        **overrides,
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
