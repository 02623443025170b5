"""deploy/kubernetes: every overlay rendered by kustomize (deploy/kubernetes/render.sh, which
installs it when missing), validated against the Kubernetes schemas, and checked against
the code: settings, URLs, the worker/bridge health server, compose's commands, Kafka
names. No cluster runs here; the health endpoint is tested on a real consumer."""

import ast
import inspect
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import requests
import yaml
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import NewTopic
from django.http.request import validate_host
from django.test import override_settings
from django.urls import resolve

import inferencehub.settings as settings_module
from common import metrics
from kafka_wire.config import consumer_config, model_route, producer_config
from kafka_wire.runner import BatchConsumer
from kafka_wire.topics import admin_client
from predictions import health
from stack import processes
from tests.conftest import PYTHON, free_port, started_processes

# make test runs these; make test-fast does not (tests/conftest.py).
pytestmark = pytest.mark.manifests

REPO = Path(__file__).resolve().parent.parent
KUBERNETES = REPO / "deploy" / "kubernetes"
OVERLAYS = sorted(path.name for path in (KUBERNETES / "overlays").iterdir())
KUBERNETES_VERSION = "1.33.0"
# KAFKA_SASL_MECHANISM (librdkafka's spelling) -> KEDA's Kafka scaler "sasl".
KEDA_SASL_MODES = {
    "PLAIN": "plaintext",
    "SCRAM-SHA-256": "scram_sha256",
    "SCRAM-SHA-512": "scram_sha512",
}


def render(overlay: str) -> list[dict]:
    result = subprocess.run(
        [str(KUBERNETES / "render.sh"), overlay], capture_output=True, text=True, timeout=900
    )
    # No kustomize (it could not be installed) is a failure, not a skip.
    assert result.returncode == 0, result.stderr[-4000:]
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def renders() -> dict[str, list[dict]]:
    return {overlay: render(overlay) for overlay in OVERLAYS}


@pytest.fixture(scope="module", params=OVERLAYS)
def objects(request, renders) -> list[dict]:
    return renders[request.param]


def of_kind(objects: list[dict], kind: str) -> dict[str, dict]:
    return {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == kind}


def workloads(objects: list[dict]) -> dict[str, dict]:
    return {**of_kind(objects, "Deployment"), **of_kind(objects, "Job")}


def component(workload: dict) -> str:
    return workload["metadata"]["labels"]["app.kubernetes.io/component"]


def app_container(workload: dict) -> dict:
    (container,) = [
        c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"] == "app"
    ]
    return container


def config(objects: list[dict]) -> dict[str, str]:
    (config_map,) = of_kind(objects, "ConfigMap").values()
    return config_map["data"]


def environment(objects: list[dict], workload: dict) -> dict[str, dict]:
    """Each variable a container gets: {"value": ...} (from the ConfigMap or the env
    list), or the secretKeyRef it comes from."""
    config_maps = of_kind(objects, "ConfigMap")
    container = app_container(workload)
    variables = {}
    for source in container.get("envFrom", []):
        data = config_maps[source["configMapRef"]["name"]]["data"]
        variables.update({name: {"value": value} for name, value in data.items()})
    for variable in container.get("env", []):
        if "value" in variable:
            variables[variable["name"]] = {"value": variable["value"]}
        else:
            variables[variable["name"]] = variable["valueFrom"]["secretKeyRef"]
    return variables


# --- Settings read from the environment, found in settings.py itself ------------------


def settings_reads() -> dict[str, ast.expr | None]:
    """Every variable inferencehub/settings.py reads through its env helpers, with the
    default's expression (None when it has none)."""
    tree = ast.parse(Path(settings_module.__file__).read_text())
    reads = {}
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
            continue
        helper = getattr(settings_module, node.func.id, None)
        if not (node.func.id.startswith("env") and callable(helper)):
            continue
        if not (node.args and isinstance(node.args[0], ast.Constant)):
            continue  # the helpers' own inner calls
        parameters = list(inspect.signature(helper).parameters)
        position = parameters.index("default")
        keywords = {keyword.arg: keyword.value for keyword in node.keywords}
        default = node.args[position] if len(node.args) > position else keywords.get("default")
        reads[node.args[0].value] = default
    return reads


