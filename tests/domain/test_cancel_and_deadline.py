"""Cancelling jobs and batches, and deadlines: the rules on the model, the services, the
pipeline's transitions and the API's answers (predictions/services.py, pipeline.py)."""

from datetime import timedelta

import pytest
from django.core.files.base import ContentFile
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from kafka_wire.contract import ClassScore, InferenceResult
from predictions import pipeline, services
from predictions.models import Job, JobFinished
from predictions.uploads import UploadError, upload_images
from registry.services import register_version
from tests.conftest import DATA
from tests.factories import BatchFactory, JobFactory, UserFactory

pytestmark = [pytest.mark.domain, pytest.mark.django_db]


@pytest.fixture(autouse=True)
def told_workers(monkeypatch) -> list[str]:
    """The job ids produced to the cancellations topic."""
    told: list[str] = []

    def publish(topic: str, job_ids) -> bool:
        told.extend(job_ids)
        return True

    monkeypatch.setattr(services, "publish_cancellations", publish)
    return told


def fox_result(job: Job) -> InferenceResult:
    fox = ClassScore(class_id=277, label="red fox", score=0.9)
    return InferenceResult(job_id=str(job.pk), ok=True, predictions=[fox])


def test_cancelling_an_unfinished_job_ends_it_cancelled_and_keeps_its_record(
    django_capture_on_commit_callbacks, told_workers
):
    waiting = JobFactory()
    in_kafka = JobFactory(status=Job.Status.SUBMITTED, admitted_at=timezone.now())

    with django_capture_on_commit_callbacks(execute=True):
        services.cancel_job(job=waiting)
        services.cancel_job(job=in_kafka)

    for job in (waiting, in_kafka):
        job.refresh_from_db()
        assert job.status == Job.Status.CANCELLED
        assert job.finished_at is not None
        assert job.is_finished
    # Only the admitted one may have a request in Kafka for the workers to drop.
    assert told_workers == [str(in_kafka.pk)]


def test_only_cancelling_an_admitted_job_frees_a_place_for_the_dispatcher(
    django_capture_on_commit_callbacks,
):
    waiting = JobFactory()
    admitted = JobFactory(status=Job.Status.SUBMITTED, admitted_at=timezone.now())

    with django_capture_on_commit_callbacks() as never_admitted:
        services.cancel_job(job=waiting)
    with django_capture_on_commit_callbacks() as held_a_place:
        services.cancel_job(job=admitted)

    assert pipeline.dispatch_or_leave_to_beat not in never_admitted
    assert pipeline.dispatch_or_leave_to_beat in held_a_place


@pytest.mark.parametrize("status", [s for s in Job.FINISHED])
def test_cancelling_a_finished_job_is_refused_and_leaves_it_as_it_was(status):
    job = JobFactory(status=status, error="as it was")
    with pytest.raises(JobFinished):
        services.cancel_job(job=job)
    job.refresh_from_db()
    assert (job.status, job.error) == (status, "as it was")


def test_cancelling_a_batch_cancels_its_unfinished_jobs_and_counts_them():
    batch = BatchFactory()
    queued = JobFactory(batch=batch, seq=1)
    submitted = JobFactory(batch=batch, seq=2, status=Job.Status.SUBMITTED)
    done = JobFactory(batch=batch, seq=3, status=Job.Status.SUCCEEDED)
    other = JobFactory()

    assert services.cancel_batch(batch=batch) == 2

    statuses = dict(Job.objects.values_list("pk", "status"))
    assert statuses[queued.pk] == statuses[submitted.pk] == Job.Status.CANCELLED
    assert statuses[done.pk] == Job.Status.SUCCEEDED
    assert statuses[other.pk] == Job.Status.QUEUED


def test_a_cancelled_job_frees_its_place_in_flight_for_a_waiting_one(
    settings, django_capture_on_commit_callbacks, sent_tasks
):
    settings.DISPATCH_IN_FLIGHT_PER_MODEL = 1
    running = JobFactory(status=Job.Status.SUBMITTED, admitted_at=timezone.now())
    waiting = JobFactory()

    with django_capture_on_commit_callbacks(execute=True):
        services.cancel_job(job=running)

    assert sent_tasks.preprocessed() == [[str(waiting.pk)]]


def test_preprocessing_skips_a_job_cancelled_after_its_admission(image_store, published_requests):
    job = JobFactory(admitted_at=timezone.now())
    job.image.save(str(job.pk), ContentFile((DATA / "fox.png").read_bytes()))
    services.cancel_job(job=job)

    pipeline.preprocess_and_submit(job_ids=[str(job.pk)])

    assert published_requests == {}
    job.refresh_from_db()
    assert job.status == Job.Status.CANCELLED


def test_a_result_for_a_cancelled_job_changes_nothing():
    job = JobFactory(status=Job.Status.SUBMITTED, admitted_at=timezone.now())
    services.cancel_job(job=job)

    assert pipeline.record_results(results=[fox_result(job)]) == 0

    job.refresh_from_db()
    assert job.status == Job.Status.CANCELLED
    assert not job.predictions.exists()


def test_results_ignored_for_finished_jobs_are_logged_with_their_jobs_status(caplog):
    cancelled = JobFactory(status=Job.Status.SUBMITTED, admitted_at=timezone.now())
    services.cancel_job(job=cancelled)
    done = JobFactory(status=Job.Status.SUBMITTED, admitted_at=timezone.now())
    pipeline.record_results(results=[fox_result(done)])
    waiting = JobFactory(status=Job.Status.SUBMITTED, admitted_at=timezone.now())

    with caplog.at_level("INFO", logger="predictions.pipeline"):
        results = [fox_result(job) for job in (cancelled, done, waiting)]
        assert pipeline.record_results(results=results) == 1

    [line] = [r for r in caplog.records if "ignored" in r.getMessage()]
    assert line.getMessage().startswith(
        "2 results ignored, their jobs finished already (cancelled 1, succeeded 1): jobs "
    )
    assert sorted(line.job_ids) == sorted([str(cancelled.pk), str(done.pk)])


