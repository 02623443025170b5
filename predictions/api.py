"""The REST API under /api/: jobs, batches and the models served."""

import asyncio
import contextlib
import csv
import io
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from django.core.handlers.asgi import ASGIRequest
from django.db import DatabaseError, connection
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    PolymorphicProxySerializer,
    extend_schema,
    extend_schema_view,
)
from rest_framework import mixins, permissions, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import MethodNotAllowed, PermissionDenied
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.pagination import PageNumberPagination
from rest_framework.response import Response
from rest_framework.utils.encoders import JSONEncoder
from rest_framework.views import exception_handler as drf_exception_handler

from common import holding, notifications
from common.errors import error_body, error_response
from common.limits import (
    PAGE_SIZE_DEFAULT,
    PAGE_SIZE_MAX,
    WAIT_MAX_SECONDS,
)
from predictions import selectors, services
from predictions.models import Batch, Job
from predictions.openapi import IDEMPOTENCY_KEY, UPLOAD_REQUEST, errors
from predictions.serializers import (
    BatchDetailQuerySerializer,
    BatchDetailSerializer,
    BatchEventsQuerySerializer,
    BatchExportQuerySerializer,
    BatchSerializer,
    JobCreateSerializer,
    JobDetailQuerySerializer,
    JobListQuerySerializer,
    JobListSerializer,
    JobSerializer,
    ModelMetadataSerializer,
    ModelStatusSerializer,
    batch_events_query,
)
from registry import selectors as registry
from registry.models import ModelVersion


def exception_handler(exc, context):
    """Every API error is {"error": "<readable message>"} plus "fields" for form errors."""
    if isinstance(exc, TooManyFilesSent):
        # Django raises it while reading the form; said here, not only in the log.
        return error_response(
            f"too many files in one request; the limit is {settings.DATA_UPLOAD_MAX_NUMBER_FILES}",
            400,
        )
    if isinstance(exc, RequestDataTooBig):
        # A form or JSON body over what Django reads into memory; files are limited apart.
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        return error_response(f"the request's fields are over the limit of {limit} bytes", 413)
    if isinstance(exc, TooManyFieldsSent):
        limit = settings.DATA_UPLOAD_MAX_NUMBER_FIELDS
        return error_response(f"too many form fields in one request; the limit is {limit}", 400)
    if isinstance(exc, DatabaseError):
        # The database being away is an outage to wait out, not a server bug: a 503 lets
        # clients retry, and nothing was accepted.
        return error_response("the database is unavailable; try again in a few seconds", 503)
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    detail = response.data
    if isinstance(exc, MethodNotAllowed):
        # The Allow header says it to programs; the message says it to people.
        allowed = ", ".join(context["view"].allowed_methods)
        response.data = error_body(
            f"method {context['request'].method} is not allowed here; allowed: {allowed}"
        )
    elif isinstance(detail, dict) and set(detail) == {"detail"}:
        response.data = error_body(str(detail["detail"]))
    elif isinstance(detail, dict):
        messages = [f"{field}: {' '.join(map(str, errors))}" for field, errors in detail.items()]
        response.data = error_body("; ".join(messages), detail)
    else:
        response.data = error_body(" ".join(map(str, detail)))
    return response


class CanUpload(permissions.BasePermission):
    """Uploading needs a signed-in user unless anonymous uploads are switched on."""

    def has_permission(self, request, view) -> bool:
        if view.action == "create":
            return settings.ALLOW_ANONYMOUS_UPLOADS or request.user.is_authenticated
        if view.action == "retrieve":
            return True  # ids are unguessable; the queryset decides what is visible
        return request.user.is_authenticated


class AnyAccept(DefaultContentNegotiation):
    """For views that answer in their own content type (CSV, an event stream): DRF's
    renderer choice, by Accept and ?format=, does not apply to them."""

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


class JobPagination(PageNumberPagination):
    page_size = PAGE_SIZE_DEFAULT
    page_size_query_param = "page_size"
    max_page_size = PAGE_SIZE_MAX


