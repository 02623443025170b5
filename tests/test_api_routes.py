"""The API's paths answer with and without their trailing slash."""

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from predictions.models import Job
from tests.conftest import DATA
from tests.factories import JobFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def client():
    client = APIClient()
    client.force_authenticate(UserFactory())
    return client


def test_uploading_and_deleting_without_the_trailing_slash_work(client):
    photo = SimpleUploadedFile("fox.png", (DATA / "fox.png").read_bytes())
    uploaded = client.post("/api/jobs", {"image": photo}, format="multipart")
    assert uploaded.status_code == 202, uploaded.content
    job = uploaded.json()
    # The URLs the API hands out keep their one, slashed form.
    assert job["url"].endswith(f"/api/jobs/{job['id']}/")
    assert client.get(f"/api/jobs/{job['id']}").json()["id"] == job["id"]
    assert client.delete(f"/api/jobs/{job['id']}").status_code == 204
    assert not Job.objects.exists()


def test_every_api_action_answers_without_the_trailing_slash(client):
    failed = JobFactory(owner=client.handler._force_user, status=Job.Status.FAILED)
    assert client.get("/api/jobs").status_code == 200
    assert client.post(f"/api/jobs/{failed.pk}/retry").status_code == 202
    batch = client.post("/api/batches")
    assert batch.status_code == 201
    assert client.get("/api/batches").json()["count"] == 1
    assert client.get(f"/api/batches/{batch.json()['id']}").status_code == 200


def test_the_schema_lists_each_path_once_with_its_slash(client):
    paths = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    api_paths = [path for path in paths["paths"] if path.startswith("/api/")]
    assert "/api/jobs/" in api_paths
    assert all(path.endswith("/") for path in api_paths), api_paths
