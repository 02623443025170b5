"""The app's processes: the one place their command lines and readiness signs are written.

Used by `make run` (under supervisord), the tests, the fault suite and the benchmark, and
checked against docker/compose.yaml by tests/test_compose.py. Standard library only: the
stack code imports it under the system python3, before .venv exists.

Every command runs from the repository root with the given Python (`.venv/bin/python` under
`make run`, `sys.executable` in the tests, `python` in the Docker image). Addresses, ports
and names are parameters, never patched into the text afterwards. gunicorn's own settings
(workers, timeouts, request limits) are in gunicorn.conf.py, which it reads from the root.
"""

from dataclasses import dataclass

# The registered model `make run` and the compose file serve: `manage.py bootstrap --model`
# registers it (a new version only when it changed) and their workers run `--model` it.
SERVED_MODEL = "resnet50"


@dataclass(frozen=True)
class AppProcess:
    name: str
    argv: list[str]
    ready_text: str  # a line its log shows once it serves


def web(python: str, *, host: str = "127.0.0.1", port: int = 8000, name: str = "web") -> AppProcess:
    argv = [python, "-m", "gunicorn", "inferencehub.wsgi:application", "--bind", f"{host}:{port}"]
    return AppProcess(name, argv, "Booting worker")


def celery(python: str, *, hostname: str = "celery@%h", concurrency: int = 2) -> AppProcess:
    argv = [python, "-m", "celery", "-A", "inferencehub", "worker", "--loglevel", "INFO"]
    # Gossip and mingle only exchange state between workers, which no task here uses;
    # without them a worker is ready sooner.
    argv += ["--concurrency", str(concurrency), "--hostname", hostname]
    argv += ["--without-gossip", "--without-mingle"]
    return AppProcess("celery", argv, "ready.")


def beat(python: str, *, schedule: str) -> AppProcess:
    """Its own process, as in production: the schedule (the sweep of stuck jobs) keeps
    running while a Celery worker is restarted. Exactly one beat may run per cluster."""
    argv = [python, "-m", "celery", "-A", "inferencehub", "beat", "--loglevel", "INFO"]
    return AppProcess("beat", [*argv, "--schedule", schedule], "beat: Starting...")


def worker(python: str, name: str = "worker", *options: str) -> AppProcess:
    """An inference worker; options are run_worker's (e.g. --metrics-port N)."""
    return AppProcess(name, [python, "manage.py", "run_worker", *options], "starting with")


def bridge(python: str, *options: str) -> AppProcess:
    return AppProcess("bridge", [python, "manage.py", "consume_results", *options], "starting with")


def local_stack(
    python: str, *, web_host: str, web_port: int, beat_schedule: str
) -> list[AppProcess]:
    """What `make run` supervises: everything, with two inference workers of SERVED_MODEL."""
    return [
        web(python, host=web_host, port=web_port),
        celery(python),
        beat(python, schedule=beat_schedule),
        worker(python, "worker1", "--model", SERVED_MODEL),
        worker(python, "worker2", "--model", SERVED_MODEL),
        bridge(python),
    ]
