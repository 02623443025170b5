"""Every write to jobs, batches and predictions goes through these functions.

Views, Celery tasks and Kafka handlers call them; they never call back into those layers
except to enqueue work after commit, which they do by task name (PREPROCESS_TASK) so that
this module does not import the tasks that import it.
"""

import hashlib
import logging
import re
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
from celery import current_app
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.core.files.uploadedfile import UploadedFile
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.db.models import Case, Count, F, FloatField, Value, When
from django.utils import timezone
from redis.exceptions import RedisError

from common import notifications
from common.images import ImageRejected, inspect_image, prepare_upload
from common.limits import (
    REQUEST_MAX_DECODED_WHOLE_PIXELS,
    TOP_K_MAX,
    TOP_K_MIN,
    upload_pixel_limits,
)
from kafka_wire.contract import InferenceRequest, InferenceResult
from kafka_wire.requests import publish_requests
from predictions import selectors
from predictions.models import Batch, Job, Prediction
from predictions.storage import (
    STORE_UNAVAILABLE,
    STORE_UNAVAILABLE_MESSAGE,
    THUMBNAIL_SIZES,
    delete_stored,
    save_thumbnails,
)
from registry.models import ModelVersion
from registry.selectors import ROUTING_MAX_AGE_S, UnknownModel, servable_version

log = logging.getLogger(__name__)


# The seq column is an unsigned 32-bit integer on MariaDB.
MAX_SEQ = 2**32 - 1

# An Idempotency-Key: what clients send (UUIDs, hashes) and what fits the column.
UPLOAD_KEY = re.compile(r"[\x21-\x7e]{1,100}")
ANONYMOUS_KEY_REFUSED = (
    "an Idempotency-Key is only accepted from a signed-in user, or for an upload to a batch"
)
KEY_TAKEN_MEANWHILE = (
    "another upload with this Idempotency-Key was accepted meanwhile; send it again to get its jobs"
)


class UploadError(ValueError):
    """A request to create jobs that is refused as a whole; `status` is the HTTP code."""

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class UnknownBatch(UploadError):
    """The batch does not exist, or this uploader may not use it (the same to them)."""


@dataclass(frozen=True)
class Upload:
    jobs: list[Job]
    # True when the jobs are those of an earlier upload with the same Idempotency-Key.
    replayed: bool


def upload_images(
    *,
    uploader: AbstractBaseUser | AnonymousUser,
    files: list[UploadedFile],
    top_k: int,
    batch_id: uuid.UUID | None = None,
    seq: int | None = None,
    upload_key: str | None = None,
    model: str | None = None,
    model_version: int | None = None,
) -> Upload:
    """The one way in for uploads, from the REST API (and so the upload page) and the seed
    API: check the Idempotency-Key and answer a resent upload with its first jobs, find
    the batch the uploader may use and the model version (registry.selectors.servable_version:
    the named or default model, the given or latest enabled version), then check and store
    every file (create_jobs).

    The jobs belong to the uploader, or to no one for an anonymous upload. Raises
    UploadError naming the problem; nothing is stored then."""
    owner = uploader if uploader.is_authenticated else None
    fingerprints = None
    if upload_key is not None:
        if not UPLOAD_KEY.fullmatch(upload_key):
            raise UploadError("Idempotency-Key must be 1 to 100 printable ASCII characters")
        if owner is None and batch_id is None:
            raise UploadError(ANONYMOUS_KEY_REFUSED)
        fingerprints = _upload_fingerprints(
            files,
            top_k=top_k,
            batch_id=batch_id,
            seq=seq,
            model=_model_reference(model, model_version),
        )
        if earlier := jobs_of_upload(owner=owner, upload_key=upload_key, batch_id=batch_id):
            if mismatch := _upload_mismatch(earlier, fingerprints, files):
                # 422, as the IETF Idempotency-Key draft says: answering with the first
                # upload's jobs would hand the client another image's result.
                raise UploadError(
                    f"Idempotency-Key {upload_key} was used for another upload: {mismatch}",
                    status=422,
                )
            return Upload(jobs=earlier, replayed=True)
    try:
        routed_to = servable_version(model, model_version, max_age_s=ROUTING_MAX_AGE_S)
    except UnknownModel as error:
        raise UploadError(str(error)) from None
    batch = None
    if batch_id is not None:
        batch = selectors.usable_batch(batch_id, uploader)
        if batch is None:
            raise UnknownBatch(f"unknown batch {batch_id}")
    jobs = create_jobs(
        owner=owner,
        uploads=files,
        top_k=top_k,
        batch=batch,
        seq=seq,
        upload_key=upload_key,
        fingerprints=fingerprints,
        routed_to=routed_to,
    )
    return Upload(jobs=jobs, replayed=False)


