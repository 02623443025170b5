"""Completion webhooks: each user's signing secret, and each job's deliveries with every
attempt and its answer (docs/webhooks.md)."""

import secrets
import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone

SECRET_PREFIX = "whsec_"


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_hex(32)


class WebhookSecret(models.Model):
    """The key a user's webhooks are signed with (HMAC-SHA256); made on first need. Kept
    as it is: the receiver must know it too, so it cannot be stored hashed as a password."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="webhook_secret"
    )
    secret = models.CharField(max_length=100, default=new_secret)
    created_at = models.DateTimeField(auto_now_add=True)
    rotated_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"webhook secret of {self.user}"


class Delivery(models.Model):
    """One POST of a finished job to its callback URL, retried until delivered or given up."""

    class State(models.TextChoices):
        PENDING = "pending"
        DELIVERED = "delivered"
        # Retried for WEBHOOK_RETRY_FOR_S without a 2xx answer.
        FAILED = "failed"
        # The URL resolved to an address that may not be called; nothing was sent.
        REFUSED = "refused"

    job = models.ForeignKey("predictions.Job", on_delete=models.CASCADE, related_name="deliveries")
    # The job's attempt that finished: a re-run finishes again and is told again, while a
    # result applied twice to the same attempt hits the unique constraint below.
    job_attempt = models.PositiveSmallIntegerField()
    url = models.CharField(max_length=500)
    # Sent with every attempt, so that the receiver can tell a retry from a new delivery.
    delivery_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    # The JSON sent, fixed at the first attempt: every retry sends the same bytes.
    body = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    # When the next attempt is due; while one runs, when it may be taken over (a lease).
    next_attempt_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "deliveries"
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["job", "job_attempt"], name="one_delivery_per_job_attempt"
            ),
        ]
        indexes = [models.Index(fields=["state", "next_attempt_at"])]

    def __str__(self) -> str:
        return str(self.delivery_id)


class Attempt(models.Model):
    """One POST of a delivery and what came of it: a status code, or the error instead."""

    delivery = models.ForeignKey(Delivery, on_delete=models.CASCADE, related_name="attempts")
    at = models.DateTimeField(default=timezone.now)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    duration_ms = models.FloatField(null=True, blank=True)

    class Meta:
        ordering = ["delivery", "at"]

    def __str__(self) -> str:
        return f"{self.status_code or self.error[:40]} at {self.at:%Y-%m-%d %H:%M:%S}"
