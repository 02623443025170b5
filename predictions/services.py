"""Every write to jobs, batches and predictions goes through these functions.

Views, Celery tasks and Kafka handlers call them; they never call back into those layers
except to enqueue work after commit.
"""

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.files.uploadedfile import UploadedFile
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from kafka_bridge.contract import InferenceRequest, InferenceResult
from kafka_bridge.producer import publish_requests
from predictions.images import ImageRejected, inspect_image, prepare_for_model
from predictions.models import Batch, Job, Prediction

log = logging.getLogger(__name__)


# The seq column is an unsigned 32-bit integer on MariaDB.
MAX_SEQ = 2**32 - 1


class UploadError(ValueError):
    """A request to create jobs that is refused as a whole; `status` is the HTTP code."""

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


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
        info = inspect_image(file, max_pixels=settings.UPLOAD_MAX_PIXELS)
    except ImageRejected as exc:
        raise UploadError(f"{name}: {exc}") from None
    return CheckedUpload(file=file, format=info.format, width=info.width, height=info.height)


def create_batch(*, owner: AbstractBaseUser | None) -> Batch:
    return Batch.objects.create(owner=owner)


def create_jobs(
    *,
    owner: AbstractBaseUser | None,
    uploads: list[UploadedFile],
    top_k: int,
    batch: Batch | None = None,
    seq: int | None = None,
    upload_key: str | None = None,
) -> list[Job]:
    """Check every upload, then store them and create one queued job each, all or nothing.

    With a batch, the images take the sequence numbers seq, seq+1, ... (seq defaults to
    the batch's next free number). upload_key is the client's Idempotency-Key: an owner's
    second upload with the same key is refused with 409 (the caller answers a retry with
    jobs_of_upload before calling this).
    """
    if upload_key is not None and owner is None:
        raise UploadError("an Idempotency-Key is only accepted from a signed-in user")
    if not uploads:
        raise UploadError("no image was uploaded")
    if not 1 <= top_k <= 1000:
        raise UploadError(f"top_k must be between 1 and 1000, got {top_k}")
    if seq is not None and batch is None:
        raise UploadError("seq needs a batch")
    if seq is not None and seq < 0:
        raise UploadError(f"seq must be 0 or more, got {seq}")
    if seq is not None and seq + len(uploads) - 1 > MAX_SEQ:
        raise UploadError(f"seq must be at most {MAX_SEQ - len(uploads) + 1}, got {seq}")
    checked = [check_upload(file) for file in uploads]

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
                )
                upload.file.seek(0)
                job.image.save(str(job.id), upload.file, save=False)
                jobs.append(job)
                job.save(force_insert=True)
            transaction.on_commit(lambda: _enqueue_or_withdraw(jobs))
    except IntegrityError:
        _delete_images(jobs)
        if upload_key is not None and jobs_of_upload(owner=owner, upload_key=upload_key):
            raise UploadError(
                "another upload with this Idempotency-Key was accepted meanwhile; "
                "send it again to get its jobs",
                status=409,
            ) from None
        raise UploadError("seq already used in this batch", status=409) from None
    except BaseException:
        _delete_images(jobs)
        raise
    return jobs


def jobs_of_upload(*, owner: AbstractBaseUser, upload_key: str) -> list[Job]:
    """The jobs an earlier upload with this Idempotency-Key created, in upload order."""
    return list(Job.objects.filter(owner=owner, upload_key=upload_key).order_by("upload_index"))


def _delete_images(jobs: list[Job]) -> None:
    for job in jobs:
        if job.image.name:
            job.image.storage.delete(job.image.name)


def _enqueue_or_withdraw(jobs: list[Job]) -> None:
    """Enqueue the committed jobs' preprocessing, or delete them and refuse with 503.

    Without Redis a committed job would sit queued until the sweep noticed it while its
    client was told 202; withdrawing it lets the client retry instead, and nothing
    accepted is left behind. Runs after commit; the UploadError leaves create_jobs,
    which deletes the stored images."""
    from kombu.exceptions import OperationalError

    try:
        _enqueue_preprocess([job.pk for job in jobs])
    except OperationalError as exc:
        log.warning("task queue unavailable, %d new jobs withdrawn: %s", len(jobs), exc)
        # A task already enqueued for one of them finds no job and does nothing.
        Job.objects.filter(pk__in=[job.pk for job in jobs]).delete()
        raise UploadError(
            "the task queue is unavailable; try again in a few seconds", status=503
        ) from None


