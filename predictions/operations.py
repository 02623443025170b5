"""The operations figures: per model version, jobs per minute, queue depth, Kafka lag, live
workers, stage latency percentiles and failures over the last hour, and the dead letters.

One reading serves both /metrics (predictions.metrics.JobsCollector) and the staff's
operations page (/ops/), so the two never disagree: it is counted with the jobs' counts and
kept in the cache with them (predictions.metrics.job_figures).
"""

import logging
import math
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Count, Q
from django.utils import timezone

from kafka_wire.producer import TRANSIENT_ERRORS
from kafka_wire.topics import describe_topics
from predictions.models import Job
from registry.selectors import every_version, serving_states

logger = logging.getLogger(__name__)

WINDOW_MINUTES = 60
QUANTILES = (0.5, 0.9, 0.99)
# Each stage ends at the first field and starts at the second: the times a job's attempt
# records (Job.stages). "inference" includes the wait in Kafka before the worker's batch.
STAGES = {
    "waiting": ("admitted_at", "attempt_started_at"),
    "preprocess": ("preprocessed_at", "admitted_at"),
    "to_kafka": ("submitted_at", "preprocessed_at"),
    "inference": ("inferred_at", "submitted_at"),
    "store": ("finished_at", "inferred_at"),
    "total": ("finished_at", "attempt_started_at"),
}
# Percentiles are taken over at most this many of a version's latest succeeded jobs of the
# hour: reading every one at hundreds of jobs a second would hold hundreds of thousands of
# rows in memory on every count.
LATENCY_SAMPLE = 5000
UNREGISTERED = "unregistered"


def nearest_rank(values: list[float], quantile: float) -> float | None:
    """The smallest value with at least `quantile` of the values at or below it; None for
    no values. Nearest rank, so every percentile shown is one job's real time."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(quantile * len(ordered)) - 1)]


def stage_percentiles(rows: list[dict]) -> dict[str, dict[str, float | None]]:
    """Each stage's percentiles in seconds over the rows (jobs' stage times) that have both
    of its ends."""
    figures = {}
    for stage, (end, start) in STAGES.items():
        seconds = [
            (row[end] - row[start]).total_seconds()
            for row in rows
            if row[end] is not None and row[start] is not None
        ]
        figures[stage] = {str(q): nearest_rank(seconds, q) for q in QUANTILES}
    return figures


def _minute_counts(now: datetime) -> dict[int | None, dict]:
    """Per routed version: jobs answered (succeeded or failed) in each minute of the window
    (oldest first, the last being the 60 seconds up to now), and how many succeeded and
    failed in it. Cancelled and expired jobs are left out: a mass cancel is not work done."""
    since = now - timedelta(minutes=WINDOW_MINUTES)
    minutes = {
        f"m{index}": Count(
            "pk",
            filter=Q(
                finished_at__gt=since + timedelta(minutes=index),
                finished_at__lte=since + timedelta(minutes=index + 1),
            ),
        )
        for index in range(WINDOW_MINUTES)
    }
    rows = (
        Job.objects.filter(
            finished_at__gt=since,
            finished_at__lte=now,
            status__in=(Job.Status.SUCCEEDED, Job.Status.FAILED),
        )
        .values("routed_to")
        .annotate(
            succeeded=Count("pk", filter=Q(status=Job.Status.SUCCEEDED)),
            failed=Count("pk", filter=Q(status=Job.Status.FAILED)),
            **minutes,
        )
        .order_by()
    )
    return {
        row["routed_to"]: {
            "succeeded": row["succeeded"],
            "failed": row["failed"],
            "per_minute": [row[f"m{index}"] for index in range(WINDOW_MINUTES)],
        }
        for row in rows
    }


def _latencies(routed_to: int | None, now: datetime) -> dict:
    since = now - timedelta(minutes=WINDOW_MINUTES)
    fields = sorted({field for pair in STAGES.values() for field in pair})
    rows = (
        Job.objects.filter(
            routed_to=routed_to,
            status=Job.Status.SUCCEEDED,
            finished_at__gt=since,
            finished_at__lte=now,
        )
        .order_by("-finished_at")
        .values(*fields)[:LATENCY_SAMPLE]
    )
    return stage_percentiles(list(rows))


def _dead_letters() -> int | None:
    """Messages in the dead-letter topic (what its retention keeps); None when Kafka does
    not answer."""
    try:
        rows = describe_topics({settings.KAFKA_DEAD_LETTER_TOPIC: None})
    except (*TRANSIENT_ERRORS, TimeoutError) as error:
        logger.warning("could not read the dead-letter topic from Kafka: %s", error)
        return None
    return sum(row.end_offset for row in rows)


def count_operations(now: datetime | None = None) -> dict:
    """The operations figures, read from the database and Kafka now: an entry per
    registered version (and one for the unregistered path while it has jobs), and the
    dead letters. Workers, lag and dead letters are None when Kafka does not answer."""
    now = now or timezone.now()
    versions = every_version()
    states = serving_states(versions)
    waiting = {}
    for row in (
        Job.objects.exclude(status__in=Job.FINISHED)
        .values("routed_to", "status")
        .annotate(n=Count("pk"))
        .order_by()
    ):
        waiting.setdefault(row["routed_to"], {})[row["status"]] = row["n"]
    finished = _minute_counts(now)
    routes: list[tuple[int | None, str, int | None]] = [
        (version.pk, version.model.name, version.version) for version in versions
    ]
    if None in waiting or None in finished:
        routes.append((None, UNREGISTERED, None))
    entries = []
    for pk, model, number in routes:
        done = finished.get(pk, {"succeeded": 0, "failed": 0, "per_minute": [0] * WINDOW_MINUTES})
        state = None if states is None or pk is None else states[pk]
        entries.append(
            {
                "model": model,
                "version": number,
                "queue": {
                    status: waiting.get(pk, {}).get(status, 0)
                    for status in Job.Status.values
                    if status not in Job.FINISHED
                },
                "workers": None if state is None else state.members,
                "lag": None if state is None else state.lag,
                "succeeded_last_hour": done["succeeded"],
                "failed_last_hour": done["failed"],
                "per_minute": done["per_minute"],
                "jobs_per_minute": done["per_minute"][-1],
                "stage_seconds": _latencies(pk, now),
            }
        )
    return {
        "window_minutes": WINDOW_MINUTES,
        "versions": entries,
        "dead_letters": _dead_letters(),
    }
