"""Thin Celery tasks of the webhooks queue (a worker of its own: stack/processes.py)."""

from celery import shared_task
from django.db import DatabaseError

from webhooks import services

RETRY_POLICY = {
    "autoretry_for": (DatabaseError,),
    "retry_backoff": 1,
    "retry_backoff_max": 30,
    "retry_jitter": True,
    "max_retries": None,
}


# Named by services, which enqueue it after commit without importing this module.
@shared_task(name=services.DELIVER_TASK, **RETRY_POLICY)
def deliver(delivery_pk: int) -> None:
    delay = services.attempt_delivery(delivery_pk=delivery_pk)
    if delay is not None:
        deliver.apply_async(args=[delivery_pk], countdown=delay)


@shared_task
def send_due_deliveries() -> int:
    return services.send_due_deliveries()