# Jobs per preprocessing task: an upload of many images is one Celery task and one Kafka
# flush per this many, rather than one of each per image.
PREPROCESS_CHUNK = 32


def _enqueue_preprocess(job_ids: list) -> None:
    from predictions.tasks import preprocess_jobs

    ids = [str(job_id) for job_id in job_ids]
    for start in range(0, len(ids), PREPROCESS_CHUNK):
        preprocess_jobs.delay(ids[start : start + PREPROCESS_CHUNK])


def preprocess_and_submit(*, job_ids: list[str]) -> None:
    """Turn the jobs' stored originals into model-ready tensors and hand them to Kafka.

    A job whose image cannot be decoded fails with the reason; the others go on. Kafka
    refusing raises, and a retry resubmits every job of the call not yet submitted.
    """
    # PREPROCESSED means an earlier run of this task could not hand the request to Kafka:
    # that retry must go on. Anything later was handled by an earlier delivery.
    waiting = (Job.Status.QUEUED, Job.Status.PREPROCESSED)
    jobs = list(Job.objects.filter(pk__in=job_ids, status__in=waiting))
    requests: list[InferenceRequest] = []
    for job in jobs:
        started = time.perf_counter()
        try:
            with job.image.open("rb") as file:
                tensor = prepare_for_model(file, size=settings.MODEL_INPUT_SIZE)
        except (OSError, ValueError) as exc:
            fail_job(job_id=job.pk, reason=f"preprocessing failed: {exc}")
            continue
        # One plain UPDATE per job: cheaper to build than one bulk_update of the chunk.
        Job.objects.filter(pk=job.pk, status__in=waiting).update(
            status=Job.Status.PREPROCESSED,
            preprocessed_at=timezone.now(),
            preprocess_ms=(time.perf_counter() - started) * 1000,
        )
        requests.append(
            InferenceRequest(
                job_id=str(job.pk),
                top_k=job.top_k,
                image=tensor if settings.REQUEST_DTYPE == "uint8" else tensor.astype(np.float32),
                submitted_at_ms=int(time.time() * 1000),
                attempt=job.attempts,
            )
        )
    if not requests:
        return
    publish_requests(requests)
    submitted = [request.job_id for request in requests]
    Job.objects.filter(pk__in=submitted, status=Job.Status.PREPROCESSED).update(
        status=Job.Status.SUBMITTED, submitted_at=timezone.now()
    )


def record_result(*, result: InferenceResult) -> bool:
    """Store a worker's result; returns False when the job had already finished (a redelivery)."""
    return record_results(results=[result]) == 1


# Job fields a result sets, for bulk_update.
RESULT_FIELDS = [
    "model_name",
    "model_weights",
    "worker",
    "inference_batch_size",
    "inference_ms",
    "inferred_at",
    "finished_at",
    "status",
    "error",
]


def record_results(*, results: list[InferenceResult]) -> int:
    """Store a batch of worker results in one transaction; returns how many were stored.

    A result for a job that has finished (a redelivery) or does not exist changes nothing,
    so storing is idempotent. One locking read, one insert of all predictions and one
    update for the whole batch: a transaction per result costs the pipeline more CPU than
    anything but the model.
    """
    by_job: dict[str, InferenceResult] = {}
    for result in results:
        by_job.setdefault(result.job_id, result)  # a second one in the batch is a redelivery
    with transaction.atomic():
        # Locked in primary-key order, so two batches never wait for each other in a cycle.
        jobs = list(Job.objects.select_for_update().filter(pk__in=by_job).order_by("pk"))
        for unknown in by_job.keys() - {str(job.pk) for job in jobs}:
            log.warning("result for unknown job %s ignored", unknown)
        now = timezone.now()
        stored: list[Job] = []
        predictions: list[Prediction] = []
        for job in jobs:
            if job.is_finished:
                continue
            result = by_job[str(job.pk)]
            job.model_name = result.model[:100]
            job.model_weights = result.weights[:255]
            job.worker = result.worker[:255]
            job.inference_batch_size = result.batch_size or None
            job.inference_ms = result.inference_ms
            job.inferred_at = (
                datetime.fromtimestamp(result.inferred_at_ms / 1000, tz=UTC)
                if result.inferred_at_ms
                else now
            )
            job.finished_at = now
            if result.ok:
                job.status = Job.Status.SUCCEEDED
                predictions += [
                    Prediction(
                        job=job, rank=rank, class_id=p.class_id, label=p.label, score=p.score
                    )
                    for rank, p in enumerate(result.predictions[: job.top_k], start=1)
                ]
            else:
                job.status = Job.Status.FAILED
                job.error = result.error or "the worker reported an error without a reason"
            stored.append(job)
        Prediction.objects.bulk_create(predictions)
        Job.objects.bulk_update(stored, RESULT_FIELDS)
    return len(stored)