def test_an_expired_result_ends_the_job_expired_with_its_reason():
    job = JobFactory(status=Job.Status.SUBMITTED, admitted_at=timezone.now())
    expired = InferenceResult(
        job_id=str(job.pk), ok=False, expired=True, error="deadline passed in Kafka"
    )

    assert pipeline.record_results(results=[expired]) == 1
    # A second delivery, or a late answer, finds it finished.
    assert pipeline.record_results(results=[fox_result(job)]) == 0

    job.refresh_from_db()
    assert (job.status, job.error) == (Job.Status.EXPIRED, "deadline passed in Kafka")


def test_preprocessing_expires_a_job_past_its_deadline_instead_of_sending_it(
    image_store, published_requests
):
    late = JobFactory(admitted_at=timezone.now(), deadline=timezone.now() - timedelta(seconds=1))
    late.image.save(str(late.pk), ContentFile((DATA / "fox.png").read_bytes()))
    on_time = JobFactory(admitted_at=timezone.now(), deadline=timezone.now() + timedelta(hours=1))
    on_time.image.save(str(on_time.pk), ContentFile((DATA / "fox.png").read_bytes()))

    pipeline.preprocess_and_submit(job_ids=[str(late.pk), str(on_time.pk)])

    late.refresh_from_db()
    assert late.status == Job.Status.EXPIRED
    assert "deadline" in late.error
    [request] = [r for requests in published_requests.values() for r in requests]
    assert request.job_id == str(on_time.pk)
    assert request.deadline_ms == int(on_time.deadline.timestamp() * 1000)


# --- Deadlines asked for by an upload -------------------------------------------------


def fox() -> SimpleUploadedFile:
    return SimpleUploadedFile("fox.png", (DATA / "fox.png").read_bytes())


def test_an_upload_sets_its_jobs_deadline_by_time_or_by_timeout():
    # A day ahead, written with a time zone of its own.
    asked = (timezone.now() + timedelta(days=1)).replace(microsecond=0)
    written = asked.astimezone(timezone.get_fixed_timezone(60)).isoformat()
    by_time = upload_images(uploader=UserFactory(), files=[fox()], top_k=3, deadline=written).jobs[
        0
    ]
    before = timezone.now()
    by_timeout = upload_images(uploader=UserFactory(), files=[fox()], top_k=3, timeout_s=30).jobs[0]
    none = upload_images(uploader=UserFactory(), files=[fox()], top_k=3).jobs[0]

    assert by_time.deadline == asked
    assert timedelta(seconds=29) < by_timeout.deadline - before < timedelta(seconds=31)
    assert none.deadline is None


def test_an_upload_without_a_deadline_takes_its_model_versions_default():
    version = register_version(
        name="timed", source="keras", input_size=64, classes=3, default_timeout_s=60
    )
    before = timezone.now()
    job = upload_images(
        uploader=UserFactory(), files=[fox()], top_k=3, model=version.model.name
    ).jobs[0]
    assert timedelta(seconds=59) < job.deadline - before < timedelta(seconds=61)


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"deadline": "2000-01-01T00:00:00Z"}, "deadline"),
        ({"deadline": "tomorrow"}, "deadline"),
        ({"deadline": "2100-01-01T00:00:00"}, "deadline"),
        ({"deadline": "2100-01-01T00:00:00Z", "timeout_s": 5}, "deadline and timeout_s"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"timeout_s": -3}, "timeout_s"),
        # Far ones: more than 30 days ahead, and beyond what the clock holds.
        ({"timeout_s": 30 * 24 * 3600 + 1}, "timeout_s"),
        ({"timeout_s": 99999999999999999999}, "timeout_s"),
        ({"deadline": "2099-01-01T00:00:00Z"}, "deadline"),
        ({"deadline": "9999-12-31T23:59:59-12:00"}, "deadline"),
    ],
)
def test_a_bad_deadline_is_refused_naming_the_field_and_nothing_is_stored(fields, named):
    with pytest.raises(UploadError) as refused:
        upload_images(uploader=UserFactory(), files=[fox()], top_k=3, **fields)
    assert str(refused.value).startswith(named)
    assert refused.value.status == 400
    assert not Job.objects.exists()


def test_the_sweep_expires_jobs_whose_deadline_passed_while_nothing_took_them():
    now = timezone.now()
    past, future = now - timedelta(seconds=5), now + timedelta(hours=1)
    waiting = JobFactory(status=Job.Status.QUEUED, deadline=past)
    in_kafka = JobFactory(status=Job.Status.SUBMITTED, deadline=past, admitted_at=past)
    not_yet = JobFactory(status=Job.Status.QUEUED, deadline=future)
    no_deadline = JobFactory(status=Job.Status.QUEUED)
    done = JobFactory(status=Job.Status.SUCCEEDED, deadline=past)

    assert pipeline.expire_overdue_jobs(now=now) == 2

    status = dict(Job.objects.values_list("pk", "status"))
    assert (status[waiting.pk], status[in_kafka.pk]) == (Job.Status.EXPIRED,) * 2
    assert (status[not_yet.pk], status[no_deadline.pk]) == (Job.Status.QUEUED,) * 2
    assert status[done.pk] == Job.Status.SUCCEEDED
    waiting.refresh_from_db()
    assert waiting.error == "deadline passed 5.0 s before anything took the job (queued)"
