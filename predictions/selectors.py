"""Who may see and act on jobs and batches: the one place these rules are written.

Ids are random UUIDs, but they show in page URLs, so an id is a capability only for what
belongs to no one (anonymous uploads, and every batch the seed API's /register makes).
"""

import uuid

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import Exists, OuterRef, Q, QuerySet

from predictions.models import Batch, Job, Prediction

AnyUser = AbstractBaseUser | AnonymousUser


def _own(user: AnyUser) -> Q:
    return Q(owner=user) if user.is_authenticated else Q(pk__in=[])


def visible_jobs(user: AnyUser, *, by_id: bool) -> QuerySet[Job]:
    """Staff see every job, users their own; by_id adds anonymous jobs, which are
    reachable by their id but never listed."""
    return _visible(Job.objects.all(), user, by_id=by_id)


def search_jobs(jobs: QuerySet[Job], user: AnyUser, query: dict) -> QuerySet[Job]:
    """Narrow jobs already limited to what the user may see, by a validated job-list query
    (predictions.serializers.JobListQuerySerializer): only one's own (mine), any of some
    statuses, one batch, a top-1 label or file name containing a text (any case), an
    owner's username, a creation time range; in its ordering."""
    if query.get("mine"):
        jobs = jobs.filter(_own(user))
    if statuses := query.get("status"):
        jobs = jobs.filter(status__in=statuses)
    if "batch" in query:
        jobs = jobs.filter(batch_id=query["batch"])
    if label := query.get("label"):
        top = Prediction.objects.filter(job=OuterRef("pk"), rank=1, label__icontains=label)
        jobs = jobs.filter(Exists(top))
    if name := query.get("name"):
        jobs = jobs.filter(original_name__icontains=name)
    if owner := query.get("owner"):
        jobs = jobs.filter(owner__username=owner)
    if "created_after" in query:
        jobs = jobs.filter(created_at__gte=query["created_after"])
    if "created_before" in query:
        jobs = jobs.filter(created_at__lt=query["created_before"])
    ordering = query.get("ordering", "-created_at")
    # The id breaks ties, so that pages neither repeat nor skip jobs.
    return jobs.order_by(ordering, "-pk" if ordering.startswith("-") else "pk")


def visible_batches(user: AnyUser, *, by_id: bool) -> QuerySet[Batch]:
    """As visible_jobs, for batches."""
    return _visible(Batch.objects.all(), user, by_id=by_id)


def _visible(queryset: QuerySet, user: AnyUser, *, by_id: bool) -> QuerySet:
    if user.is_staff:
        return queryset
    return queryset.filter(_own(user) | Q(owner__isnull=True) if by_id else _own(user))


def retryable_jobs(user: AnyUser) -> QuerySet[Job]:
    """Jobs this user may run again: their own, or any for staff; never by id alone."""
    return visible_jobs(user, by_id=False)


def may_retry(job: Job, user: AnyUser) -> bool:
    """Whether to offer this user to run the job again."""
    return (
        job.status == Job.Status.FAILED
        and user.is_authenticated
        and (user.is_staff or job.owner_id == user.pk)
    )


def usable_batch(batch_id: uuid.UUID, user: AnyUser) -> Batch | None:
    """The batch this user may upload into and, through the seed API, read; or None.

    A batch of no one is open to whoever holds its id (the seed API's capability); a
    user's batch only to that user, so that holding the id of someone's batch never lets
    anyone act as them."""
    return Batch.objects.filter(Q(owner__isnull=True) | _own(user), pk=batch_id).first()
