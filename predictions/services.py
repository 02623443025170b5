"""A job's and a batch's lifecycle after intake: cancelling them, deleting them with their
stored images, running them again (retry, re-run with another top_k), and purging old
originals.

Every write to jobs, batches and predictions is a keyword-only function in a transaction:
here, in predictions/uploads.py (intake) and predictions/pipeline.py (the pipeline's
transitions). Views, Celery tasks and Kafka handlers call them."""

from collections.abc import Iterable
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from common import notifications, tracing
from common.limits import top_k_problem
from kafka_wire.cancellations import publish_cancellations
from predictions.models import Batch, Job, Prediction
from predictions.pipeline import dispatch_after_commit
from predictions.signals import job_finished
from predictions.storage import delete_stored


def cancel_job(*, job: Job) -> Job:
    """Cancel one unfinished job; JobFinished when it had finished (it is left as it was).
    Returns the job as it is now."""
    with transaction.atomic():
        locked = Job.objects.select_for_update().get(pk=job.pk)
        locked.cancel(now=timezone.now())
        _store_cancelled([locked])
    return locked


def cancel_jobs(*, jobs: Iterable[Job]) -> int:
    """Cancel those of the jobs not yet finished (the others are left as they are); returns
    how many were cancelled."""
    ids = [job.pk for job in jobs]
    with transaction.atomic():
        # Locked by primary key alone, in its order, as the dispatcher and record_results
        # lock, so that none of them deadlock (predictions/pipeline.py _admit_next).
        locked = (
            Job.objects.select_for_update()
            .filter(pk__in=ids)
            .order_by("pk")
            .only("pk", "status", "batch_id", "admitted_at")
        )
        unfinished = [job for job in locked if job.status not in Job.FINISHED]
        now = timezone.now()
        for job in unfinished:
            job.cancel(now=now)
        _store_cancelled(unfinished)
    return len(unfinished)


def cancel_batch(*, batch: Batch) -> int:
    """Cancel every unfinished job of the batch; returns how many were cancelled."""
    return cancel_jobs(jobs=batch.jobs.exclude(status__in=Job.FINISHED).only("pk"))


# What Job.cancel changes; the record keeps everything else.
CANCEL_CHANGES = ("status", "error", "finished_at")


def _store_cancelled(jobs: list[Job]) -> None:
    if not jobs:
        return
    # Cancelled at one moment, they share every changed value: one UPDATE for a batch.
    changes = {field: getattr(jobs[0], field) for field in CANCEL_CHANGES}
    Job.objects.filter(pk__in=[job.pk for job in jobs]).update(**changes)
    notifications.publish_after_commit(
        jobs=[job.pk for job in jobs], batches={job.batch_id for job in jobs}
    )
    job_finished.send(sender=Job, job_ids=[job.pk for job in jobs])
    # Only an admitted job may have a request in Kafka (or on its way there) to drop. Told
    # first: each moment before the workers hear of it, its request may still be inferred.
    sent = [str(job.pk) for job in jobs if job.admitted_at is not None]
    if sent:
        topic = settings.KAFKA_CANCELLATIONS_TOPIC
        transaction.on_commit(lambda: publish_cancellations(topic, sent))
        # Their places in flight are free for the next waiting jobs. A job never admitted
        # held none: cancelling it runs no dispatcher pass, which was most of the web's
        # CPU per cancel when a user cancelled their waiting backlog job by job.
        dispatch_after_commit()


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
    return _restart_jobs([job.pk for job in jobs], statuses=[Job.Status.FAILED], why="retry")


def rerun_jobs(*, jobs: Iterable[Job], top_k: int) -> int:
    """Run finished jobs again with another top_k; returns how many were restarted."""
    if problem := top_k_problem(top_k):
        raise ValueError(problem)
    return _restart_jobs([job.pk for job in jobs], statuses=Job.FINISHED, top_k=top_k, why="re-run")


def _restart_jobs(job_ids: list, *, statuses, why: str, top_k: int | None = None) -> int:
    # Only finished jobs are restarted: one still in the pipeline would get its old
    # attempt's result stored on top of the new one.
    with transaction.atomic():
        # Locked by primary key alone, in its order (see cancel_jobs).
        restarting = [
            (pk, batch_id, trace_parent)
            for pk, status, batch_id, trace_parent in Job.objects.select_for_update()
            .filter(pk__in=job_ids)
            .order_by("pk")
            .values_list("pk", "status", "batch_id", "trace_parent")
            if status in statuses
        ]
        if not restarting:
            return 0
        ids = [job_id for job_id, _, _ in restarting]
        Prediction.objects.filter(job_id__in=ids).delete()
        changes = {"top_k": top_k} if top_k is not None else {}
        Job.objects.filter(pk__in=ids).start_new_attempt(now=timezone.now(), **changes)
        for job_id, _, first in restarting:
            attributes = {"inferencehub.job_id": str(job_id)}
            if traceparent := tracing.new_trace(why, linked_to=first, attributes=attributes):
                Job.objects.filter(pk=job_id).update(trace_parent=traceparent)
        dispatch_after_commit()
        notifications.publish_after_commit(
            jobs=ids, batches={batch_id for _, batch_id, _ in restarting}
        )
    return len(ids)


# Jobs deleted per transaction by purge_old_results: a day's worth of results may be
# millions of rows, which one transaction would hold locks over for minutes.
PURGE_CHUNK = 500


def purge_old_results(*, older_than_days: int, now: datetime | None = None) -> int:
    """Delete the jobs finished more than older_than_days ago, with their predictions, their
    webhooks' deliveries and their stored images; returns how many."""
    deadline = (now or timezone.now()) - timedelta(days=older_than_days)
    purged = 0
    while chunk := list(
        Job.objects.filter(status__in=Job.FINISHED, finished_at__lt=deadline)
        .order_by("finished_at")
        .only("pk", "batch_id", "image")[:PURGE_CHUNK]
    ):
        purged += delete_jobs(jobs=chunk)
    return purged


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