@extend_schema_view(
    retrieve=extend_schema(responses={200: JobSerializer, **errors(404)}),
    destroy=extend_schema(responses={204: None, **errors(404)}),
)
class JobViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    serializer_class = JobSerializer
    permission_classes = [CanUpload]
    pagination_class = JobPagination

    def get_queryset(self) -> QuerySet:
        jobs = selectors.visible_jobs(self.request.user, by_id=self.action == "retrieve")
        jobs = jobs.select_related("routed_to__model").prefetch_related("predictions")
        if selectors.may_see_every_job(self.request.user):
            jobs = jobs.select_related("owner")  # their answers name each job's owner
        if self.action != "list":
            return jobs
        query = JobListQuerySerializer.from_query(
            self.request.query_params, context={"request": self.request}
        )
        query.is_valid(raise_exception=True)
        return selectors.search_jobs(jobs, self.request.user, query.validated_data)

    @extend_schema(
        parameters=[JobListQuerySerializer],
        # 404: a page number past the end.
        responses={200: JobSerializer(many=True), **errors(400, 404)},
    )
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)

    def get_throttles(self) -> list:
        # A held ?wait= answer was counted when it was asked for (held_job_detail).
        if getattr(self.request, "held_answer", False):
            return []
        return super().get_throttles()

    @extend_schema(parameters=[JobDetailQuerySerializer])
    def retrieve(self, request, *args, **kwargs):
        """The job. With `wait=N` (at most 30), the answer is held up to N seconds until
        the job has finished; when the web process holds as many requests as it may, it
        comes at once, with `Retry-After: 1`."""
        # The holding is held_job_detail's, in front of this view.
        query = JobDetailQuerySerializer.from_query(request.query_params)
        query.is_valid(raise_exception=True)
        # One job: where it stands in the queue is worth its few queries here.
        context = {**self.get_serializer_context(), "queue": True}
        return Response(self.get_serializer(self.get_object(), context=context).data)

    @extend_schema(
        request=UPLOAD_REQUEST,
        parameters=[IDEMPOTENCY_KEY],
        responses={
            202: PolymorphicProxySerializer(
                component_name="JobsCreated",
                serializers=[JobSerializer, JobListSerializer],
                resource_type_field_name=None,
            ),
            **errors(400, 409, 413, 422),
        },
    )
    def create(self, request, *args, **kwargs):
        """Upload one or more images (`image` repeated); each becomes a queued job.

        One image answers with the job; several answer with `{"jobs": [...]}`. With an
        `Idempotency-Key` header, sending the same upload again (say, after a lost answer)
        answers with the jobs of the first instead of making new ones.
        """
        if request.query_params:
            # POST ?wait=10 would be a hold that never happens: said, not ignored.
            names = ", ".join(sorted(request.query_params))
            return error_response(f"an upload takes no query parameters; got {names}", 400)
        params = JobCreateSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        try:
            upload = services.upload_images(
                uploader=request.user,
                files=request.FILES.getlist("image"),
                top_k=params.validated_data["top_k"],
                batch_id=params.validated_data.get("batch"),
                seq=params.validated_data.get("seq"),
                upload_key=request.headers.get("Idempotency-Key"),
                model=params.validated_data.get("model"),
                model_version=params.validated_data.get("model_version"),
            )
        except services.UploadError as exc:
            return error_response(str(exc), exc.status)
        return self.jobs_accepted(upload.jobs, replayed=upload.replayed)

    # Sequence: inside this class, `list` is the list action.
    def jobs_accepted(self, jobs: Sequence[Job], *, replayed: bool) -> Response:
        context = self.get_serializer_context()
        # The answer says whether the chosen model has a live worker: the job is accepted
        # either way (Kafka holds it until one starts).
        versions = list({job.routed_to_id: job.routed_to for job in jobs if job.routed_to}.values())
        if versions:
            states = registry.serving_states(versions, max_age_s=registry.UPLOAD_STATE_MAX_AGE_S)
            context["model_ready"] = {v.pk: registry.is_ready(v, states) for v in versions}
        data = JobSerializer(jobs, many=True, context=context).data
        headers = {"Idempotent-Replayed": "true"} if replayed else {}
        if len(jobs) == 1:
            headers["Location"] = data[0]["url"]
            return Response(data[0], status=status.HTTP_202_ACCEPTED, headers=headers)
        return Response({"jobs": data}, status=status.HTTP_202_ACCEPTED, headers=headers)

    @extend_schema(request=None, responses={202: JobSerializer, **errors(404, 409)})
    @action(detail=True, methods=["post"])
    def retry(self, request, pk=None):
        """Run a failed job again from the start, as a new attempt of the same image."""
        job = self.get_object()
        if not selectors.may_act_on(job, request.user, "change"):
            raise PermissionDenied("you may read this job but not retry it")
        retried = services.retry_jobs(jobs=[job])
        job.refresh_from_db()
        if not retried:
            return error_response(
                f"only a failed job can be retried; this one is {job.status}", 409
            )
        data = JobSerializer(job, context=self.get_serializer_context()).data
        return Response(data, status=status.HTTP_202_ACCEPTED)

    def perform_destroy(self, instance: Job) -> None:
        if not selectors.may_act_on(instance, self.request.user, "delete"):
            raise PermissionDenied("you may read this job but not delete it")
        services.delete_job(job=instance)


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
                    if look and await _job_finished(pk):
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


