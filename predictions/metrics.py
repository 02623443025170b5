"""Metrics counted in the database at scrape time, served by the web process's /metrics."""

from datetime import timedelta

from django.db.models import Count, DurationField, ExpressionWrapper, F, Q, Sum
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily

from predictions.models import Job

UPLOAD_TO_STORED_BUCKETS_S = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800)


class JobsCollector:
    """Jobs per status, and upload-to-stored latency of finished jobs, counted in the
    database at scrape time: results are stored by Celery processes, which serve no
    metrics, and the database is the one place that sees every job."""

    def collect(self):
        by_status = dict(Job.objects.values_list("status").annotate(n=Count("pk")).order_by())
        jobs = GaugeMetricFamily("inferencehub_jobs", "Jobs by status.", labels=["status"])
        for status in Job.Status.values:
            jobs.add_metric([status], by_status.get(status, 0))
        yield jobs

        latency = ExpressionWrapper(
            F("finished_at") - F("created_at"), output_field=DurationField()
        )
        buckets = {
            f"le_{index}": Count(
                "pk", filter=Q(finished_at__lte=F("created_at") + timedelta(seconds=bound))
            )
            for index, bound in enumerate(UPLOAD_TO_STORED_BUCKETS_S)
        }
        totals = Job.objects.filter(finished_at__isnull=False).aggregate(
            count=Count("pk"), total=Sum(latency), **buckets
        )
        histogram = HistogramMetricFamily(
            "inferencehub_upload_to_stored_seconds",
            "Time from upload to stored result of every finished job (from the database).",
        )
        histogram.add_metric(
            [],
            buckets=[
                (str(bound), totals[f"le_{index}"])
                for index, bound in enumerate(UPLOAD_TO_STORED_BUCKETS_S)
            ]
            + [("+Inf", totals["count"])],
            sum_value=totals["total"].total_seconds() if totals["total"] else 0.0,
        )
        yield histogram
