"""Reads of the webhooks app."""

from datetime import datetime, timedelta

from django.db.models import QuerySet

from webhooks.models import Delivery

# A pending delivery this late has lost its task (Redis flushed, a worker killed past
# its retries): beat's send_due_deliveries sends it again.
OVERDUE = timedelta(seconds=60)


def overdue_deliveries(now: datetime) -> QuerySet[Delivery]:
    return Delivery.objects.filter(
        state=Delivery.State.PENDING, next_attempt_at__lt=now - OVERDUE
    ).order_by("next_attempt_at")