def required_in_a_cluster(default: ast.expr | None) -> bool:
    """No default, a default that can be NOTSET (DJANGO_SECRET_KEY without debug), or
    one pointing at the local stack: none of these works on a cluster."""
    if default is None:
        return True
    for node in ast.walk(default):
        if isinstance(node, ast.Attribute) and node.attr == "NOTSET":
            return True
        if isinstance(node, ast.Constant) and "127.0.0.1" in str(node.value):
            return True
    return False


def setting_default(name: str):
    return ast.literal_eval(settings_reads()[name])


def test_settings_reads_are_found():
    reads = settings_reads()
    required = {name for name, default in reads.items() if required_in_a_cluster(default)}
    assert {"DATABASE_URL", "KAFKA_WORKER_GROUP", "CONSUMER_STALL_SECONDS"} <= set(reads)
    assert {"DJANGO_SECRET_KEY", "DATABASE_URL", "CELERY_BROKER_URL"} <= required
    assert "KAFKA_LINGER_MS" not in required


# --- Schemas ---------------------------------------------------------------------------

KEDA_SCHEMAS = {
    "ScaledObject": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "keda.sh/v1alpha1"},
            "metadata": {"type": "object", "required": ["name"]},
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["scaleTargetRef", "triggers"],
                "properties": {
                    "scaleTargetRef": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["name"],
                        "properties": {
                            "name": {"type": "string"},
                            "kind": {"type": "string"},
                            "apiVersion": {"type": "string"},
                        },
                    },
                    "minReplicaCount": {"type": "integer", "minimum": 0},
                    "maxReplicaCount": {"type": "integer", "minimum": 1},
                    "pollingInterval": {"type": "integer", "minimum": 1},
                    "cooldownPeriod": {"type": "integer", "minimum": 0},
                    "triggers": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["type", "metadata"],
                            "properties": {
                                "type": {"const": "kafka"},
                                "authenticationRef": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "required": ["name"],
                                    "properties": {"name": {"type": "string"}},
                                },
                                # KEDA's Kafka scaler reads strings only.
                                "metadata": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "required": [
                                        "bootstrapServers",
                                        "consumerGroup",
                                        "topic",
                                        "lagThreshold",
                                    ],
                                    "properties": {
                                        "bootstrapServers": {"type": "string"},
                                        "consumerGroup": {"type": "string"},
                                        "topic": {"type": "string"},
                                        "lagThreshold": {
                                            "type": "string",
                                            "pattern": "^[1-9][0-9]*$",
                                        },
                                        "offsetResetPolicy": {"enum": ["earliest", "latest"]},
                                        "sasl": {
                                            "enum": [
                                                "none",
                                                "plaintext",
                                                "scram_sha256",
                                                "scram_sha512",
                                            ]
                                        },
                                        "tls": {"enum": ["enable", "disable"]},
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
    "TriggerAuthentication": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "keda.sh/v1alpha1"},
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["secretTargetRef"],
                "properties": {
                    "secretTargetRef": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["parameter", "name", "key"],
                            "properties": {
                                "parameter": {
                                    "enum": ["username", "password", "ca", "cert", "key"]
                                },
                                "name": {"type": "string"},
                                "key": {"type": "string"},
                            },
                        },
                    }
                },
            },
        },
    },
}


def test_every_object_is_valid_against_its_schema(objects):
    kinds = set()
    for obj in objects:
        kinds.add(obj["kind"])
        if obj["apiVersion"].startswith("keda.sh/"):
            jsonschema.validate(obj, KEDA_SCHEMAS[obj["kind"]])
        else:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    assert {"Deployment", "Job", "PodDisruptionBudget", "ScaledObject", "Service"} <= kinds