def _model_reference(model: str | None, version: int | None) -> str | None:
    """The model an upload asked for, as sent: "name", "name:2", ":2" or None."""
    if model is None and version is None:
        return None
    return (model or "") + ("" if version is None else f":{version}")


def _upload_fingerprints(
    files: list[UploadedFile],
    *,
    top_k: int,
    batch_id: uuid.UUID | None,
    seq: int | None,
    model: str | None = None,
) -> list[dict]:
    """Per image, what an upload sent again with the same Idempotency-Key must match:
    the image's SHA-256 and the upload's fields as sent (seq None: the batch's next; model
    None: the default)."""
    shared = {
        "top_k": top_k,
        "batch": None if batch_id is None else str(batch_id),
        "seq": seq,
        "model": model,
    }
    fingerprints = []
    for file in files:
        digest = hashlib.sha256()
        for chunk in file.chunks():
            digest.update(chunk)
        fingerprints.append({"sha256": digest.hexdigest(), **shared})
    return fingerprints


def _upload_mismatch(earlier: list[Job], fingerprints: list[dict], files) -> str | None:
    """How this upload differs from the one that made the earlier jobs, or None."""
    if len(earlier) != len(fingerprints):
        return f"{len(earlier)} image(s) then; this one has {len(fingerprints)}"
    first = earlier[0].upload_fingerprint
    if first is None:  # stored before fingerprints were kept: only the count can tell
        return None
    for field in ("top_k", "batch", "seq", "model"):
        # .get: fingerprints stored before the model was chosen per upload have no "model".
        if first.get(field) != fingerprints[0][field]:
            then, now = first.get(field), fingerprints[0][field]
            return f"{_field(field, then)} then; this upload has {_field(field, now)}"
    for index, (job, fingerprint) in enumerate(zip(earlier, fingerprints, strict=True)):
        if job.upload_fingerprint["sha256"] != fingerprint["sha256"]:
            name = files[index].name or "upload"
            return f"image {index + 1} ({name}) differs from the one sent then"
    return None


def _field(name: str, value) -> str:
    return f"no {name}" if value is None else f"{name} {value}"


@dataclass(frozen=True)
class CheckedUpload:
    file: UploadedFile
    format: str
    width: int
    height: int


def check_upload(file: UploadedFile | None) -> CheckedUpload:
    """Judge one uploaded file by its bytes; raise UploadError naming the problem."""
    if file is None:
        raise UploadError("no image was uploaded")
    name = file.name or "upload"
    if file.size == 0:
        raise UploadError(f"{name}: the file is empty")
    if file.size > settings.UPLOAD_MAX_BYTES:
        raise UploadError(
            f"{name}: the file is {file.size} bytes; the limit is {settings.UPLOAD_MAX_BYTES}",
            status=413,
        )
    try:
        info = inspect_image(file, limits=upload_pixel_limits())
    except ImageRejected as exc:
        raise UploadError(f"{name}: {exc}") from None
    return CheckedUpload(file=file, format=info.format, width=info.width, height=info.height)


def create_batch(*, owner: AbstractBaseUser | None, name: str = "") -> Batch:
    return Batch.objects.create(owner=owner, name=name)


