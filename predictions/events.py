"""Answers held until jobs change, without polling the database: the job detail's
?wait=N (held_job_detail) and a batch's Server-Sent Events (BatchStream). Both wake when
the job's or batch's channel tells of a change (common/notifications.py), or every
HELD_POLL_SECONDS while Redis is away; both take one of the process's held slots
(common/holding.py)."""

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIRequest
from django.db import connection
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from rest_framework.utils.encoders import JSONEncoder

from common import holding, notifications
from common.limits import WAIT_MAX_SECONDS
from predictions import selectors
from predictions.models import Job
from predictions.queries import JobDetailQuerySerializer
from predictions.serializers import JobSerializer, batch_totals

log = logging.getLogger(__name__)


def held_job_detail(detail_view):
    """An async view in front of the job detail's DRF view (detail_view): it holds a
    GET with ?wait=N, without a thread under ASGI, until the job's channel tells of a
    change that finishes it (or every HELD_POLL_SECONDS while Redis is away), and hands
    every other request to detail_view as it is. DRF has no async views: the reads,
    with their authentication and access rules, are detail_view's own, run as sync code."""
    answer = sync_to_async(detail_view)

    @csrf_exempt  # detail_view does DRF's own CSRF check
    async def view(request: HttpRequest, pk) -> HttpResponse:
        pk = str(pk)
        query = JobDetailQuerySerializer.from_query(request.GET)
        if request.method != "GET" or not query.is_valid() or not query.validated_data["wait"]:
            return await answer(request, pk=pk)
        deadline = time.monotonic() + query.validated_data["wait"]
        response = await answer(request, pk=pk)
        if response.status_code != 200 or response.data["status"] in Job.FINISHED:
            return response
        with holding.held_slot() as held:
            if not held:
                response["Retry-After"] = "1"
                return response
            if not isinstance(request, ASGIRequest):
                await _close_database_connection()
            async with notifications.watching(notifications.job_channel(pk)) as watch:
                # Once after subscribing, then once per change told (or poll).
                look = True
                while time.monotonic() < deadline:
                    if look and await sync_to_async(selectors.job_finished)(pk):
                        break
                    look = await watch.wait(deadline)
        request.held_answer = True
        return await answer(request, pk=pk)

    return view


@sync_to_async
def _close_database_connection() -> None:
    # A thread that holds a request (gunicorn's) must not keep a database connection for
    # the hold; the next read opens one. The held process (ASGI) keeps its one: all its
    # sync code runs in one shared thread (inferencehub/asgi.py), whose connection serves
    # every hold, and closing it would only make the next one's read connect again.
    if not connection.in_atomic_block:
        connection.close()


# How long one event stream lasts: the browser then reconnects, from its last event.
STREAM_SECONDS = WAIT_MAX_SECONDS
# A stream looks at its batch at most this often, however many changes are told.
STREAM_LOOK_SECONDS = 0.5
# A shared reading holds the jobs finished this much longer ago than a stream lasts: a
# stream's own `since` after its first look is never older than its start.
READING_SLACK_SECONDS = 5
# A comment this often keeps proxies from closing a quiet stream.
KEEPALIVE_SECONDS = 10
RETRY_LATER = "retry: 5000\n: every held request of this process is taken\n\n"


def _event(kind: str, event_id: int, data) -> str:
    return f"id: {event_id}\nevent: {kind}\ndata: {json.dumps(data, cls=JSONEncoder)}\n\n"


@dataclass
class BatchReading:
    """One reading of a batch's recent jobs, shared by the held process's streams of it."""

    begun: float = -math.inf  # time.monotonic() when its query began
    now: datetime | None = None
    jobs: list = field(default_factory=list)
    counts: dict = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    streams: int = 0


_readings: dict = {}


async def shared_reading(batch, *, after: float) -> BatchReading:
    """A reading of the batch begun after `after` (when the stream was told of a change):
    the first stream woken by a change reads, the others woken by the same change take its
    reading. So a batch watched by a thousand pages costs one query per change, not a
    thousand, and the process's one thread for sync code stays free for the others."""
    reading = _readings[batch.pk]
    async with reading.lock:
        if reading.begun <= after:
            begun = time.monotonic()
            now = timezone.now()
            since = now - timedelta(seconds=STREAM_SECONDS + READING_SLACK_SECONDS)
            jobs, counts = await sync_to_async(
                lambda: (selectors.recent_batch_jobs(batch, since=since), batch_totals(batch))
            )()
            reading.begun, reading.now, reading.jobs, reading.counts = begun, now, jobs, counts
            log.debug("batch %s read for its %d streams", batch.pk, reading.streams)
    return reading


