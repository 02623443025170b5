"""The pipeline's transitions: the dispatcher admitting waiting jobs, preprocessing and
handing them to Kafka, storing the workers' results, failing a job, and the sweep of
stuck attempts.

Celery tasks, the result bridge and the uploads call these; they never call back into
those layers except to enqueue work after commit, which they do by task name
(PREPROCESS_TASK) so that this module does not import the tasks that import it."""

import logging
import time
from datetime import UTC, datetime, timedelta

from celery import current_app
from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import Case, Count, FloatField, Value, When
from django.utils import timezone
from opentelemetry import trace

from common import notifications, tracing
from common.images import CENTRE_SQUARE, Fit, prepare_upload
from common.lanes import HIGH, lane_places
from common.logs import about_jobs
from kafka_wire.config import lane_name
from kafka_wire.contract import InferenceRequest, InferenceResult
from kafka_wire.headers import request_id_headers
from kafka_wire.requests import publish_requests
from predictions import selectors
from predictions.models import Job, Prediction
from predictions.signals import job_finished
from predictions.storage import STORE_UNAVAILABLE, THUMBNAIL_SIZES, save_thumbnails

log = logging.getLogger(__name__)


# Jobs per preprocessing task: an upload of many images is one Celery task and one Kafka
# flush per this many, rather than one of each per image.
PREPROCESS_CHUNK = 32
# The Celery task that calls preprocess_and_submit (predictions/tasks.py registers it so).
PREPROCESS_TASK = "predictions.tasks.preprocess_jobs"


def _enqueue_preprocess(job_ids: list) -> None:
    ids = [str(job_id) for job_id in job_ids]
    for start in range(0, len(ids), PREPROCESS_CHUNK):
        current_app.send_task(PREPROCESS_TASK, args=[ids[start : start + PREPROCESS_CHUNK]])


# Admitted and not finished: on their way through preprocessing, Kafka and a worker.
IN_FLIGHT = (Job.Status.QUEUED, Job.Status.PREPROCESSED, Job.Status.SUBMITTED)


def dispatch_jobs() -> int:
    """Admit waiting jobs to preprocessing, per model version, while fewer than
    DISPATCH_IN_FLIGHT_PER_MODEL of its jobs are in flight (high jobs: that plus
    DISPATCH_HIGH_EXTRA_IN_FLIGHT), high lanes first with a share kept for the lower ones,
    in the round-robin order over owners of predictions/selectors.py within a lane;
    returns how many were admitted.

    Jobs wait in the database rather than in Celery or Kafka, which serve first in, first
    out: so one uploader's backlog never stands in front of another's job. Runs after
    each upload and each stored batch of results, and from beat. One dispatcher at a time
    (a MariaDB named lock); one that finds it taken returns at once, since the one holding
    it goes round again until nothing more is admitted. Admission is guarded by the row
    too: a job is admitted once per attempt."""
    # Whoever calls it (an upload, a stored batch, beat), the dispatcher admits anyone's
    # jobs: a pass that admits is a trace of its own (_admit_next), linked to the caller's
    # span, and the queries looking for jobs to admit, no part of the caller's trace,
    # start none (common/sampling.py).
    caller = trace.get_current_span().get_span_context()
    with tracing.without_parent():
        # SQLite has no named locks. It serves only the fast tier's tests (tests/domain):
        # one process, with no other dispatcher to keep out.
        if connection.vendor != "mysql":
            return _admit_all(caller)
        with connection.cursor() as cursor:
            # Named per database: the test runs on one server each have their own.
            cursor.execute("SELECT GET_LOCK(CONCAT(DATABASE(), '.dispatch'), 0)")
            if not cursor.fetchone()[0]:
                return 0
            try:
                return _admit_all(caller)
            finally:
                cursor.execute("SELECT RELEASE_LOCK(CONCAT(DATABASE(), '.dispatch'))")


def dispatch_after_commit() -> None:
    """Run the dispatcher once the current transaction commits (a request's change freed
    places in flight or made jobs wait). Its failure there is logged, not raised: the
    change is committed, and a request answered 503 would say it was not; beat's dispatch,
    every DISPATCH_INTERVAL_SECONDS, admits the jobs instead."""
    transaction.on_commit(dispatch_or_leave_to_beat)


def dispatch_or_leave_to_beat() -> None:
    """dispatch_jobs(), its failure logged for beat's next pass to make good."""
    from kombu.exceptions import OperationalError as BrokerError
    from redis.exceptions import RedisError

    try:
        dispatch_jobs()
    except (DatabaseError, BrokerError, RedisError) as exc:
        log.warning("dispatch left to beat's next pass: %s", exc)


