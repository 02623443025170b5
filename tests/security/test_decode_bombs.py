"""Issue 22 item 2 and issue 21 item 4: tiny files that decode to many megapixels are
refused by their headers, never decoded by the web; thumbnails are stored once and read;
the seed API's anonymous uploads follow SEED_API_ANONYMOUS and a per-address throttle."""

import io
import time
from pathlib import Path

import psutil
import pytest
import requests
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.utils import timezone
from PIL import Image
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from common.limits import (
    DECODED_WHOLE_MAX_PIXELS,
    REQUEST_MAX_DECODED_WHOLE_PIXELS,
)
from predictions import pipeline, services, uploads
from predictions.models import Batch, Job
from predictions.storage import THUMBNAIL_SIZES, thumbnail_name
from stack import processes
from tests.conftest import PYTHON, free_port
from tests.factories import UserFactory

DATA = Path(__file__).resolve().parent.parent / "data"


def encoded(image: Image.Image, format: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, format, **options)
    return out.getvalue()


# The issue's file: 1,970 bytes of lossless WebP claiming 7070x7070 = 50 megapixels.
WEBP_BOMB = encoded(Image.new("RGBA", (7070, 7070)), "WEBP", lossless=True)


def stored_files() -> set[Path]:
    root = Path(settings.MEDIA_ROOT)
    return {p for p in root.rglob("*") if p.is_file()} if root.exists() else set()


def upload(client, content: bytes, name: str = "w.webp"):
    file = SimpleUploadedFile(name, content, content_type="image/webp")
    return client.post("/api/jobs/", {"image": file}, format="multipart")


@pytest.fixture
def api_client():
    client = APIClient()
    client.force_authenticate(UserFactory())
    return client


@pytest.mark.django_db
def test_the_issues_webp_bomb_is_refused_by_the_api_and_nothing_is_kept(api_client):
    assert len(WEBP_BOMB) < 2100
    before = stored_files()
    response = upload(api_client, WEBP_BOMB)
    assert response.status_code == 400, response.content
    assert "7070x7070" in response.json()["error"] and "pixels" in response.json()["error"]
    assert not Job.objects.exists()
    assert stored_files() == before


@pytest.mark.django_db
def test_the_issues_webp_bomb_is_refused_by_the_seed_api_and_nothing_is_kept():
    client = Client(REMOTE_ADDR="198.51.100.1")
    batch = client.post("/register").json()["uuid"]
    before = stored_files()
    payload = SimpleUploadedFile("w.webp", WEBP_BOMB, content_type="image/webp")
    response = client.post("/image", {"uuid": batch, "topk": 5, "seq": 0, "payload": payload})
    assert response.status_code == 400, response.content
    assert "7070x7070" in response.json()["error"]
    assert not Job.objects.exists()
    assert stored_files() == before


@pytest.mark.django_db
def test_a_big_image_in_a_tiny_file_is_refused_as_a_likely_bomb(api_client):
    # 9 MP, within the limit of images decoded whole, in a few hundred bytes.
    bomb = encoded(Image.new("RGB", (3000, 3000), (10, 20, 30)), "WEBP", lossless=True)
    response = upload(api_client, bomb)
    assert response.status_code == 400, response.content
    assert "decompression bomb" in response.json()["error"]
    # The same picture as a flat PNG holds enough bytes a pixel to be taken.
    flat = encoded(Image.new("RGB", (3000, 3000), (10, 20, 30)), "PNG")
    assert upload(api_client, flat, "flat.png").status_code == 202


@pytest.mark.django_db
def test_formats_decoded_whole_have_a_lower_pixel_limit_than_jpeg(api_client):
    side = int(DECODED_WHOLE_MAX_PIXELS**0.5) + 1
    picture = Image.new("RGB", (side, side), (200, 100, 50))
    response = upload(api_client, encoded(picture, "PNG"), "big.png")
    assert response.status_code == 400, response.content
    assert f"the limit for PNG is {DECODED_WHOLE_MAX_PIXELS} pixels" in response.json()["error"]
    # A JPEG is decoded at a reduced DCT scale: the same size is taken.
    assert upload(api_client, encoded(picture, "JPEG"), "big.jpg").status_code == 202


