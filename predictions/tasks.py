"""Thin Celery tasks: they take ids or plain data and call a service."""

from celery import shared_task
from django.conf import settings
from django.db import DatabaseError

from kafka_wire.contract import InferenceResult
from kafka_wire.producer import TRANSIENT_ERRORS as KAFKA_TRANSIENT_ERRORS
from predictions import pipeline, services
from predictions.storage import STORE_UNAVAILABLE

# Kafka, the database or the image store being briefly away is waited out, not turned
# into a failed job.
TRANSIENT_ERRORS = (*KAFKA_TRANSIENT_ERRORS, DatabaseError, *STORE_UNAVAILABLE)
RETRY_POLICY = {
    "autoretry_for": TRANSIENT_ERRORS,
    "retry_backoff": 1,
    "retry_backoff_max": 30,
    "retry_jitter": True,
    "max_retries": None,
}


# Named by services, which enqueue it after commit without importing this module.
@shared_task(name=pipeline.PREPROCESS_TASK, **RETRY_POLICY)
def preprocess_jobs(job_ids: list[str]) -> None:
    pipeline.preprocess_and_submit(job_ids=job_ids)


# Finished jobs free places in flight: the next waiting ones are admitted at once.
@shared_task(**RETRY_POLICY)
def store_results(results: list[dict]) -> None:
    pipeline.record_results(results=[InferenceResult.from_dict(result) for result in results])
    pipeline.dispatch_jobs()


@shared_task(**RETRY_POLICY)
def fail_job(job_id: str, reason: str) -> None:
    pipeline.fail_job(job_id=job_id, reason=reason)
    pipeline.dispatch_jobs()


# Beat's, every DISPATCH_INTERVAL_SECONDS. Its task's span starts no trace
# (inferencehub/celery.py): most passes admit nothing, and one that admits jobs starts its
# own trace with its "dispatch" span (pipeline.dispatch_jobs).
@shared_task(**RETRY_POLICY)
def dispatch_jobs() -> int:
    return pipeline.dispatch_jobs()


@shared_task
def sweep_stuck_jobs() -> tuple[int, int]:
    pipeline.expire_overdue_jobs()
    return pipeline.sweep_stuck_jobs()


@shared_task
def purge_old_results() -> int:
    if not settings.RESULT_RETENTION_DAYS:
        return 0
    return services.purge_old_results(older_than_days=settings.RESULT_RETENTION_DAYS)


@shared_task
def purge_old_images() -> int:
    if not settings.IMAGE_RETENTION_DAYS:
        return 0
    return services.purge_old_images(older_than_days=settings.IMAGE_RETENTION_DAYS)
