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


def held(
    python: str, *, host: str = "127.0.0.1", port: int = 8002, name: str = "held"
) -> AppProcess:
    """The held requests (a job's ?wait=, the batches' event streams) as async code under
    uvicorn (inferencehub/asgi.py): waiting costs no thread, so one process holds
    thousands. One worker process, no lifespan events (Django has none); no access log
    (gunicorn keeps none either), and the client address left to Django's
    TRUSTED_PROXIES rule, as under gunicorn."""
    argv = [python, "-m", "uvicorn", "inferencehub.asgi:application"]
    argv += ["--host", host, "--port", str(port), "--workers", "1", "--lifespan", "off"]
    argv += ["--no-access-log", "--no-proxy-headers"]
    return AppProcess(name, argv, "Uvicorn running on")


def proxy(
    python: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    app: str = "127.0.0.1:8001",
    held: str = "",
    directory: str,
    access_log: str = "",
    name: str = "proxy",
) -> AppProcess:
    """nginx in front of gunicorn (app) and the held-requests process (held; without it,
    gunicorn holds them): it reads each request whole before passing it on, and drops
    clients that stall (stack/nginx.conf, rendered by manage.py run_proxy)."""
    argv = [python, "manage.py", "run_proxy", "--listen", f"{host}:{port}", "--app", app]
    if held:
        argv += ["--held", held]
    argv += ["--dir", directory]
    if access_log:
        argv += ["--access-log", access_log]
    return AppProcess(name, argv, "start worker processes")


# The Celery queues, each served by worker processes of its own (inferencehub/settings.py
# routes every task to one): preprocessing, which one user's big images can keep busy for
# minutes, and storing or failing results with the light bookkeeping (dispatch, sweep),
# which must never wait behind it; and completion webhooks, which wait on receivers
# outside (seconds each when one is slow or down) and must hold up neither.
PREPROCESS_QUEUE = "preprocess"
RESULTS_QUEUE = "results"
WEBHOOKS_QUEUE = "webhooks"


def celery(
    python: str,
    *,
    queues: tuple[str, ...] = (PREPROCESS_QUEUE, RESULTS_QUEUE),
    hostname: str = "celery@%h",
    concurrency: int = 2,
    name: str = "celery",
    include: tuple[str, ...] = (),
    pool: str = "",
) -> AppProcess:
    """A Celery worker of the given queues (by default both: one process does everything,
    as the tests that need Celery but not the split use it); pool: Celery's, when not
    its default (prefork)."""
    argv = [python, "-m", "celery", "-A", "inferencehub", "worker", "--loglevel", "INFO"]
    argv += ["--queues", ",".join(queues)]
    if pool:
        argv += ["--pool", pool]
    # Gossip and mingle only exchange state between workers, which no task here uses;
    # without them a worker is ready sooner.
    argv += ["--concurrency", str(concurrency), "--hostname", hostname]
    argv += ["--without-gossip", "--without-mingle"]
    if include:
        argv += ["--include", ",".join(include)]
    return AppProcess(name, argv, "ready.")


def preprocess_celery(python: str, *, hostname: str = "celery@%h") -> AppProcess:
    return celery(python, queues=(PREPROCESS_QUEUE,), hostname=hostname)


def results_celery(python: str, *, hostname: str = "results@%h") -> AppProcess:
    """Small: a store task is one transaction for up to 64 results; two processes so that a
    slow one (a long sweep, a database retry) does not hold the others up."""
    return celery(
        python, queues=(RESULTS_QUEUE,), hostname=hostname, concurrency=2, name="celery-results"
    )


def webhooks_celery(python: str, *, hostname: str = "webhooks@%h") -> AppProcess:
    """Completion webhooks: threads, as an attempt is a wait on a receiver's answer
    (WEBHOOK_TIMEOUT_S at most) and costs no CPU; 16 of them in one small process."""
    return celery(
        python,
        queues=(WEBHOOKS_QUEUE,),
        hostname=hostname,
        concurrency=16,
        name="celery-webhooks",
        pool="threads",
    )


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
    python: str,
    *,
    web_host: str,
    web_port: int,
    beat_schedule: str,
    app_port: int = 8001,
    held_port: int = 8002,
    proxy_dir: str = "/tmp/inferencehub-nginx",
    proxy_access_log: str = "",
) -> list[AppProcess]:
    """What `make run` supervises: everything, with one inference worker of SERVED_MODEL.
    Users reach nginx on web_host:web_port; gunicorn listens on loopback only, behind it.

    One worker: serving a model package, it keeps every core busy with OpenVINO's
    throughput streams, which measured better than two processes each using every core
    (docs/performance.md, "One worker per host")."""
    return [
        proxy(
            python,
            host=web_host,
            port=web_port,
            app=f"127.0.0.1:{app_port}",
            held=f"127.0.0.1:{held_port}",
            directory=proxy_dir,
            access_log=proxy_access_log,
        ),
        web(python, port=app_port),
        held(python, port=held_port),
        preprocess_celery(python),
        results_celery(python),
        webhooks_celery(python),
        beat(python, schedule=beat_schedule),
        worker(python, "worker", "--model", SERVED_MODEL),
        bridge(python),
    ]