def _admit_all(caller: trace.SpanContext) -> int:
    admitted = 0
    while admitted_now := _admit_next(caller):
        admitted += admitted_now
    return admitted


def _admit_next(caller: trace.SpanContext) -> int:
    """One pass of the dispatcher: admit what fits now, enqueue its preprocessing."""
    in_flight = dict(
        Job.objects.filter(status__in=IN_FLIGHT, admitted_at__isnull=False)
        .order_by()
        .values_list("routed_to_id")
        .annotate(Count("pk"))
    )
    waiting_models = (
        Job.objects.filter(status=Job.Status.QUEUED, admitted_at__isnull=True)
        .order_by()
        .values_list("routed_to_id", flat=True)
        .distinct()
    )
    chosen: list = []
    for model in waiting_models:
        chosen += _next_of_model(model, in_flight.get(model, 0))
    if not chosen:
        return 0
    # A span for a pass that admits, not for every pass: beat's (tasks.dispatch_jobs), every
    # DISPATCH_INTERVAL_SECONDS, leaves a trace only when it admits jobs.
    links, linked = tracing.link_to(caller)
    with tracing.tracer.start_as_current_span("dispatch", links=links, attributes=linked) as span:
        admitted = _admit(chosen)
        span.set_attribute("inferencehub.admitted", len(admitted))
    return len(admitted)


def _admit(chosen: list) -> list:
    """Admit those of the chosen jobs still waiting and enqueue their preprocessing; returns
    their ids."""
    with transaction.atomic():
        # Locked by primary key alone, in its order, as cancelling and storing results lock:
        # a lock taken through the status index would wait for a job's row while holding its
        # index entry, which a cancel changing that status needs: a deadlock (seen at load).
        locked = (
            Job.objects.select_for_update()
            .filter(pk__in=chosen)
            .order_by("pk")
            .values_list("pk", "status", "admitted_at")
        )
        admitted = [
            pk
            for pk, status, admitted_at in locked
            if status == Job.Status.QUEUED and admitted_at is None
        ]
        Job.objects.filter(pk__in=admitted).update(admitted_at=timezone.now())
    try:
        _enqueue_preprocess(admitted)
    except Exception:
        # Back to waiting: admitted without a task, they would wait for the sweep.
        Job.objects.filter(pk__in=admitted, status=Job.Status.QUEUED).update(admitted_at=None)
        raise
    return admitted


def _next_of_model(model, in_flight: int) -> list:
    """The jobs of one model version to admit now, of its `in_flight`: the free places
    under DISPATCH_IN_FLIGHT_PER_MODEL shared between the lanes by common/lanes.py's rule,
    plus up to DISPATCH_HIGH_EXTRA_IN_FLIGHT places beyond it for high jobs only; within a
    lane, round-robin over owners."""
    cap = settings.DISPATCH_IN_FLIGHT_PER_MODEL
    free = max(0, cap - in_flight)
    high_extra = max(0, cap + settings.DISPATCH_HIGH_EXTRA_IN_FLIGHT - in_flight) - free
    if not free and not high_extra:
        return []
    waiting = selectors.waiting_per_lane(model)
    counts = {lane: sum(owners.values()) for lane, owners in waiting.items()}
    credit = selectors.lane_credit(model)
    places, carried = lane_places(
        counts, free, share=settings.PRIORITY_LOWER_LANE_SHARE, credit=credit
    )
    if carried != credit:
        selectors.remember_lane_credit(model, carried)
    places[HIGH] += min(high_extra, counts.get(HIGH, 0) - places[HIGH])
    chosen: list = []
    for lane, owners in waiting.items():
        if not places[lane]:
            continue
        shares, last = selectors.round_robin_shares(
            owners, places[lane], selectors.last_served(model, lane)
        )
        for owner, share in shares.items():
            if share:
                oldest = selectors.waiting_jobs(model, lane).filter(owner_id=owner)
                chosen += oldest.order_by("created_at", "pk").values_list("pk", flat=True)[:share]
        if last != "":
            selectors.remember_served(model, lane, last)
    return chosen


