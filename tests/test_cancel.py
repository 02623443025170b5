"""Cancelling and deadlines against the real stack: MariaDB, Redis, Celery, Kafka, a
ResNet50 worker with random weights and the result bridge (predictions/services.py,
kafka_wire/cancellations.py, workers/worker.py)."""

import time
import uuid
from datetime import timedelta

import pytest
from celery import current_app
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import DatabaseError
from django.utils import timezone
from rest_framework.test import APIClient

from kafka_wire.cancellations import CancellationReader, publish_cancellations
from kafka_wire.config import client_config
from kafka_wire.contract import ClassScore, InferenceResult, encode_result
from kafka_wire.topics import group_states
from predictions import pipeline, services, uploads
from predictions.models import Job
from registry.models import ModelVersion
from stack import processes
from stack.harness import PYTHON
from tests.conftest import DATA, random_resnet_version, started_processes
from tests.factories import BatchFactory, JobFactory, UserFactory
from tests.test_pipeline import make_job, produce, wait_until_finished

pytestmark = pytest.mark.django_db(transaction=True)

# A model of this module's own, so that its requests topic holds only this module's jobs.
MODEL = "cancel-resnet"


@pytest.fixture(scope="module")
def bridge(kafka_topics, celery_worker, start_process):
    return start_process(processes.bridge(PYTHON), name="cancel-bridge")


@pytest.fixture
def version(kafka_topics) -> ModelVersion:
    return random_resnet_version(MODEL)


@pytest.fixture
def start_worker(process_env):
    """start_worker() starts a worker of the version and waits until it consumes (that is,
    until it has read the cancellations already sent); stopped when the test ends."""
    with started_processes(process_env) as start:
        yield lambda: start(
            processes.worker(PYTHON, "cancel-worker", "--model", f"{MODEL}:1"),
            name="cancel-worker",
        )


def api_as(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def upload(owner, count: int = 1, **fields) -> list[Job]:
    files = [SimpleUploadedFile("fox.png", (DATA / "fox.png").read_bytes()) for _ in range(count)]
    return uploads.upload_images(uploader=owner, files=files, top_k=3, model=MODEL, **fields).jobs


def wait_for_status(job_ids, status: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        statuses = set(Job.objects.filter(pk__in=job_ids).values_list("status", flat=True))
        if statuses == {status}:
            return
        time.sleep(0.2)
    raise AssertionError(f"jobs not {status} within {timeout}s: {statuses}")


def keys_on(topic: str, job_ids) -> set[str]:
    """Which of the jobs have a message on the topic, read from its start to its end now."""
    wanted = {str(job_id) for job_id in job_ids}
    consumer = Consumer(client_config(**{"group.id": f"test-scan-{uuid.uuid4().hex[:8]}"}))
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {}
        for number in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, number), timeout=10)
            if high > low:
                ends[number] = high
        consumer.assign([TopicPartition(topic, number, OFFSET_BEGINNING) for number in ends])
        found = set()
        deadline = time.monotonic() + 30
        while ends and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None or message.error() is not None:
                continue
            if (key := message.key().decode()) in wanted:
                found.add(key)
            if message.offset() + 1 >= ends.get(message.partition(), 0):
                ends.pop(message.partition(), None)
        assert not ends, f"partitions not read to their end: {ends}"
        return found
    finally:
        consumer.close()