def test_a_wrong_object_fails_the_validation(renders):
    """The validation used above does refuse mistakes."""
    deployment = dict(of_kind(renders["production"], "Deployment")["inferencehub-web"])
    deployment["spec"] = {**deployment["spec"], "replica": 2}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    scaled = of_kind(renders["production"], "ScaledObject").popitem()[1]
    trigger = {**scaled["spec"]["triggers"][0], "metadata": {"lagThreshold": 128}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(
            {**scaled, "spec": {**scaled["spec"], "triggers": [trigger]}},
            KEDA_SCHEMAS["ScaledObject"],
        )


# --- Processes -------------------------------------------------------------------------


def served_version(worker: dict) -> tuple[str, int]:
    """The registered model and version a worker Deployment serves (`--model NAME:N`)."""
    args = app_container(worker)["args"]
    name, version = args[args.index("--model") + 1].split(":")
    return name, int(version)


def test_each_process_runs_the_command_of_the_process_table(objects):
    """The same command lines as make run and compose (stack/processes.py), with no
    arguments added but a worker's model: gunicorn's settings come from gunicorn.conf.py
    in the image."""
    expected = {
        "web": processes.web("python", host="0.0.0.0", port=8001).argv,
        "held": processes.held("python", host="0.0.0.0").argv,
        "celery": processes.preprocess_celery("python").argv,
        "celery-results": processes.results_celery("python").argv,
        "celery-webhooks": processes.webhooks_celery("python").argv,
        "beat": processes.beat("python", schedule="/tmp/celerybeat-schedule").argv,
        "worker": processes.worker("python").argv,
        "bridge": processes.bridge("python").argv,
        "migrate": [
            *("python", "manage.py", "bootstrap", "--no-demo-user"),
            *("--model", processes.SERVED_MODEL),
        ],
    }
    seen = set()
    for workload in workloads(objects).values():
        name = component(workload)
        container = app_container(workload)
        assert container["command"] == expected[name], name
        if name == "worker":
            # One Deployment per served model version, labelled with the model.
            model, version = served_version(workload)
            assert container["args"] == ["--model", f"{model}:{version}"]
            assert workload["metadata"]["labels"]["inferencehub/model"] == model
        else:
            assert "args" not in container, name
        seen.add(name)
    assert seen == set(expected)


def test_every_container_requests_cpu_and_memory_and_has_a_memory_limit(objects):
    for name, workload in workloads(objects).items():
        resources = app_container(workload)["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"]), name
        assert "memory" in resources["limits"], name


def test_beat_is_one_replica_replaced_by_recreate(objects):
    (beat,) = [w for w in workloads(objects).values() if component(w) == "beat"]
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"] == {"type": "Recreate"}


def test_every_long_running_process_but_beat_has_a_disruption_budget(objects):
    budgets = of_kind(objects, "PodDisruptionBudget").values()
    for name, deployment in of_kind(objects, "Deployment").items():
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        covering = [
            budget
            for budget in budgets
            if budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
        ]
        assert len(covering) == (0 if component(deployment) == "beat" else 1), name


# --- Settings wiring -------------------------------------------------------------------


def test_every_setting_a_cluster_needs_is_set_in_every_container(objects):
    required = {
        name for name, default in settings_reads().items() if required_in_a_cluster(default)
    }
    for name, workload in workloads(objects).items():
        missing = required - set(environment(objects, workload))
        assert not missing, f"{name} lacks {sorted(missing)}"


def test_every_variable_set_is_a_setting_the_code_reads(objects):
    known = set(settings_reads())
    for name, workload in workloads(objects).items():
        unknown = set(environment(objects, workload)) - known
        assert not unknown, f"{name} sets {sorted(unknown)}, which no setting reads"


def test_every_secret_reference_names_a_secret_the_dev_overlay_shows(objects, renders):
    """Dev renders its Secrets; production expects them made beforehand with the same
    names and keys (docs/kubernetes.md)."""
    dev_secrets = {
        name.rsplit("-", 1)[0]: secret for name, secret in of_kind(renders["dev"], "Secret").items()
    }
    rendered = of_kind(objects, "Secret")
    for workload in workloads(objects).values():
        for variable, source in environment(objects, workload).items():
            if "key" not in source:
                continue
            if rendered:
                assert source["key"] in rendered[source["name"]]["data"], variable
            else:
                assert source["key"] in dev_secrets[source["name"]]["data"], variable


def test_every_setting_value_is_accepted_by_the_settings(objects, tmp_path):
    """The ConfigMap's values pass the settings' own checks (e.g. a typo in a boolean)."""
    env = dict(config(objects))
    env.update(
        DJANGO_SETTINGS_MODULE="inferencehub.settings",
        DJANGO_SECRET_KEY="x" * 50,
        DATABASE_URL="mysql://u:p@db:3306/inferencehub",
    )
    # What a pod has besides the ConfigMap, which the settings check too: the Secret's Kafka
    # login, and the files mounted where the *_LOCATION settings point (stand-ins here).
    if env.get("KAFKA_SECURITY_PROTOCOL") == "SASL_SSL":
        env.update(KAFKA_SASL_USERNAME="stand-in", KAFKA_SASL_PASSWORD="stand-in")
    mounted = tmp_path / "mounted-file"
    mounted.write_text("stand-in\n")
    env.update({name: str(mounted) for name in env if name.endswith("_LOCATION")})
    check = "import django; django.setup(); from django.conf import settings; settings.DEBUG"
    result = subprocess.run(
        [sys.executable, "-c", check],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]


