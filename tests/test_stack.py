"""The real services the project starts: MariaDB, Kafka, Redis and a Celery worker."""

import subprocess
import sys
import time
import uuid
from datetime import timedelta

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import NewTopic
from django.conf import settings
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from kafka_wire.config import consumer_config, producer_config
from kafka_wire.runner import BatchConsumer
from kafka_wire.topics import admin_client
from predictions.models import Job
from tests.conftest import REPO
from tests.factories import JobFactory


@pytest.mark.django_db
def test_migrations_apply_on_mariadb():
    assert connection.vendor == "mysql"
    with connection.cursor() as cursor:
        cursor.execute("SELECT VERSION(), @@character_set_database, @@sql_mode")
        version, charset, sql_mode = cursor.fetchone()
    assert "MariaDB" in version
    assert charset == "utf8mb4"
    assert "STRICT_TRANS_TABLES" in sql_mode
    executor = MigrationExecutor(connection)
    assert executor.migration_plan(executor.loader.graph.leaf_nodes()) == []
    assert "predictions_job" in connection.introspection.table_names()


@pytest.mark.services
def test_message_produced_to_a_topic_is_consumed_back():
    topic = f"test-roundtrip-{uuid.uuid4().hex[:8]}"
    admin = admin_client()
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(30)
    try:
        producer = Producer(producer_config())
        producer.produce(topic, key=b"k", value=b"hello kafka")
        assert producer.flush(30) == 0
        consumer = Consumer(consumer_config(f"{topic}-group"))
        consumer.subscribe([topic])
        deadline = time.monotonic() + 30
        message = None
        while message is None and time.monotonic() < deadline:
            message = consumer.poll(1.0)
        consumer.close()
        assert message is not None and message.error() is None
        assert (message.key(), message.value()) == (b"k", b"hello kafka")
    finally:
        admin.delete_topics([topic])


def committed_offset(group: str, topic: str) -> int:
    """The group's committed offset of the topic's one partition (-1001: none)."""
    from confluent_kafka import TopicPartition

    reader = Consumer(consumer_config(group))
    try:
        return reader.committed([TopicPartition(topic, 0)], timeout=30)[0].offset
    finally:
        reader.close()


@pytest.mark.services
def test_runner_commits_handled_batches_and_never_a_failed_one():
    topic = f"test-commits-{uuid.uuid4().hex[:8]}"
    group = f"{topic}-group"
    admin = admin_client()
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(30)
    try:
        producer = Producer(producer_config())
        for index in range(6):
            producer.produce(topic, key=b"k", value=str(index).encode())
        assert producer.flush(30) == 0
        handled = []

        def handler(batch):
            values = [int(message.value()) for message in batch]
            if 4 in values:
                runner.request_shutdown(None, None)
                raise RuntimeError("this batch fails and must be redone")
            handled.extend(values)

        consumer = Consumer(consumer_config(group))
        consumer.subscribe([topic])
        runner = BatchConsumer(
            consumer, handler, max_batch_size=2, max_batch_delay_ms=50, retry_backoff_s=0.0
        )
        deadline = time.monotonic() + 60
        while not runner.shutdown and time.monotonic() < deadline:
            runner.process_one()
        # What interval commits leave to close(): the offsets stored since the last commit.
        consumer.close()
        assert handled == [0, 1, 2, 3]
        assert committed_offset(group, topic) == 4
    finally:
        admin.delete_topics([topic])


@pytest.mark.django_db(transaction=True)
def test_celery_task_runs_on_a_real_worker_through_redis(celery_worker, django_user_model):
    from predictions.tasks import sweep_stuck_jobs

    old = timezone.now() - timedelta(seconds=settings.JOB_TIMEOUT_SECONDS + 60)
    job = JobFactory(attempts=settings.JOB_MAX_ATTEMPTS, attempt_started_at=old, admitted_at=old)
    result = sweep_stuck_jobs.apply_async(ignore_result=False)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job.refresh_from_db()
        if job.status == Job.Status.FAILED:
            break
        time.sleep(0.2)
    assert job.status == Job.Status.FAILED, celery_worker.log_path.read_text()[-2000:]
    assert "no result after" in job.error
    assert result.id


def test_healthz_answers_without_dependencies(client):
    assert client.get("/healthz").json() == {"status": "ok"}


@pytest.mark.parametrize(
    ("variable", "value"),
    [("UPLOAD_MAX_BYTES", "ten"), ("DATABASE_URL", "nonsense"), ("DJANGO_DEBUG", "maybe")],
)
def test_malformed_setting_stops_start_up_naming_it(variable, value):
    env = {
        "PATH": "/usr/bin:/bin",
        variable: value,
        "DJANGO_SETTINGS_MODULE": "inferencehub.settings",
    }
    completed = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert completed.returncode != 0
    assert variable in completed.stderr


def test_secret_key_is_required_when_debug_is_off():
    env = {"PATH": "/usr/bin:/bin", "DJANGO_DEBUG": "false"}
    completed = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert completed.returncode != 0
    assert "DJANGO_SECRET_KEY" in completed.stderr
