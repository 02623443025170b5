"""Being staff is not enough to read, retry or delete other users' jobs: the API and the
pages ask the same model permissions as the admin (issue 22, item 4)."""

import pytest
from rest_framework.test import APIClient

from predictions.models import Job
from tests.factories import BatchFactory, JobFactory, UserFactory, staff_user

pytestmark = pytest.mark.django_db


def signed_in(user) -> APIClient:
    client = APIClient()
    client.force_login(user)  # a session: it reaches the API and the pages alike
    return client


@pytest.fixture
def alices():
    alice = UserFactory(username="alice")
    batch = BatchFactory(owner=alice)
    job = JobFactory(owner=alice, batch=batch, seq=0, status=Job.Status.FAILED)
    return job, batch


def object_urls(job, batch) -> list[str]:
    return [
        f"/api/jobs/{job.pk}/",
        f"/api/batches/{batch.pk}/",
        f"/api/batches/{batch.pk}/export/?format=csv",
        f"/jobs/{job.pk}/",
        f"/jobs/{job.pk}/original/",
        f"/jobs/{job.pk}/image/96/",
        f"/batches/{batch.pk}/",
    ]


def test_staff_without_permissions_get_nothing_of_another_users(alices):
    job, batch = alices
    client = signed_in(staff_user())
    assert client.get("/api/jobs/").json()["count"] == 0
    assert client.get("/api/batches/").json()["count"] == 0
    refused = client.get("/api/jobs/", {"owner": "alice"})
    assert refused.status_code == 400 and "permission to view jobs" in refused.json()["error"]
    for url in object_urls(job, batch):
        assert client.get(url).status_code == 404, url
    assert client.delete(f"/api/jobs/{job.pk}/").status_code == 404
    assert client.post(f"/api/jobs/{job.pk}/retry/").status_code == 404
    assert client.post(f"/jobs/{job.pk}/retry/").status_code == 404
    assert Job.objects.get(pk=job.pk).attempts == job.attempts


def test_the_view_permission_reads_but_neither_retries_nor_deletes(alices):
    job, batch = alices
    client = signed_in(staff_user("view_job", "view_batch"))
    assert client.get("/api/jobs/", {"owner": "alice"}).json()["count"] == 1
    assert client.get("/api/batches/").json()["count"] == 1
    for url in object_urls(job, batch)[:4]:
        assert client.get(url).status_code == 200, url
    deleted = client.delete(f"/api/jobs/{job.pk}/")
    assert deleted.status_code == 403 and "not delete" in deleted.json()["error"]
    retried = client.post(f"/api/jobs/{job.pk}/retry/")
    assert retried.status_code == 403 and "not retry" in retried.json()["error"]
    assert client.post(f"/jobs/{job.pk}/retry/").status_code == 404
    assert b"Try again" not in client.get(f"/jobs/{job.pk}/").content
    assert Job.objects.get(pk=job.pk).status == Job.Status.FAILED


def test_viewing_another_users_batch_takes_the_view_permission_on_its_jobs_too(alices):
    job, batch = alices
    client = signed_in(staff_user("view_batch"))
    assert client.get(f"/api/batches/{batch.pk}/").status_code == 404
    assert client.get(f"/api/batches/{batch.pk}/export/").status_code == 404


def test_the_change_and_delete_permissions_retry_and_delete(alices):
    job, _ = alices
    client = signed_in(staff_user("change_job", "delete_job"))
    assert client.get(f"/api/jobs/{job.pk}/").status_code == 200  # change includes view
    assert client.post(f"/api/jobs/{job.pk}/retry/").status_code == 202
    assert client.delete(f"/api/jobs/{job.pk}/").status_code == 204
    assert not Job.objects.filter(pk=job.pk).exists()


def test_an_inactive_or_non_staff_user_holding_permissions_gets_nothing(alices):
    job, _ = alices
    for user in (
        staff_user("view_job", "delete_job", is_active=False),
        staff_user("view_job", "delete_job", is_staff=False),
    ):
        client = APIClient()
        client.force_authenticate(user)
        assert client.get(f"/api/jobs/{job.pk}/").status_code == 404
        assert client.delete(f"/api/jobs/{job.pk}/").status_code == 404