# --- Probes ----------------------------------------------------------------------------


def probes(container: dict) -> list[dict]:
    return [
        container[kind]["httpGet"]
        for kind in ("startupProbe", "readinessProbe", "livenessProbe")
        if kind in container
    ]


def probe_port(container: dict, probe: dict) -> int:
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    return ports.get(probe["port"], probe["port"])


def test_web_probes_are_django_health_views_for_an_allowed_host(objects):
    (web,) = [w for w in workloads(objects).values() if component(w) == "web"]
    container = app_container(web)
    allowed_hosts = config(objects)["DJANGO_ALLOWED_HOSTS"].split(",")
    bind = container["command"][container["command"].index("--bind") + 1]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in probes(container):
        view = resolve(probe["path"]).func
        assert view in (health.healthz, health.readyz)
        assert probe_port(container, probe) == int(bind.rsplit(":", 1)[1])
        hosts = [h["value"] for h in probe.get("httpHeaders", []) if h["name"] == "Host"]
        # Without a Host header the kubelet sends the pod's IP, which Django refuses.
        assert hosts and validate_host(hosts[0], allowed_hosts), (hosts, allowed_hosts)


def test_users_reach_the_web_through_the_proxy_beside_gunicorn(objects):
    """The Service sends users to nginx, a sidecar in each web pod (the process table's
    proxy), which passes requests on to gunicorn on the pod's loopback."""
    (web,) = [w for w in workloads(objects).values() if component(w) == "web"]
    containers = {c["name"]: c for c in web["spec"]["template"]["spec"]["containers"]}
    proxy, app = containers["proxy"], containers["app"]
    bind = app["command"][app["command"].index("--bind") + 1]
    assert (
        proxy["command"]
        == processes.proxy(
            "python",
            host="0.0.0.0",
            port=8000,
            app=f"127.0.0.1:{bind.rsplit(':', 1)[1]}",
            held="inferencehub-held:8002",
            directory="/tmp/nginx",
            access_log="/dev/stdout",
        ).argv
    )
    (service,) = [s for s in of_kind(objects, "Service").values() if component(s) == "web"]
    (port,) = service["spec"]["ports"]
    assert probe_port(proxy, {"port": port["targetPort"]}) == 8000
    # It renders its config from the settings: the same ones as the app's.
    assert proxy["envFrom"] == app["envFrom"]


@pytest.mark.django_db
def test_web_probe_paths_answer_200(client):
    for path in ("/healthz", "/readyz"):
        assert client.get(path).status_code == 200, path


def wsgi_status(app, path: str) -> int:
    statuses = []
    app(
        {"PATH_INFO": path, "REQUEST_METHOD": "GET"},
        lambda status, headers: statuses.append(status),
    )
    return int(statuses[0].split()[0])


def test_worker_and_bridge_probes_are_served_by_their_health_server(objects):
    app = metrics.consumer_http_app()
    checked = 0
    for workload in workloads(objects).values():
        if component(workload) not in ("worker", "bridge"):
            continue
        container = app_container(workload)
        assert {"readinessProbe", "livenessProbe"} <= set(container), component(workload)
        for probe in probes(container):
            assert probe_port(container, probe) == int(config(objects)["METRICS_PORT"])
            status = wsgi_status(app, probe["path"])
            assert status in (200, 503), (probe, status)
            checked += 1
    assert checked >= 5
    assert wsgi_status(app, "/healthz-typo") == 404


# --- Autoscaling -----------------------------------------------------------------------


