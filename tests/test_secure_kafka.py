"""Secured Kafka: the stack's broker with a SASL_SSL listener (and a client-certificate-only
SSL one), started by `python3 stack/stack.py up kafka-secure`; every client of the project
reaches it through kafka_wire.config, and a refused login or an untrusted certificate is
reported naming the setting to fix."""

import importlib.util
import os
import subprocess
import sys
import time
import uuid

import pytest
import requests
from confluent_kafka import Consumer, Producer
from django.test import override_settings

from kafka_wire.config import consumer_config, kafka_names, producer_config, security_config
from kafka_wire.topics import KafkaRefused, KafkaUnreachable, check_reachable, ensure_topics
from stack import processes
from stack.harness import PYTHON, manage, unique_celery_hostname
from tests.conftest import REPO, free_port, started_processes
from tests.test_pipeline import PHOTOS, upload, wait_until_finished

SECURE_STACK_DIR = REPO / ".stack" / "kafka-secure"


def load_certs_module():
    """stack/certs.py, which makes the stack's certificates (standard library only)."""
    spec = importlib.util.spec_from_file_location("stack_certs", REPO / "stack" / "certs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def secure_kafka() -> dict[str, str]:
    """The secured broker, started if needed; the settings of a client of its SASL_SSL
    listener, as the stack wrote them to client.env."""
    started = subprocess.run(
        [sys.executable, str(REPO / "stack" / "stack.py"), "up", "kafka-secure"],
        capture_output=True,
        text=True,
    )
    assert started.returncode == 0, started.stdout + started.stderr
    lines = (SECURE_STACK_DIR / "client.env").read_text().splitlines()
    env = dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))
    # The broker's first TLS handshakes run cold (JIT): warm it up, so the tests' short
    # timeouts (/readyz's 2 s) measure refusals, not a cold start.
    with as_settings(env):
        check_reachable(60.0)
    return env


def as_settings(env: dict[str, str]) -> override_settings:
    return override_settings(**env)


def mutual_tls_only(secure_kafka: dict[str, str]) -> dict[str, str]:
    """The SSL listener (next port): the client proves who it is by its certificate alone."""
    host, port = secure_kafka["KAFKA_BOOTSTRAP_SERVERS"].rsplit(":", 1)
    return {
        **secure_kafka,
        "KAFKA_BOOTSTRAP_SERVERS": f"{host}:{int(port) + 1}",
        "KAFKA_SECURITY_PROTOCOL": "SSL",
        "KAFKA_SASL_USERNAME": "",
        "KAFKA_SASL_PASSWORD": "",
    }


