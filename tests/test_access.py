"""Who may see what: users see their own jobs and batches, staff see all, ids are capabilities
only for anonymous uploads."""

import uuid

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from predictions.models import Batch, Job
from tests.conftest import DATA
from tests.factories import BatchFactory, JobFactory, UserFactory, staff_user

pytestmark = pytest.mark.django_db


def client_for(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def test_a_user_lists_only_their_own_jobs_and_batches():
    alice, bob = UserFactory(), UserFactory()
    alices_job, bobs_job = JobFactory(owner=alice), JobFactory(owner=bob)
    BatchFactory(owner=bob)
    client = client_for(alice)
    assert [j["id"] for j in client.get("/api/jobs/").json()["results"]] == [str(alices_job.pk)]
    assert client.get("/api/batches/").json()["count"] == 0
    assert client.get(f"/api/jobs/{bobs_job.pk}/").status_code == 404


def test_a_user_cannot_read_or_delete_another_users_job_or_batch():
    alice, bob = UserFactory(), UserFactory()
    batch = BatchFactory(owner=bob)
    job = JobFactory(owner=bob, batch=batch)
    client = client_for(alice)
    assert client.get(f"/api/jobs/{job.pk}/").status_code == 404
    assert client.delete(f"/api/jobs/{job.pk}/").status_code == 404
    assert client.post(f"/api/jobs/{job.pk}/retry/").status_code == 404
    assert client.get(f"/api/batches/{batch.pk}/").status_code == 404
    # force_authenticate reaches only the API; the pages need a session.
    client.force_login(client.handler._force_user)
    assert client.get(f"/jobs/{job.pk}/").status_code == 404
    assert client.get(f"/batches/{batch.pk}/").status_code == 404
    assert Job.objects.filter(pk=job.pk).exists()


def test_staff_with_the_view_permission_see_every_job():
    JobFactory(owner=UserFactory())
    JobFactory(owner=UserFactory())
    staff = client_for(staff_user("view_job"))
    assert staff.get("/api/jobs/").json()["count"] == 2


def test_the_owner_deletes_a_job_with_its_predictions():
    alice = UserFactory()
    job = JobFactory(owner=alice)
    job.predictions.create(rank=1, class_id=1, label="goldfish", score=0.5)
    assert client_for(alice).delete(f"/api/jobs/{job.pk}/").status_code == 204
    assert not Job.objects.exists()


def test_listing_needs_a_signed_in_user():
    assert APIClient().get("/api/jobs/").status_code in (401, 403)


def test_retrying_needs_a_signed_in_owner_even_for_an_anonymous_job():
    job = JobFactory(owner=None, status=Job.Status.FAILED)
    assert APIClient().post(f"/api/jobs/{job.pk}/retry/").status_code == 401
    assert client_for(UserFactory()).post(f"/api/jobs/{job.pk}/retry/").status_code == 404
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED


def test_an_anonymous_job_is_readable_by_its_id_but_never_listed():
    job = JobFactory(owner=None)
    client = client_for(UserFactory())
    assert client.get(f"/api/jobs/{job.pk}/").status_code == 200
    assert APIClient().get(f"/api/jobs/{job.pk}/").status_code == 200
    assert client.get("/api/jobs/").json()["count"] == 0


def test_list_rejects_an_unknown_status_filter():
    response = client_for(UserFactory()).get("/api/jobs/", {"status": "bogus"})
    assert response.status_code == 400
    assert "status" in response.json()["error"]


def test_a_user_cannot_upload_into_list_or_read_another_users_batch():
    alice, bob = UserFactory(), UserFactory()
    batch = BatchFactory(owner=bob)
    JobFactory(owner=bob, batch=batch)
    client = client_for(alice)
    photo = SimpleUploadedFile("a.png", (DATA / "fox.png").read_bytes())
    uploaded = client.post(
        "/api/jobs/", {"image": photo, "batch": str(batch.pk)}, format="multipart"
    )
    assert uploaded.status_code == 400 and "unknown batch" in uploaded.json()["error"]
    assert client.get("/api/jobs/", {"batch": str(batch.pk)}).json()["count"] == 0
    assert client.get(f"/api/batches/{batch.pk}/").status_code == 404
    assert client.get("/api/batches/").json()["count"] == 0
    assert client_for(bob).get(f"/api/batches/{batch.pk}/").json()["counts"]["queued"] == 1


def finished_seed_job(batch) -> Job:
    job = JobFactory(owner=batch.owner, batch=batch)
    Job.objects.filter(pk=job.pk).update(seq=0, status=Job.Status.SUCCEEDED)
    return job


def seed_image(client: APIClient, batch_id, seq: int = 1, **headers):
    photo = SimpleUploadedFile("fox.png", (DATA / "fox.png").read_bytes())
    return client.post(
        "/image",
        {"uuid": str(batch_id), "seq": seq, "topk": 3, "payload": photo},
        format="multipart",
        headers=headers,
    )


def test_the_seed_api_serves_a_registered_batch_to_whoever_holds_its_uuid_and_no_one_else():
    # A signed-in caller still gets a batch of no one: /register hands out a capability.
    signed_in = APIClient()
    signed_in.force_login(UserFactory())
    batch = Batch.objects.get(pk=signed_in.post("/register").json()["uuid"])
    assert batch.owner is None
    finished_seed_job(batch)
    anonymous = APIClient()
    holder = anonymous.get("/result", {"uuid": str(batch.pk), "seqStart": 0, "seqEnd": 9})
    assert holder.status_code == 200
    assert [item["seq"] for item in holder.json()["items"]] == [0]
    assert seed_image(anonymous, batch.pk).status_code == 200
    assert Job.objects.get(batch=batch, seq=1).owner is None
    for guess in (str(uuid.uuid4()), "1", "../"):
        response = anonymous.get("/result", {"uuid": guess, "seqStart": 0, "seqEnd": 9})
        assert response.status_code == 400
        assert "items" not in response.json()


def test_the_uuid_of_a_users_batch_gives_no_one_else_the_seed_api():
    """Batch ids show in page URLs: holding one must not let anyone act as its owner."""
    owner = UserFactory()
    batch_id = client_for(owner).post("/api/batches/").json()["id"]
    finished_seed_job(Batch.objects.get(pk=batch_id))
    bob = APIClient(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=UserFactory()).key}")
    for outsider in (APIClient(), bob):
        uploaded = seed_image(outsider, batch_id)
        assert uploaded.status_code == 400
        assert f"uuid {batch_id} is not registered" in uploaded.json()["error"]
        read = outsider.get("/result", {"uuid": batch_id, "seqStart": 0, "seqEnd": 9})
        assert read.status_code == 400 and "items" not in read.json()
    assert Job.objects.filter(batch_id=batch_id).count() == 1
    # The capability does not extend to the REST API either.
    assert client_for(UserFactory()).get(f"/api/batches/{batch_id}/").status_code == 404


