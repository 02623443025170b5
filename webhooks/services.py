"""Writes of the webhooks app: secrets, and deliveries with their attempts.

A finished job with a callback URL gets one Delivery per attempt of the job that finished
(job_finished, sent by predictions' transitions); the `deliver` task makes its attempts
(attempt_delivery), each recorded with its answer, until one is answered 2xx or
WEBHOOK_RETRY_FOR_S has passed. At least once: a delivery whose task was lost is sent
again by beat (send_due_deliveries), and the receiver tells repeats apart by the delivery
id header."""

import contextlib
import logging
import random
import socket
import threading
import time
from datetime import timedelta

import requests
import requests.adapters
from celery import current_app
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone
from rest_framework.renderers import JSONRenderer

from common.callbacks import CallbackRefused, IPAddress, Unresolvable, check_callback_url
from predictions.models import Job
from predictions.serializers import JobSerializer
from webhooks import signing
from webhooks.models import Attempt, Delivery, WebhookSecret, new_secret
from webhooks.selectors import overdue_deliveries

log = logging.getLogger(__name__)

# The Celery task that makes an attempt (webhooks/tasks.py registers it so).
DELIVER_TASK = "webhooks.tasks.deliver"
# Exponential backoff: the n-th retry waits about RETRY_BASE_S * 2**(n-1), at most
# RETRY_MAX_INTERVAL_S, jittered so that a receiver back up is not hit by every delivery
# at once. The cap stays under Celery's visibility timeout (300 s by default): with the
# Redis broker, a task due later than that is handed to a second worker meanwhile.
RETRY_BASE_S = 1.0
RETRY_MAX_INTERVAL_S = 240.0
# A task due at next_attempt_at may run a little before it by another host's clock.
CLOCK_SLACK = timedelta(seconds=2)
# Kept of an error's text, and of the answer's body: nothing; only its status matters.
ERROR_MAX = 1000
USER_AGENT = "InferenceHub-Webhooks/1"


def ensure_secret(*, user: AbstractBaseUser) -> WebhookSecret:
    """The user's webhook secret, made now if they have none yet."""
    with transaction.atomic():
        secret, _ = WebhookSecret.objects.get_or_create(user=user)
    return secret


def rotate_secret(*, user: AbstractBaseUser) -> WebhookSecret:
    """A new secret for the user; attempts from now on are signed with it alone."""
    with transaction.atomic():
        secret, created = WebhookSecret.objects.select_for_update().get_or_create(user=user)
        if not created:
            secret.secret = new_secret()
            secret.rotated_at = timezone.now()
            secret.save(update_fields=["secret", "rotated_at"])
    return secret


def create_deliveries(*, job_ids: list) -> None:
    """A pending delivery for each of these finished jobs that has a callback URL, its task
    enqueued once the transition that finished them commits (job_finished's receiver,
    webhooks/apps.py, calls this inside it). A job's attempt gets one delivery whatever
    tells of it twice (the unique constraint)."""
    finished = list(
        Job.objects.filter(pk__in=job_ids)
        .exclude(callback_url="")
        .values_list("pk", "attempts", "callback_url")
    )
    if not finished:
        return
    with transaction.atomic():
        Delivery.objects.bulk_create(
            [Delivery(job_id=pk, job_attempt=attempt, url=url) for pk, attempt, url in finished],
            ignore_conflicts=True,
        )
        wanted = {(pk, attempt) for pk, attempt, _ in finished}
        pending = [
            delivery_pk
            for delivery_pk, job_id, attempt in Delivery.objects.filter(
                job_id__in=[pk for pk, _, _ in finished], state=Delivery.State.PENDING
            ).values_list("pk", "job_id", "job_attempt")
            if (job_id, attempt) in wanted
        ]
        # robust: Redis being away must not undo or fail the committed transition; the
        # delivery waits for beat's send_due_deliveries instead.
        transaction.on_commit(lambda: _enqueue(pending), robust=True)


def _enqueue(delivery_pks: list[int]) -> None:
    for pk in delivery_pks:
        current_app.send_task(DELIVER_TASK, args=[pk])


def send_due_deliveries(*, limit: int = 1000) -> int:
    """Enqueue the pending deliveries whose task is overdue (lost); returns how many."""
    pks = list(overdue_deliveries(timezone.now()).values_list("pk", flat=True)[:limit])
    _enqueue(pks)
    return len(pks)


def attempt_delivery(*, delivery_pk: int) -> float | None:
    """Make the delivery's next attempt if it is due and no one else is making it, and
    record it. Returns the seconds until the attempt after it, or None: delivered, given
    up (failed), refused, or not this caller's to make."""
    now = timezone.now()
    # Taken with a lease rather than a lock held across the POST: a task redelivered by the
    # broker, or a second one from beat, finds it taken and does nothing.
    lease = now + timedelta(seconds=settings.WEBHOOK_TIMEOUT_S * 3)
    taken = Delivery.objects.filter(
        pk=delivery_pk, state=Delivery.State.PENDING, next_attempt_at__lte=now + CLOCK_SLACK
    ).update(next_attempt_at=lease)
    if not taken:
        return None
    delivery = Delivery.objects.select_related("job__owner").get(pk=delivery_pk)
    job = delivery.job
    if not delivery.body:
        delivery.body = job_json(job)
        Delivery.objects.filter(pk=delivery_pk).update(body=delivery.body)
    try:
        address = check_callback_url(delivery.url)
    except Unresolvable as exc:
        return _record(delivery, status_code=None, error=str(exc), duration_ms=None)
    except CallbackRefused as exc:
        return _record(
            delivery,
            status_code=None,
            error=f"refused, not sent: {exc}",
            duration_ms=None,
            state=Delivery.State.REFUSED,
        )
    if job.owner is None:
        # Anonymous uploads take no callback URL: there is no one's secret to sign with.
        return _record(
            delivery,
            status_code=None,
            error="refused, not sent: the job has no owner",
            duration_ms=None,
            state=Delivery.State.REFUSED,
        )
    secret = ensure_secret(user=job.owner).secret
    body = delivery.body.encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        signing.SIGNATURE_HEADER: signing.signature(secret, int(time.time()), body),
        signing.DELIVERY_HEADER: str(delivery.delivery_id),
        signing.EVENT_HEADER: signing.EVENT,
    }
    started = time.perf_counter()
    status_code, error = None, ""
    try:
        status_code = post_within(
            delivery.url,
            address=address,
            body=body,
            headers=headers,
            total_s=settings.WEBHOOK_TIMEOUT_S,
        )
    except requests.RequestException as exc:
        error = f"{type(exc).__name__}: {exc}"[:ERROR_MAX]
    duration_ms = (time.perf_counter() - started) * 1000
    return _record(delivery, status_code=status_code, error=error, duration_ms=duration_ms)