# What preprocess_and_submit reads of a job and of the version it is routed to.
REQUEST_FIELDS = (
    "batch_id",
    "image",
    "top_k",
    "attempts",
    "request_id",
    "trace_parent",
    "deadline",
    "priority",
    "routed_to__input_size",
    "routed_to__input_spec",
    "routed_to__version",
    "routed_to__model__name",
)
# PREPROCESSED means an earlier run of the preprocessing could not hand the request to
# Kafka: its retry must go on. Anything later was handled by an earlier delivery.
WAITING_FOR_KAFKA = (Job.Status.QUEUED, Job.Status.PREPROCESSED)


def preprocess_and_submit(*, job_ids: list[str]) -> None:
    """Turn the jobs' stored originals into model-ready tensors and hand them to Kafka.

    A job whose image cannot be decoded fails with the reason, and one past its deadline
    expires; the others go on. A job cancelled meanwhile is no longer waiting and is not
    read. Kafka refusing raises, and a retry resubmits every job of the call not yet
    submitted.
    """
    # Only the columns a request needs, unordered: building the SQL for every column of
    # three tables and the default ordering was most of a one-image task's own CPU.
    jobs = list(
        # Admitted: a task of an attempt the sweep has put back to wait finds nothing.
        Job.objects.filter(pk__in=job_ids, status__in=WAITING_FOR_KAFKA, admitted_at__isnull=False)
        .select_related("routed_to__model")
        .only(*REQUEST_FIELDS)
        .order_by()
    )
    # Each job goes to its model version's topic of its priority lane at that model's
    # input size, cut as its input spec says; a job of no registered model takes the
    # unregistered requests topic (of its lane) and MODEL_INPUT_SIZE.
    by_topic: dict[str, list[InferenceRequest]] = {}
    headers: dict[str, list] = {}
    decode_ms: dict = {}
    now = timezone.now()
    for job in jobs:
        if job.deadline is not None and job.deadline <= now:
            expire_job(
                job_id=job.pk,
                reason=f"deadline {job.deadline.isoformat()} passed before preprocessing",
            )
            continue
        # Each job's preprocessing is a span of its own trace, whichever task it is in.
        with tracing.tracer.start_as_current_span(
            "preprocess",
            context=tracing.context_of(job.trace_parent),
            attributes={"inferencehub.job_id": str(job.pk)},
        ):
            prepared = _prepared_request(job, decode_ms)
            if prepared is None:
                continue
            topic, request = prepared
            by_topic.setdefault(topic, []).append(request)
            headers[request.job_id] = request_id_headers(
                job.request_id, tracing.current_traceparent()
            )
    if not by_topic:
        return
    batches = {job.batch_id for job in jobs if job.pk in decode_ms}
    preprocessed_at = timezone.now()
    try:
        publish_requests(by_topic, headers)
    except Exception:
        # Recorded so that the status says where the job waits while Kafka is away.
        _mark_preprocessed(decode_ms, batches, at=preprocessed_at, status=Job.Status.PREPROCESSED)
        raise
    sent = [request.job_id for requests in by_topic.values() for request in requests]
    about, extra = about_jobs(sent)
    log.info("%d requests handed to Kafka: %s", len(sent), about, extra=extra)
    # Both transitions in one statement: a job is written once on its way to Kafka.
    _mark_preprocessed(
        decode_ms,
        batches,
        at=preprocessed_at,
        status=Job.Status.SUBMITTED,
        submitted_at=timezone.now(),
    )


def _prepared_request(job: Job, decode_ms: dict) -> tuple[str, InferenceRequest] | None:
    """The job's topic and request, its decode time put in decode_ms; None, the job failed,
    when its image cannot be decoded."""
    route = job.routed_to
    size = route.input_size if route else settings.MODEL_INPUT_SIZE
    fit = Fit.from_spec(route.input_spec) if route else CENTRE_SQUARE
    topic = lane_name(
        route.route.requests_topic if route else settings.KAFKA_REQUESTS_TOPIC, job.priority
    )
    started = time.perf_counter()
    try:
        with job.image.open("rb") as file:
            # The thumbnails from the same decode: serving one then reads a small file.
            prepared = prepare_upload(file, size=size, thumbnail_sizes=THUMBNAIL_SIZES, fit=fit)
    except (OSError, ValueError) as exc:
        fail_job(job_id=job.pk, reason=f"preprocessing failed: {exc}")
        return None
    decode_ms[job.pk] = (time.perf_counter() - started) * 1000
    tensor = prepared.model_input
    try:
        save_thumbnails(job.image.storage, job.image.name, prepared.thumbnails)
    except (*STORE_UNAVAILABLE, OSError) as exc:
        # The job goes on; its thumbnail is made on its first request instead.
        log.warning("thumbnails of job %s not stored: %s", job.pk, exc)
    return topic, InferenceRequest(
        job_id=str(job.pk),
        top_k=job.top_k,
        image=tensor,
        submitted_at_ms=int(time.time() * 1000),
        attempt=job.attempts,
        deadline_ms=int(job.deadline.timestamp() * 1000) if job.deadline else None,
    )


