"""The load test's arithmetic (bench/loadtest.py); the load test itself runs against a
running stack (docs/performance.md, "Under real traffic")."""

import uuid

from bench.loadtest import cancellation_summary, cpu_spent, process_name
from kafka_wire.contract import ClassScore, InferenceResult

FOX = ClassScore(class_id=277, label="red fox", score=0.9)


def ids(count: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(count)]


def inferred(job_id: str, at_s: float, inference_ms: float = 0.0) -> InferenceResult:
    """A result with predictions, the inference of its batch ending at_s."""
    return InferenceResult(
        job_id=job_id,
        ok=True,
        predictions=[FOX],
        inferred_at_ms=int(at_s * 1000),
        inference_ms=inference_ms,
    )


def test_what_became_of_the_cancelled_jobs_is_counted_from_the_requests_and_results_read():
    before, during, after, dropped, never_sent, expired, served = ids(7)
    cancelled = (before, during, after, dropped, never_sent, expired)
    cancelled_at = dict.fromkeys(cancelled, 100.0)
    sent = {before, during, after, dropped, expired, served}
    results = [
        inferred(before, 99.5),
        # Its batch began before the cancel was answered, and ended after.
        inferred(during, 100.5, inference_ms=1000),
        inferred(after, 100.5, inference_ms=200),
        inferred(after, 101.0),  # a redelivery: one job inferred
        InferenceResult(job_id=expired, ok=False, error="deadline passed", expired=True),
        inferred(served, 100.2),  # not cancelled: not counted
    ]

    summary = cancellation_summary(cancelled_at, sent, results)

    assert summary["cancelled"] == 6
    assert (summary["sent_to_kafka"], summary["never_sent"]) == (5, 1)
    assert summary["inferred"] == 3
    assert summary["inferred_before_cancel_answered"] == 1
    assert summary["inferred_while_cancel_answered"] == 1
    assert summary["inference_began_after_cancel_answered"] == 1
    assert summary["answered_without_inference"] == 1
    assert summary["dropped_by_workers"] == 1
    assert summary["answered_not_found_sent"] == 0
    assert summary["inferred_share"] == 3 / 6
    assert not summary["target_met"]


def test_an_inference_counts_even_after_an_error_result_for_the_same_job():
    [job] = ids(1)
    results = [InferenceResult(job_id=job, ok=False, error="boom"), inferred(job, 1.0)]

    summary = cancellation_summary({job: 2.0}, {job}, results)

    assert (summary["inferred"], summary["answered_without_inference"]) == (1, 0)


def test_the_target_is_met_at_five_percent_or_less_and_nothing_cancelled_meets_it():
    cancelled = ids(20)
    at_target = cancellation_summary(
        dict.fromkeys(cancelled, 0.0), set(cancelled), [inferred(cancelled[0], 1.0)]
    )
    assert at_target["inferred_share"] == 0.05
    assert at_target["target_met"]
    assert at_target["dropped_by_workers"] == 19

    nothing = cancellation_summary({}, set(), [])
    assert (nothing["inferred_share"], nothing["target_met"]) == (0.0, True)


def test_the_stacks_processes_are_known_by_their_command_lines_and_their_cpu_added_up():
    assert process_name(" .venv/bin/python -m gunicorn inferencehub.wsgi:application ") == "web"
    assert process_name(" python -m celery -A inferencehub beat --loglevel INFO ") == "beat"
    assert process_name(" python -m celery worker --queues results --concurrency 2 ") == (
        "celery-results"
    )
    assert process_name(" python manage.py run_worker --model resnet50 ") == "worker"

    spent = cpu_spent({"web": 1.0, "worker": 10.0}, {"web": 3.5, "worker": 20.0, "kafka": 2.0})
    assert spent == {"web": 2.5, "worker": 10.0, "kafka": 2.0, "total": 14.5}
    assert cpu_spent({}, {}) == {}
