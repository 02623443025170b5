"""Local service manager for InferenceHub: MariaDB, Redis, Kafka and the app processes.

Usage:
    python3 stack/stack.py install            apt packages, .venv + requirements.txt, Kafka jars
    python3 stack/stack.py install dev        the test and lint tools (requirements-dev.txt)
    python3 stack/stack.py up [all|NAME...]   no names: data services; "all": data services + apps
    python3 stack/stack.py down [all|NAME...] no names or "all": everything, in reverse order
    python3 stack/stack.py status             exit code 0 only if every data service is up and
                                              no app process under supervisord is down
    python3 stack/stack.py cluster up|down|status   a three-node KRaft cluster (kafka1..3)
    python3 stack/stack.py up kafka-secure|s3proxy  the secured broker, the S3 server (by name
                                              only; `down` with no names stops them too)

App processes (stack/processes.py) run under supervisord, which restarts one that dies.
All state (data, logs, pid files, supervisord's config) lives in the git-ignored .stack/
folder at the repo root, or in STACK_DIR (relative to the repo root) so that a second stack,
e.g. the fault tests' own, can run next to the first on other ports (STACK_*_PORT).
"""

from stack import install, processes
from stack.common import (
    LOGS,
    MARIADB_PORT,
    REDIS_PORT,
    ROOT,
    RUN,
    STATE,
    VENV_PYTHON,
    WEB_APP_PORT,
    WEB_HELD_PORT,
    WEB_HOST,
    WEB_PORT,
    StackError,
    say,
    tcp_open,
)
from stack.kafka import KAFKA, KAFKA_CLUSTER
from stack.optional import OPTIONAL_SERVICES
from stack.services import (
    MARIADB_SOCKET,
    Service,
    launch,
    mariadb_argv,
    mariadb_prepare,
    mariadb_ready,
    mariadb_setup,
    redis_argv,
    redis_ready,
    running_pid,
    stop,
    wait_ready,
)
from stack.supervise import START_SECONDS, Supervisor

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
# Not started by `up`: the three-node cluster is for the fault tests and for trying
# replication (`cluster up`); its nodes can also be named one by one (`up kafka2`).
CLUSTER_SERVICES = [node.service() for node in KAFKA_CLUSTER]
# Not started by `up` either: by name only (`up kafka-secure`, `up s3proxy`).
SERVICES = {s.name: s for s in DATA_SERVICES + CLUSTER_SERVICES + OPTIONAL_SERVICES}

APPS = processes.local_stack(
    VENV_PYTHON,
    web_host=WEB_HOST,
    web_port=WEB_PORT,
    beat_schedule=str(STATE / "celery-beat-schedule"),
    app_port=WEB_APP_PORT,
    held_port=WEB_HELD_PORT,
    proxy_dir=str(STATE / "nginx"),
    proxy_access_log=str(LOGS / "proxy-access.log"),
)
APP_NAMES = [app.name for app in APPS]
SUPERVISOR = Supervisor(STATE, LOGS)


def select(names: list[str]) -> tuple[list[Service], list[str]]:
    """The data services and app process names asked for ("all": every one of both)."""
    if "all" in names:
        return DATA_SERVICES, APP_NAMES
    unknown = [n for n in names if n not in SERVICES and n not in APP_NAMES]
    if unknown:
        known = ", ".join([*SERVICES, *APP_NAMES])
        raise StackError(f"unknown service(s): {', '.join(unknown)}; known: all, {known}")
    return [s for s in SERVICES.values() if s.name in names], [n for n in APP_NAMES if n in names]


def cmd_up(names: list[str]) -> int:
    for directory in (LOGS, RUN):
        directory.mkdir(parents=True, exist_ok=True)
    services, apps = select(names) if names else (DATA_SERVICES, [])
    # App processes need every data service, so those always come first, one by one as
    # each may depend on the previous being ready.
    for svc in DATA_SERVICES if apps else services:
        pid = launch(svc)
        if pid:
            wait_ready(svc, pid)
    if apps:
        # Workers load TensorFlow and the model first: minutes on a busy machine.
        SUPERVISOR.up(APPS, apps, timeout=START_SECONDS + 600)
    return 0


def cmd_down(names: list[str]) -> int:
    # With no names everything stops: app processes left without their data services are useless.
    if not names or "all" in names:
        SUPERVISOR.stop([])
        # Those started by name go too: none is left holding a port or the state folder.
        for svc in reversed(DATA_SERVICES + OPTIONAL_SERVICES):
            stop(svc)
        return 0
    services, apps = select(names)
    if apps:
        SUPERVISOR.stop(apps)
    for svc in reversed(services):
        stop(svc)
    return 0


def cmd_status(_names: list[str]) -> int:
    data_up = report(DATA_SERVICES)
    report([s for s in OPTIONAL_SERVICES if running_pid(s.name)])
    apps_up = SUPERVISOR.report()
    return 0 if data_up and apps_up else 1


def report(services: list[Service]) -> bool:
    """Print one line per service; True only if every one is up."""
    all_up = True
    for svc in services:
        pid = running_pid(svc.name)
        where = f"127.0.0.1:{svc.port}" if svc.port else ""
        if pid is None:
            state = "stopped"
            if svc.port and tcp_open(svc.port):
                state += f" (port {svc.port} in use by a process stack.py did not start)"
        elif svc.is_ready():
            state = f"running  pid {pid}"
        else:
            state = f"starting pid {pid} (not ready yet)"
        say(f"{svc.name:<12} {where:<16} {state}")
        all_up = all_up and state.startswith("running")
    return all_up


def cmd_cluster(args: list[str]) -> int:
    if args not in (["up"], ["down"], ["status"]):
        raise StackError("usage: stack.py cluster up|down|status")
    if args == ["status"]:
        return 0 if report(CLUSTER_SERVICES) else 1
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
    "install": install.cmd_install,
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