def create_jobs(
    *,
    owner: AbstractBaseUser | None,
    uploads: list[UploadedFile],
    top_k: int,
    batch: Batch | None = None,
    seq: int | None = None,
    upload_key: str | None = None,
    fingerprints: list[dict] | None = None,
    routed_to: ModelVersion | None = None,
) -> list[Job]:
    """Check every upload, then store them and create one queued job each, all or nothing.

    With a batch, the images take the sequence numbers seq, seq+1, ... (seq defaults to
    the batch's next free number). upload_key is the client's Idempotency-Key: an owner's
    (anonymously, a batch's) second upload with the same key is refused with 409
    (upload_images answers a resent upload before calling this). Callers hold the batch
    already: uploads from outside go through upload_images, which decides who may use which
    batch.
    """
    if upload_key is not None and owner is None and batch is None:
        raise UploadError(ANONYMOUS_KEY_REFUSED)
    if not uploads:
        raise UploadError("no image was uploaded")
    if not TOP_K_MIN <= top_k <= TOP_K_MAX:
        raise UploadError(f"top_k must be between {TOP_K_MIN} and {TOP_K_MAX}, got {top_k}")
    if seq is not None and batch is None:
        raise UploadError("seq needs a batch")
    if seq is not None and seq < 0:
        raise UploadError(f"seq must be 0 or more, got {seq}")
    if seq is not None and seq + len(uploads) - 1 > MAX_SEQ:
        raise UploadError(f"seq must be at most {MAX_SEQ - len(uploads) + 1}, got {seq}")
    checked = [check_upload(file) for file in uploads]
    # A request's images decoded whole are bounded together too: each one within its
    # limit, a hundred of them would still hold a Celery process for minutes.
    decoded_whole = sum(c.width * c.height for c in checked if c.format != "JPEG")
    if decoded_whole > REQUEST_MAX_DECODED_WHOLE_PIXELS:
        raise UploadError(
            f"the request's images other than JPEG have {decoded_whole} pixels together; "
            f"the limit per request is {REQUEST_MAX_DECODED_WHOLE_PIXELS}"
        )

    jobs: list[Job] = []
    try:
        with transaction.atomic():
            if batch is not None:
                # Lock the batch so concurrent uploads cannot take the same seq numbers.
                batch = Batch.objects.select_for_update().get(pk=batch.pk)
                if seq is None:
                    last = batch.jobs.order_by("-seq").values_list("seq", flat=True).first()
                    seq = 0 if last is None else last + 1
                seqs = list(range(seq, seq + len(checked)))
                # No unique index holds an anonymous key (owner NULL): the batch's lock does.
                if (
                    owner is None
                    and upload_key
                    and batch.jobs.filter(upload_key=upload_key).exists()
                ):
                    raise UploadError(KEY_TAKEN_MEANWHILE, status=409)
                taken = set(batch.jobs.filter(seq__in=seqs).values_list("seq", flat=True))
                if taken:
                    raise UploadError(
                        f"seq {', '.join(map(str, sorted(taken)))} "
                        f"already used in batch {batch.pk}",
                        status=409,
                    )
            for index, upload in enumerate(checked):
                job = Job(
                    owner=owner,
                    batch=batch,
                    seq=None if batch is None else seqs[index],
                    top_k=top_k,
                    original_name=(upload.file.name or "")[:255],
                    image_format=upload.format,
                    image_width=upload.width,
                    image_height=upload.height,
                    image_bytes=upload.file.size,
                    upload_key=upload_key,
                    upload_index=index,
                    upload_fingerprint=None if fingerprints is None else fingerprints[index],
                    routed_to=routed_to,
                )
                upload.file.seek(0)
                try:
                    job.image.save(str(job.id), upload.file, save=False)
                except STORE_UNAVAILABLE as exc:
                    log.warning("image store unavailable, upload refused: %s", exc)
                    raise UploadError(STORE_UNAVAILABLE_MESSAGE, status=503) from None
                jobs.append(job)
            # One INSERT for the whole upload.
            Job.objects.bulk_create(jobs)
            transaction.on_commit(lambda: _enqueue_or_withdraw(jobs))
            notifications.publish_after_commit(batches=[None if batch is None else batch.pk])
    except IntegrityError:
        _delete_images(jobs)
        if upload_key is not None and jobs_of_upload(
            owner=owner, upload_key=upload_key, batch_id=None if batch is None else batch.pk
        ):
            raise UploadError(KEY_TAKEN_MEANWHILE, status=409) from None
        raise UploadError("seq already used in this batch", status=409) from None
    except BaseException:
        _delete_images(jobs)
        raise
    return jobs


def jobs_of_upload(
    *, owner: AbstractBaseUser | None, upload_key: str, batch_id: uuid.UUID | None = None
) -> list[Job]:
    """The jobs an earlier upload with this Idempotency-Key created, in upload order. A
    user's keys are theirs; an anonymous key is its batch's, whose id is the capability."""
    jobs = Job.objects.filter(owner=owner, upload_key=upload_key)
    if owner is None:
        jobs = jobs.filter(batch_id=batch_id)
    return list(jobs.order_by("upload_index"))


