"""Prometheus metrics.

The web process serves /metrics. Under gunicorn (gunicorn.conf.py sets
PROMETHEUS_MULTIPROC_DIR) every worker process writes its request counts to files there,
and a scrape adds up all of them; the jobs gauge and the upload-to-stored histogram are read
from the database at scrape time (predictions/metrics.py). Inference workers and the result
bridge serve their metrics on their own port (`--metrics-port`), with /healthz beside /metrics:
it fails when the consumer loop has not polled Kafka for CONSUMER_STALL_SECONDS.
"""

import hmac
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    make_wsgi_app,
    multiprocess,
)
from prometheus_client.exposition import ThreadingWSGIServer

from common.errors import error_response

logger = logging.getLogger(__name__)

# --- Web process ----------------------------------------------------------------------

REQUEST_SECONDS = Histogram(
    "inferencehub_http_request_duration_seconds",
    "Time to answer an HTTP request, by route name (not path, to bound the label count).",
    ["method", "route", "status"],
)


class RequestMetricsMiddleware:
    # Both modes: a sync-only middleware would cost the held process a thread per request
    # (inferencehub/asgi.py).
    sync_capable = True
    async_capable = True

    def __init__(self, get_response) -> None:
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if iscoroutinefunction(self):
            return self.__acall__(request)
        started = time.perf_counter()
        response = self.get_response(request)
        self.observe(request, response, started)
        return response

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response = await self.get_response(request)
        self.observe(request, response, started)
        return response

    def observe(self, request: HttpRequest, response: HttpResponse, started: float) -> None:
        REQUEST_SECONDS.labels(
            request.method, route_label(request), str(response.status_code)
        ).observe(time.perf_counter() - started)


# Collectors that read the database at scrape time; the predictions app registers its own
# here (predictions/metrics.py), so this module needs no models.
SCRAPE_TIME_REGISTRY = CollectorRegistry(auto_describe=False)


def route_label(request: HttpRequest) -> str:
    """The URL pattern's name, e.g. "job-detail": the router's patterns are regexes,
    unreadable in a dashboard. An unnamed pattern keeps its route."""
    match = request.resolver_match
    if match is None:
        return "unmatched"
    return match.view_name if match.url_name else match.route


class WebOnlyCollector:
    """Every metric of a source but the consumers' (below): the web process imports this
    module and so makes them too, but only inference workers and the bridge count them,
    and the web's would always read 0."""

    def __init__(self, source) -> None:
        self.source = source

    def collect(self):
        consumer_metrics = {
            family.name for metric in CONSUMER_METRICS for family in metric.describe()
        }
        for family in self.source.collect():
            if family.name not in consumer_metrics:
                yield family


def scrape_refusal(request: HttpRequest) -> HttpResponse | None:
    """None when the request carries `Authorization: Bearer <METRICS_TOKEN>`, else the
    answer to give. /metrics is for Prometheus only: what it shows (every route, status and
    latency; the jobs' counts) is no one else's business. The client's address proves
    nothing here: behind the proxy every request comes from loopback."""
    token = settings.METRICS_TOKEN
    if not token:
        return error_response("/metrics is off: set METRICS_TOKEN to serve it to Prometheus", 404)
    given = request.headers.get("Authorization", "")
    if hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        return None
    response = error_response(
        "/metrics needs the header Authorization: Bearer <METRICS_TOKEN>", 401
    )
    response["WWW-Authenticate"] = 'Bearer realm="metrics"'
    return response


def metrics_view(request: HttpRequest) -> HttpResponse:
    if refused := scrape_refusal(request):
        return refused
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        source = CollectorRegistry()
        multiprocess.MultiProcessCollector(source)
    else:  # one process, e.g. runserver
        source = REGISTRY
    registry = CollectorRegistry(auto_describe=False)
    registry.register(WebOnlyCollector(source))
    return HttpResponse(
        generate_latest(registry) + generate_latest(SCRAPE_TIME_REGISTRY),
        content_type=CONTENT_TYPE_LATEST,
    )


# --- Inference workers and result bridge (kafka_wire.runner, workers.worker) -------------

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
REQUESTS_DROPPED = Counter(
    "inferencehub_requests_dropped",
    "Requests a worker did not infer: their job was cancelled, or their deadline had passed.",
    ["reason"],
)
INFERENCE_SECONDS = Histogram(
    "inferencehub_inference_duration_seconds",
    "Time of one model predict call over a batch.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
CONSUMER_METRICS = (BATCH_SIZE, MESSAGES_CONSUMED, CONSUMER_LAG, DEAD_LETTERS, INFERENCE_SECONDS)


def add_metrics_port_argument(parser) -> None:
    """The --metrics-port option of the long-running Kafka commands."""
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=settings.METRICS_PORT,
        help="serve Prometheus metrics on this port (0: none)",
    )


class ConsumerHealth:
    """When the process's consumer loop last polled Kafka (kafka_wire.runner stamps it)."""

    def __init__(self) -> None:
        self.last_poll = time.monotonic()

    def polled(self) -> None:
        self.last_poll = time.monotonic()

    def seconds_since_poll(self) -> float:
        return time.monotonic() - self.last_poll


CONSUMER_HEALTH = ConsumerHealth()
METRICS_PATH = "/metrics"
HEALTH_PATH = "/healthz"


def health_app(environ, start_response) -> list[bytes]:
    """200 while the consumer loop polls; 503 once it has not for CONSUMER_STALL_SECONDS
    (a handler or a delivery that hangs), so that the orchestrator restarts the process."""
    since = CONSUMER_HEALTH.seconds_since_poll()
    limit = settings.CONSUMER_STALL_SECONDS
    healthy = since <= limit
    body = {
        "status": "ok" if healthy else "stalled",
        # Rounded up, so a stalled answer never shows the limit itself (2.04 s as 2.1).
        "seconds_since_poll": math.ceil(since * 10) / 10,
        "limit_seconds": limit,
    }
    start_response(
        "200 OK" if healthy else "503 Service Unavailable", [("Content-Type", "application/json")]
    )
    return [json.dumps(body).encode()]


def consumer_http_app() -> Callable:
    """/metrics (the default registry) and /healthz of a worker or the bridge; 404 elsewhere."""
    metrics_app = make_wsgi_app()

    def app(environ, start_response) -> list[bytes]:
        path = environ["PATH_INFO"]
        if path == HEALTH_PATH:
            return health_app(environ, start_response)
        if path == METRICS_PATH:
            return metrics_app(environ, start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [f"no such path; try {METRICS_PATH} or {HEALTH_PATH}\n".encode()]

    return app


class QuietRequestHandler(WSGIRequestHandler):
    # Probes and scrapes every few seconds would flood the log.
    def log_message(self, format, *args) -> None:
        pass


def serve_metrics(port: int) -> WSGIServer | None:
    """Serve /metrics and /healthz over HTTP from a daemon thread; 0 serves nothing."""
    if not port:
        return None
    # The stall clock starts here: loading the model before is not a stall.
    CONSUMER_HEALTH.polled()
    server = make_server(
        "0.0.0.0", port, consumer_http_app(), ThreadingWSGIServer, QuietRequestHandler
    )
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    logger.info("metrics on http://0.0.0.0:%d%s, health on %s", port, METRICS_PATH, HEALTH_PATH)
    return server
