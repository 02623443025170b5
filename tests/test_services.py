"""The pipeline's own guarantees (predictions/pipeline.py), against the real database."""

import functools
from datetime import timedelta

import factory
import pytest
from confluent_kafka import KafkaException
from django.conf import settings
from django.core.files.base import ContentFile
from django.utils import timezone

from kafka_wire.contract import ClassScore, InferenceResult
from predictions import pipeline
from predictions.models import Job
from registry.services import register_version
from tests.conftest import DATA
from tests.factories import JobFactory

pytestmark = pytest.mark.django_db


# Jobs waiting for their worker result, as the bridge finds them (admitted a moment ago).
make_job = functools.partial(
    JobFactory, top_k=2, status=Job.Status.SUBMITTED, admitted_at=factory.LazyFunction(timezone.now)
)


def ok_result(job: Job, *labels: str) -> InferenceResult:
    predictions = [
        ClassScore(class_id=i, label=label, score=0.5 / (i + 1)) for i, label in enumerate(labels)
    ]
    return InferenceResult(
        job_id=str(job.pk), ok=True, predictions=predictions, model="m", weights="random"
    )


def test_a_result_stores_top_k_predictions_and_marks_the_job_succeeded():
    job = make_job()
    assert pipeline.record_results(results=[ok_result(job, "a", "b", "c")]) == 1
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED
    assert list(job.predictions.values_list("rank", "label")) == [(1, "a"), (2, "b")]
    assert job.finished_at is not None and job.model_weights == "random"


def test_a_result_applied_twice_changes_nothing_the_second_time():
    job = make_job()
    pipeline.record_results(results=[ok_result(job, "a", "b")])
    assert pipeline.record_results(results=[ok_result(job, "x", "y")]) == 0
    assert list(job.predictions.values_list("label", flat=True)) == ["a", "b"]


def test_an_error_result_fails_the_job_with_its_reason():
    job = make_job()
    pipeline.record_results(
        results=[InferenceResult(job_id=str(job.pk), ok=False, error="model exploded")]
    )
    job.refresh_from_db()
    assert (job.status, job.error) == (Job.Status.FAILED, "model exploded")


def test_a_result_for_an_unknown_job_is_ignored():
    ghost = InferenceResult(job_id="4c3b1e62-2a49-4f7f-8d8e-6a3f4c2b1a10", ok=False, error="e")
    assert pipeline.record_results(results=[ghost]) == 0


def test_a_batch_of_results_is_stored_at_once_and_redeliveries_change_nothing():
    first, second, finished = make_job(), make_job(), make_job()
    pipeline.record_results(results=[ok_result(finished, "done")])
    ghost = InferenceResult(job_id="4c3b1e62-2a49-4f7f-8d8e-6a3f4c2b1a10", ok=False, error="e")
    batch = [
        ok_result(first, "a", "b"),
        ok_result(first, "x", "y"),  # redelivered within the batch: the first one counts
        InferenceResult(job_id=str(second.pk), ok=False, error="model exploded"),
        ok_result(finished, "again"),
        ghost,
    ]
    assert pipeline.record_results(results=batch) == 2
    assert pipeline.record_results(results=batch) == 0
    first.refresh_from_db()
    second.refresh_from_db()
    assert first.status == Job.Status.SUCCEEDED
    assert list(first.predictions.values_list("label", flat=True)) == ["a", "b"]
    assert (second.status, second.error) == (Job.Status.FAILED, "model exploded")
    assert list(finished.predictions.values_list("label", flat=True)) == ["done"]


def test_sweep_retries_a_stuck_job_then_fails_it_after_the_last_attempt():
    late = timezone.now() - timedelta(seconds=settings.JOB_TIMEOUT_SECONDS + 1)
    job = make_job(attempt_started_at=late, admitted_at=late)
    assert pipeline.sweep_stuck_jobs() == (1, 0)
    job.refresh_from_db()
    # Back to wait for the dispatcher (no Celery here: nothing admits it meanwhile).
    assert (job.status, job.attempts, job.admitted_at) == (Job.Status.QUEUED, 2, None)

    Job.objects.filter(pk=job.pk).update(
        attempts=settings.JOB_MAX_ATTEMPTS, attempt_started_at=late, admitted_at=late
    )
    assert pipeline.sweep_stuck_jobs() == (0, 1)
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert f"no result after {settings.JOB_MAX_ATTEMPTS} attempts" in job.error


def test_a_swept_attempt_starts_as_clean_as_a_retried_one():
    # Job.objects.start_new_attempt, the one definition the sweep, retry and re-run share:
    # the stuck attempt's stage times do not pass for the new attempt's.
    late = timezone.now() - timedelta(seconds=settings.JOB_TIMEOUT_SECONDS + 1)
    job = make_job(
        attempt_started_at=late, admitted_at=late, preprocessed_at=late, preprocess_ms=12.0
    )
    assert pipeline.sweep_stuck_jobs() == (1, 0)
    job.refresh_from_db()
    assert (job.preprocessed_at, job.preprocess_ms, job.submitted_at) == (None, None, None)
    assert job.attempt_started_at > late
    assert job.timings()["queue_to_preprocessed_ms"] is None


