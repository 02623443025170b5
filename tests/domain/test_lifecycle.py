"""A job's lifecycle after intake (predictions/services.py): running finished jobs again."""

import pytest

from predictions import services
from predictions.models import Job
from tests.factories import JobFactory

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
