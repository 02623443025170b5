"""A job's lifecycle after intake (predictions/services.py): running finished jobs again,
and deleting old results."""

from datetime import timedelta

import pytest
from django.core.files.base import ContentFile
from django.utils import timezone

from predictions import services
from predictions.models import Job, Prediction
from tests.conftest import DATA
from tests.factories import JobFactory, PredictionFactory
from webhooks.models import Delivery

pytestmark = [pytest.mark.domain, pytest.mark.django_db]

FIRST_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
FIRST_PARENT = f"00-{FIRST_TRACE}-00f067aa0ba902b7-01"


def test_a_retried_job_starts_a_new_trace_linked_to_its_first(spans):
    failed = JobFactory(status=Job.Status.FAILED, trace_parent=FIRST_PARENT, error="bad")

    assert services.retry_jobs(jobs=[failed]) == 1

    failed.refresh_from_db()
    assert failed.status == Job.Status.QUEUED and failed.attempts == 2
    [retry] = [span for span in spans.get_finished_spans() if span.name == "retry"]
    assert failed.trace_parent.split("-")[1] == f"{retry.context.trace_id:032x}" != FIRST_TRACE
    assert retry.parent is None
    [link] = retry.links
    assert (f"{link.context.trace_id:032x}", f"{link.context.span_id:016x}") == (
        FIRST_TRACE,
        "00f067aa0ba902b7",
    )
    assert retry.attributes["inferencehub.job_id"] == str(failed.pk)


def test_a_rerun_of_a_job_traced_nowhere_starts_an_unlinked_trace(spans):
    done = JobFactory(status=Job.Status.SUCCEEDED, trace_parent="")

    assert services.rerun_jobs(jobs=[done], top_k=3) == 1

    done.refresh_from_db()
    [rerun] = [span for span in spans.get_finished_spans() if span.name == "re-run"]
    assert done.trace_parent.split("-")[1] == f"{rerun.context.trace_id:032x}"
    assert not rerun.links
    assert done.top_k == 3


def test_results_older_than_the_retention_go_with_their_predictions_deliveries_and_images(
    image_store, monkeypatch, django_capture_on_commit_callbacks
):
    monkeypatch.setattr(services, "PURGE_CHUNK", 2)  # several rounds
    now = timezone.now()
    old = [
        JobFactory(status=status, finished_at=now - timedelta(days=8))
        for status in (Job.Status.SUCCEEDED, Job.Status.FAILED, Job.Status.CANCELLED)
    ]
    for job in old:
        job.image.save(str(job.pk), ContentFile((DATA / "fox.png").read_bytes()))
    PredictionFactory(job=old[0], rank=1)
    Delivery.objects.create(job=old[0], job_attempt=1, url="https://hooks.example.com/")
    recent = JobFactory(status=Job.Status.SUCCEEDED, finished_at=now - timedelta(days=6))
    waiting = JobFactory(status=Job.Status.QUEUED, created_at=now - timedelta(days=30))

    # The images are deleted once the rows' deletion commits.
    with django_capture_on_commit_callbacks(execute=True):
        assert services.purge_old_results(older_than_days=7, now=now) == 3

    assert set(Job.objects.values_list("pk", flat=True)) == {recent.pk, waiting.pk}
    assert not Prediction.objects.exists() and not Delivery.objects.exists()
    assert not any(image_store.exists(job.image.name) for job in old)
