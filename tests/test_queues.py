"""Celery's two queues: storing results never waits behind preprocessing (issue 21)."""

import time
import uuid

import pytest
from django.conf import settings
from django.test import override_settings
from kombu import Connection

from inferencehub.celery import app as celery_app
from kafka_wire.config import kafka_names
from kafka_wire.contract import ClassScore, InferenceResult, encode_result
from kafka_wire.producer import BatchProducer, new_producer
from kafka_wire.topics import ensure_topics
from predictions.models import Job
from predictions.pipeline import PREPROCESS_TASK
from stack import processes
from stack.harness import PYTHON, unique_celery_hostname
from tests.conftest import started_processes
from tests.factories import JobFactory


def test_each_task_goes_to_the_queue_of_its_worker():
    route = celery_app.amqp.router.route
    queue_of = {
        name: route({}, name)["queue"].name
        for name in (
            PREPROCESS_TASK,
            "predictions.tasks.store_results",
            "predictions.tasks.fail_job",
            "predictions.tasks.sweep_stuck_jobs",
            "webhooks.tasks.deliver",
            "webhooks.tasks.send_due_deliveries",
        )
    }
    assert queue_of == {
        PREPROCESS_TASK: processes.PREPROCESS_QUEUE,
        "predictions.tasks.store_results": processes.RESULTS_QUEUE,
        "predictions.tasks.fail_job": processes.RESULTS_QUEUE,
        "predictions.tasks.sweep_stuck_jobs": processes.RESULTS_QUEUE,
        "webhooks.tasks.deliver": processes.WEBHOOKS_QUEUE,
        "webhooks.tasks.send_due_deliveries": processes.WEBHOOKS_QUEUE,
    }


@pytest.mark.django_db(transaction=True)
def test_a_result_is_stored_while_no_preprocessing_worker_runs(process_env, kafka_topics):
    """A run of its own (topics and Celery keys), with the results worker and the bridge
    but no preprocessing worker: a preprocessing task waits, and a result the bridge
    receives is stored meanwhile."""
    run_id = f"queues-{uuid.uuid4().hex[:8]}"
    topics = kafka_names(f"test-{run_id}")
    with override_settings(**topics):
        ensure_topics()
    env = {**process_env, **topics, "INFERENCEHUB_TEST_RUN_ID": run_id}
    waiting = JobFactory(status=Job.Status.QUEUED)
    submitted = JobFactory(top_k=1, status=Job.Status.SUBMITTED)
    # The preprocessing task, in that run's Redis keys, where no worker takes it.
    run_keys = {"global_keyprefix": f"test-{run_id}:"}
    with Connection(settings.CELERY_BROKER_URL, transport_options=run_keys) as connection:
        celery_app.send_task(PREPROCESS_TASK, args=[[str(waiting.pk)]], connection=connection)

    with started_processes(env) as start:
        start(processes.results_celery(PYTHON, hostname=unique_celery_hostname(run_id)))
        start(processes.bridge(PYTHON), name=f"{run_id}-bridge")
        result = InferenceResult(
            job_id=str(submitted.pk),
            ok=True,
            predictions=[ClassScore(0, "tench", 0.5)],
            worker="test",
            model="resnet50",
            weights="random",
        )
        with override_settings(**topics):
            producer = BatchProducer(new_producer())
            producer.produce(
                topics["KAFKA_RESULTS_TOPIC"],
                key=str(submitted.pk).encode(),
                value=encode_result(result),
            )
            producer.flush_or_raise()
        deadline = time.monotonic() + 90
        while Job.objects.get(pk=submitted.pk).status != Job.Status.SUCCEEDED:
            assert time.monotonic() < deadline, "the result was not stored within 90 s"
            time.sleep(0.2)
    assert list(Job.objects.get(pk=submitted.pk).predictions.values_list("label", flat=True)) == [
        "tench"
    ]
    assert Job.objects.get(pk=waiting.pk).status == Job.Status.QUEUED
