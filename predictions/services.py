"""Every write to jobs, batches and predictions goes through these functions.

Views, Celery tasks and Kafka handlers call them; they never call back into those layers
except to enqueue work after commit.
"""

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.files.uploadedfile import UploadedFile
from django.db import IntegrityError, transaction
from django.utils import timezone

from kafka_bridge.contract import InferenceRequest, InferenceResult
from kafka_bridge.producer import publish_request
from predictions.images import ImageRejected, inspect_image, prepare_for_model
from predictions.models import Batch, Job, Prediction

log = logging.getLogger(__name__)


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
) -> list[Job]:
    """Check every upload, then store them and create one queued job each, all or nothing.

    With a batch, the images take the sequence numbers seq, seq+1, ... (seq defaults to
    the batch's next free number).
    """
    if not uploads:
        raise UploadError("no image was uploaded")
    if not 1 <= top_k <= 1000:
        raise UploadError(f"top_k must be between 1 and 1000, got {top_k}")
    if seq is not None and batch is None:
        raise UploadError("seq needs a batch")
    if seq is not None and seq < 0:
        raise UploadError(f"seq must be 0 or more, got {seq}")
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
                )
                upload.file.seek(0)
                job.image.save(str(job.id), upload.file, save=False)
                jobs.append(job)
                job.save(force_insert=True)
            transaction.on_commit(lambda: _enqueue_preprocess([j.pk for j in jobs]))
    except IntegrityError:
        _delete_images(jobs)
        raise UploadError("seq already used in this batch", status=409) from None
    except BaseException:
        _delete_images(jobs)
        raise
    return jobs


def _delete_images(jobs: list[Job]) -> None:
    for job in jobs:
        if job.image.name:
            job.image.storage.delete(job.image.name)


def _enqueue_preprocess(job_ids: list) -> None:
    from predictions.tasks import preprocess_job

    for job_id in job_ids:
        preprocess_job.delay(str(job_id))


def preprocess_and_submit(*, job_id: str) -> None:
    """Turn the stored original into a model-ready tensor and hand it to Kafka."""
    job = Job.objects.filter(pk=job_id).first()
    # PREPROCESSED means an earlier run of this task could not hand the request to Kafka:
    # that retry must go on. Anything later was handled by an earlier delivery.
    if job is None or job.status not in (Job.Status.QUEUED, Job.Status.PREPROCESSED):
        return
    started = time.perf_counter()
    try:
        with job.image.open("rb") as file:
            tensor = prepare_for_model(file, size=settings.MODEL_INPUT_SIZE)
    except (OSError, ValueError) as exc:
        fail_job(job_id=job.pk, reason=f"preprocessing failed: {exc}")
        return
    preprocess_ms = (time.perf_counter() - started) * 1000
    Job.objects.filter(pk=job.pk, status__in=(Job.Status.QUEUED, Job.Status.PREPROCESSED)).update(
        status=Job.Status.PREPROCESSED, preprocessed_at=timezone.now(), preprocess_ms=preprocess_ms
    )
    publish_request(
        InferenceRequest(
            job_id=str(job.pk),
            top_k=job.top_k,
            image=tensor,
            submitted_at_ms=int(time.time() * 1000),
            attempt=job.attempts,
        )
    )
    Job.objects.filter(pk=job.pk, status=Job.Status.PREPROCESSED).update(
        status=Job.Status.SUBMITTED, submitted_at=timezone.now()
    )


def record_result(*, result: InferenceResult) -> bool:
    """Store a worker's result; returns False when the job had already finished (a redelivery)."""
    with transaction.atomic():
        job = Job.objects.select_for_update().filter(pk=result.job_id).first()
        if job is None:
            log.warning("result for unknown job %s ignored", result.job_id)
            return False
        if job.is_finished:
            return False
        now = timezone.now()
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
            Prediction.objects.bulk_create(
                Prediction(job=job, rank=rank, class_id=p.class_id, label=p.label, score=p.score)
                for rank, p in enumerate(result.predictions[: job.top_k], start=1)
            )
        else:
            job.status = Job.Status.FAILED
            job.error = result.error or "the worker reported an error without a reason"
        job.save()
        return True


def fail_job(*, job_id, reason: str) -> bool:
    """Mark an unfinished job failed with a readable reason; False if it had finished."""
    updated = (
        Job.objects.filter(pk=job_id)
        .exclude(status__in=Job.FINISHED)
        .update(status=Job.Status.FAILED, error=reason, finished_at=timezone.now())
    )
    if updated:
        log.info("job %s failed: %s", job_id, reason)
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