@contextlib.contextmanager
def streaming(batch) -> Iterator[None]:
    """Counts the held process's streams of a batch; its reading goes with the last."""
    reading = _readings.setdefault(batch.pk, BatchReading())
    reading.streams += 1
    try:
        yield
    finally:
        reading.streams -= 1
        if not reading.streams:
            del _readings[batch.pk]


class BatchStream:
    """The event stream's text: the jobs changed since since_ms, then changes as they
    come; with no serializer context, only the counts. It looks at the batch (one query of
    its unfinished and just finished jobs) when its channel tells of a change, or every
    HELD_POLL_SECONDS while Redis is away (common/notifications.py)."""

    def __init__(self, batch, since_ms: int, context: dict | None) -> None:
        self.batch = batch
        self.context = context
        self.since = datetime.fromtimestamp(since_ms / 1000, tz=UTC)
        self.known: dict = {}
        self.first = True

    def look(self) -> str:
        """The events of one look, "" when nothing changed."""
        now = timezone.now()
        jobs = selectors.recent_batch_jobs(self.batch, since=self.since)
        return self.events_of(jobs, lambda: batch_totals(self.batch), now=now)

    def events_of(self, jobs: list[Job], counts, *, now: datetime) -> str:
        """The events for a reading of the batch's jobs taken at `now`: those changed since
        this stream's last look; counts() only when some did (or on the first look)."""
        changed = [
            job
            for job in jobs
            if (job.finished_at is None or job.finished_at >= self.since)
            and self.known.get(job.pk) != (job.status, job.attempts)
        ]
        # A second of overlap: a job finishing during this look is seen by the next.
        self.since = now - timedelta(seconds=1)
        event_id = int(now.timestamp() * 1000)
        text = ""
        for job in changed:
            self.known[job.pk] = (job.status, job.attempts)
            if self.context is not None:
                text += _event("job", event_id, JobSerializer(job, context=self.context).data)
        if changed or self.first:
            text += _event("counts", event_id, counts())
            self.first = False
        return text

    def opening(self) -> str:
        return f"retry: 1000\n: batch {self.batch.pk}\n\n"

    def events(self) -> Iterator[str]:
        """For a thread (gunicorn's): holds it."""
        with holding.held_slot() as held:
            if not held:
                yield RETRY_LATER
                return
            channel = notifications.batch_channel(self.batch.pk)
            with notifications.watching_sync(channel) as watch:
                yield self.opening()
                pace, look = Pace(), True
                while True:
                    if look:
                        time.sleep(pace.until_look())
                        if text := pace.said(self.look()):
                            yield text
                    if pace.over():
                        return
                    if alive := pace.keepalive():
                        yield alive
                    look = watch.wait_sync(pace.wake_at())

    async def async_events(self) -> AsyncIterator[str]:
        """For the held process's event loop: holds no thread. Its looks after the first
        share one reading of the batch with its other streams (shared_reading)."""
        with holding.held_slot() as held, streaming(self.batch):
            if not held:
                yield RETRY_LATER
                return
            channel = notifications.batch_channel(self.batch.pk)
            async with notifications.watching(channel) as watch:
                yield self.opening()
                pace, look = Pace(), True
                while True:
                    if look:
                        await asyncio.sleep(pace.until_look())
                        if text := pace.said(await self.async_look(watch.reason_at)):
                            yield text
                    if pace.over():
                        return
                    if alive := pace.keepalive():
                        yield alive
                    look = await watch.wait(pace.wake_at())

    async def async_look(self, told_at: float) -> str:
        if self.first:  # from the client's own `since`
            return await sync_to_async(self.look)()
        reading = await shared_reading(self.batch, after=told_at)
        return await sync_to_async(self.events_of)(
            reading.jobs, lambda: reading.counts, now=reading.now
        )


class Pace:
    """When a stream looks, speaks and ends, the same for both loops: a look at most every
    STREAM_LOOK_SECONDS, a keep-alive after KEEPALIVE_SECONDS of silence, the end after
    STREAM_SECONDS."""

    def __init__(self) -> None:
        self.deadline = time.monotonic() + STREAM_SECONDS
        self.spoke = time.monotonic()
        self.looked = -math.inf

    def until_look(self) -> float:
        """Seconds to sleep before the next look; the look is timed from its end."""
        delay = max(0.0, self.looked + STREAM_LOOK_SECONDS - time.monotonic())
        self.looked = time.monotonic() + delay
        return delay

    def said(self, text: str) -> str:
        if text:
            self.spoke = self.looked
        return text

    def over(self) -> bool:
        return time.monotonic() >= self.deadline

    def keepalive(self) -> str:
        if time.monotonic() - self.spoke < KEEPALIVE_SECONDS:
            return ""
        self.spoke = time.monotonic()
        return ": keep-alive\n\n"

    def wake_at(self) -> float:
        return min(self.deadline, self.spoke + KEEPALIVE_SECONDS)
