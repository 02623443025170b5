"""The compose file started for real: docker/compose.yaml (with docker/compose.podman.yaml on
top) under rootful Podman, Docker Compose v2 talking to `podman system service`.

`make test-compose` builds the images first (python3 -m stack.containers install). The
stack is one project of its own (STACK_COMPOSE_PROJECT), published on 127.0.0.1:48000 only
(STACK_COMPOSE_PORT), and everything it made (containers, volumes, network) is removed at
the end, pass or fail. Logs: .stack/logs/compose/.
"""

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from stack import containers
from tests.conftest import REPO

LOG_DIR = REPO / ".stack" / "logs" / "compose"
# First start on this two-core machine: the data services' checks and the app's imports.
UP_TIMEOUT_S = 900
SOCKET_TIMEOUT_S = 30


@dataclass
class Stack:
    project: str
    url: str
    token: str

    def compose(self, *args: str, timeout: float = 300, check: bool = True) -> str:
        return compose(self.project, *args, timeout=timeout, check=check)

    def python(self, service: str, code: str) -> str:
        """Run Python in a running container of the service (the app's image and settings)."""
        return self.compose("exec", "-T", service, "python", "-c", code, timeout=120)

    def get(self, path: str, **kwargs) -> requests.Response:
        return requests.get(self.url + path, headers=self.auth(), timeout=60, **kwargs)

    def post(self, path: str, **kwargs) -> requests.Response:
        return requests.post(self.url + path, headers=self.auth(), timeout=60, **kwargs)

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Token {self.token}"}


def compose(project: str, *args: str, timeout: float = 300, check: bool = True) -> str:
    done = subprocess.run(
        containers.compose_argv(*args, project=project),
        env=containers.compose_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and done.returncode != 0:
        raise AssertionError(
            f"docker compose {' '.join(args)} exited {done.returncode}:\n"
            f"{done.stdout[-3000:]}{done.stderr[-3000:]}"
        )
    return done.stdout + done.stderr


def leftovers(project: str) -> list[str]:
    """What Podman still has of the project: containers, volumes, networks."""
    label = f"label=com.docker.compose.project={project}"
    found = []
    listings = {
        "container": ["ps", "--all", "--format", "{{.Names}}"],
        "volume": ["volume", "ls", "--format", "{{.Name}}"],
        "network": ["network", "ls", "--format", "{{.Name}}"],
    }
    for kind, argv in listings.items():
        argv = ["podman", *argv, "--filter", label]
        listed = subprocess.run(argv, capture_output=True, text=True)
        found += [f"{kind} {name}" for name in listed.stdout.split()]
    return found


def started(argv: list[str], log: Path) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def demo_token(logs: str) -> str:
    """The migrate service prints the demo user with its token (manage.py bootstrap)."""
    tokens = re.findall(r"API token: (\w+)", logs)
    assert tokens, f"no API token in `docker compose logs migrate`:\n{logs[-2000:]}"
    return tokens[-1]


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    missing = [
        image
        for image in (*containers.STANDINS.values(), containers.APP_IMAGE)
        if not containers.image_exists(image)
    ]
    if missing or not containers.COMPOSE_BIN.exists():
        pytest.fail(
            f"images {missing} or {containers.COMPOSE_BIN} missing: run "
            "`python3 -m stack.containers install` (make test-compose does)"
        )
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    project = containers.PROJECT
    containers.SOCKET.unlink(missing_ok=True)
    service = started(containers.service_argv(), LOG_DIR / "podman-service.log")
    checks = started(
        [sys.executable, "-m", "stack.containers", "healthchecks", project],
        LOG_DIR / "healthchecks.log",
    )
    try:
        deadline = time.monotonic() + SOCKET_TIMEOUT_S
        while not containers.SOCKET.exists():
            assert time.monotonic() < deadline, "podman system service made no socket"
            time.sleep(0.2)
        # What a run that was killed may have left.
        compose(project, "down", "--volumes", "--remove-orphans", "--timeout", "5")
        started_at = time.monotonic()
        up = subprocess.run(
            containers.compose_argv("up", "--detach", "--wait", "--no-build", project=project),
            env=containers.compose_env(),
            capture_output=True,
            text=True,
            timeout=UP_TIMEOUT_S,
        )
        (LOG_DIR / "up.log").write_text(up.stdout + up.stderr)
        if up.returncode != 0:
            state = compose(project, "ps", "--all", check=False)
            logs = compose(project, "logs", "--no-color", "--tail", "30", check=False)
            (LOG_DIR / "services.log").write_text(logs)
            pytest.fail(
                f"docker compose up --wait failed:\n{up.stderr[-3000:]}\n{state}\n{logs[-6000:]}"
            )
        print(f"\ncompose up --wait: {time.monotonic() - started_at:.0f} s")
        token = demo_token(compose(project, "logs", "--no-color", "migrate"))
        yield Stack(project, f"http://127.0.0.1:{containers.WEB_PORT}", token)
    finally:
        try:
            (LOG_DIR / "services.log").write_text(
                compose(project, "logs", "--no-color", "--timestamps", check=False)
            )
            compose(
                project, "down", "--volumes", "--remove-orphans", "--timeout", "10", timeout=300
            )
        finally:
            stop(checks)
            stop(service)
        left = leftovers(project)
        assert not left, f"left after docker compose down: {left}"


def wait_for(what: str, probe, timeout: float, every: float = 2):
    """probe() until it returns something true; its last answer is in the failure."""
    deadline = time.monotonic() + timeout
    while True:
        answer = probe()
        if answer:
            return answer
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {timeout:.0f} s (last: {answer!r})")
        time.sleep(every)


def parse_json_line(output: str) -> dict:
    """The last line of a container's output that is JSON (libraries may log before it)."""
    for line in reversed(output.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise AssertionError(f"no JSON in:\n{output[-2000:]}")