def _delete_images(jobs: list[Job]) -> None:
    for job in jobs:
        if job.image.name:
            try:
                job.image.storage.delete(job.image.name)
            except STORE_UNAVAILABLE as exc:
                # The refusal being raised matters more; the purge of old images or a
                # bucket lifecycle rule removes what is left.
                log.warning("stored original %s left behind: %s", job.image.name, exc)


def _enqueue_or_withdraw(jobs: list[Job]) -> None:
    """Run the dispatcher for the committed jobs, or delete them and refuse with 503.

    Without Redis the dispatcher cannot enqueue preprocessing, and a client told 202 would
    wait for a job nobody processes until Redis returned; withdrawing it lets the client
    retry instead, and nothing accepted is left behind. Runs after commit; the UploadError
    leaves create_jobs, which deletes the stored images.

    The database failing here is another matter: the jobs are committed, and a 503 would
    leave jobs stored that their client was told were refused. They wait in the database
    for the next dispatch (beat's, every DISPATCH_INTERVAL_SECONDS), and the upload is
    answered 202."""
    from kombu.exceptions import OperationalError

    try:
        dispatch_jobs()
    except DatabaseError as exc:
        log.warning("dispatcher stopped by the database, %d new jobs wait: %s", len(jobs), exc)
    except (OperationalError, RedisError) as exc:
        log.warning("task queue unavailable, %d new jobs withdrawn: %s", len(jobs), exc)
        # A task already enqueued for one of them finds no job and does nothing.
        Job.objects.filter(pk__in=[job.pk for job in jobs]).delete()
        raise UploadError(
            "the task queue is unavailable; try again in a few seconds", status=503
        ) from None


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
    DISPATCH_IN_FLIGHT_PER_MODEL of its jobs are in flight, in the round-robin order over
    owners of predictions/selectors.py; returns how many were admitted.

    Jobs wait in the database rather than in Celery or Kafka, which serve first in, first
    out: so one uploader's backlog never stands in front of another's job. Runs after
    each upload and each stored batch of results, and from beat. One dispatcher at a time
    (a MariaDB named lock); one that finds it taken returns at once, since the one holding
    it goes round again until nothing more is admitted. Admission is guarded by the row
    too: a job is admitted once per attempt."""
    with connection.cursor() as cursor:
        # Named per database: the test runs on one server each have their own.
        cursor.execute("SELECT GET_LOCK(CONCAT(DATABASE(), '.dispatch'), 0)")
        if not cursor.fetchone()[0]:
            return 0
        try:
            admitted = 0
            while admitted_now := _admit_next():
                admitted += admitted_now
            return admitted
        finally:
            cursor.execute("SELECT RELEASE_LOCK(CONCAT(DATABASE(), '.dispatch'))")


def _admit_next() -> int:
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
        free = settings.DISPATCH_IN_FLIGHT_PER_MODEL - in_flight.get(model, 0)
        if free <= 0:
            continue
        waiting = selectors.waiting_per_owner(model)
        shares, last = selectors.round_robin_shares(waiting, free, selectors.last_served(model))
        for owner, share in shares.items():
            if share:
                oldest = selectors.waiting_jobs(model).filter(owner_id=owner)
                chosen += oldest.order_by("created_at", "pk").values_list("pk", flat=True)[:share]
        if last != "":
            selectors.remember_served(model, last)
    if not chosen:
        return 0
    with transaction.atomic():
        admitted = list(
            Job.objects.select_for_update()
            .filter(pk__in=chosen, status=Job.Status.QUEUED, admitted_at__isnull=True)
            .values_list("pk", flat=True)
        )
        Job.objects.filter(pk__in=admitted).update(admitted_at=timezone.now())
    try:
        _enqueue_preprocess(admitted)
    except Exception:
        # Back to waiting: admitted without a task, they would wait for the sweep.
        Job.objects.filter(pk__in=admitted, status=Job.Status.QUEUED).update(admitted_at=None)
        raise
    return len(admitted)


# What preprocess_and_submit reads of a job and of the version it is routed to.
REQUEST_FIELDS = (
    "batch_id",
    "image",
    "top_k",
    "attempts",
    "routed_to__input_size",
    "routed_to__version",
    "routed_to__model__name",
)
# PREPROCESSED means an earlier run of the preprocessing could not hand the request to
# Kafka: its retry must go on. Anything later was handled by an earlier delivery.
WAITING_FOR_KAFKA = (Job.Status.QUEUED, Job.Status.PREPROCESSED)


def preprocess_and_submit(*, job_ids: list[str]) -> None:
    """Turn the jobs' stored originals into model-ready tensors and hand them to Kafka.

    A job whose image cannot be decoded fails with the reason; the others go on. Kafka
    refusing raises, and a retry resubmits every job of the call not yet submitted.
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
    # Each job goes to its model version's topic at that model's input size; a job of no
    # registered model takes the unregistered requests topic and MODEL_INPUT_SIZE.
    by_topic: dict[str, list[InferenceRequest]] = {}
    decode_ms: dict = {}
    for job in jobs:
        route = job.routed_to
        size = route.input_size if route else settings.MODEL_INPUT_SIZE
        topic = route.route.requests_topic if route else settings.KAFKA_REQUESTS_TOPIC
        started = time.perf_counter()
        try:
            with job.image.open("rb") as file:
                # The thumbnails from the same decode: serving one then reads a small file.
                prepared = prepare_upload(file, size=size, thumbnail_sizes=THUMBNAIL_SIZES)
        except (OSError, ValueError) as exc:
            fail_job(job_id=job.pk, reason=f"preprocessing failed: {exc}")
            continue
        decode_ms[job.pk] = (time.perf_counter() - started) * 1000
        tensor = prepared.model_input
        try:
            save_thumbnails(job.image.storage, job.image.name, prepared.thumbnails)
        except (*STORE_UNAVAILABLE, OSError) as exc:
            # The job goes on; its thumbnail is made on its first request instead.
            log.warning("thumbnails of job %s not stored: %s", job.pk, exc)
        by_topic.setdefault(topic, []).append(
            InferenceRequest(
                job_id=str(job.pk),
                top_k=job.top_k,
                image=tensor if settings.REQUEST_DTYPE == "uint8" else tensor.astype(np.float32),
                submitted_at_ms=int(time.time() * 1000),
                attempt=job.attempts,
            )
        )
    if not by_topic:
        return
    batches = {job.batch_id for job in jobs if job.pk in decode_ms}
    preprocessed_at = timezone.now()
    try:
        publish_requests(by_topic)
    except Exception:
        # Recorded so that the status says where the job waits while Kafka is away.
        _mark_preprocessed(decode_ms, batches, at=preprocessed_at, status=Job.Status.PREPROCESSED)
        raise
    # Both transitions in one statement: a job is written once on its way to Kafka.
    _mark_preprocessed(
        decode_ms,
        batches,
        at=preprocessed_at,
        status=Job.Status.SUBMITTED,
        submitted_at=timezone.now(),
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

    A result for a job that has finished (a redelivery) or does not exist changes nothing,
    so storing is idempotent. One locking read, one insert of all predictions, and one
    update per set of jobs whose new values are the same (the results of one inference
    batch share them): a transaction per result costs the pipeline more CPU than anything
    but the model.
    """
    by_job: dict[str, InferenceResult] = {}
    for result in results:
        by_job.setdefault(result.job_id, result)  # a second one in the batch is a redelivery
    with transaction.atomic():
        # Locked in primary-key order, so two batches never wait for each other in a cycle.
        jobs = list(
            Job.objects.select_for_update()
            .filter(pk__in=by_job)
            .order_by("pk")
            .only("pk", "status", "top_k", "batch_id")
        )
        for unknown in by_job.keys() - {str(job.pk) for job in jobs}:
            log.warning("result for unknown job %s ignored", unknown)
        now = timezone.now()
        updates: dict[tuple, list] = {}
        predictions: list[Prediction] = []
        for job in jobs:
            if job.is_finished:
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
            if result.ok:
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
    return sum(len(pks) for pks in updates.values())


def fail_job(*, job_id, reason: str) -> bool:
    """Mark an unfinished job failed with a readable reason; False if it had finished."""
    updated = (
        Job.objects.filter(pk=job_id)
        .exclude(status__in=Job.FINISHED)
        .update(status=Job.Status.FAILED, error=reason, finished_at=timezone.now())
    )
    if updated:
        log.info("job %s failed: %s", job_id, reason, extra={"job_id": job_id})
        batch_id = Job.objects.filter(pk=job_id).values_list("batch_id", flat=True).first()
        notifications.publish_after_commit(jobs=[job_id], batches=[batch_id])
    return bool(updated)


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
                .update(
                    status=Job.Status.QUEUED,
                    attempts=attempts + 1,
                    attempt_started_at=now,
                    admitted_at=None,
                    preprocessed_at=None,
                    submitted_at=None,
                )
            )
            if restarted:
                transaction.on_commit(dispatch_jobs)
                notifications.publish_after_commit(jobs=[job_id], batches=[batch_id])
                retried += 1
    return retried, failed


def delete_job(*, job: Job) -> None:
    """Delete a job, its predictions and its stored original with its thumbnails."""
    name = job.image.name
    storage = job.image.storage
    with transaction.atomic():
        notifications.publish_after_commit(jobs=[job.pk], batches=[job.batch_id])
        job.delete()
        if name:
            transaction.on_commit(lambda: delete_stored(storage, name))


def delete_jobs(*, jobs: Iterable[Job]) -> int:
    """Delete jobs with their predictions and stored originals, all or nothing."""
    with transaction.atomic():
        count = 0
        for job in jobs:
            delete_job(job=job)
            count += 1
    return count


def delete_batches(*, batches: Iterable[Batch]) -> int:
    """Delete batches; their jobs go through delete_jobs so the stored originals go too."""
    with transaction.atomic():
        count = 0
        for batch in batches:
            delete_jobs(jobs=batch.jobs.all())
            batch.delete()
            count += 1
    return count


def retry_jobs(*, jobs: Iterable[Job]) -> int:
    """Run failed jobs again from the start; returns how many were restarted."""
    return _restart_jobs([job.pk for job in jobs], statuses=[Job.Status.FAILED])


def rerun_jobs(*, jobs: Iterable[Job], top_k: int) -> int:
    """Run finished jobs again with another top_k; returns how many were restarted."""
    if not TOP_K_MIN <= top_k <= TOP_K_MAX:
        raise ValueError(f"top_k must be between {TOP_K_MIN} and {TOP_K_MAX}, got {top_k}")
    return _restart_jobs([job.pk for job in jobs], statuses=Job.FINISHED, top_k=top_k)


def _restart_jobs(job_ids: list, *, statuses, top_k: int | None = None) -> int:
    # Only finished jobs are restarted: one still in the pipeline would get its old
    # attempt's result stored on top of the new one.
    with transaction.atomic():
        restarting = list(
            Job.objects.select_for_update()
            .filter(pk__in=job_ids, status__in=statuses)
            .values_list("pk", "batch_id")
        )
        if not restarting:
            return 0
        ids = [job_id for job_id, _ in restarting]
        Prediction.objects.filter(job_id__in=ids).delete()
        changes = {"top_k": top_k} if top_k is not None else {}
        Job.objects.filter(pk__in=ids).update(
            status=Job.Status.QUEUED,
            attempts=F("attempts") + 1,
            error="",
            attempt_started_at=timezone.now(),
            admitted_at=None,
            preprocessed_at=None,
            submitted_at=None,
            inferred_at=None,
            finished_at=None,
            preprocess_ms=None,
            inference_ms=None,
            inference_batch_size=None,
            model_name="",
            model_version=None,
            model_weights="",
            runtime="",
            precision="",
            worker="",
            **changes,
        )
        transaction.on_commit(dispatch_jobs)
        notifications.publish_after_commit(
            jobs=ids, batches={batch_id for _, batch_id in restarting}
        )
    return len(ids)


def purge_old_images(*, older_than_days: int, now: datetime | None = None) -> int:
    """Delete the stored originals (and thumbnails) of jobs finished more than
    older_than_days ago; the jobs and their predictions stay, with an empty image name.
    Returns how many were deleted."""
    deadline = (now or timezone.now()) - timedelta(days=older_than_days)
    old = Job.objects.filter(finished_at__lt=deadline).exclude(image="")
    purged = 0
    for job_id, name in old.values_list("pk", "image").iterator():
        # Row first: a crash in between leaves an orphan file, never a row pointing nowhere.
        if Job.objects.filter(pk=job_id, image=name).update(image=""):
            delete_stored(Job._meta.get_field("image").storage, name)
            purged += 1
    return purged
