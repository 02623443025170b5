"""Upload intake: the one way jobs and batches are made. The Idempotency-Key and the
fingerprints that tell a resent upload from another, the checks of every file, the seq
numbers of a batch, storing the originals, and handing the committed jobs to the
dispatcher (predictions/pipeline.py) or withdrawing them when it cannot be reached.

Writes are keyword-only functions in a transaction, as in predictions/services.py."""

import hashlib
import logging
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.core.files.uploadedfile import UploadedFile
from django.db import DatabaseError, IntegrityError, transaction
from django.utils import timezone
from redis.exceptions import RedisError

from common import notifications, request_ids, tracing
from common.callbacks import CallbackRefused, check_callback_url
from common.images import ImageRejected, inspect_image
from common.limits import DEADLINE_MAX_S, REQUEST_MAX_DECODED_WHOLE_PIXELS, top_k_problem
from common.uploads import upload_pixel_limits
from predictions import selectors
from predictions.models import Batch, Job, Priority
from predictions.pipeline import dispatch_jobs
from predictions.storage import STORE_UNAVAILABLE, STORE_UNAVAILABLE_MESSAGE
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
    callback_url: str = "",
    deadline: str | None = None,
    timeout_s: int | None = None,
    priority: str | None = None,
) -> Upload:
    """The one way in for uploads, from the REST API (and so the upload page) and the seed
    API: check the Idempotency-Key and answer a resent upload with its first jobs, find
    the batch the uploader may use and the model version (registry.selectors.servable_version:
    the named or default model, the given or latest enabled version), then check and store
    every file (create_jobs). callback_url: where each job is POSTed once finished
    (common/callbacks.py says which are refused), "" for nowhere.

    deadline (ISO 8601 with a time zone) or timeout_s (seconds from now), at most one:
    when the jobs' answers stop being of use; neither, the model version's
    default_timeout_s. priority: the jobs' lane (docs/scheduling.md); None, the batch's
    (normal without one). The jobs belong to the uploader, or to no one for an anonymous
    upload. Raises UploadError naming the problem; nothing is stored then."""
    now = timezone.now()
    asked_deadline = parse_deadline(deadline, timeout_s, now=now)
    check_priority(priority)
    owner = uploader if uploader.is_authenticated else None
    if callback_url:
        _check_callback_url(callback_url, owner=owner)
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
            callback_url=callback_url,
            deadline=deadline,
            timeout_s=timeout_s,
            priority=priority,
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
        callback_url=callback_url,
        deadline=asked_deadline or default_deadline(routed_to, now=now),
        priority=priority or (batch.priority if batch else Priority.NORMAL),
    )
    return Upload(jobs=jobs, replayed=False)


def check_priority(priority: str | None) -> None:
    """Refuse a priority that is no lane (None: the default)."""
    if priority is not None and priority not in Priority.values:
        raise UploadError(
            f"priority must be one of {', '.join(Priority.values)}, got {priority[:40]!r}"
        )


def _check_callback_url(url: str, *, owner: AbstractBaseUser | None) -> None:
    if owner is None:
        # Its webhooks are signed with the owner's secret; an anonymous job has no owner.
        raise UploadError("callback_url needs a signed-in user, whose secret signs the webhooks")
    try:
        check_callback_url(url)
    except CallbackRefused as exc:
        raise UploadError(f"callback_url {exc}") from None


def parse_deadline(
    deadline: str | None, timeout_s: int | None, *, now: datetime
) -> datetime | None:
    """The deadline an upload asked for, by time or by timeout; None when it asked for
    none. UploadError naming the field that is wrong."""
    if deadline is not None and timeout_s is not None:
        raise UploadError("deadline and timeout_s: give one of them, not both")
    if timeout_s is not None:
        if not 0 < timeout_s <= DEADLINE_MAX_S:
            raise UploadError(
                f"timeout_s must be a number of seconds from 1 to {DEADLINE_MAX_S} (30 days), "
                f"got {timeout_s}"
            )
        return now + timedelta(seconds=timeout_s)
    if deadline is None:
        return None
    try:
        moment = datetime.fromisoformat(deadline.strip())
    except ValueError:
        raise UploadError(
            f"deadline {deadline[:40]!r} is not an ISO 8601 time, e.g. 2030-01-31T12:00:00Z"
        ) from None
    if moment.tzinfo is None:
        raise UploadError(f"deadline {deadline[:40]!r} must name its time zone (Z or +hh:mm)")
    try:
        ahead_s = (moment - now).total_seconds()
    except OverflowError:  # a time zone that puts it past the year 9999 in UTC
        ahead_s = float("inf")
    if ahead_s <= 0:
        raise UploadError(f"deadline {deadline[:40]} is in the past")
    if ahead_s > DEADLINE_MAX_S:
        raise UploadError(f"deadline {deadline[:40]} is more than 30 days ahead")
    return moment


def default_deadline(routed_to: ModelVersion | None, *, now: datetime) -> datetime | None:
    """The deadline of an upload that asked for none: its model version's default."""
    if routed_to is None or not routed_to.default_timeout_s:
        return None
    return now + timedelta(seconds=routed_to.default_timeout_s)


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
    callback_url: str = "",
    deadline: str | None = None,
    timeout_s: int | None = None,
    priority: str | None = None,
) -> list[dict]:
    """Per image, what an upload sent again with the same Idempotency-Key must match:
    the image's SHA-256 and the upload's fields as sent (seq None: the batch's next; model
    None: the default; a deadline as written, a timeout in seconds from whenever it is
    sent)."""
    shared = {
        "top_k": top_k,
        "batch": None if batch_id is None else str(batch_id),
        "seq": seq,
        "model": model,
        "callback_url": callback_url or None,
        "deadline": deadline,
        "timeout_s": timeout_s,
        "priority": priority,
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
    for field in (
        "top_k",
        "batch",
        "seq",
        "model",
        "callback_url",
        "deadline",
        "timeout_s",
        "priority",
    ):
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


def create_batch(
    *, owner: AbstractBaseUser | None, name: str = "", priority: str = Priority.NORMAL
) -> Batch:
    """A batch; priority: that of the uploads into it that name none."""
    check_priority(priority)
    return Batch.objects.create(owner=owner, name=name, priority=priority)


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
    callback_url: str = "",
    deadline: datetime | None = None,
    priority: str = Priority.NORMAL,
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
    if problem := top_k_problem(top_k):
        raise UploadError(problem)
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
    upload_trace = tracing.current_traceparent()
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
                    deadline=deadline,
                    request_id=request_ids.current.get() or "",
                    trace_parent=upload_trace,
                    callback_url=callback_url,
                    priority=priority,
                )
                if len(checked) > 1:
                    # One trace per job: an upload of many images would otherwise be one
                    # trace of all their ways. Each starts its own, linked to the upload's.
                    job.trace_parent = tracing.new_trace(
                        "job accepted",
                        linked_to=upload_trace,
                        attributes={"inferencehub.job_id": str(job.id)},
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