def test_sweep_leaves_recent_finished_and_waiting_jobs_alone():
    late = timezone.now() - timedelta(seconds=settings.JOB_TIMEOUT_SECONDS + 1)
    make_job()
    make_job(status=Job.Status.SUCCEEDED, attempt_started_at=late, admitted_at=late)
    # Waiting its turn in the database for longer than the timeout: not stuck.
    make_job(status=Job.Status.QUEUED, attempt_started_at=late, admitted_at=None)
    assert pipeline.sweep_stuck_jobs() == (0, 0)


def test_fail_job_does_not_overwrite_a_finished_job():
    job = make_job(status=Job.Status.SUCCEEDED)
    assert pipeline.fail_job(job_id=job.pk, reason="late") is False
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED


def test_preprocessing_retried_after_kafka_refused_still_submits(kafka_topics, settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path)
    job = make_job(status=Job.Status.PREPROCESSED)
    job.image.save(str(job.pk), ContentFile((DATA / "fox.png").read_bytes()))
    pipeline.preprocess_and_submit(job_ids=[str(job.pk)])
    job.refresh_from_db()
    assert job.status == Job.Status.SUBMITTED
    assert job.submitted_at is not None


def test_preprocessing_skips_a_job_already_submitted(kafka_topics):
    job = make_job(status=Job.Status.SUBMITTED)
    pipeline.preprocess_and_submit(job_ids=[str(job.pk)])  # its image does not exist: not opened
    job.refresh_from_db()
    assert job.status == Job.Status.SUBMITTED


def test_preprocessing_fails_an_undecodable_image_and_submits_the_others(
    kafka_topics, settings, tmp_path
):
    settings.MEDIA_ROOT = str(tmp_path)
    jpeg = (DATA / "bolete.jpg").read_bytes()
    scan = jpeg.index(b"\xff\xda")
    # Whole, so it passes the upload check, but its scan header is garbage.
    garbled = jpeg[: scan + 4] + b"\xff" * 8 + jpeg[scan + 12 :]
    broken, good = make_job(status=Job.Status.QUEUED), make_job(status=Job.Status.QUEUED)
    broken.image.save(str(broken.pk), ContentFile(garbled))
    good.image.save(str(good.pk), ContentFile((DATA / "fox.png").read_bytes()))
    pipeline.preprocess_and_submit(job_ids=[str(broken.pk), str(good.pk)])
    broken.refresh_from_db()
    good.refresh_from_db()
    assert broken.status == Job.Status.FAILED
    assert broken.error.startswith("preprocessing failed: ")
    assert good.status == Job.Status.SUBMITTED
    assert good.preprocess_ms is not None and good.submitted_at is not None


def test_each_request_goes_to_its_versions_topic_at_its_input_size(
    settings, tmp_path, monkeypatch, django_assert_num_queries
):
    settings.MEDIA_ROOT = str(tmp_path)
    small = register_version(name="small", source="keras", input_size=32, classes=3)
    routed = make_job(status=Job.Status.QUEUED, routed_to=small, top_k=3, attempts=2)
    unrouted = make_job(status=Job.Status.QUEUED)
    for job in (routed, unrouted):
        job.image.save(str(job.pk), ContentFile((DATA / "fox.png").read_bytes()))
    published = {}
    monkeypatch.setattr(
        pipeline, "publish_requests", lambda by_topic, headers: published.update(by_topic)
    )
    # One read of what the requests need (no field loaded later, one by one) and one UPDATE.
    with django_assert_num_queries(2):
        pipeline.preprocess_and_submit(job_ids=[str(routed.pk), str(unrouted.pk)])
    [to_small] = published[small.route.requests_topic]
    assert (to_small.job_id, to_small.top_k, to_small.attempt) == (str(routed.pk), 3, 2)
    assert to_small.image.shape == (32, 32, 3)
    [to_default] = published[settings.KAFKA_REQUESTS_TOPIC]
    assert to_default.job_id == str(unrouted.pk)
    size = settings.MODEL_INPUT_SIZE
    assert to_default.image.shape == (size, size, 3)


def test_jobs_kafka_refused_are_left_preprocessed_for_the_retry(kafka_topics, settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path)
    # 1200 × 1200 × 3 pixels exceed the producer's message size limit (1 MB): refused.
    huge = register_version(name="huge", source="keras", input_size=1200, classes=3)
    job = make_job(status=Job.Status.QUEUED, routed_to=huge)
    job.image.save(str(job.pk), ContentFile((DATA / "fox.png").read_bytes()))
    with pytest.raises(KafkaException):
        pipeline.preprocess_and_submit(job_ids=[str(job.pk)])
    job.refresh_from_db()
    assert job.status == Job.Status.PREPROCESSED
    assert job.preprocessed_at is not None and job.preprocess_ms is not None
    assert job.submitted_at is None
