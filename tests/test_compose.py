"""Structure and wiring of docker/compose.yaml and docker/Dockerfile.

No Docker engine is needed: the files are parsed and cross-checked.
"""

import importlib.util
import json
import re
import shlex
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from stack import processes

# make test runs these; make test-fast does not (tests/conftest.py).
pytestmark = pytest.mark.manifests

REPO = Path(__file__).resolve().parent.parent
DOCKER_DIR = REPO / "docker"
COMPOSE_FILE = DOCKER_DIR / "compose.yaml"
DOCKERFILE = DOCKER_DIR / "Dockerfile"

KAFKA_NODES = ["kafka1", "kafka2", "kafka3"]
DATA_SERVICES = ["mariadb", "redis", *KAFKA_NODES]
APP_SERVICES = [
    "migrate",
    "proxy",
    "web",
    "held",
    "celery",
    "celery-results",
    "celery-webhooks",
    "beat",
    "worker",
    "bridge",
]
APP_ENV_URLS = ["DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS", "CELERY_BROKER_URL"]


@pytest.fixture(scope="module")
def compose():
    with COMPOSE_FILE.open() as f:
        return yaml.safe_load(f)


@pytest.fixture(scope="module")
def services(compose):
    return compose["services"]


def env_of(service):
    """Compose allows environment as a mapping or a list of KEY=VALUE."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def depends_of(service):
    """depends_on as {service: condition}; the list form means service_started."""
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def command_words(service):
    command = service.get("command") or []
    return shlex.split(command) if isinstance(command, str) else [str(word) for word in command]


def manage_py_commands(service):
    """Names X in every `manage.py X` of a service's command, also inside `sh -c "..."`."""
    text = " ".join(command_words(service))
    return re.findall(r"manage\.py\s+([\w-]+)", text)


def named_volumes(service):
    names = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            if volume.get("type", "volume") == "volume" and volume.get("source"):
                names.append(volume["source"])
            continue
        source = volume.split(":", 1)[0]
        if ":" in volume and not source.startswith(("/", ".", "~", "$")):
            names.append(source)
    return names


def host_port(address):
    host, _, port = address.strip().rpartition(":")
    return host, int(port)