@pytest.mark.django_db
def test_a_request_has_a_budget_of_pixels_decoded_whole(api_client):
    side = int(DECODED_WHOLE_MAX_PIXELS**0.5)
    png = encoded(Image.new("RGB", (side, side), (200, 100, 50)), "PNG")
    count = REQUEST_MAX_DECODED_WHOLE_PIXELS // (side * side) + 1
    files = [SimpleUploadedFile(f"{i}.png", png) for i in range(count)]
    response = api_client.post("/api/jobs/", {"image": files}, format="multipart")
    assert response.status_code == 400, response.content
    assert "per request" in response.json()["error"]
    assert not Job.objects.exists()
    files = [SimpleUploadedFile(f"{i}.png", png) for i in range(count - 1)]
    assert api_client.post("/api/jobs/", {"image": files}, format="multipart").status_code == 202


def web_rss_mb(master: psutil.Process) -> float:
    return sum(p.memory_info().rss for p in [master, *master.children(recursive=True)]) / 2**20


@pytest.mark.django_db(transaction=True)
def test_the_web_process_does_not_decode_a_bomb(start_process):
    """The live gunicorn's memory, before and after the issue's uploads (it grew 572 MB for
    one when the web decoded WebPs to check them)."""
    port = free_port()
    web = start_process(processes.web(PYTHON, port=port, name="web-bombs"))
    base = f"http://127.0.0.1:{port}"
    token = Token.objects.create(user=UserFactory()).key
    requests.get(f"{base}/healthz", timeout=30)
    before = web_rss_mb(psutil.Process(web.popen.pid))
    answers = []
    for _ in range(3):
        answers.append(
            requests.post(
                f"{base}/api/jobs/",
                headers={"Authorization": f"Token {token}"},
                files={"image": ("w.webp", WEBP_BOMB)},
                timeout=60,
            )
        )
        batch = requests.post(f"{base}/register", timeout=30).json()["uuid"]
        answers.append(
            requests.post(
                f"{base}/image",
                data={"uuid": batch, "topk": 5, "seq": 0},
                files={"payload": ("w.webp", WEBP_BOMB)},
                timeout=60,
            )
        )
    grown = web_rss_mb(psutil.Process(web.popen.pid)) - before
    assert [answer.status_code for answer in answers] == [400] * 6
    assert grown < 100, f"the web process grew {grown:.0f} MB"


@pytest.mark.django_db
def test_preprocessing_stores_the_thumbnails_and_the_view_reads_them(kafka_topics, client):
    owner = UserFactory()
    with open(DATA / "toaster.png", "rb") as file:
        upload_file = SimpleUploadedFile("toaster.png", file.read())
    [job] = uploads.create_jobs(owner=owner, uploads=[upload_file], top_k=5)
    Job.objects.filter(pk=job.pk).update(admitted_at=timezone.now())  # by the dispatcher
    pipeline.preprocess_and_submit(job_ids=[str(job.pk)])
    storage = job.image.storage
    for size in THUMBNAIL_SIZES:
        assert storage.exists(thumbnail_name(job.image.name, size)), Job.objects.values(
            "status", "error"
        ).get(pk=job.pk)
    # The original is no longer an image: the view serves the stored thumbnail, undecoded.
    with storage.open(job.image.name, "wb") as original:
        original.write(b"not an image any more")
    client.force_login(owner)
    response = client.get(f"/jobs/{job.pk}/image/96/")
    assert response.status_code == 200
    assert response.content == storage.open(thumbnail_name(job.image.name, 96)).read()
    services.delete_job(job=job)


@pytest.mark.django_db(transaction=True)
def test_an_older_jobs_thumbnail_is_made_on_its_first_request_and_stored(client):
    owner = UserFactory()
    with open(DATA / "fox.png", "rb") as file:
        [job] = uploads.create_jobs(
            owner=owner, uploads=[SimpleUploadedFile("fox.png", file.read())], top_k=5
        )
    name = thumbnail_name(job.image.name, 480)
    assert not job.image.storage.exists(name)
    client.force_login(owner)
    first = client.get(f"/jobs/{job.pk}/image/480/")
    assert first.status_code == 200
    assert job.image.storage.exists(name)
    assert client.get(f"/jobs/{job.pk}/image/480/").content == first.content
    services.delete_job(job=job)
    assert not job.image.storage.exists(name)


