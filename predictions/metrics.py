"""Metrics counted in the database (and Kafka), served by the web process's /metrics and,
the same reading, by the staff's operations page (predictions/operations.py).

Counting means reading the whole jobs table (0.2-0.75 s with 100,000+ jobs), so the counts
are kept in the cache (Redis, shared by every web process) and counted again at most every
METRICS_JOBS_REFRESH_SECONDS, by one scrape while the others serve the kept ones: a
scrape costs a cache read, however often and from however many scrapers it comes.
"""

import logging
import time
from collections.abc import Iterator
from datetime import timedelta

from django.conf import settings
from django.core.cache import cache
from django.db.models import Count, DurationField, ExpressionWrapper, F, Q, Sum
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from redis.exceptions import RedisError

from predictions.models import Job
from predictions.operations import count_operations

log = logging.getLogger(__name__)

UPLOAD_TO_STORED_BUCKETS_S = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800)

# Named anew when what is kept changes shape, so a deploy never reads the last one's.
FIGURES_KEY = "metrics:figures:2"
# Held by the one scrape that counts again; it expires by itself should that one die.
COUNTING_KEY = "metrics:figures:counting"


def count_jobs() -> dict:
    """Jobs per status, and the upload-to-stored buckets, count and total seconds of every
    finished job, read from the database; with the operations figures."""
    by_status = dict(Job.objects.values_list("status").annotate(n=Count("pk")).order_by())
    latency = ExpressionWrapper(F("finished_at") - F("created_at"), output_field=DurationField())
    buckets = {
        f"le_{index}": Count(
            "pk", filter=Q(finished_at__lte=F("created_at") + timedelta(seconds=bound))
        )
        for index, bound in enumerate(UPLOAD_TO_STORED_BUCKETS_S)
    }
    totals = Job.objects.filter(finished_at__isnull=False).aggregate(
        count=Count("pk"), total=Sum(latency), **buckets
    )
    return {
        "counted_at": time.time(),
        "by_status": {status: by_status.get(status, 0) for status in Job.Status.values},
        "buckets": [totals[f"le_{index}"] for index in range(len(UPLOAD_TO_STORED_BUCKETS_S))],
        "count": totals["count"],
        "total_s": totals["total"].total_seconds() if totals["total"] else 0.0,
        "operations": count_operations(),
    }


def job_figures() -> dict:
    """The kept counts; counted again when older than the refresh interval, by the scrape
    that takes the counting key first."""
    refresh = settings.METRICS_JOBS_REFRESH_SECONDS
    try:
        figures = cache.get(FIGURES_KEY)
        stale = figures is None or time.time() - figures["counted_at"] >= refresh
        if stale and (figures is None or cache.add(COUNTING_KEY, 1, timeout=max(refresh, 10))):
            figures = count_jobs()
            cache.set(FIGURES_KEY, figures, timeout=None)
            cache.delete(COUNTING_KEY)
    except RedisError as exc:
        # Metrics matter most during an outage: count without keeping.
        log.warning("job counts not kept, the cache is unavailable: %s", exc)
        figures = count_jobs()
    return figures


class JobsCollector:
    """Jobs per status, and upload-to-stored latency of finished jobs, from the database:
    results are stored by Celery processes, which serve no metrics, and the database is
    the one place that sees every job."""

    def collect(self):
        figures = job_figures()
        jobs = GaugeMetricFamily(
            "inferencehub_jobs",
            "Jobs by status (counted at most every METRICS_JOBS_REFRESH_SECONDS).",
            labels=["status"],
        )
        for status in Job.Status.values:
            jobs.add_metric([status], figures["by_status"].get(status, 0))
        yield jobs

        histogram = HistogramMetricFamily(
            "inferencehub_upload_to_stored_seconds",
            "Time from upload to stored result of every finished job (from the database).",
        )
        histogram.add_metric(
            [],
            buckets=[
                (str(bound), figures["buckets"][index])
                for index, bound in enumerate(UPLOAD_TO_STORED_BUCKETS_S)
            ]
            + [("+Inf", figures["count"])],
            sum_value=figures["total_s"],
        )
        yield histogram
        yield from operations_families(figures["operations"])


def operations_families(operations: dict) -> Iterator[GaugeMetricFamily]:
    """The operations figures (predictions/operations.py) as Prometheus gauges, labelled by
    model and version ("" for the unregistered path's); a figure Kafka did not give is left
    out rather than shown as 0."""
    window = operations["window_minutes"]
    per_minute = GaugeMetricFamily(
        "inferencehub_model_jobs_per_minute",
        "Jobs answered (succeeded or failed) in the last 60 seconds, per model version.",
        labels=["model", "version"],
    )
    finished = GaugeMetricFamily(
        "inferencehub_model_jobs_finished",
        f"Jobs finished in the last {window} minutes, per model version and status.",
        labels=["model", "version", "status"],
    )
    queue = GaugeMetricFamily(
        "inferencehub_model_queue_depth",
        "Unfinished jobs per model version and status.",
        labels=["model", "version", "status"],
    )
    workers = GaugeMetricFamily(
        "inferencehub_model_workers_alive",
        "Members of the model version's worker group in Kafka.",
        labels=["model", "version"],
    )
    lag = GaugeMetricFamily(
        "inferencehub_model_lag",
        "Messages of the model version's requests topic its workers have still to read.",
        labels=["model", "version"],
    )
    stages = GaugeMetricFamily(
        "inferencehub_model_stage_seconds",
        f"Percentiles of each stage's time over the succeeded jobs of the last {window} "
        "minutes, per model version (nearest rank).",
        labels=["model", "version", "stage", "quantile"],
    )
    for entry in operations["versions"]:
        labels = [entry["model"], "" if entry["version"] is None else str(entry["version"])]
        per_minute.add_metric(labels, entry["jobs_per_minute"])
        finished.add_metric([*labels, "succeeded"], entry["succeeded_last_hour"])
        finished.add_metric([*labels, "failed"], entry["failed_last_hour"])
        for status, count in entry["queue"].items():
            queue.add_metric([*labels, status], count)
        if entry["workers"] is not None:
            workers.add_metric(labels, entry["workers"])
        if entry["lag"] is not None:
            lag.add_metric(labels, entry["lag"])
        for stage, quantiles in entry["stage_seconds"].items():
            for quantile, seconds in quantiles.items():
                if seconds is not None:
                    stages.add_metric([*labels, stage, quantile], seconds)
    yield from (per_minute, finished, queue, workers, lag, stages)
    dead_letters = GaugeMetricFamily(
        "inferencehub_dead_letter_messages",
        "Messages in the dead-letter topic (as far as its retention keeps them).",
    )
    if operations["dead_letters"] is not None:
        dead_letters.add_metric([], operations["dead_letters"])
    yield dead_letters