def test_every_client_config_carries_the_security_settings():
    secured = {
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "PLAIN",
        "KAFKA_SASL_USERNAME": "svc",
        "KAFKA_SASL_PASSWORD": "s3cret",
        "KAFKA_SSL_CA_LOCATION": "/ca.pem",
        "KAFKA_SSL_CERTIFICATE_LOCATION": "",
        "KAFKA_SSL_KEY_LOCATION": "",
    }
    expected = {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "PLAIN",
        "sasl.username": "svc",
        "sasl.password": "s3cret",
        "ssl.ca.location": "/ca.pem",
    }
    with override_settings(**secured):
        assert security_config() == expected
        for config in (producer_config(), consumer_config("g")):
            assert expected.items() <= config.items()
    with override_settings(KAFKA_SECURITY_PROTOCOL="PLAINTEXT"):
        assert security_config() == {"security.protocol": "PLAINTEXT"}


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"KAFKA_SECURITY_PROTOCOL": "SASL"}, "KAFKA_SECURITY_PROTOCOL"),
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "KAFKA_SASL_USERNAME"),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_USERNAME": "u"},
            "KAFKA_SASL_PASSWORD",
        ),
        ({"KAFKA_SASL_MECHANISM": "GSSAPI"}, "KAFKA_SASL_MECHANISM"),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CA_LOCATION": "/nonexistent/ca.pem"},
            "KAFKA_SSL_CA_LOCATION",
        ),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CERTIFICATE_LOCATION": "/etc/hostname"},
            "KAFKA_SSL_KEY_LOCATION",
        ),
        ({"KAFKA_SASL_USERNAME": "u", "KAFKA_SASL_PASSWORD": "p"}, "KAFKA_SECURITY_PROTOCOL"),
    ],
)
def test_malformed_security_settings_stop_start_up_naming_the_setting(env, named):
    result = subprocess.run(
        [sys.executable, "-c", "import inferencehub.settings"],
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and named in result.stderr, result.stderr


@pytest.mark.services
def test_messages_go_round_with_scram_plain_and_certificate_only_logins(secure_kafka):
    plain_login = {**secure_kafka, "KAFKA_SASL_MECHANISM": "PLAIN"}
    for env in (secure_kafka, plain_login, mutual_tls_only(secure_kafka)):
        topics = kafka_names(f"test-secure-{uuid.uuid4().hex[:8]}")
        topic = topics["KAFKA_REQUESTS_TOPIC"]
        with as_settings({**env, **topics}):
            ensure_topics()
            producer = Producer(producer_config())
            producer.produce(topic, key=b"k", value=b"over TLS")
            assert producer.flush(30) == 0
            consumer = Consumer(consumer_config(f"{topic}-group"))
            consumer.subscribe([topic])
            message, deadline = None, time.monotonic() + 30
            while message is None and time.monotonic() < deadline:
                message = consumer.poll(1.0)
            consumer.close()
        assert message is not None and message.error() is None
        assert message.value() == b"over TLS"


def wrong_password(secure_kafka):
    return {**secure_kafka, "KAFKA_SASL_PASSWORD": "not-the-password"}


def other_authority(secure_kafka, tmp_path):
    _key, cert = load_certs_module().make_ca(tmp_path, "other-ca")
    return {**secure_kafka, "KAFKA_SSL_CA_LOCATION": str(cert)}


def no_client_certificate(secure_kafka, _tmp_path):
    return {**secure_kafka, "KAFKA_SSL_CERTIFICATE_LOCATION": "", "KAFKA_SSL_KEY_LOCATION": ""}


REFUSALS = [
    (lambda env, _tmp: wrong_password(env), "KAFKA_SASL_PASSWORD"),
    (other_authority, "KAFKA_SSL_CA_LOCATION"),
    (no_client_certificate, "KAFKA_SSL_CERTIFICATE_LOCATION"),
]


@pytest.mark.services
@pytest.mark.parametrize(("make_env", "named"), REFUSALS, ids=["password", "ca", "client-cert"])
def test_a_refused_connection_is_reported_naming_the_setting(
    secure_kafka, tmp_path, make_env, named
):
    with as_settings(make_env(secure_kafka, tmp_path)), pytest.raises(KafkaRefused) as error:
        check_reachable(5.0)
    assert named in str(error.value)


def test_a_broker_that_is_down_is_unreachable_but_not_a_refusal():
    """Workers stop at start only when refused; a broker that is down may come back."""
    down = as_settings({"KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}"})
    with down, pytest.raises(KafkaUnreachable) as error:
        check_reachable(2.0)
    assert not isinstance(error.value, KafkaRefused)
    assert "KAFKA_BOOTSTRAP_SERVERS" in str(error.value)


@pytest.mark.services
@pytest.mark.parametrize(("make_env", "named"), REFUSALS[:2], ids=["password", "ca"])
def test_a_worker_refused_by_the_broker_stops_at_start_naming_the_setting(
    secure_kafka, tmp_path, make_env, named
):
    result = subprocess.run(
        manage("run_worker"),
        cwd=REPO,
        env={**os.environ, **make_env(secure_kafka, tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "CommandError" in result.stderr and named in result.stderr, result.stderr[-2000:]
    # It stopped before loading the model.
    assert "RANDOM WEIGHTS" not in result.stderr


@pytest.mark.django_db
@pytest.mark.parametrize(("make_env", "named"), REFUSALS[:2], ids=["password", "ca"])
def test_readyz_reports_kafka_failing_with_the_reason(
    client, secure_kafka, tmp_path, make_env, named
):
    with as_settings(secure_kafka):
        healthy = client.get("/readyz")
    assert healthy.status_code == 200, healthy.json()
    with as_settings(make_env(secure_kafka, tmp_path)):
        response = client.get("/readyz")
    assert response.status_code == 503
    kafka = response.json()["services"]["kafka"]
    assert kafka["ok"] is False and named in kafka["error"], kafka


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_uploads_are_classified_through_the_sasl_ssl_broker(
    secure_kafka, process_env, django_user_model
):
    """Web, Celery, two workers and the bridge all speak SASL_SSL with client certificates;
    their own Celery queue and topics keep the rest of the suite's processes out."""
    from rest_framework.authtoken.models import Token

    run_id = f"secure-{uuid.uuid4().hex[:8]}"
    topics = kafka_names(f"test-{run_id}")
    with as_settings({**secure_kafka, **topics}):
        ensure_topics()
    env = {**process_env, **secure_kafka, **topics, "INFERENCEHUB_TEST_RUN_ID": run_id}
    port = free_port()
    user = django_user_model.objects.create_user("secure-alice", password="alice-password")
    api = requests.Session()
    api.headers["Authorization"] = f"Token {Token.objects.create(user=user).key}"
    api.base_url = f"http://127.0.0.1:{port}"
    celery = processes.celery(PYTHON, hostname=unique_celery_hostname(run_id))
    with started_processes(env) as start:
        start(celery, name="secure-celery")
        for name in ("secure-worker1", "secure-worker2"):
            start(processes.worker(PYTHON, name))
        start(processes.bridge(PYTHON), name="secure-bridge")
        start(processes.web(PYTHON, port=port, name="secure-web"))
        jobs = wait_until_finished(upload(api, *PHOTOS, top_k="3"))
    assert [job.status for job in jobs] == ["succeeded"] * len(PHOTOS)
    assert all(job.predictions.count() == 3 for job in jobs)