def fail_job(*, job_id, reason: str) -> bool:
    """Mark an unfinished job failed with a readable reason; False if it had finished."""
    updated = (
        Job.objects.filter(pk=job_id)
        .exclude(status__in=Job.FINISHED)
        .update(status=Job.Status.FAILED, error=reason, finished_at=timezone.now())
    )
    if updated:
        log.info("job %s failed: %s", job_id, reason, extra={"job_id": job_id})
    return bool(updated)


def sweep_stuck_jobs(*, now: datetime | None = None) -> tuple[int, int]:
    """Retry jobs whose attempt has run longer than JOB_TIMEOUT_SECONDS; fail them after
    JOB_MAX_ATTEMPTS. Returns (retried, failed)."""
    now = now or timezone.now()
    deadline = now - timedelta(seconds=settings.JOB_TIMEOUT_SECONDS)
    retried = failed = 0
    stuck = Job.objects.exclude(status__in=Job.FINISHED).filter(attempt_started_at__lt=deadline)
    for job_id, attempts in stuck.values_list("pk", "attempts"):
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
                    preprocessed_at=None,
                    submitted_at=None,
                )
            )
            if restarted:
                transaction.on_commit(lambda job_id=job_id: _enqueue_preprocess([job_id]))
                retried += 1
    return retried, failed


def delete_job(*, job: Job) -> None:
    """Delete a job, its predictions and its stored original."""
    name = job.image.name
    storage = job.image.storage
    with transaction.atomic():
        job.delete()
        if name:
            transaction.on_commit(lambda: storage.delete(name))


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
    if not 1 <= top_k <= 1000:
        raise ValueError(f"top_k must be between 1 and 1000, got {top_k}")
    return _restart_jobs([job.pk for job in jobs], statuses=Job.FINISHED, top_k=top_k)


def _restart_jobs(job_ids: list, *, statuses, top_k: int | None = None) -> int:
    # Only finished jobs are restarted: one still in the pipeline would get its old
    # attempt's result stored on top of the new one.
    with transaction.atomic():
        ids = list(
            Job.objects.select_for_update()
            .filter(pk__in=job_ids, status__in=statuses)
            .values_list("pk", flat=True)
        )
        if not ids:
            return 0
        Prediction.objects.filter(job_id__in=ids).delete()
        changes = {"top_k": top_k} if top_k is not None else {}
        Job.objects.filter(pk__in=ids).update(
            status=Job.Status.QUEUED,
            attempts=F("attempts") + 1,
            error="",
            attempt_started_at=timezone.now(),
            preprocessed_at=None,
            submitted_at=None,
            inferred_at=None,
            finished_at=None,
            preprocess_ms=None,
            inference_ms=None,
            inference_batch_size=None,
            model_name="",
            model_weights="",
            worker="",
            **changes,
        )
        transaction.on_commit(lambda: _enqueue_preprocess(ids))
    return len(ids)


def purge_old_images(*, older_than_days: int, now: datetime | None = None) -> int:
    """Delete the stored originals of jobs finished more than older_than_days ago; the jobs
    and their predictions stay, with an empty image name. Returns how many were deleted."""
    deadline = (now or timezone.now()) - timedelta(days=older_than_days)
    old = Job.objects.filter(finished_at__lt=deadline).exclude(image="")
    purged = 0
    for job_id, name in old.values_list("pk", "image").iterator():
        # Row first: a crash in between leaves an orphan file, never a row pointing nowhere.
        if Job.objects.filter(pk=job_id, image=name).update(image=""):
            Job._meta.get_field("image").storage.delete(name)
            purged += 1
    return purged
