"""The pipeline's transitions (predictions/pipeline.py): the dispatcher's admission, the
preprocessing handing requests to Kafka, storing results, failing a job, and the sweep."""

from datetime import timedelta

import numpy as np
import pytest
from django.core.files.base import ContentFile
from django.utils import timezone

from common import tracing
from kafka_wire.contract import ClassScore, InferenceResult
from kafka_wire.headers import REQUEST_ID
from predictions import pipeline
from predictions.models import Job
from predictions.storage import THUMBNAIL_SIZES, thumbnail_name
from tests.conftest import DATA
from tests.factories import JobFactory, UserFactory

pytestmark = [pytest.mark.domain, pytest.mark.django_db]


def waiting_jobs(owner, count: int, start) -> list[Job]:
    """count jobs of owner waiting for admission, one second apart from start."""
    return [
        JobFactory(owner=owner, created_at=start + timedelta(seconds=index))
        for index in range(count)
    ]


def admitted(jobs: list[Job]) -> list[Job]:
    ids = set(Job.objects.filter(admitted_at__isnull=False).values_list("pk", flat=True))
    return [job for job in jobs if job.pk in ids]


def test_dispatch_admits_round_robin_over_owners_up_to_the_cap(settings, sent_tasks):
    settings.DISPATCH_IN_FLIGHT_PER_MODEL = 4
    start = timezone.now() - timedelta(minutes=1)
    alice, bob, carol = UserFactory(), UserFactory(), UserFactory()
    a = waiting_jobs(alice, 5, start)
    b = waiting_jobs(bob, 2, start + timedelta(milliseconds=1))
    c = waiting_jobs(carol, 1, start + timedelta(milliseconds=2))

    # Each owner's oldest job in turn, owners by id: alice's backlog takes one place a round.
    assert pipeline.dispatch_jobs() == 4
    first = [a[0], b[0], c[0], a[1]]
    assert admitted(a + b + c) == sorted(first, key=(a + b + c).index)
    assert [set(ids) for ids in sent_tasks.preprocessed()] == [{str(job.pk) for job in first}]
    # The places in flight are full: nothing more until a job finishes.
    assert pipeline.dispatch_jobs() == 0

    Job.objects.filter(pk__in=[a[0].pk, b[0].pk]).update(status=Job.Status.SUCCEEDED)
    # The turn goes on after alice, served last: bob, then (carol has none left) alice.
    assert pipeline.dispatch_jobs() == 2
    assert set(admitted(a + b + c)) == {*first, b[1], a[2]}


def test_a_dispatch_that_admits_is_a_trace_of_its_own_linked_to_its_caller(spans, sent_tasks):
    JobFactory()
    with tracing.tracer.start_as_current_span("upload") as caller:
        assert pipeline.dispatch_jobs() == 1
        assert pipeline.dispatch_jobs() == 0

    # The second admitted nothing, and has no span.
    [dispatch] = [span for span in spans.get_finished_spans() if span.name == "dispatch"]
    assert dispatch.parent is None
    assert dispatch.context.trace_id != caller.get_span_context().trace_id
    assert [link.context for link in dispatch.links] == [caller.get_span_context()]
    assert dispatch.attributes["inferencehub.admitted"] == 1


def test_dispatch_admits_nothing_of_a_job_already_admitted_or_finished(sent_tasks):
    JobFactory(admitted_at=timezone.now())
    JobFactory(status=Job.Status.FAILED)
    assert pipeline.dispatch_jobs() == 0
    assert sent_tasks.calls == []


def stored_job(image_store, content: bytes, **fields) -> Job:
    """A job admitted to preprocessing, whose original holds content."""
    job = JobFactory(admitted_at=timezone.now(), **fields)
    job.image.save(str(job.pk), ContentFile(content))
    return job


def test_preprocessing_hands_the_requests_to_kafka_and_marks_the_jobs_submitted(
    settings, image_store, published_requests
):
    fox = stored_job(image_store, (DATA / "fox.png").read_bytes(), top_k=3)
    bolete = stored_job(image_store, (DATA / "bolete.jpg").read_bytes(), attempts=2)

    pipeline.preprocess_and_submit(job_ids=[str(fox.pk), str(bolete.pk)])

    requests = {
        request.job_id: request for request in published_requests.pop(settings.KAFKA_REQUESTS_TOPIC)
    }
    assert published_requests == {}  # no other topic
    assert {job_id: (r.top_k, r.attempt) for job_id, r in requests.items()} == {
        str(fox.pk): (3, 1),
        str(bolete.pk): (5, 2),
    }
    size = settings.MODEL_INPUT_SIZE
    assert {(r.image.shape, r.image.dtype) for r in requests.values()} == {
        ((size, size, 3), np.dtype(np.uint8))
    }
    for job in (fox, bolete):
        job.refresh_from_db()
        assert job.status == Job.Status.SUBMITTED
        assert None not in (job.preprocessed_at, job.submitted_at, job.preprocess_ms)
        # The thumbnails come from the same decode.
        for size in THUMBNAIL_SIZES:
            assert image_store.exists(thumbnail_name(job.image.name, size))