def test_the_owner_uses_the_seed_api_on_their_batch_with_their_token():
    owner = UserFactory()
    batch_id = client_for(owner).post("/api/batches/").json()["id"]
    finished_seed_job(Batch.objects.get(pk=batch_id))
    token = Token.objects.create(user=owner).key
    client = APIClient(HTTP_AUTHORIZATION=f"Token {token}")
    assert seed_image(client, batch_id).status_code == 200
    assert Job.objects.get(batch_id=batch_id, seq=1).owner == owner
    read = client.get("/result", {"uuid": batch_id, "seqStart": 0, "seqEnd": 9})
    assert [item["seq"] for item in read.json()["items"]] == [0]
    wrong = APIClient(HTTP_AUTHORIZATION="Token not-a-token")
    refused = wrong.get("/result", {"uuid": batch_id, "seqStart": 0, "seqEnd": 9})
    assert refused.status_code == 401 and "token" in refused.json()["error"].lower()


def test_a_session_reaches_its_own_batch_through_the_seed_api_only_with_its_csrf_token():
    owner = UserFactory()
    batch_id = client_for(owner).post("/api/batches/").json()["id"]
    browser = APIClient(enforce_csrf_checks=True)
    browser.force_login(owner)
    refused = seed_image(browser, batch_id)
    assert refused.status_code == 403 and "CSRF" in refused.json()["error"]
    assert not Job.objects.filter(batch_id=batch_id).exists()