def wait_until_read(version: ModelVersion, timeout: float = 60) -> None:
    """Until the version's workers have committed every request on its topic."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if group_states([version.route])[version.route].lag == 0:
            return
        time.sleep(0.5)
    raise AssertionError(f"the workers of {version} still lag after {timeout}s")


# --- The API --------------------------------------------------------------------------


def test_the_api_cancels_ones_own_job_and_answers_with_it():
    job = JobFactory()
    answer = api_as(job.owner).post(f"/api/jobs/{job.pk}/cancel/")
    assert answer.status_code == 200
    assert answer.json()["status"] == "cancelled"
    assert answer.json()["finished_at"] is not None


def test_a_committed_cancel_is_told_to_the_workers_and_answered_even_if_dispatching_fails(
    monkeypatch,
):
    happened = []
    monkeypatch.setattr(
        "predictions.services.publish_cancellations", lambda topic, ids: happened.append(ids)
    )

    def dispatch_jobs():
        happened.append("dispatch")
        raise DatabaseError("(2006, 'Server has gone away')")

    monkeypatch.setattr("predictions.pipeline.dispatch_jobs", dispatch_jobs)
    job = JobFactory(status=Job.Status.SUBMITTED, admitted_at=timezone.now())
    answer = api_as(job.owner).post(f"/api/jobs/{job.pk}/cancel/")
    assert answer.status_code == 200
    # Told before anything else: until the workers hear of it, its request may be inferred.
    assert happened == [[str(job.pk)], "dispatch"]
    job.refresh_from_db()
    assert job.status == Job.Status.CANCELLED


def test_the_api_answers_409_in_the_error_shape_for_a_finished_job():
    job = JobFactory(status=Job.Status.SUCCEEDED)
    answer = api_as(job.owner).post(f"/api/jobs/{job.pk}/cancel/")
    assert answer.status_code == 409
    assert answer.json() == {
        "error": "only an unfinished job can be cancelled; this one is succeeded"
    }


def test_the_api_answers_404_for_cancelling_another_users_job_or_batch():
    job = JobFactory(batch=BatchFactory())
    stranger = api_as(UserFactory())
    assert stranger.post(f"/api/jobs/{job.pk}/cancel/").status_code == 404
    assert stranger.post(f"/api/batches/{job.batch_id}/cancel/").status_code == 404
    job.refresh_from_db()
    assert job.status == Job.Status.QUEUED


def test_the_api_cancels_a_batch_and_says_how_many_jobs_were_cancelled():
    owner = UserFactory()
    batch = BatchFactory(owner=owner)
    JobFactory(owner=owner, batch=batch, seq=1)
    JobFactory(owner=owner, batch=batch, seq=2, status=Job.Status.FAILED)

    answer = api_as(owner).post(f"/api/batches/{batch.pk}/cancel/")

    assert answer.status_code == 200
    assert answer.json() == {"batch": str(batch.pk), "cancelled": 1}


def test_the_upload_api_refuses_a_bad_deadline_naming_the_field():
    client = api_as(UserFactory())
    image = (DATA / "fox.png").read_bytes()
    for fields, named in [
        ({"deadline": "2001-01-01T00:00:00Z"}, "deadline"),
        ({"deadline": "2100-01-01T00:00:00Z", "timeout_s": 5}, "deadline and timeout_s"),
        ({"timeout_s": 0}, "timeout_s"),
    ]:
        answer = client.post(
            "/api/jobs/",
            {"image": SimpleUploadedFile("fox.png", image), **fields},
            format="multipart",
        )
        assert answer.status_code == 400, answer.content
        assert answer.json()["error"].startswith(named)
    assert not Job.objects.exists()


def test_the_seed_apis_image_takes_an_optional_deadline_and_refuses_a_bad_one():
    seed = APIClient()
    batch = seed.post("/register").json()["uuid"]

    def image(seq: int, **fields):
        payload = SimpleUploadedFile("fox", (DATA / "fox.png").read_bytes())
        return seed.post(
            "/image",
            {"uuid": batch, "seq": seq, "topk": 3, "payload": payload, **fields},
            format="multipart",
        )

    tomorrow = (timezone.now() + timedelta(days=1)).replace(microsecond=0)
    assert image(0, deadline=tomorrow.isoformat()).status_code == 200
    assert image(1).status_code == 200
    refused = image(2, timeout_s="-1")
    assert refused.status_code == 400
    assert refused.json()["error"].startswith("timeout_s")
    deadlines = dict(Job.objects.values_list("seq", "deadline"))
    assert deadlines == {0: tomorrow, 1: None}


def test_a_reader_learns_the_cancellations_sent_before_and_after_it_started(kafka_topics):
    before, after = str(uuid.uuid4()), str(uuid.uuid4())
    topic = settings.KAFKA_CANCELLATIONS_TOPIC
    assert publish_cancellations(topic, [before])
    reader = CancellationReader(topic)
    reader.start()
    try:
        assert reader.caught_up.wait(30)
        assert before in reader.jobs
        assert publish_cancellations(topic, [after])
        deadline = time.monotonic() + 10
        while after not in reader.jobs and time.monotonic() < deadline:
            time.sleep(0.1)
        assert after in reader.jobs
    finally:
        reader.stop()
        reader.join(5)


# --- Through the pipeline -------------------------------------------------------------


def test_a_job_cancelled_before_preprocessing_is_never_handed_to_kafka(
    settings, celery_worker, version
):
    # Nothing admitted by this process's dispatcher: the test admits what it means to.
    settings.DISPATCH_IN_FLIGHT_PER_MODEL = 0
    owner = UserFactory()
    waiting, admitted, control = upload(owner, 3)
    Job.objects.filter(pk__in=[admitted.pk, control.pk]).update(admitted_at=timezone.now())
    client = api_as(owner)
    for job in (waiting, admitted):
        assert client.post(f"/api/jobs/{job.pk}/cancel/").status_code == 200

    # The preprocessing task of the admitted ones, as the dispatcher sends it.
    current_app.send_task(pipeline.PREPROCESS_TASK, args=[[str(admitted.pk), str(control.pk)]])
    wait_for_status([control.pk], Job.Status.SUBMITTED)

    for job in (waiting, admitted):
        job.refresh_from_db()
        assert job.status == Job.Status.CANCELLED
        assert job.preprocessed_at is None and job.submitted_at is None
    assert keys_on(version.route.requests_topic, [waiting.pk, admitted.pk, control.pk]) == {
        str(control.pk)
    }


def test_a_job_cancelled_while_its_request_waits_in_kafka_is_not_inferred(
    bridge, version, start_worker
):
    owner = UserFactory()
    cancelled, wanted = upload(owner, 2)
    # No worker yet: both requests wait in Kafka.
    wait_for_status([cancelled.pk, wanted.pk], Job.Status.SUBMITTED)
    assert api_as(owner).post(f"/api/jobs/{cancelled.pk}/cancel/").status_code == 200

    start_worker()
    (done,) = wait_until_finished([wanted.pk], timeout=120)
    wait_until_read(version)

    assert done.status == Job.Status.SUCCEEDED
    cancelled.refresh_from_db()
    assert cancelled.status == Job.Status.CANCELLED
    assert not cancelled.predictions.exists()
    # The worker dropped the request: no result was ever produced for it.
    assert keys_on(settings.KAFKA_RESULTS_TOPIC, [cancelled.pk, wanted.pk]) == {str(wanted.pk)}


def test_a_result_arriving_after_the_cancel_changes_nothing(bridge):
    cancelled, control = make_job(), make_job()
    services.cancel_job(job=cancelled)
    fox = [ClassScore(class_id=277, label="red fox", score=0.9)]
    for job in (cancelled, control):
        result = InferenceResult(job_id=str(job.pk), ok=True, worker="test", predictions=fox)
        produce(settings.KAFKA_RESULTS_TOPIC, str(job.pk).encode(), encode_result(result))

    wait_until_finished([control.pk], timeout=60)

    cancelled.refresh_from_db()
    assert cancelled.status == Job.Status.CANCELLED
    assert cancelled.worker == "" and cancelled.inferred_at is None
    assert not cancelled.predictions.exists()


def test_a_deadline_that_passes_while_the_request_waits_in_kafka_ends_the_job_expired(
    bridge, version, start_worker
):
    owner = UserFactory()
    (late,) = upload(owner, timeout_s=2)
    (on_time,) = upload(owner)
    wait_for_status([late.pk, on_time.pk], Job.Status.SUBMITTED)
    late.refresh_from_db()
    time.sleep(max(0.0, (late.deadline - timezone.now()).total_seconds()) + 0.5)

    start_worker()
    jobs = {job.pk: job for job in wait_until_finished([late.pk, on_time.pk], timeout=120)}

    assert jobs[on_time.pk].status == Job.Status.SUCCEEDED
    expired = jobs[late.pk]
    assert expired.status == Job.Status.EXPIRED
    assert expired.error.startswith("deadline passed")
    assert not expired.predictions.exists()