@pytest.mark.django_db
def test_an_older_job_over_todays_limits_gets_no_thumbnail_made(client):
    owner = UserFactory()
    with open(DATA / "fox.png", "rb") as file:
        [job] = uploads.create_jobs(
            owner=owner, uploads=[SimpleUploadedFile("fox.png", file.read())], top_k=5
        )
    # As accepted before the limit of images decoded whole was lowered.
    Job.objects.filter(pk=job.pk).update(image_width=7070, image_height=7070)
    client.force_login(owner)
    response = client.get(f"/jobs/{job.pk}/image/96/")
    assert response.status_code == 404
    assert "too large to preview" in response.content.decode()
    assert not job.image.storage.exists(thumbnail_name(job.image.name, 96))
    services.delete_job(job=job)


@pytest.mark.django_db
def test_images_are_throttled_per_user(client, settings):
    settings.IMAGE_THROTTLE = "2/minute"
    owner = UserFactory()
    with open(DATA / "fox.png", "rb") as file:
        [job] = uploads.create_jobs(
            owner=owner, uploads=[SimpleUploadedFile("fox.png", file.read())], top_k=5
        )
    client.force_login(owner)
    # Not at a window's very end, where the third request would fall in the next one.
    if time.time() % 60 > 55:
        time.sleep(6)
    urls = [f"/jobs/{job.pk}/image/96/", f"/jobs/{job.pk}/original/", f"/jobs/{job.pk}/image/96/"]
    answers = [client.get(url) for url in urls]
    assert [answer.status_code for answer in answers] == [200, 200, 429]
    assert int(answers[2]["Retry-After"]) > 0
    services.delete_job(job=job)


@pytest.mark.django_db
def test_the_seed_api_refuses_anonymous_callers_unless_the_setting_allows_them(settings):
    settings.SEED_API_ANONYMOUS = False
    client = Client(REMOTE_ADDR="198.51.100.2")
    registered = client.post("/register")
    assert registered.status_code == 401
    assert "SEED_API_ANONYMOUS" in registered.json()["error"]
    assert not Batch.objects.exists()
    batch = Batch.objects.create(owner=None)
    payload = SimpleUploadedFile("bolete.jpg", (DATA / "bolete.jpg").read_bytes())
    answer = client.post("/image", {"uuid": batch.pk, "topk": 5, "seq": 0, "payload": payload})
    assert answer.status_code == 401
    assert not Job.objects.exists()
    # With a token the seed API still answers.
    token = Token.objects.create(user=UserFactory()).key
    assert client.post("/register", HTTP_AUTHORIZATION=f"Token {token}").status_code == 200


@pytest.mark.django_db
def test_the_seed_apis_anonymous_callers_are_throttled_per_address(settings):
    settings.SEED_API_ANONYMOUS = True
    settings.API_THROTTLE_ANON = "3/minute"
    if time.time() % 60 > 55:
        time.sleep(6)
    one, other = Client(REMOTE_ADDR="198.51.100.3"), Client(REMOTE_ADDR="198.51.100.4")
    answers = [one.post("/register") for _ in range(4)]
    assert [answer.status_code for answer in answers] == [200, 200, 200, 429]
    assert int(answers[3]["Retry-After"]) > 0
    assert other.post("/register").status_code == 200


@pytest.mark.django_db
def test_the_seed_apis_signed_in_callers_and_results_are_throttled_too(settings):
    settings.API_THROTTLE_USER = "2/minute"
    settings.API_THROTTLE_ANON = "2/minute"
    if time.time() % 60 > 55:
        time.sleep(6)
    token = Token.objects.create(user=UserFactory()).key
    client = Client(REMOTE_ADDR="198.51.100.5")
    signed_in = [client.post("/register", HTTP_AUTHORIZATION=f"Token {token}") for _ in range(3)]
    assert [answer.status_code for answer in signed_in] == [200, 200, 429]
    assert signed_in[2].json()["error"] == "too many requests from this user; try again later"
    batch = Batch.objects.create(owner=None)
    query = {"uuid": batch.pk, "seqStart": 0, "seqEnd": 9}
    results = [Client(REMOTE_ADDR="198.51.100.6").get("/result", query) for _ in range(3)]
    assert [answer.status_code for answer in results] == [200, 200, 429]