def _mark_preprocessed(
    decode_ms: dict, batches: set, *, at: datetime, status: str, **fields
) -> None:
    """One UPDATE of the jobs decoded (by pk: their decode time in ms) that are still
    waiting: they all share one timestamp, and only their decode times differ. batches:
    theirs, told of the change with them."""
    Job.objects.filter(pk__in=decode_ms, status__in=WAITING_FOR_KAFKA).update(
        status=status,
        preprocessed_at=at,
        preprocess_ms=Case(
            *(When(pk=pk, then=Value(ms)) for pk, ms in decode_ms.items()),
            output_field=FloatField(),
        ),
        **fields,
    )
    notifications.publish_after_commit(jobs=decode_ms, batches=batches)


def record_results(*, results: list[InferenceResult]) -> int:
    """Store a batch of worker results in one transaction; returns how many were stored.

    A result for a job that has finished (a redelivery, or a job cancelled or expired
    meanwhile) or does not exist changes nothing, so storing is idempotent. One locking
    read, one insert of all predictions, and one update per set of jobs whose new values
    are the same (the results of one inference batch share them): a transaction per result
    costs the pipeline more CPU than anything but the model.
    """
    by_job: dict[str, InferenceResult] = {}
    for result in results:
        by_job.setdefault(result.job_id, result)  # a second one in the batch is a redelivery
    started_ns = time.time_ns()
    with (
        tracing.tracer.start_as_current_span(
            "store results", attributes={"inferencehub.results": len(by_job)}
        ) as store_span,
        transaction.atomic(),
    ):
        # Locked in primary-key order, so two batches never wait for each other in a cycle.
        jobs = list(
            Job.objects.select_for_update()
            .filter(pk__in=by_job)
            .order_by("pk")
            .only("pk", "status", "top_k", "batch_id", "trace_parent")
        )
        for unknown in by_job.keys() - {str(job.pk) for job in jobs}:
            log.warning("result for unknown job %s ignored", unknown)
        now = timezone.now()
        updates: dict[tuple, list] = {}
        predictions: list[Prediction] = []
        ignored: list[Job] = []
        for job in jobs:
            if job.is_finished:
                ignored.append(job)
                continue
            result = by_job[str(job.pk)]
            fields = {
                "model_name": result.model[:100],
                "model_version": result.model_version or None,
                "model_weights": result.weights[:255],
                "runtime": result.runtime[:16],
                "precision": result.precision[:8],
                "worker": result.worker[:255],
                "inference_batch_size": result.batch_size or None,
                "inference_ms": result.inference_ms,
                "inferred_at": (
                    datetime.fromtimestamp(result.inferred_at_ms / 1000, tz=UTC)
                    if result.inferred_at_ms
                    else now
                ),
                "finished_at": now,
            }
            if result.expired:
                fields["status"] = Job.Status.EXPIRED
                fields["error"] = result.error
            elif result.ok:
                fields["status"] = Job.Status.SUCCEEDED
                predictions += [
                    Prediction(
                        job_id=job.pk, rank=rank, class_id=p.class_id, label=p.label, score=p.score
                    )
                    for rank, p in enumerate(result.predictions[: job.top_k], start=1)
                ]
            else:
                fields["status"] = Job.Status.FAILED
                fields["error"] = result.error or "the worker reported an error without a reason"
            updates.setdefault(tuple(fields.items()), []).append(job.pk)
        Prediction.objects.bulk_create(predictions)
        for fields, pks in updates.items():
            Job.objects.filter(pk__in=pks).update(**dict(fields))
        stored = {pk for pks in updates.values() for pk in pks}
        notifications.publish_after_commit(
            jobs=stored, batches={job.batch_id for job in jobs if job.pk in stored}
        )
        if stored:
            job_finished.send(sender=Job, job_ids=sorted(stored))
    if stored:
        about, extra = about_jobs([str(pk) for pk in stored])
        log.info("%d results stored: %s", len(stored), about, extra=extra)
    if ignored:
        _log_ignored(ignored)
    # Each stored job's hop in its own trace; the transaction, shared by up to 64 jobs of
    # as many traces, is the one span they link to.
    links, linked = tracing.link_to(store_span.get_span_context())
    for job in jobs:
        if job.pk in stored and job.trace_parent:
            tracing.tracer.start_span(
                "result stored",
                context=tracing.context_of(job.trace_parent),
                start_time=started_ns,
                links=links,
                attributes={"inferencehub.job_id": str(job.pk), **linked},
            ).end()
    return len(stored)