def test_each_request_carries_the_request_id_of_the_upload_that_made_its_job(
    image_store, published_requests
):
    traced = stored_job(image_store, (DATA / "fox.png").read_bytes(), request_id="upload-7f3a")
    older = stored_job(image_store, (DATA / "fox.png").read_bytes())  # made before ids

    pipeline.preprocess_and_submit(job_ids=[str(traced.pk), str(older.pk)])

    assert published_requests.headers == {
        str(traced.pk): [(REQUEST_ID, b"upload-7f3a")],
        str(older.pk): [],
    }


def test_an_image_that_cannot_be_decoded_fails_its_job_and_the_others_go_on(
    settings, image_store, published_requests
):
    broken = stored_job(image_store, b"\xff\xd8\xff\xe0 not really a JPEG")
    good = stored_job(image_store, (DATA / "fox.png").read_bytes())

    pipeline.preprocess_and_submit(job_ids=[str(broken.pk), str(good.pk)])

    broken.refresh_from_db()
    good.refresh_from_db()
    assert broken.status == Job.Status.FAILED
    assert broken.error.startswith("preprocessing failed: ")
    assert good.status == Job.Status.SUBMITTED
    [request] = published_requests[settings.KAFKA_REQUESTS_TOPIC]
    assert request.job_id == str(good.pk)


def test_jobs_kafka_refused_wait_preprocessed_and_the_retry_submits_them(
    image_store, published_requests
):
    job = stored_job(image_store, (DATA / "fox.png").read_bytes())
    published_requests["refuse"] = ConnectionError("Kafka is away")
    with pytest.raises(ConnectionError):
        pipeline.preprocess_and_submit(job_ids=[str(job.pk)])
    job.refresh_from_db()
    assert (job.status, job.submitted_at) == (Job.Status.PREPROCESSED, None)

    del published_requests["refuse"]
    pipeline.preprocess_and_submit(job_ids=[str(job.pk)])
    job.refresh_from_db()
    assert job.status == Job.Status.SUBMITTED


def submitted_job(**fields) -> Job:
    return JobFactory(**{"status": Job.Status.SUBMITTED, "admitted_at": timezone.now(), **fields})


def result(job: Job, *labels: str) -> InferenceResult:
    scores = [
        ClassScore(class_id=i, label=label, score=0.9 - i / 10) for i, label in enumerate(labels)
    ]
    return InferenceResult(job_id=str(job.pk), ok=True, predictions=scores, weights="random")


def test_a_result_is_stored_once_and_its_second_delivery_changes_nothing(
    django_capture_on_commit_callbacks, notified
):
    job = submitted_job(top_k=2)

    with django_capture_on_commit_callbacks(execute=True):
        assert pipeline.record_results(results=[result(job, "fox", "dog", "cat")]) == 1
    job.refresh_from_db()
    finished_at = job.finished_at
    assert job.status == Job.Status.SUCCEEDED and finished_at is not None
    assert list(job.predictions.values_list("rank", "label")) == [(1, "fox"), (2, "dog")]
    assert any(str(job.pk) in channel for channel in notified)

    assert pipeline.record_results(results=[result(job, "toaster", "bolete")]) == 0
    job.refresh_from_db()
    assert (job.status, job.finished_at) == (Job.Status.SUCCEEDED, finished_at)
    assert list(job.predictions.values_list("rank", "label")) == [(1, "fox"), (2, "dog")]


def test_an_error_result_fails_the_job_with_the_workers_reason():
    job = submitted_job()
    error = InferenceResult(job_id=str(job.pk), ok=False, error="the model failed")
    assert pipeline.record_results(results=[error]) == 1
    job.refresh_from_db()
    assert (job.status, job.error) == (Job.Status.FAILED, "the model failed")
    assert not job.predictions.exists()


def test_failing_a_finished_job_changes_nothing():
    job = submitted_job()
    pipeline.record_results(results=[result(job, "fox")])
    job.refresh_from_db()

    assert pipeline.fail_job(job_id=job.pk, reason="too late") is False
    after = Job.objects.get(pk=job.pk)
    assert (after.status, after.error, after.finished_at) == (
        Job.Status.SUCCEEDED,
        "",
        job.finished_at,
    )
    assert pipeline.fail_job(job_id=submitted_job().pk, reason="gone") is True


def test_the_sweep_retries_a_stuck_attempt_then_fails_it_after_the_last(
    settings, django_capture_on_commit_callbacks, sent_tasks
):
    settings.JOB_MAX_ATTEMPTS = 2
    timeout = timedelta(seconds=settings.JOB_TIMEOUT_SECONDS)
    now = timezone.now()
    job = submitted_job(admitted_at=now - timeout - timedelta(seconds=1))

    with django_capture_on_commit_callbacks(execute=True):
        assert pipeline.sweep_stuck_jobs(now=now) == (1, 0)
    job.refresh_from_db()
    # A new attempt, admitted again at once by the dispatcher that ran after commit.
    assert (job.status, job.attempts, job.attempt_started_at) == (Job.Status.QUEUED, 2, now)
    assert job.submitted_at is None and job.admitted_at is not None
    assert str(job.pk) in sent_tasks.preprocessed()[-1]

    later = job.admitted_at + timeout + timedelta(seconds=1)
    assert pipeline.sweep_stuck_jobs(now=later) == (0, 1)
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert job.error == f"no result after 2 attempts of {settings.JOB_TIMEOUT_SECONDS}s each"
