"""The app processes under supervisord (supervisor, from .venv): its config is generated from
the process table (stack/processes.py) into the stack's folder; a process that dies is
restarted and the exit is logged in logs/supervisord.log; `states()` says which are up."""

import shlex
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from stack.common import ROOT, VENV, StackError, say
from stack.processes import AppProcess

# Alive this long counts as started (workers load TensorFlow first); a process that dies
# sooner is retried a few times, then given up (FATAL).
START_SECONDS = 12
STOP_SECONDS = 20
TIMEOUT_SLACK = 60


@dataclass
class Supervisor:
    state: Path  # config, socket and pid file live here
    logs: Path
    start_seconds: int = START_SECONDS

    @property
    def conf(self) -> Path:
        return self.state / "supervisord.conf"

    @property
    def socket(self) -> Path:
        return self.state / "run" / "supervisor.sock"

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def config(self, processes: list[AppProcess]) -> str:
        sections = [
            "; Written by stack/supervise.py on every start; edit stack/processes.py instead.",
            f"[unix_http_server]\nfile={self.socket}\nchmod=0700",
            "[supervisord]\n"
            f"logfile={self.logs / 'supervisord.log'}\n"
            f"pidfile={self.state / 'run' / 'supervisord.pid'}\n"
            f"directory={ROOT}\n"
            # Output goes to a log file, which Python would otherwise block-buffer.
            'environment=PYTHONUNBUFFERED="1"',
            "[rpcinterface:supervisor]\n"
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
            f"[supervisorctl]\nserverurl=unix://{self.socket}",
        ]
        for process in processes:
            # supervisord expands %(name)s in values, so a literal % is written %%.
            command = shlex.join(process.argv).replace("%", "%%")
            sections.append(
                f"[program:{process.name}]\n"
                f"command={command}\n"
                f"directory={ROOT}\n"
                "autostart=true\n"
                "autorestart=true\n"
                f"startsecs={self.start_seconds}\n"
                "startretries=3\n"
                # The whole group, so gunicorn's and celery's children stop with them.
                "stopasgroup=true\n"
                "killasgroup=true\n"
                f"stopwaitsecs={STOP_SECONDS}\n"
                "redirect_stderr=true\n"
                f"stdout_logfile={self.log(process.name)}\n"
                "stdout_logfile_maxbytes=50MB\n"
                "stdout_logfile_backups=1"
            )
        return "\n\n".join(sections) + "\n"

    def running(self) -> bool:
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(str(self.socket))
                return True
            except OSError:
                return False

    def ctl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(VENV / "bin" / "supervisorctl"), "-c", str(self.conf), *args],
            capture_output=True,
            text=True,
        )

    def states(self) -> dict[str, str] | None:
        """Each program's state (RUNNING, STARTING, BACKOFF, EXITED, FATAL, STOPPED...) and
        its details, or None when supervisord is not running."""
        if not self.running():
            return None
        states = {}
        for line in self.ctl("status").stdout.splitlines():
            name, _, rest = line.partition(" ")
            if rest.strip():
                states[name] = rest.strip()
        return states

    def up(self, processes: list[AppProcess], names: list[str], timeout: float) -> None:
        """Start supervisord with every process (or, if it runs, the named ones) and wait
        until each named one has stayed up START_SECONDS and logged its readiness sign."""
        chosen = [p for p in processes if p.name in names]
        offsets = {p.name: self.log_size(p.name) for p in chosen}
        if self.running():
            states = self.states() or {}
            running = [n for n in names if states.get(n, "").startswith("RUNNING")]
            for name in running:
                say(f"{name}: already running ({states[name]})")
            chosen = [p for p in chosen if p.name not in running]
            if chosen:
                say(f"supervisord: running; starting {', '.join(p.name for p in chosen)}")
                self.ctl("start", *(p.name for p in chosen))
        else:
            for directory in (self.logs, self.state / "run"):
                directory.mkdir(parents=True, exist_ok=True)
            self.conf.write_text(self.config(processes))
            offsets = dict.fromkeys(offsets, 0)
            for process in processes:
                self.log(process.name).unlink(missing_ok=True)
            say(f"supervisord: starting {', '.join(p.name for p in processes)}")
            started = subprocess.run(
                [str(VENV / "bin" / "supervisord"), "-c", str(self.conf)],
                capture_output=True,
                text=True,
            )
            if started.returncode != 0:
                raise StackError(f"supervisord did not start:\n{started.stdout}{started.stderr}")
        self.wait_ready(chosen, offsets, timeout)

    def log_size(self, name: str) -> int:
        path = self.log(name)
        return path.stat().st_size if path.exists() else 0

    def logged_since(self, name: str, offset: int) -> str:
        path = self.log(name)
        if not path.exists():
            return ""
        with path.open("rb") as file:
            file.seek(offset)
            return file.read().decode(errors="replace")

    def wait_ready(self, chosen: list[AppProcess], offsets: dict[str, int], timeout: float) -> None:
        if not chosen:
            return
        say(
            f"waiting for each to stay up {self.start_seconds} s and log its readiness sign "
            f"(timeout {timeout:.0f} s)..."
        )
        deadline = time.monotonic() + timeout
        waiting = {p.name: p for p in chosen}
        while waiting:
            states = self.states() or {}
            for name, process in list(waiting.items()):
                state = states.get(name, "UNKNOWN")
                ready = process.ready_text in self.logged_since(name, offsets[name])
                if state.startswith("RUNNING") and ready:
                    say(f"{name}: ready ({state})")
                    del waiting[name]
                # FATAL: it kept dying within START_SECONDS and supervisord gave up.
                elif state.startswith("FATAL"):
                    raise self.failure(name, state)
            if waiting and time.monotonic() > deadline:
                name = next(iter(waiting))
                raise self.failure(name, f"not ready within {timeout:.0f} s: {states.get(name)}")
            time.sleep(0.5)

    def failure(self, name: str, why: str) -> StackError:
        tail = self.log(name).read_text(errors="replace").splitlines()[-30:]
        return StackError(
            f"FAILED: {name}: {why}\n--- last lines of {self.log(name)} ---\n" + "\n".join(tail)
        )

    def stop(self, names: list[str]) -> None:
        """Stop the named processes, or with none supervisord and everything under it."""
        if not self.running():
            say("supervisord: not running")
            return
        if names:
            say(self.ctl("stop", *names).stdout.rstrip())
            return
        say("supervisord: stopping every app process and itself...")
        self.ctl("shutdown")
        deadline = time.monotonic() + STOP_SECONDS + TIMEOUT_SLACK
        while self.running() and time.monotonic() < deadline:
            time.sleep(0.2)
        say("supervisord: stopped")

    def report(self) -> bool:
        """Print each app process's state; False when any is not RUNNING (down, restarting)."""
        states = self.states()
        if states is None:
            say("app processes: not started (supervisord is not running; `make run` starts it)")
            return True
        for name, state in states.items():
            say(f"{name:<8} {'(supervisord)':<16} {state}")
        return all(state.startswith("RUNNING") for state in states.values())
