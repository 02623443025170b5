"""The upload intake (predictions/uploads.py): a good upload makes queued jobs, in its batch's
seq order, handed to the dispatcher; an Idempotency-Key sent again answers the same jobs,
or is refused when the upload differs; a bad upload is refused as a whole and leaves
nothing behind."""

import pytest
from botocore.exceptions import ClientError
from django.core.files.storage import Storage
from django.core.files.uploadedfile import SimpleUploadedFile

from common import request_ids
from common.limits import TOP_K_MAX, TOP_K_MIN
from predictions.models import Job
from predictions.storage import STORE_UNAVAILABLE_MESSAGE
from predictions.uploads import UploadError, create_batch, upload_images
from tests.conftest import DATA
from tests.factories import UserFactory

pytestmark = [pytest.mark.domain, pytest.mark.django_db]


def image(name: str) -> SimpleUploadedFile:
    return SimpleUploadedFile(name, (DATA / name).read_bytes())


def stored_files(storage: Storage, folder: str = "") -> list[str]:
    folders, files = storage.listdir(folder)
    names = [f"{folder}{name}" for name in files]
    for sub in folders:
        names += stored_files(storage, f"{folder}{sub}/")
    return names


def test_a_good_upload_makes_queued_jobs_with_the_batchs_next_seqs(
    django_capture_on_commit_callbacks, image_store, sent_tasks, notified
):
    alice = UserFactory()
    batch = create_batch(owner=alice, name="mushrooms")
    with django_capture_on_commit_callbacks(execute=True):
        first = upload_images(
            uploader=alice, files=[image("bolete.jpg")], top_k=3, batch_id=batch.pk
        )
    with django_capture_on_commit_callbacks(execute=True):
        upload = upload_images(
            uploader=alice,
            files=[image("fox.png"), image("toaster.png")],
            top_k=3,
            batch_id=batch.pk,
        )

    assert not upload.replayed
    jobs = [Job.objects.get(pk=job.pk) for job in first.jobs + upload.jobs]
    assert [job.seq for job in jobs] == [0, 1, 2]
    assert {(job.owner, job.batch, job.top_k, job.status) for job in jobs} == {
        (alice, batch, 3, Job.Status.QUEUED)
    }
    assert [(job.original_name, job.image_format) for job in jobs] == [
        ("bolete.jpg", "JPEG"),
        ("fox.png", "PNG"),
        ("toaster.png", "PNG"),
    ]
    assert sorted(stored_files(image_store)) == sorted(job.image.name for job in jobs)
    # Committed, each upload ran the dispatcher, which admitted its jobs to preprocessing.
    assert all(job.admitted_at is not None for job in jobs)
    assert [set(ids) for ids in sent_tasks.preprocessed()] == [
        {str(jobs[0].pk)},
        {str(jobs[1].pk), str(jobs[2].pk)},
    ]
    assert f"{batch.pk}" in " ".join(notified)


def test_the_jobs_of_an_upload_keep_the_id_of_the_request_that_made_them(image_store):
    token = request_ids.current.set("client-chosen-42")
    try:
        upload = upload_images(uploader=UserFactory(), files=[image("fox.png")], top_k=3)
    finally:
        request_ids.current.reset(token)
    outside = upload_images(uploader=UserFactory(), files=[image("fox.png")], top_k=3)

    assert Job.objects.get(pk=upload.jobs[0].pk).request_id == "client-chosen-42"
    assert Job.objects.get(pk=outside.jobs[0].pk).request_id == ""


def test_an_upload_sent_again_with_its_idempotency_key_answers_the_same_jobs(image_store):
    alice = UserFactory()
    files = ["fox.png", "toaster.png"]
    first = upload_images(uploader=alice, files=[image(n) for n in files], top_k=5, upload_key="k1")
    again = upload_images(uploader=alice, files=[image(n) for n in files], top_k=5, upload_key="k1")

    assert (first.replayed, again.replayed) == (False, True)
    assert [job.pk for job in again.jobs] == [job.pk for job in first.jobs]
    assert Job.objects.count() == 2
    assert len(stored_files(image_store)) == 2
    # A key is its user's: bob's upload with the same key makes jobs of its own.
    bobs = upload_images(uploader=UserFactory(), files=[image("fox.png")], top_k=5, upload_key="k1")
    assert not bobs.replayed and Job.objects.count() == 3


@pytest.mark.parametrize(
    ("files", "top_k", "difference"),
    [
        (["fox.png", "toaster.png"], 3, "top_k 5 then; this upload has top_k 3"),
        (["fox.png", "bolete.jpg"], 5, "image 2 (bolete.jpg) differs from the one sent then"),
        (["fox.png"], 5, "2 image(s) then; this one has 1"),
    ],
)
def test_the_key_sent_again_with_another_upload_is_refused_naming_the_difference(
    image_store, files, top_k, difference
):
    alice = UserFactory()
    first = [image("fox.png"), image("toaster.png")]
    upload_images(uploader=alice, files=first, top_k=5, upload_key="k1")

    with pytest.raises(UploadError) as refused:
        upload_images(uploader=alice, files=[image(n) for n in files], top_k=top_k, upload_key="k1")
    assert refused.value.status == 422
    assert str(refused.value) == f"Idempotency-Key k1 was used for another upload: {difference}"
    assert Job.objects.count() == 2
    assert len(stored_files(image_store)) == 2


