"""Prometheus metrics.

The web process serves /metrics. Under gunicorn (gunicorn.conf.py sets
PROMETHEUS_MULTIPROC_DIR) every worker process writes its request counts to files there,
and a scrape adds up all of them; the jobs gauge and the upload-to-stored histogram are read
from the database at scrape time. Inference workers and the result bridge serve their
metrics on their own port (`--metrics-port`).
"""

import logging
import os
import time
from datetime import timedelta

from django.conf import settings
from django.db.models import Count, DurationField, ExpressionWrapper, F, Q, Sum
from django.http import HttpRequest, HttpResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily

logger = logging.getLogger(__name__)

# --- Web process ----------------------------------------------------------------------

REQUEST_SECONDS = Histogram(
    "inferencehub_http_request_duration_seconds",
    "Time to answer an HTTP request, by route pattern (not path, to bound the label count).",
    ["method", "route", "status"],
)
UPLOAD_TO_STORED_BUCKETS_S = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800)


class RequestMetricsMiddleware:
    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response = self.get_response(request)
        match = request.resolver_match
        REQUEST_SECONDS.labels(
            request.method, match.route if match else "unmatched", str(response.status_code)
        ).observe(time.perf_counter() - started)
        return response


class JobsCollector:
    """Jobs per status, and upload-to-stored latency of finished jobs, counted in the
    database at scrape time: results are stored by Celery processes, which serve no
    metrics, and the database is the one place that sees every job."""

    def collect(self):
        from predictions.models import Job

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


JOBS_REGISTRY = CollectorRegistry(auto_describe=False)
JOBS_REGISTRY.register(JobsCollector())


def metrics_view(request: HttpRequest) -> HttpResponse:
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:  # one process, e.g. runserver
        registry = REGISTRY
    return HttpResponse(
        generate_latest(registry) + generate_latest(JOBS_REGISTRY), content_type=CONTENT_TYPE_LATEST
    )


# --- Inference workers and result bridge (kafka_bridge.runner, workers.worker) ----------

BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

BATCH_SIZE = Histogram(
    "inferencehub_batch_size",
    "Messages per handled batch; average batch size is _sum / _count.",
    ["consumer"],
    buckets=BATCH_SIZE_BUCKETS,
)
MESSAGES_CONSUMED = Counter(
    "inferencehub_messages_consumed", "Messages handled and committed.", ["consumer"]
)
CONSUMER_LAG = Gauge(
    "inferencehub_consumer_lag",
    "Messages behind the partition's end, as of this consumer's last batch from it.",
    ["consumer", "topic", "partition"],
)
DEAD_LETTERS = Counter(
    "inferencehub_dead_letters", "Messages copied to the dead-letter topic.", ["source_topic"]
)
INFERENCE_SECONDS = Histogram(
    "inferencehub_inference_duration_seconds",
    "Time of one model predict call over a batch.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


def add_metrics_port_argument(parser) -> None:
    """The --metrics-port option of the long-running Kafka commands."""
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=settings.METRICS_PORT,
        help="serve Prometheus metrics on this port (0: none)",
    )


def serve_metrics(port: int) -> None:
    """Serve the default registry over HTTP from a daemon thread; 0 serves nothing."""
    if port:
        start_http_server(port)
        logger.info("metrics on http://0.0.0.0:%d/metrics", port)
