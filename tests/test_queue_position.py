"""Where a waiting job and a batch stand: the job's own answer and the batch's detail say
how many jobs the dispatcher admits before them, and about when, from the model version's
completion rate (predictions/selectors.py job_queue, batch_queue)."""

from datetime import timedelta

import pytest
import schemathesis
from django.utils import timezone

from predictions import pipeline
from predictions.models import Job
from registry.services import register_version
from tests.factories import BatchFactory, JobFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def version():
    """A model version of its own: no job of another test in flight for it, and no owner
    served last remembered for it."""
    return register_version(name="queue-colours", source="keras", input_size=64, classes=3)


@pytest.fixture
def owners():
    """A, with 5 jobs waiting, and B, with 1 (A's id is lower: its turn comes first)."""
    return UserFactory(), UserFactory()


def job_answer(client, user, job: Job) -> dict:
    client.force_login(user)
    response = client.get(f"/api/jobs/{job.pk}/")
    assert response.status_code == 200
    return response.json()


def test_a_waiting_jobs_answer_says_how_many_jobs_the_dispatcher_admits_before_it(
    client, version, owners, settings
):
    a, b = owners
    a_jobs = [JobFactory(owner=a, routed_to=version) for _ in range(5)]
    b_job = JobFactory(owner=b, routed_to=version)
    queue = job_answer(client, b, b_job)["queue"]
    # Nothing of this version finished lately: no estimate.
    assert queue == {"position": 1, "estimated_start_s": None}
    # A's last job: A's 4 older ones, and B's one in the first round.
    assert job_answer(client, a, a_jobs[-1])["queue"]["position"] == 5
    # The dispatcher agrees: with 1 place it admits a job of A's; with a second, B's.
    settings.DISPATCH_IN_FLIGHT_PER_MODEL = 1
    assert pipeline.dispatch_jobs() == 1
    b_job.refresh_from_db()
    assert b_job.admitted_at is None
    settings.DISPATCH_IN_FLIGHT_PER_MODEL = 2
    assert pipeline.dispatch_jobs() == 1
    b_job.refresh_from_db()
    assert b_job.admitted_at is not None
    # Admitted, it no longer waits for its turn.
    assert job_answer(client, b, b_job)["queue"] is None


def test_the_estimate_comes_from_the_versions_jobs_finished_in_the_last_minute(
    client, version, owners
):
    a, b = owners
    for _ in range(5):
        JobFactory(owner=a, routed_to=version)
    b_job = JobFactory(owner=b, routed_to=version)
    now = timezone.now()
    done = {"status": Job.Status.SUCCEEDED, "routed_to": version}
    for _ in range(30):
        JobFactory(finished_at=now - timedelta(seconds=10), **done)
    # Neither an older finished job nor another version's counts.
    JobFactory(finished_at=now - timedelta(minutes=2), **done)
    other = register_version(name="queue-other", source="keras", input_size=64, classes=3)
    JobFactory(status=Job.Status.SUCCEEDED, routed_to=other, finished_at=now)
    # 30 a minute, one every 2 s: A's first, then B's own place.
    assert job_answer(client, b, b_job)["queue"] == {"position": 1, "estimated_start_s": 4}


def test_only_a_waiting_jobs_own_answer_has_a_queue(client, version, owners):
    a, b = owners
    waiting = JobFactory(owner=b, routed_to=version)
    finished = JobFactory(
        owner=b, routed_to=version, status=Job.Status.SUCCEEDED, finished_at=timezone.now()
    )
    failed = JobFactory(owner=b, routed_to=version, status=Job.Status.FAILED, error="bad")
    assert job_answer(client, b, waiting)["queue"] == {"position": 0, "estimated_start_s": 60}
    assert job_answer(client, b, finished)["queue"] is None
    assert job_answer(client, b, failed)["queue"] is None
    # A list is not worth a few queries per job: there it is null.
    listed = client.get("/api/jobs/").json()["results"]
    assert {job["id"]: job["queue"] for job in listed}[str(waiting.pk)] is None


def test_a_batch_detail_says_how_many_of_its_jobs_wait_and_how_many_are_ahead(
    client, version, owners
):
    a, b = owners
    for _ in range(5):
        JobFactory(owner=a, routed_to=version)
    batch = BatchFactory(owner=b)
    jobs = [JobFactory(owner=b, batch=batch, seq=n, routed_to=version) for n in range(3)]
    JobFactory(owner=b, batch=batch, seq=3, routed_to=version, status=Job.Status.SUCCEEDED)
    client.force_login(b)
    detail = client.get(f"/api/batches/{batch.pk}/").json()
    # Its first waiting job comes after A's first: one ahead.
    assert detail["queue"] == {"waiting": 3, "ahead": 1, "estimated_start_s": None}
    # The batch's page says the same.
    assert "3 queued: 1 ahead of them" in client.get(f"/batches/{batch.pk}/").content.decode()
    Job.objects.filter(pk__in=[job.pk for job in jobs]).update(admitted_at=timezone.now())
    assert client.get(f"/api/batches/{batch.pk}/").json()["queue"] is None


@pytest.mark.django_db(transaction=True)
def test_the_answers_with_a_queue_match_the_schema(api, user, version):
    """The live answers of a waiting job and of its batch, queue and estimate filled in,
    conform to the OpenAPI schema."""
    batch = BatchFactory(owner=user)
    job = JobFactory(owner=user, batch=batch, seq=0, routed_to=version)
    JobFactory(routed_to=version, status=Job.Status.SUCCEEDED, finished_at=timezone.now())
    schema = schemathesis.openapi.from_url(f"{api.base_url}/api/schema/?format=json")
    for path, operation in (
        (f"/api/jobs/{job.pk}/", schema["/api/jobs/{id}/"]["GET"]),
        (f"/api/batches/{batch.pk}/", schema["/api/batches/{id}/"]["GET"]),
    ):
        response = api.get(f"{api.base_url}{path}")
        assert response.json()["queue"]["estimated_start_s"] == 60, path
        operation.validate_response(response)
