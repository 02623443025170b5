"""Priority lanes against the real stack (docs/scheduling.md): MariaDB, Redis, Celery,
Kafka, a ResNet50 worker with random weights reading its model version's three lanes,
and the result bridge. And the uploads' priority field: the REST upload and batch, the
seed API, and a 400 naming the field for a priority that is no lane."""

import time

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from kafka_wire.topics import admin_client
from predictions import uploads
from predictions.models import Job, Priority
from registry.models import ModelVersion
from stack import processes
from stack.harness import PYTHON
from tests.conftest import DATA, random_resnet_version, started_processes
from tests.factories import UserFactory
from tests.test_pipeline import wait_until_finished

pytestmark = pytest.mark.django_db(transaction=True)

# A model of this module's own, so that its lanes hold only this module's jobs.
MODEL = "priority-resnet"


def fox() -> SimpleUploadedFile:
    return SimpleUploadedFile("fox.png", (DATA / "fox.png").read_bytes())


def api_as(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


# --- The field ------------------------------------------------------------------------


def test_the_upload_api_refuses_an_unknown_priority_naming_the_field():
    client = api_as(UserFactory())
    answer = client.post("/api/jobs/", {"image": fox(), "priority": "urgent"}, format="multipart")
    assert answer.status_code == 400, answer.content
    assert answer.json() == {"error": "priority must be one of high, normal, low, got 'urgent'"}
    answer = client.post("/api/batches/", {"priority": "urgent"}, format="json")
    assert answer.status_code == 400, answer.content
    assert "priority" in answer.json()["error"]
    assert not Job.objects.exists()


def test_an_upload_into_a_batch_takes_the_batchs_priority_unless_it_names_one():
    client = api_as(UserFactory())
    batch = client.post("/api/batches/", {"priority": "high"}, format="json").json()
    assert batch["priority"] == Priority.HIGH

    def upload(**fields) -> dict:
        answer = client.post(
            "/api/jobs/", {"image": fox(), "batch": batch["id"], **fields}, format="multipart"
        )
        assert answer.status_code == 202, answer.content
        return answer.json()

    assert upload()["priority"] == Priority.HIGH
    assert upload(priority="low")["priority"] == Priority.LOW
    assert client.get(f"/api/batches/{batch['id']}/").json()["priority"] == Priority.HIGH


def test_the_seed_apis_image_takes_an_optional_priority_and_refuses_an_unknown_one():
    seed = APIClient()
    batch = seed.post("/register").json()["uuid"]

    def image(seq: int, **fields):
        return seed.post(
            "/image",
            {"uuid": batch, "seq": seq, "topk": 3, "payload": fox(), **fields},
            format="multipart",
        )

    assert image(0, priority="high").status_code == 200
    assert image(1).status_code == 200
    refused = image(2, priority="asap")
    assert refused.status_code == 400
    assert refused.json()["error"].startswith("priority")
    assert dict(Job.objects.values_list("seq", "priority")) == {0: "high", 1: "normal"}


# --- Through the pipeline -------------------------------------------------------------


@pytest.fixture
def version(kafka_topics) -> ModelVersion:
    return random_resnet_version(MODEL)


def test_the_preflight_creates_a_requests_topic_per_lane(version):
    base = version.route.requests_topic
    lanes = {base, f"{base}-high", f"{base}-low"}
    # The broker lists a created topic a moment after create_topics has answered for it.
    deadline = time.monotonic() + 10
    while not lanes <= set(admin_client().list_topics(timeout=10).topics):
        assert time.monotonic() < deadline, f"not all of {sorted(lanes)} listed"
        time.sleep(0.2)


@pytest.fixture
def pipeline_of_model(process_env, version, celery_worker):
    """A worker of the version, in batches of 8, and a bridge of this test's own."""
    with started_processes(process_env) as start:
        start(processes.bridge(PYTHON), name="priority-bridge")
        start(
            processes.worker(PYTHON, "priority-worker", "--model", f"{MODEL}:1", *BATCH_OF_8),
            name="priority-worker",
        )
        yield


BATCH_OF_8 = ("--max-batch-size", "8")
BACKLOG = 200


def upload(owner, count: int, priority: str) -> list[Job]:
    jobs = []
    for start in range(0, count, 50):
        files = [fox() for _ in range(min(50, count - start))]
        jobs += uploads.upload_images(
            uploader=owner, files=files, top_k=1, model=MODEL, priority=priority
        ).jobs
    return jobs


def test_a_high_priority_upload_finishes_first_behind_a_backlog_of_low_ones(pipeline_of_model):
    owner = UserFactory()
    low = upload(owner, BACKLOG, Priority.LOW)
    # The backlog is under way: requests of it wait in Kafka, up to the cap in flight.
    deadline = time.monotonic() + 120
    while Job.objects.filter(pk__in=[j.pk for j in low], status="succeeded").count() < 10:
        assert time.monotonic() < deadline, "the low backlog did not start"
        time.sleep(0.1)

    # Same owner: without lanes, the high job would wait behind the whole backlog.
    [high] = upload(owner, 1, Priority.HIGH)
    [high] = wait_until_finished([high.pk], timeout=120)
    assert high.status == Job.Status.SUCCEEDED

    backlog = Job.objects.filter(pk__in=[job.pk for job in low])
    after_it = backlog.exclude(status="succeeded", finished_at__lte=high.finished_at)
    latency_s = (high.finished_at - high.created_at).total_seconds()
    assert after_it.count() > BACKLOG // 2, f"high job took {latency_s:.2f} s"
    # Passed low requests already admitted before it, waiting in Kafka or in preprocessing.
    assert after_it.filter(admitted_at__lt=high.created_at).exists(), (
        f"high job took {latency_s:.2f} s"
    )
    wait_until_finished([job.pk for job in low], timeout=180)
    assert set(backlog.values_list("status", flat=True)) == {Job.Status.SUCCEEDED}