def dockerfile_instructions():
    """(INSTRUCTION, arguments) pairs with line continuations joined."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    pairs = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, args = line.partition(" ")
            pairs.append((instruction.upper(), args.strip()))
    return pairs


# --- Kafka ----------------------------------------------------------------------


def test_kafka_cluster_has_three_voters_with_rf3_and_min_isr2(services):
    envs = {name: env_of(services[name]) for name in KAFKA_NODES}
    for env in envs.values():
        assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
        assert env["KAFKA_DEFAULT_REPLICATION_FACTOR"] == "3"
        assert env["KAFKA_MIN_INSYNC_REPLICAS"] == "2"
        assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "3"
        assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "3"
        assert env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "2"
        assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"].lower() == "false"

    node_ids = {name: env["KAFKA_NODE_ID"] for name, env in envs.items()}
    assert len(set(node_ids.values())) == 3, node_ids
    assert len({env["CLUSTER_ID"] for env in envs.values()}) == 1

    quorums = {env["KAFKA_CONTROLLER_QUORUM_VOTERS"] for env in envs.values()}
    assert len(quorums) == 1, "every node must list the same voters"
    voters = dict(voter.split("@") for voter in quorums.pop().split(","))
    # Each voter id belongs to the node it names.
    assert {voter_id: host_port(addr)[0] for voter_id, addr in voters.items()} == {
        node_id: name for name, node_id in node_ids.items()
    }


def test_kafka_nodes_advertise_their_own_service_name(services):
    for name in KAFKA_NODES:
        advertised = env_of(services[name])["KAFKA_ADVERTISED_LISTENERS"]
        hosts = {urlsplit(listener).hostname for listener in advertised.split(",")}
        assert name in hosts, advertised


def test_kafka_nodes_keep_data_on_their_own_named_volume_with_a_healthcheck(services):
    volumes = []
    for name in KAFKA_NODES:
        service = services[name]
        assert "healthcheck" in service
        log_dir = env_of(service)["KAFKA_LOG_DIRS"]
        mounts = {v.split(":")[1]: v.split(":")[0] for v in service["volumes"]}
        assert log_dir in mounts, f"{name}: KAFKA_LOG_DIRS {log_dir} is not on a volume"
        volumes.append(mounts[log_dir])
    assert len(set(volumes)) == 3


# --- MariaDB and Redis ------------------------------------------------------------


def test_mariadb_uses_utf8mb4_and_reports_health_once_innodb_is_ready(services):
    mariadb = services["mariadb"]
    assert mariadb["image"].startswith("mariadb:")
    assert "--character-set-server=utf8mb4" in command_words(mariadb)
    test = mariadb["healthcheck"]["test"]
    assert "healthcheck.sh" in test and "--innodb_initialized" in test
    assert named_volumes(mariadb)


def test_mariadb_credentials_match_the_app_database_url(services):
    db_env = env_of(services["mariadb"])
    url = urlsplit(env_of(services["web"])["DATABASE_URL"])
    assert url.username == db_env["MARIADB_USER"]
    assert url.password == db_env["MARIADB_PASSWORD"]
    assert url.path.lstrip("/") == db_env["MARIADB_DATABASE"]


def test_redis_persists_with_appendonly_and_has_a_healthcheck(services):
    redis = services["redis"]
    words = command_words(redis)
    assert "--appendonly" in words and words[words.index("--appendonly") + 1] == "yes"
    assert "healthcheck" in redis
    assert named_volumes(redis)


# --- App services -------------------------------------------------------------------


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_service_builds_from_the_shared_dockerfile_at_repo_root(services, name):
    build = services[name]["build"]
    assert (COMPOSE_FILE.parent / build["context"]).resolve() == REPO
    assert (REPO / build["dockerfile"]).resolve() == DOCKERFILE


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_service_urls_point_at_services_defined_in_compose(services, name):
    env = env_of(services[name])
    for key in APP_ENV_URLS:
        assert key in env, f"{name} lacks {key}"

    assert urlsplit(env["DATABASE_URL"]).hostname in services
    assert urlsplit(env["CELERY_BROKER_URL"]).hostname in services
    for address in env["KAFKA_BOOTSTRAP_SERVERS"].split(","):
        assert host_port(address)[0] in services, address


def test_app_kafka_bootstrap_lists_every_broker_on_its_advertised_listener(services):
    bootstrap = env_of(services["web"])["KAFKA_BOOTSTRAP_SERVERS"].split(",")
    advertised = set()
    for name in KAFKA_NODES:
        for listener in env_of(services[name])["KAFKA_ADVERTISED_LISTENERS"].split(","):
            url = urlsplit(listener)
            advertised.add((url.hostname, url.port))
    assert {host_port(address) for address in bootstrap} <= advertised
    assert {host_port(address)[0] for address in bootstrap} == set(KAFKA_NODES)


def test_app_topic_replication_fits_the_cluster(services):
    kafka_env = env_of(services["kafka1"])
    for name in APP_SERVICES:
        replication = int(env_of(services[name])["KAFKA_REPLICATION_FACTOR"])
        assert replication == 3
        assert replication <= len(KAFKA_NODES)
        assert replication > int(kafka_env["KAFKA_MIN_INSYNC_REPLICAS"])


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_service_waits_for_healthy_data_services(services, name):
    deps = depends_of(services[name])
    for data_service in DATA_SERVICES:
        assert deps.get(data_service) == "service_healthy", f"{name} -> {data_service}"


@pytest.mark.parametrize("name", [n for n in APP_SERVICES if n != "migrate"])
def test_app_service_starts_only_after_migrate_completed(services, name):
    assert depends_of(services[name]).get("migrate") == "service_completed_successfully"


def test_every_depends_on_names_a_defined_service(services):
    for name, service in services.items():
        for dependency in depends_of(service):
            assert dependency in services, f"{name} depends on unknown {dependency}"


def test_migrate_is_one_off_and_runs_the_bootstrap_command(services):
    migrate = services["migrate"]
    assert str(migrate["restart"]) == "no"
    assert manage_py_commands(migrate) == ["bootstrap"]


def test_migrate_registers_the_model_the_workers_serve(services):
    words = command_words(services["migrate"])
    assert words[words.index("--model") + 1] == processes.SERVED_MODEL


# In the image, "python" is the interpreter and the web listens on every interface of its
# container; the port is published by compose.
IMAGE_PROCESSES = {
    "proxy": processes.proxy(
        "python",
        host="0.0.0.0",
        port=8000,
        app="web:8000",
        held="held:8002",
        directory="/tmp/nginx",
        access_log="/dev/stdout",
    ),
    "web": processes.web("python", host="0.0.0.0", port=8000),
    "held": processes.held("python", host="0.0.0.0", port=8002),
    "celery": processes.preprocess_celery("python"),
    "celery-results": processes.results_celery("python"),
    "celery-webhooks": processes.webhooks_celery("python"),
    "beat": processes.beat("python", schedule="/tmp/celerybeat-schedule"),
    "worker": processes.worker("python", "worker", "--model", processes.SERVED_MODEL),
    "bridge": processes.bridge("python"),
}


@pytest.mark.parametrize("name", IMAGE_PROCESSES)
def test_app_service_runs_the_command_of_the_process_table(services, name):
    assert command_words(services[name]) == IMAGE_PROCESSES[name].argv


# Under make run these listen on loopback ports of one machine; in compose each has a
# container of its own, on the compose network.
ADDRESSED = {"proxy", "web", "held"}


def test_every_app_process_make_run_supervises_has_its_compose_service():
    local = processes.local_stack(
        "python", web_host="0.0.0.0", web_port=8000, beat_schedule="/tmp/celerybeat-schedule"
    )
    names = [p.name for p in local]
    assert set(names) == set(IMAGE_PROCESSES)
    assert [p.argv for p in local if p.name not in ADDRESSED] == [
        IMAGE_PROCESSES[name].argv for name in names if name not in ADDRESSED
    ]


def test_only_the_proxy_is_published_on_port_8000(services):
    assert [str(port) for port in services["proxy"]["ports"]] == ["8000:8000"]
    for name in APP_SERVICES:
        if name != "proxy":
            assert not services[name].get("ports"), name


def test_only_the_proxy_is_trusted_for_x_forwarded_for(services):
    proxy_address = services["proxy"]["networks"]["default"]["ipv4_address"]
    for name in APP_SERVICES:
        assert env_of(services[name])["TRUSTED_PROXIES"] == proxy_address, name


def test_worker_is_scalable_with_no_fixed_name_or_host_port(services):
    worker = services["worker"]
    assert "container_name" not in worker
    assert not worker.get("ports")
    assert worker["deploy"]["replicas"] >= 2


def test_topic_partitions_leave_room_to_scale_workers(services):
    """Consumers beyond the partition count in one group get no partition."""
    worker = services["worker"]
    partitions = int(env_of(worker)["KAFKA_TOPIC_PARTITIONS"])
    assert partitions >= 2 * worker["deploy"]["replicas"]


def test_no_app_service_pins_a_container_name(services):
    for name in APP_SERVICES:
        assert "container_name" not in services[name], name


def test_web_and_celery_share_the_media_volume_at_media_root(services):
    for name in ["web", "celery"]:
        service = services[name]
        media_root = env_of(service)["MEDIA_ROOT"]
        assert f"media:{media_root}" in service["volumes"], name


def test_every_named_volume_used_is_declared(compose, services):
    declared = set(compose.get("volumes") or {})
    for name, service in services.items():
        for volume in named_volumes(service):
            assert volume in declared, f"{name} uses undeclared volume {volume}"


# --- Dockerfile ---------------------------------------------------------------------


def test_dockerfile_default_cmd_is_the_web_process():
    cmds = [args for instruction, args in dockerfile_instructions() if instruction == "CMD"]
    assert cmds, "Dockerfile has no CMD"
    assert json.loads(cmds[-1]) == IMAGE_PROCESSES["web"].argv


def test_dockerfile_runs_as_non_root_and_exposes_8000():
    instructions = dockerfile_instructions()
    users = [args for instruction, args in instructions if instruction == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert ("EXPOSE", "8000") in instructions
    froms = [args for instruction, args in instructions if instruction == "FROM"]
    assert froms[0].startswith("python:3.11-slim-bookworm")


def test_no_healthcheck_is_turned_off_which_up_wait_refuses(services):
    """`docker compose up --wait` fails on a container whose check is turned off ("has no
    healthcheck configured", docker/compose#13522): the image has none, services add theirs."""
    assert not any(i == "HEALTHCHECK" for i, _ in dockerfile_instructions())
    for name, service in services.items():
        assert not (service.get("healthcheck") or {}).get("disable"), name


def test_dockerfile_installs_requirements_before_copying_the_source():
    """Editing code must not invalidate the (slow) pip install layer."""
    instructions = dockerfile_instructions()
    copy_requirements = instructions.index(("COPY", "requirements.txt ."))
    pip_install = next(
        n
        for n, (i, args) in enumerate(instructions)
        if i == "RUN" and "pip install -r requirements.txt" in args
    )
    copy_all = instructions.index(("COPY", ". ."))
    assert copy_requirements < pip_install < copy_all


def test_dockerignore_beside_dockerfile_excludes_local_state():
    ignored = {
        line.strip()
        for line in (DOCKER_DIR / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", ".stack", "media", "node_modules"} <= ignored


# --- manage.py commands named in compose exist --------------------------------------


def _django_builtin_command(name):
    spec = importlib.util.find_spec("django")
    if spec is None or not spec.origin:
        return name in {"migrate", "collectstatic", "check", "createsuperuser", "shell"}
    django_dir = Path(spec.origin).parent
    return any(django_dir.glob(f"**/management/commands/{name}.py"))


def _project_command_files(name):
    skip = {".venv", "venv", ".git", ".stack", "node_modules", "media"}
    found = []
    for top in REPO.iterdir():
        if top.is_dir() and top.name not in skip and not top.name.startswith("."):
            found += top.glob(f"**/management/commands/{name}.py")
    return found


def test_every_manage_py_command_in_compose_exists_in_the_repo(services):
    used = {command for service in services.values() for command in manage_py_commands(service)}
    assert {"run_worker", "consume_results", "bootstrap"} <= used
    missing = sorted(
        command
        for command in used
        if not _django_builtin_command(command) and not _project_command_files(command)
    )
    assert not missing, f"no */management/commands/<name>.py for: {missing}"