def _log_ignored(jobs: list[Job]) -> None:
    """One line for the results that came for jobs already finished, by the jobs' status: a
    redelivery's for a succeeded job costs nothing, but one for a cancelled job is an
    inference the cancellation came too late to save."""
    statuses: dict[str, int] = {}
    for job in jobs:
        statuses[job.status] = statuses.get(job.status, 0) + 1
    about, extra = about_jobs([str(job.pk) for job in jobs])
    log.info(
        "%d results ignored, their jobs finished already (%s): %s",
        len(jobs),
        ", ".join(f"{status} {count}" for status, count in sorted(statuses.items())),
        about,
        extra=extra,
    )


def fail_job(*, job_id, reason: str) -> bool:
    """Mark an unfinished job failed with a readable reason; False if it had finished."""
    return _end_job(job_id, Job.Status.FAILED, reason)


def expire_job(*, job_id, reason: str) -> bool:
    """Mark an unfinished job expired (its deadline passed) with the reason; False if it
    had finished."""
    return _end_job(job_id, Job.Status.EXPIRED, reason)


def _end_job(job_id, status: str, reason: str) -> bool:
    # Atomic: the end and what job_finished's receivers write (a webhook's delivery)
    # commit together or not at all.
    with transaction.atomic():
        updated = (
            Job.objects.filter(pk=job_id)
            .exclude(status__in=Job.FINISHED)
            .update(status=status, error=reason, finished_at=timezone.now())
        )
        if updated:
            log.info("job %s %s: %s", job_id, status, reason, extra={"job_id": job_id})
            batch_id = Job.objects.filter(pk=job_id).values_list("batch_id", flat=True).first()
            notifications.publish_after_commit(jobs=[job_id], batches=[batch_id])
            job_finished.send(sender=Job, job_ids=[job_id])
    return bool(updated)


def expire_overdue_jobs(*, now: datetime | None = None) -> int:
    """End expired every unfinished job whose deadline has passed, wherever it waits;
    returns how many. Preprocessing and the workers check deadlines as they take a job,
    but while nothing takes it (its turn not come, no worker running) it would wait on
    unfinished, and its webhook untold, long past its deadline. A worker still drops its
    request by the deadline the request carries."""
    now = now or timezone.now()
    overdue = Job.objects.exclude(status__in=Job.FINISHED).filter(deadline__lt=now)
    expired = 0
    for job_id, status, deadline in overdue.values_list("pk", "status", "deadline"):
        late_s = (now - deadline).total_seconds()
        reason = f"deadline passed {late_s:.1f} s before anything took the job ({status})"
        expired += expire_job(job_id=job_id, reason=reason)
    return expired


def sweep_stuck_jobs(*, now: datetime | None = None) -> tuple[int, int]:
    """Retry jobs whose attempt has run longer than JOB_TIMEOUT_SECONDS; fail them after
    JOB_MAX_ATTEMPTS. Returns (retried, failed)."""
    now = now or timezone.now()
    deadline = now - timedelta(seconds=settings.JOB_TIMEOUT_SECONDS)
    retried = failed = 0
    # Timed from admission: a job waiting its turn in the database is not stuck.
    stuck = Job.objects.filter(status__in=IN_FLIGHT, admitted_at__lt=deadline)
    for job_id, attempts, batch_id in stuck.values_list("pk", "attempts", "batch_id"):
        if attempts >= settings.JOB_MAX_ATTEMPTS:
            reason = f"no result after {attempts} attempts of {settings.JOB_TIMEOUT_SECONDS}s each"
            failed += fail_job(job_id=job_id, reason=reason)
            continue
        with transaction.atomic():
            restarted = (
                Job.objects.filter(pk=job_id, attempts=attempts)
                .exclude(status__in=Job.FINISHED)
                .start_new_attempt(now=now)
            )
            if restarted:
                transaction.on_commit(dispatch_jobs)
                notifications.publish_after_commit(jobs=[job_id], batches=[batch_id])
                retried += 1
    return retried, failed
