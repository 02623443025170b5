"""Bad uploads get a 4xx with a JSON error naming the problem, and leave no row and no file."""

import io
import struct
import zipfile
import zlib
from pathlib import Path

import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image
from rest_framework.test import APIClient

from predictions.models import Batch, Job
from tests.factories import BatchFactory, UserFactory

DATA = Path(__file__).parent / "data"
pytestmark = pytest.mark.django_db


@pytest.fixture
def client():
    client = APIClient()
    client.force_authenticate(UserFactory())
    return client


def stored_files() -> list[Path]:
    root = Path(settings.MEDIA_ROOT)
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


@pytest.fixture(autouse=True)
def nothing_left_behind():
    before = set(stored_files())
    yield
    assert set(stored_files()) == before or Job.objects.exists()


def upload(client, content: bytes, name: str = "photo.jpg", **fields):
    file = SimpleUploadedFile(name, content, content_type="application/octet-stream")
    return client.post("/api/jobs/", {"image": file, **fields}, format="multipart")


def huge_png(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose header claims width x height pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00" + b"\xff\xff\xff")
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


def zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("a.txt", "hello")
    return buffer.getvalue()


BOLETE = (DATA / "bolete.jpg").read_bytes()
FOX = (DATA / "fox.png").read_bytes()


def with_end_marker_before_scan(jpeg: bytes) -> bytes:
    """The JPEG with an end-of-image marker in a comment before its scan data, where an
    EXIF thumbnail's would be: a marker that is not the end of the image."""
    segment = b"\xff\xfe" + struct.pack(">H", 6) + b"\xff\xd8\xff\xd9"
    return jpeg[:2] + segment + jpeg[2:]


BAD_FILES = {
    "empty": (b"", "empty"),
    "text": (b"just some words\n" * 10, "not an image"),
    "pdf": (b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer\n%%EOF", "not an image"),
    "svg": (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "not an image"),
    "html": (b"<!doctype html><html><body>hi</body></html>", "not an image"),
    "zip renamed .jpg": (zip_bytes(), "not an image"),
    "truncated jpeg": (BOLETE[: len(BOLETE) // 2], "could not be decoded"),
    "truncated png": (FOX[: len(FOX) // 2], "could not be decoded"),
    "truncated jpeg, end marker before its scan": (
        with_end_marker_before_scan(BOLETE)[: len(BOLETE) // 2],
        "truncated",
    ),
    "decompression bomb": (huge_png(30_000, 30_000), "pixels"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_file_is_rejected_with_its_reason_and_nothing_stored(client, case):
    content, reason = BAD_FILES[case]
    response = upload(client, content)
    assert response.status_code == 400, response.content
    assert reason in response.json()["error"]
    assert not Job.objects.exists()


def test_missing_file_is_rejected(client):
    response = client.post("/api/jobs/", {"top_k": 3}, format="multipart")
    assert response.status_code == 400
    assert "image" in response.json()["error"]


def test_file_over_size_limit_is_rejected_with_413(client, settings):
    settings.UPLOAD_MAX_BYTES = 1000
    response = upload(client, BOLETE)
    assert response.status_code == 413
    assert "limit is 1000" in response.json()["error"]
    assert not Job.objects.exists()


@pytest.mark.parametrize("top_k", ["0", "1001", "abc", "-3"])
def test_top_k_out_of_range_or_not_a_number_is_rejected(client, top_k):
    response = upload(client, BOLETE, top_k=top_k)
    assert response.status_code == 400
    assert "top_k" in response.json()["error"]
    assert not Job.objects.exists()


def test_unknown_batch_is_rejected(client):
    response = upload(client, BOLETE, batch="8d3c43b2-46a3-4b7e-9c55-3f0a9d6c6f10")
    assert response.status_code == 400
    assert "unknown batch" in response.json()["error"]


def test_someone_elses_batch_counts_as_unknown(client):
    response = upload(client, BOLETE, batch=str(BatchFactory().pk))
    assert response.status_code == 400
    assert "unknown batch" in response.json()["error"]


def test_negative_seq_is_rejected(client):
    batch = client.post("/api/batches/").json()["id"]
    response = upload(client, BOLETE, batch=batch, seq="-1")
    assert response.status_code == 400
    assert "seq" in response.json()["error"]


def test_duplicate_seq_in_a_batch_is_rejected_and_the_second_file_not_kept(client):
    batch = client.post("/api/batches/").json()["id"]
    assert upload(client, BOLETE, batch=batch, seq="0").status_code == 202
    files_after_first = set(stored_files())
    response = upload(client, FOX, name="fox.png", batch=batch, seq="0")
    assert response.status_code == 409
    assert "seq 0 already used" in response.json()["error"]
    assert Job.objects.count() == 1
    assert set(stored_files()) == files_after_first


def test_one_bad_file_among_several_rejects_the_whole_request(client):
    files = [
        SimpleUploadedFile("a.jpg", BOLETE),
        SimpleUploadedFile("b.jpg", b"not an image at all"),
    ]
    response = client.post("/api/jobs/", {"image": files}, format="multipart")
    assert response.status_code == 400
    assert "b.jpg" in response.json()["error"]
    assert not Job.objects.exists()


def test_upload_is_judged_by_bytes_not_name_or_declared_type(client):
    response = upload(client, FOX, name="report.pdf")
    assert response.status_code == 202, response.content
    job = Job.objects.get()
    assert job.image_format == "PNG"
    assert (job.image_width, job.image_height) == (500, 412)


def test_uploaded_file_name_never_reaches_the_file_system(client):
    response = upload(client, BOLETE, name="../../../../etc/cron.d/evil.jpg")
    assert response.status_code == 202
    job = Job.objects.get()
    assert ".." not in job.image.name and "evil" not in job.image.name
    assert job.image.name.endswith(str(job.pk))
    assert Path(job.image.path).resolve().is_relative_to(Path(settings.MEDIA_ROOT).resolve())


def test_accepted_upload_answers_202_with_id_status_and_url(client):
    response = upload(client, BOLETE, top_k="3")
    assert response.status_code == 202
    body = response.json()
    job = Job.objects.get()
    assert body["id"] == str(job.pk)
    assert body["status"] == "queued"
    assert body["url"].endswith(f"/api/jobs/{job.pk}/")
    assert job.top_k == 3


def test_images_larger_than_a_read_arrive_whole_in_memory_or_spooled_to_disk(client):
    """The body is read in 1 MiB pieces (common/uploads.py): a photo spanning several,
    kept in memory (up to FILE_UPLOAD_MAX_MEMORY_SIZE) or spooled to a temporary file."""
    photos = []
    for width, height in ((1000, 500), (2600, 1300)):  # 1.5 MB kept in memory, 10 MB spooled
        pixels = (bytes(range(256)) * (width * height * 3 // 256 + 1))[: width * height * 3]
        buffer = io.BytesIO()
        Image.frombytes("RGB", (width, height), pixels).save(buffer, "PNG", compress_level=0)
        photos.append(buffer.getvalue())
    assert len(photos[0]) < settings.FILE_UPLOAD_MAX_MEMORY_SIZE < len(photos[1])
    files = [SimpleUploadedFile(f"{i}.png", photo) for i, photo in enumerate(photos)]
    response = client.post("/api/jobs/", {"image": files}, format="multipart")
    assert response.status_code == 202
    jobs = Job.objects.order_by("upload_index")
    assert [job.image.read() for job in jobs] == photos


def test_several_images_in_one_request_become_one_job_each(client):
    files = [SimpleUploadedFile("a.jpg", BOLETE), SimpleUploadedFile("b.png", FOX)]
    response = client.post("/api/jobs/", {"image": files}, format="multipart")
    assert response.status_code == 202
    assert len(response.json()["jobs"]) == 2
    assert Job.objects.count() == 2


def test_uploads_into_a_batch_take_consecutive_seq_numbers(client):
    batch = client.post("/api/batches/").json()["id"]
    files = [SimpleUploadedFile("a.jpg", BOLETE), SimpleUploadedFile("b.png", FOX)]
    client.post("/api/jobs/", {"image": files, "batch": batch}, format="multipart")
    upload(client, BOLETE, batch=batch)
    assert list(Batch.objects.get(pk=batch).jobs.order_by("seq").values_list("seq", flat=True)) == [
        0,
        1,
        2,
    ]


def test_anonymous_upload_is_refused_unless_settings_allow_it(settings):
    anonymous = APIClient()
    assert upload(anonymous, BOLETE).status_code in (401, 403)
    settings.ALLOW_ANONYMOUS_UPLOADS = True
    assert upload(anonymous, BOLETE).status_code == 202


def test_text_named_jpg_and_declared_image_jpeg_is_rejected_by_its_bytes(client):
    file = SimpleUploadedFile("holiday.jpg", b"just some text\n" * 20, content_type="image/jpeg")
    response = client.post("/api/jobs/", {"image": file}, format="multipart")
    assert response.status_code == 400
    assert "not an image" in response.json()["error"]
    assert not Job.objects.exists()


@pytest.mark.parametrize(
    ("fields", "unknown"),
    [({"topk": "3"}, "topk"), ({"prio": "high", "top_k": "3"}, "prio")],
)
def test_an_upload_field_it_does_not_know_is_refused_naming_it(client, fields, unknown):
    response = upload(client, (DATA / "bolete.jpg").read_bytes(), **fields)
    assert response.status_code == 400
    assert response.json()["error"].startswith(f"{unknown}: unknown field; an upload takes: image,")
    assert not Job.objects.exists()


def test_an_upload_with_a_query_parameter_is_refused_naming_it(client):
    file = SimpleUploadedFile("photo.jpg", (DATA / "bolete.jpg").read_bytes())
    response = client.post("/api/jobs/?wait=10", {"image": file}, format="multipart")
    assert response.status_code == 400
    assert response.json()["error"] == "an upload takes no query parameters; got wait"
    assert not Job.objects.exists()


def test_too_many_files_are_refused_saying_so(client, settings):
    files = [
        SimpleUploadedFile(f"{n}.jpg", b"x", content_type="application/octet-stream")
        for n in range(settings.DATA_UPLOAD_MAX_NUMBER_FILES + 1)
    ]
    response = client.post("/api/jobs/", {"image": files}, format="multipart")
    assert response.status_code == 400
    limit = settings.DATA_UPLOAD_MAX_NUMBER_FILES
    assert response.json()["error"] == f"too many files in one request; the limit is {limit}"