def _record(
    delivery: Delivery,
    *,
    status_code: int | None,
    error: str,
    duration_ms: float | None,
    state: str = "",
) -> float | None:
    now = timezone.now()
    delay = None
    with transaction.atomic():
        Attempt.objects.create(
            delivery=delivery,
            at=now,
            status_code=status_code,
            error=error,
            duration_ms=duration_ms,
        )
        if not state and status_code is not None and 200 <= status_code < 300:
            state = Delivery.State.DELIVERED
        if not state:
            delay = backoff(delivery.attempts.count())
            deadline = delivery.created_at + timedelta(seconds=settings.WEBHOOK_RETRY_FOR_S)
            if now + timedelta(seconds=delay) > deadline:
                state, delay = Delivery.State.FAILED, None
        changes = {"state": state, "finished_at": now} if state else {}
        if delay is not None:
            changes["next_attempt_at"] = now + timedelta(seconds=delay)
        Delivery.objects.filter(pk=delivery.pk).update(**changes)
    log.info(
        "webhook %s of job %s: %s",
        delivery.delivery_id,
        delivery.job_id,
        status_code or error,
        extra={"job_id": str(delivery.job_id)},
    )
    return delay


def post_within(
    url: str, *, address: IPAddress | None, body: bytes, headers: dict, total_s: float
) -> int:
    """POST to url (at the address checked) and return the answer's status, all within
    total_s: requests' own timeout is per read, which a receiver sending a byte now and
    then never trips, holding a thread of the webhooks worker and outliving the delivery's
    lease. So the connection is cut when the time is up (requests.Timeout)."""
    with pinned_session(address) as session:
        adapter = session.get_adapter(url)
        timer = threading.Timer(total_s, adapter.cut)
        timer.start()
        try:
            # No redirects: one to a private address would go around the address check.
            with session.post(
                url,
                data=body,
                headers=headers,
                timeout=total_s,
                allow_redirects=False,
                stream=True,
            ) as response:
                status_code = response.status_code
        except requests.RequestException:
            if not adapter.was_cut:
                raise
        finally:
            timer.cancel()
    # Cut, the answer's head may even read as whole (what came before the cut).
    if adapter.was_cut:
        raise requests.Timeout(f"no whole answer within {total_s:g} s")
    return status_code


def pinned_session(address: IPAddress | None) -> requests.Session:
    """A session whose connections go to this address, whatever DNS answers for the URL's
    host by then: the check's answer is the one used, so a name that resolves to a public
    address for the check and a private one a moment later (DNS rebinding) cannot reach
    inside. TLS still checks the certificate against the URL's host. None: plain DNS (a
    host the operator allow-listed by name)."""
    session = requests.Session()
    adapter = _PinnedAdapter(None if address is None else str(address))
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class _PinnedAdapter(requests.adapters.HTTPAdapter):
    """Connects to the address given (None: the URL's host, by DNS), keeping the sockets it
    opens so that cut() can end them from another thread."""

    def __init__(self, address: str | None) -> None:
        self._address = address
        self.sockets: list[socket.socket] = []
        self.was_cut = False
        super().__init__()

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        # A copy: the pool manager's mapping is urllib3's module-wide default.
        self.poolmanager.pool_classes_by_scheme = {
            scheme: _pinned_pool(pool, self._address, self.sockets)
            for scheme, pool in self.poolmanager.pool_classes_by_scheme.items()
        }

    def cut(self) -> None:
        """End every connection at once: a read blocked on one returns as if closed."""
        self.was_cut = True
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def _pinned_pool(pool: type, address: str | None, sockets: list) -> type:
    connection = pool.ConnectionCls

    def _new_conn(self):
        # urllib3 connects to _dns_host and names the host to TLS from it afterwards:
        # swapped for the connect alone.
        named = self._dns_host
        if address is not None:
            self._dns_host = address
        try:
            sock = connection._new_conn(self)
        finally:
            self._dns_host = named
        sockets.append(sock)
        return sock

    pinned = type(f"Pinned{connection.__name__}", (connection,), {"_new_conn": _new_conn})
    return type(f"Pinned{pool.__name__}", (pool,), {"ConnectionCls": pinned})


def backoff(attempts_made: int) -> float:
    """Seconds before the next attempt, after this many: doubling from RETRY_BASE_S up to
    RETRY_MAX_INTERVAL_S, a random half of it taken off (jitter)."""
    ceiling = min(RETRY_MAX_INTERVAL_S, RETRY_BASE_S * 2 ** max(attempts_made - 1, 0))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def job_json(job: Job) -> str:
    """The job as GET /api/jobs/{id}/ shows it (its url a path: no request to take the
    host from)."""
    return JSONRenderer().render(JobSerializer(job).data).decode()