def test_each_worker_is_scaled_on_its_own_group_and_topic(objects):
    scaled_objects = of_kind(objects, "ScaledObject")
    deployments = of_kind(objects, "Deployment")
    workers = {name for name, d in deployments.items() if component(d) == "worker"}
    assert {s["spec"]["scaleTargetRef"]["name"] for s in scaled_objects.values()} == workers
    auths = of_kind(objects, "TriggerAuthentication")
    for scaled in scaled_objects.values():
        target = deployments[scaled["spec"]["scaleTargetRef"]["name"]]
        env = environment(objects, target)
        (trigger,) = scaled["spec"]["triggers"]
        metadata = trigger["metadata"]
        # The names the worker's `--model` reads, built on the settings it gets.
        with override_settings(
            **{
                name: env.get(name, {"value": setting_default(name)})["value"]
                for name in ("KAFKA_REQUESTS_TOPIC", "KAFKA_WORKER_GROUP")
            }
        ):
            route = model_route(*served_version(target))
        assert metadata["consumerGroup"] == route.worker_group
        assert metadata["topic"] == route.requests_topic
        assert metadata["bootstrapServers"] == env["KAFKA_BOOTSTRAP_SERVERS"]["value"]
        assert metadata["offsetResetPolicy"] == consumer_config("any")["auto.offset.reset"]
        if env["KAFKA_SECURITY_PROTOCOL"]["value"] != "PLAINTEXT":
            assert metadata["tls"] == "enable"
            mechanism = env["KAFKA_SASL_MECHANISM"]["value"]
            assert metadata["sasl"] == KEDA_SASL_MODES[mechanism]
            assert trigger["authenticationRef"]["name"] in auths


def test_the_model_the_migrate_job_registers_has_its_first_version_served(objects):
    """bootstrap --model registers version 1 on a new database, and no other while what it
    registers is unchanged: the worker pinned to it reads the topic uploads go to."""
    workers = [w for w in workloads(objects).values() if component(w) == "worker"]
    assert (processes.SERVED_MODEL, 1) in [served_version(worker) for worker in workers]


def test_workers_scale_no_further_than_the_topic_has_partitions(objects):
    partitions = int(config(objects)["KAFKA_TOPIC_PARTITIONS"])
    deployments = of_kind(objects, "Deployment")
    for deployment in deployments.values():
        if component(deployment) == "bridge":  # the bridge's group reads the results topic
            assert deployment["spec"]["replicas"] <= partitions
    for scaled in of_kind(objects, "ScaledObject").values():
        spec = scaled["spec"]
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= partitions
        assert "replicas" not in deployments[spec["scaleTargetRef"]["name"]]["spec"]


# --- The health endpoint on a real consumer ----------------------------------------------


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_running_bridge_serves_health_and_metrics_on_its_metrics_port(kafka_topics, process_env):
    port = free_port()
    with started_processes(process_env) as start:
        start(processes.bridge(PYTHON, "--metrics-port", str(port)), name="bridge-health")
        base = f"http://127.0.0.1:{port}"
        answer = requests.get(f"{base}/healthz", timeout=10)
        assert answer.status_code == 200, answer.text
        assert answer.json()["status"] == "ok"
        assert "inferencehub_batch_size" in requests.get(f"{base}/metrics", timeout=10).text
        assert requests.get(f"{base}/healthz-typo", timeout=10).status_code == 404


def wait_for_health(url: str, status: int, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        answer = requests.get(url, timeout=10)
        if answer.status_code == status or time.monotonic() > deadline:
            assert answer.status_code == status, answer.text
            return answer.json()
        time.sleep(0.2)


@pytest.mark.e2e
def test_health_fails_while_the_consumer_loop_is_stuck_and_recovers_after(settings):
    """A real consumer on a real topic; its handler hangs on the first message."""
    settings.CONSUMER_STALL_SECONDS = 2
    topic = f"test-health-{uuid.uuid4().hex[:8]}"
    admin = admin_client()
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result()
    entered, release, done = threading.Event(), threading.Event(), threading.Event()

    def hanging_handler(batch):
        entered.set()
        release.wait(60)

    consumer = Consumer(consumer_config(f"{topic}-group"))
    consumer.subscribe([topic])
    runner = BatchConsumer(consumer, hanging_handler, max_batch_size=8, max_batch_delay_ms=5)

    def run_until_done():
        while not done.is_set():
            runner.process_one()

    loop = threading.Thread(target=run_until_done)
    server = metrics.serve_metrics(free_port())
    url = f"http://127.0.0.1:{server.server_port}/healthz"
    try:
        loop.start()
        assert wait_for_health(url, 200)["status"] == "ok"

        producer = Producer(producer_config())
        producer.produce(topic, key=b"job", value=b"anything")
        assert producer.flush(10) == 0
        assert entered.wait(60), "the handler never got the message"
        stalled = wait_for_health(url, 503)
        assert stalled["status"] == "stalled"
        assert stalled["seconds_since_poll"] > stalled["limit_seconds"] == 2

        release.set()
        assert wait_for_health(url, 200)["status"] == "ok"
    finally:
        release.set()
        done.set()
        loop.join(30)
        consumer.close()
        server.shutdown()
        server.server_close()
        admin.delete_topics([topic])[topic].result()