def test_the_key_sent_again_with_another_deadline_is_refused_naming_it(image_store):
    alice = UserFactory()
    upload_images(uploader=alice, files=[image("fox.png")], top_k=5, upload_key="k2", timeout_s=60)

    with pytest.raises(UploadError) as refused:
        upload_images(
            uploader=alice, files=[image("fox.png")], top_k=5, upload_key="k2", timeout_s=5
        )
    assert refused.value.status == 422
    assert "timeout_s" in str(refused.value)
    again = upload_images(
        uploader=alice, files=[image("fox.png")], top_k=5, upload_key="k2", timeout_s=60
    )
    assert again.replayed and Job.objects.count() == 1


def broken_jpeg() -> bytes:
    """The first half of a JPEG: its headers are whole, its image data is not."""
    jpeg = (DATA / "bolete.jpg").read_bytes()
    return jpeg[: len(jpeg) // 2]


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (SimpleUploadedFile("empty.jpg", b""), "empty.jpg: the file is empty"),
        (
            SimpleUploadedFile("notes.jpg", b"just some text\n" * 20),
            "notes.jpg: file is not an image in an accepted format",
        ),
        (
            SimpleUploadedFile("half.jpg", broken_jpeg()),
            "half.jpg: image could not be decoded: the JPEG data is truncated",
        ),
    ],
)
def test_a_bad_file_refuses_the_whole_upload_and_leaves_nothing_behind(
    django_capture_on_commit_callbacks, image_store, sent_tasks, bad, reason
):
    alice = UserFactory()
    batch = create_batch(owner=alice)
    with django_capture_on_commit_callbacks(execute=True), pytest.raises(UploadError) as refused:
        upload_images(uploader=alice, files=[image("fox.png"), bad], top_k=5, batch_id=batch.pk)
    assert refused.value.status == 400
    assert str(refused.value).startswith(reason)
    assert not Job.objects.exists()
    assert stored_files(image_store) == []
    assert sent_tasks.calls == []


def test_an_upload_the_store_fails_midway_leaves_no_image_behind(monkeypatch, image_store):
    saved = []
    save = image_store.save

    def save_then_fail(name, content, max_length=None):
        if saved:
            raise ClientError({"Error": {"Code": "SlowDown", "Message": "busy"}}, "PutObject")
        saved.append(save(name, content, max_length=max_length))
        return saved[-1]

    monkeypatch.setattr(image_store, "save", save_then_fail)
    with pytest.raises(UploadError) as refused:
        upload_images(
            uploader=UserFactory(), files=[image("fox.png"), image("toaster.png")], top_k=5
        )
    assert (refused.value.status, str(refused.value)) == (503, STORE_UNAVAILABLE_MESSAGE)
    assert len(saved) == 1  # the first image was stored, then deleted again
    assert stored_files(image_store) == []
    assert not Job.objects.exists()


def test_a_file_over_the_size_limit_is_refused_with_413(settings, image_store):
    settings.UPLOAD_MAX_BYTES = 1000
    with pytest.raises(UploadError) as refused:
        upload_images(uploader=UserFactory(), files=[image("fox.png")], top_k=5)
    assert refused.value.status == 413
    assert "the limit is 1000" in str(refused.value)
    assert not Job.objects.exists() and stored_files(image_store) == []


@pytest.mark.parametrize("top_k", [TOP_K_MIN - 1, TOP_K_MAX + 1])
def test_a_top_k_out_of_range_is_refused_naming_the_range(image_store, top_k):
    with pytest.raises(UploadError) as refused:
        upload_images(uploader=UserFactory(), files=[image("fox.png")], top_k=top_k)
    assert refused.value.status == 400
    assert str(refused.value) == (f"top_k must be between {TOP_K_MIN} and {TOP_K_MAX}, got {top_k}")
    assert not Job.objects.exists() and stored_files(image_store) == []


def test_a_seq_already_used_in_the_batch_is_refused_with_409(image_store):
    alice = UserFactory()
    batch = create_batch(owner=alice)
    upload_images(uploader=alice, files=[image("fox.png")], top_k=5, batch_id=batch.pk, seq=7)
    with pytest.raises(UploadError) as refused:
        upload_images(
            uploader=alice, files=[image("toaster.png")], top_k=5, batch_id=batch.pk, seq=7
        )
    assert refused.value.status == 409
    assert str(refused.value) == f"seq 7 already used in batch {batch.pk}"
    assert Job.objects.count() == 1 and len(stored_files(image_store)) == 1
