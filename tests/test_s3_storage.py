"""Stored originals in S3-compatible storage, as web and Celery on different hosts share
them: against the stack's S3 server (s3proxy on its file-system backend, started by
`python3 stack/stack.py up s3proxy`)."""

import subprocess
import sys
import uuid
from datetime import timedelta

import boto3
import pytest
import requests
from django.conf import settings
from django.test import override_settings
from django.utils import timezone

from inferencehub.settings import s3_storage
from kafka_wire.config import kafka_names
from kafka_wire.topics import ensure_topics
from predictions import services
from predictions.models import Job
from stack import processes
from stack.harness import PYTHON, unique_celery_hostname
from tests.conftest import DATA, REPO, free_port, started_processes
from tests.factories import JobFactory, UserFactory
from tests.test_pipeline import PHOTOS, upload, wait_until_finished


@pytest.fixture(scope="session")
def s3_env() -> dict[str, str]:
    """The S3 server, started if needed; the settings that store originals in its bucket,
    as the stack wrote them to client.env."""
    started = subprocess.run(
        [sys.executable, str(REPO / "stack" / "stack.py"), "up", "s3proxy"],
        capture_output=True,
        text=True,
    )
    assert started.returncode == 0, started.stdout + started.stderr
    lines = (REPO / ".stack" / "s3proxy" / "client.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def s3_storages(env: dict[str, str]) -> dict:
    """settings.STORAGES with the originals in the bucket these variables name."""
    default = s3_storage(
        bucket=env["AWS_STORAGE_BUCKET_NAME"],
        endpoint_url=env["AWS_S3_ENDPOINT_URL"],
        region_name=env["AWS_S3_REGION_NAME"],
        access_key=env["AWS_ACCESS_KEY_ID"],
        secret_key=env["AWS_SECRET_ACCESS_KEY"],
    )
    return {**settings.STORAGES, "default": default}


def bucket_keys(env: dict[str, str]) -> set[str]:
    client = boto3.client(
        "s3",
        endpoint_url=env["AWS_S3_ENDPOINT_URL"],
        region_name=env["AWS_S3_REGION_NAME"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )
    listing = client.list_objects_v2(Bucket=env["AWS_STORAGE_BUCKET_NAME"])
    return {item["Key"] for item in listing.get("Contents", [])}


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_originals_live_in_s3_from_upload_to_purge_and_delete(
    s3_env, process_env, client, tmp_path
):
    """The web process stores the uploads in the bucket; Celery, with a media folder of its
    own that holds nothing, preprocesses them from there; the original's view, the purge and
    the delete work on the bucket."""
    from rest_framework.authtoken.models import Token

    run_id = f"s3-{uuid.uuid4().hex[:8]}"
    topics = kafka_names(f"test-{run_id}")
    with override_settings(**topics):
        ensure_topics()
    env = {**process_env, **s3_env, **topics, "INFERENCEHUB_TEST_RUN_ID": run_id}
    owner = UserFactory(username="s3-owner")
    api = requests.Session()
    api.headers["Authorization"] = f"Token {Token.objects.create(user=owner).key}"
    port = free_port()
    api.base_url = f"http://127.0.0.1:{port}"
    before = bucket_keys(s3_env)
    celery = processes.celery(PYTHON, hostname=unique_celery_hostname(run_id))
    with started_processes(env) as start:
        start(processes.web(PYTHON, port=port, name="s3-web"),
              MEDIA_ROOT=str(tmp_path / "web-media"))  # fmt: skip
        start(celery, name="s3-celery", MEDIA_ROOT=str(tmp_path / "celery-media"))
        start(processes.worker(PYTHON, "s3-worker"))
        start(processes.bridge(PYTHON), name="s3-bridge")
        jobs = wait_until_finished(upload(api, *PHOTOS, top_k="3"))
    assert [job.status for job in jobs] == ["succeeded"] * len(PHOTOS)
    keys = {job.image.name for job in jobs}
    assert keys <= bucket_keys(s3_env) - before
    assert not any(path.is_file() for path in tmp_path.rglob("*"))

    with override_settings(STORAGES=s3_storages(s3_env)):
        first, second, third = jobs
        client.force_login(owner)
        original = client.get(f"/jobs/{first.pk}/original/")
        assert original.status_code == 200
        assert b"".join(original.streaming_content) == (DATA / first.original_name).read_bytes()
        assert client.get(f"/jobs/{first.pk}/image/480/")["Content-Type"] == "image/jpeg"
        client.force_login(UserFactory(username="s3-stranger"))
        assert client.get(f"/jobs/{first.pk}/original/").status_code == 404
        client.force_login(UserFactory(username="s3-admin", is_staff=True, is_superuser=True))
        assert client.get(f"/jobs/{first.pk}/original/").status_code == 200

        assert client.delete(f"/api/jobs/{second.pk}/").status_code == 204
        assert not Job.objects.filter(pk=second.pk).exists()
        assert second.image.name not in bucket_keys(s3_env)

        purged = services.purge_old_images(
            older_than_days=0, now=timezone.now() + timedelta(seconds=1)
        )
    assert purged == 2
    assert not keys & bucket_keys(s3_env)
    assert set(Job.objects.filter(pk__in=[first.pk, third.pk]).values_list("image", flat=True)) == {
        ""
    }


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("broken", ["endpoint down", "no such bucket"])
def test_an_unreachable_bucket_refuses_the_upload_with_503_and_keeps_nothing(s3_env, api, broken):
    if broken == "endpoint down":
        env = {**s3_env, "AWS_S3_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}
    else:
        env = {**s3_env, "AWS_STORAGE_BUCKET_NAME": f"missing-{uuid.uuid4().hex[:8]}"}
    before = bucket_keys(s3_env)
    with override_settings(STORAGES=s3_storages(env)):
        files = [("image", (name, (DATA / name).read_bytes())) for name in PHOTOS]
        response = api.post(f"{api.base_url}/api/jobs/", files=files)
    assert response.status_code == 503, response.text
    assert "image store is unavailable" in response.text
    assert response.headers["Retry-After"]
    assert not Job.objects.exists()
    assert bucket_keys(s3_env) == before


@pytest.mark.django_db
def test_the_original_and_its_thumbnail_answer_503_while_the_store_is_unreachable(s3_env, client):
    job = JobFactory(image="originals/some-upload")
    client.force_login(job.owner)
    down = {**s3_env, "AWS_S3_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}
    with override_settings(STORAGES=s3_storages(down)):
        for path in (f"/jobs/{job.pk}/original/", f"/jobs/{job.pk}/image/96/"):
            response = client.get(path)
            assert response.status_code == 503, path
            assert response["Retry-After"]