@sync_to_async
def _job_finished(pk: str) -> bool:
    status = Job.objects.filter(pk=pk).values_list("status", flat=True).first()
    return status is None or status in Job.FINISHED


@extend_schema_view(
    create=extend_schema(request=None, responses={201: BatchSerializer, **errors()}),
    list=extend_schema(responses={200: BatchSerializer(many=True), **errors(404)}),
)
class BatchViewSet(
    mixins.CreateModelMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    serializer_class = BatchSerializer
    permission_classes = [CanUpload]

    def get_queryset(self) -> QuerySet:
        batches = selectors.visible_batches(
            self.request.user, by_id=self.action in ("retrieve", "destroy")
        )
        return selectors.with_counts(batches) if self.action == "list" else batches

    def perform_create(self, serializer) -> None:
        owner = self.request.user if self.request.user.is_authenticated else None
        name = serializer.validated_data.get("name", "")
        serializer.instance = services.create_batch(owner=owner, name=name)

    @extend_schema(responses={204: None, **errors(403, 404)})
    def destroy(self, request, *args, **kwargs):
        """Delete the batch with its jobs, their results and stored images: its owner, or
        staff with the delete permission on batches and jobs."""
        return super().destroy(request, *args, **kwargs)

    def perform_destroy(self, instance: Batch) -> None:
        if not selectors.may_delete_batch(instance, self.request.user):
            raise PermissionDenied("only the batch's owner may delete it")
        services.delete_batches(batches=[instance])

    @extend_schema(
        parameters=[BatchDetailQuerySerializer],
        responses={200: BatchDetailSerializer, **errors(400, 404)},
    )
    def retrieve(self, request, *args, **kwargs):
        """The batch with job counts per status and a page of its jobs (seq order) with
        seq in [seq_start, seq_end]; `next` and `previous` link the other pages."""
        batch = self.get_object()
        query = BatchDetailQuerySerializer.from_query(request.query_params)
        query.is_valid(raise_exception=True)
        jobs = batch.jobs.prefetch_related("predictions").order_by("seq", "pk")
        if "seq_start" in query.validated_data:
            jobs = jobs.filter(seq__gte=query.validated_data["seq_start"])
        if "seq_end" in query.validated_data:
            jobs = jobs.filter(seq__lte=query.validated_data["seq_end"])
        paginator = JobPagination()
        page = paginator.paginate_queryset(jobs, request, view=self)
        context = self.get_serializer_context()
        data = BatchSerializer(batch, context=context).data
        data.update(batch_counts(batch))
        data["queue"] = selectors.batch_queue(batch)
        data["jobs_count"] = paginator.page.paginator.count
        data["next"] = paginator.get_next_link()
        data["previous"] = paginator.get_previous_link()
        data["jobs"] = JobSerializer(page, many=True, context=context).data
        return Response(data)

    @extend_schema(
        parameters=[BatchExportQuerySerializer],
        responses={
            (200, "text/csv"): OpenApiTypes.STR,
            (200, "application/json"): OpenApiTypes.OBJECT,
            **errors(400, 404),
        },
    )
    @action(detail=True, methods=["get"], content_negotiation_class=AnyAccept)
    def export(self, request, pk=None):
        """Every job of the batch in seq order, to download: CSV (one row per job with its
        top-1 result) or JSON (with every prediction)."""
        batch = self.get_object()
        query = BatchExportQuerySerializer.from_query(request.query_params)
        query.is_valid(raise_exception=True)
        jobs = batch.jobs.prefetch_related("predictions").order_by("seq", "pk")
        kind = query.validated_data["format"]
        if kind == "csv":
            response = HttpResponse(export_csv(jobs), content_type="text/csv; charset=utf-8")
        else:
            rows = [export_row(job, all_predictions=True) for job in jobs.iterator(500)]
            body = json.dumps({"batch": batch.pk, "jobs": rows}, indent=1, cls=JSONEncoder)
            response = HttpResponse(body, content_type="application/json")
        response["Content-Disposition"] = f'attachment; filename="batch-{batch.pk}.{kind}"'
        return response

    @extend_schema(
        parameters=[BatchEventsQuerySerializer],
        responses={(200, "text/event-stream"): OpenApiTypes.STR, **errors(400, 404)},
    )
    @action(detail=True, methods=["get"], content_negotiation_class=AnyAccept)
    def events(self, request, pk=None):
        """Server-Sent Events of the batch's jobs: a `job` event (the job as
        GET /api/jobs/{id}/ shows it) for each job that changed since `since` (epoch ms)
        or the `Last-Event-ID` (none with `jobs=false`), then a `counts` event (as in the
        batch's detail); then the same whenever jobs change, for up to 30 s. The
        browser's EventSource then reconnects by itself, from the last event's id."""
        batch = self.get_object()
        query = batch_events_query(request.query_params, request.headers.get("Last-Event-ID"))
        stream = BatchStream(
            batch, query["since"], self.get_serializer_context() if query["jobs"] else None
        )
        # Under ASGI (the held process) the stream is async code that holds no thread;
        # Django would read a sync one to its end before sending anything, and the other
        # way round under WSGI.
        asynchronous = isinstance(request._request, ASGIRequest)
        events = stream.async_events() if asynchronous else stream.events()
        response = StreamingHttpResponse(events, content_type="text/event-stream")
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"  # a proxy must pass each event on at once
        return response


def batch_counts(batch) -> dict:
    counts = dict(
        batch.jobs.values_list("status").annotate(n=Count("pk")).values_list("status", "n")
    )
    return {
        "counts": {s: counts.get(s, 0) for s in Job.Status.values},
        "total": sum(counts.values()),
    }


log = logging.getLogger(__name__)

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


def recent_jobs(batch, *, since: datetime) -> list[Job]:
    """The batch's jobs that may have changed since `since`: the unfinished ones and those
    finished since (finished jobs do not change until retried, which unsets finished_at),
    with what their answers show."""
    looked_at = batch.jobs.filter(Q(finished_at__isnull=True) | Q(finished_at__gte=since))
    return list(
        looked_at.select_related("routed_to__model", "owner")
        .prefetch_related("predictions")
        .order_by("seq", "pk")
    )


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
                lambda: (recent_jobs(batch, since=since), batch_counts(batch))
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
        jobs = recent_jobs(self.batch, since=self.since)
        return self.events_of(jobs, lambda: batch_counts(self.batch), now=now)

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

    def events(self) -> Iterator[str]:
        """For a thread (gunicorn's): holds it."""
        with holding.held_slot() as held:
            if not held:
                yield RETRY_LATER
                return
            channel = notifications.batch_channel(self.batch.pk)
            with notifications.watching_sync(channel) as watch:
                yield f"retry: 1000\n: batch {self.batch.pk}\n\n"
                deadline = time.monotonic() + STREAM_SECONDS
                spoke, looked = time.monotonic(), -math.inf
                look = True
                while True:
                    if look:
                        time.sleep(max(0.0, looked + STREAM_LOOK_SECONDS - time.monotonic()))
                        looked = time.monotonic()
                        if text := self.look():
                            yield text
                            spoke = looked
                    if time.monotonic() >= deadline:
                        return
                    if time.monotonic() - spoke >= KEEPALIVE_SECONDS:
                        yield ": keep-alive\n\n"
                        spoke = time.monotonic()
                    look = watch.wait_sync(min(deadline, spoke + KEEPALIVE_SECONDS))

    async def async_events(self) -> AsyncIterator[str]:
        """For the held process's event loop: holds no thread."""
        with holding.held_slot() as held, streaming(self.batch):
            if not held:
                yield RETRY_LATER
                return
            channel = notifications.batch_channel(self.batch.pk)
            async with notifications.watching(channel) as watch:
                yield f"retry: 1000\n: batch {self.batch.pk}\n\n"
                deadline = time.monotonic() + STREAM_SECONDS
                spoke, looked = time.monotonic(), -math.inf
                look = True
                while True:
                    if look:
                        await asyncio.sleep(looked + STREAM_LOOK_SECONDS - time.monotonic())
                        looked = time.monotonic()
                        if self.first:  # from the client's own `since`
                            text = await sync_to_async(self.look)()
                        else:
                            reading = await shared_reading(self.batch, after=watch.reason_at)
                            text = await sync_to_async(self.events_of)(
                                reading.jobs, lambda r=reading: r.counts, now=reading.now
                            )
                        if text:
                            yield text
                            spoke = looked
                    if time.monotonic() >= deadline:
                        return
                    if time.monotonic() - spoke >= KEEPALIVE_SECONDS:
                        yield ": keep-alive\n\n"
                        spoke = time.monotonic()
                    look = await watch.wait(min(deadline, spoke + KEEPALIVE_SECONDS))


EXPORT_FIELDS = [
    "seq",
    "id",
    "file_name",
    "status",
    "label",
    "score",
    "random_weights",
    "error",
    "uploaded_at",
    "finished_at",
]


def export_row(job: Job, *, all_predictions: bool = False) -> dict:
    predictions = list(job.predictions.all()) if job.status == Job.Status.SUCCEEDED else []
    row = {
        "seq": job.seq,
        "id": str(job.pk),
        "file_name": job.original_name,
        "status": job.status,
        "label": predictions[0].label if predictions else "",
        "score": predictions[0].score if predictions else None,
        "random_weights": job.random_weights,
        "error": job.error,
        "uploaded_at": job.created_at.isoformat(),
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
    }
    if all_predictions:
        del row["label"], row["score"]
        row["predictions"] = [
            {"class_id": p.class_id, "label": p.label, "score": p.score} for p in predictions
        ]
    return row


# A spreadsheet runs a cell starting with one of these as a formula (OWASP, CSV
# injection); file names and errors are the uploader's text.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value):
    """A text cell that a spreadsheet shows as text: a formula's first character gets a
    single quote before it. Numbers are left alone."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def export_csv(jobs: QuerySet[Job]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=EXPORT_FIELDS)
    writer.writeheader()
    for job in jobs.iterator(500):
        writer.writerow({field: csv_cell(value) for field, value in export_row(job).items()})
    return out.getvalue()


class CanReadModels(permissions.BasePermission):
    """Whoever may upload may see which models there are to choose from."""

    def has_permission(self, request, view) -> bool:
        return settings.ALLOW_ANONYMOUS_UPLOADS or request.user.is_authenticated


# The Open Inference Protocol's name for what runs each kind of version.
PLATFORMS = {"openvino": "openvino_ir", "tensorflow": "tensorflow_keras"}


class ModelViewSet(viewsets.ViewSet):
    """The registered models, their versions and how each is served right now."""

    permission_classes = [CanReadModels]
    lookup_field = "name"
    lookup_value_regex = "[a-z0-9][a-z0-9-]*"

    @extend_schema(responses={200: ModelStatusSerializer(many=True)})
    def list(self, request):
        """Every registered version, with its live workers and lag read from Kafka."""
        versions = list(ModelVersion.objects.select_related("model"))
        states = registry.serving_states(versions) if versions else {}
        rows = []
        for version in versions:
            state = None if states is None else states[version.pk]
            rows.append(
                {
                    "name": version.model.name,
                    "version": version.version,
                    "source": version.source,
                    "runtime": version.runtime,
                    "precision": version.precision,
                    "input_size": version.input_size,
                    "classes": version.classes,
                    "enabled": version.enabled,
                    "default": version.model.is_default,
                    "ready": registry.is_ready(version, states),
                    "workers": None if state is None else state.members,
                    "lag": None if state is None else state.lag,
                    "requests_topic": version.route.requests_topic,
                    "worker_group": version.route.worker_group,
                }
            )
        return Response(rows)

    @extend_schema(responses={200: ModelMetadataSerializer, **errors(404)})
    def retrieve(self, request, name=None):
        """The model's metadata in the Open Inference Protocol's shape; inputs and outputs
        are those of its latest enabled version (its latest, when none is enabled)."""
        versions = list(
            ModelVersion.objects.filter(model__name=name)
            .select_related("model")
            .order_by("version")
        )
        if not versions:
            return error_response(
                f"no model {name!r}; available: {registry.available() or 'none'}", 404
            )
        enabled = [version for version in versions if version.enabled]
        current = (enabled or versions)[-1]
        return Response(
            {
                "name": name,
                "versions": [str(version.version) for version in enabled],
                "platform": PLATFORMS.get(current.runtime, current.runtime),
                "inputs": [
                    {
                        "name": "image",
                        "datatype": "UINT8",
                        "shape": [-1, current.input_size, current.input_size, 3],
                    }
                ],
                "outputs": [
                    {"name": "probabilities", "datatype": "FP32", "shape": [-1, current.classes]}
                ],
            }
        )
