"""OpenTelemetry traces: one trace per job, from the upload to the stored result.

Off unless configured the standard way: OTEL_EXPORTER_OTLP_ENDPOINT (or
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) names an OTLP/HTTP collector, or OTEL_TRACES_EXPORTER=zipkin
sends the spans to OTEL_EXPORTER_ZIPKIN_ENDPOINT (make run TRACES=1 starts a Zipkin); the SDK
reads the other OTEL_* variables itself (OTEL_SERVICE_NAME, OTEL_TRACES_SAMPLER, ...).
Off, the API's no-op tracer costs a function call per span. The sampler the variables
choose is wrapped so that no trace is started by what is no job's story: a lone MariaDB
query, or beat's dispatch task (common/sampling.py). A job's trace context is
kept on its row (Job.trace_parent, a W3C traceparent) because its hops are not one call
chain: the dispatcher may admit it long after its upload, from another request or from
beat; the Kafka messages carry it in their `traceparent` header (kafka_wire/headers.py).
"""

import functools
import os
import re
from collections.abc import Collection, Iterator
from contextlib import contextmanager

from opentelemetry import context, trace
from opentelemetry.context import Context
from opentelemetry.propagate import extract, inject
from opentelemetry.semconv.attributes.http_attributes import HTTP_ROUTE
from opentelemetry.util.http import sanitize_method

# A proxy until configure() installs the SDK's provider; no-op if it never does.
tracer = trace.get_tracer("inferencehub")


EXPORTERS = ("otlp", "zipkin", "none")


def exporter_name() -> str:
    """OTEL_TRACES_EXPORTER, checked: a misspelt one must not leave tracing silently off."""
    name = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower()
    if name not in EXPORTERS:
        raise ValueError(
            f"OTEL_TRACES_EXPORTER must be one of {', '.join(EXPORTERS)}, not {name!r}"
        )
    return name


def enabled() -> bool:
    """Whether the OTEL_* variables ask for traces to be exported."""
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    name = exporter_name()
    if name == "zipkin":
        return True
    return name == "otlp" and bool(
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def configure(service_name: str, *, untraced_roots: Collection[str] = ()) -> bool:
    """Install the SDK's tracer provider exporting over OTLP/HTTP, when enabled(); once per
    process. OTEL_SERVICE_NAME, when set, names the service instead of service_name.
    Sampled as OTEL_TRACES_SAMPLER says, but a span named in untraced_roots, or a client's,
    never starts a trace (common/sampling.py)."""
    if not enabled():
        return False
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from common.sampling import WithoutStrayRoots, configured_sampler

    if exporter_name() == "zipkin":
        from opentelemetry.exporter.zipkin.json import ZipkinExporter as Exporter
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as Exporter,
        )
    name = os.environ.get("OTEL_SERVICE_NAME") or service_name
    provider = TracerProvider(
        resource=Resource.create({SERVICE_NAME: name}),
        sampler=WithoutStrayRoots(configured_sampler(), untraced_roots),
    )
    provider.add_span_processor(BatchSpanProcessor(Exporter()))
    trace.set_tracer_provider(provider)
    # Every MariaDB query a span of whatever it serves. Redis is left alone: Celery's broker
    # polls it every second in every process, which would make a trace of each poll.
    from opentelemetry.instrumentation.mysqlclient import MySQLClientInstrumentor

    MySQLClientInstrumentor().instrument()
    return True


def trace_django(service_name: str) -> None:
    """configure() and, when tracing is on, a span per request of the web's Django (the
    WSGI entry point calls it before the application is made)."""
    if configure(service_name):
        from opentelemetry.instrumentation.django import DjangoInstrumentor

        DjangoInstrumentor().instrument()


def trace_asgi(application, service_name: str):
    """configure() and, when tracing is on, the application wrapped in a span per request.
    Not Django's instrumentation, as for WSGI: its middleware is sync-only, which the held
    process refuses (inferencehub/asgi.py)."""
    if not configure(service_name):
        return application
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    # No span per message received or sent: an event stream held for 30 s would make one
    # per event, each named after the path.
    return OpenTelemetryMiddleware(
        application, default_span_details=_method_alone, exclude_spans=["receive", "send"]
    )


def _method_alone(scope: dict) -> tuple[str, dict]:
    """The held process's request span's name until its route is known (name_request_span):
    the method alone, as the instrumentation names it when it knows no route, never the
    path, which holds ids."""
    return _span_method(scope.get("method", "")), {}


# The request id (common/request_ids.py) on the request's span, in the web and the held
# process: the id in a log line or an X-Request-ID finds its trace.
REQUEST_ID = "inferencehub.request_id"


def tag_request(request_id: str) -> None:
    """Put the request id on the current span, the request's."""
    trace.get_current_span().set_attribute(REQUEST_ID, request_id)


def name_request_span(method: str, route: str | None) -> None:
    """Name the current span, the request's, `METHOD route` as OpenTelemetry's HTTP
    conventions say, route being the matched route's template (route_template), also its
    http.route; METHOD alone when no route matched. One name per route, not per path: a
    name per job would be as many names as jobs."""
    span = trace.get_current_span()
    if not span.is_recording():
        return
    method = _span_method(method)
    if route is None:
        span.update_name(method)
        return
    template = route_template(route)
    span.update_name(f"{method} {template}")
    span.set_attribute(HTTP_ROUTE, template)


def _span_method(method: str) -> str:
    # An unknown method is "_OTHER" to the conventions, and its span "HTTP".
    sanitized = sanitize_method(method.strip()) or ""
    return "HTTP" if sanitized == "_OTHER" else sanitized


# A regular expression's named group, (?P<pk>[^/.]+), and a path converter, <uuid:pk>.
_NAMED_GROUP = re.compile(r"\(\?P<(\w+)>(?:[^()]|\([^()]*\))*\)")
_CONVERTER = re.compile(r"<\w+:(\w+)>")


# Asked twice per request (its span's name, its access line): the routes are few.
@functools.lru_cache(maxsize=512)
def route_template(route: str) -> str:
    """A Django route (a URL pattern's, resolver_match.route) as a path template: the
    router's `api/jobs/(?P<pk>[^/.]+)/$` and `api/jobs/<uuid:pk>/` are both
    `/api/jobs/<pk>/`."""
    template = _CONVERTER.sub(r"<\1>", _NAMED_GROUP.sub(r"<\1>", route))
    for regex_only, plain in (("^", ""), ("$", ""), ("/?", "/"), ("\\", "")):
        template = template.replace(regex_only, plain)
    return "/" + template


# A link's trace as a tag as well: Zipkin shows no span links, and this finds the other
# trace by its id (a batch's, an upload's, a store transaction's, a first attempt's).
LINKED_TRACE = "inferencehub.linked_trace_id"


def link_to(span_context: trace.SpanContext | None) -> tuple[list[trace.Link], dict]:
    """The links and attributes of a span linked to span_context: none if it is invalid, or
    not sampled (no trace of it is kept, such as beat's dispatch task's)."""
    if span_context is None or not (span_context.is_valid and span_context.trace_flags.sampled):
        return [], {}
    return [trace.Link(span_context)], {LINKED_TRACE: format(span_context.trace_id, "032x")}


def new_trace(name: str, *, linked_to: str | None, attributes: dict) -> str:
    """The traceparent of a new trace's first span (name), linked to the span linked_to
    names: a job run again starts a trace of its own rather than growing its first one.
    "" when tracing is off."""
    links, linked = link_to(span_context_of(linked_to))
    with tracer.start_as_current_span(
        name, context=Context(), links=links, attributes={**attributes, **linked}
    ):
        return current_traceparent()


@contextmanager
def without_parent() -> Iterator[None]:
    """Spans started inside have no parent: each starts a trace of its own, or none if the
    sampler drops it (common/sampling.py)."""
    token = context.attach(Context())
    try:
        yield
    finally:
        context.detach(token)


def current_traceparent() -> str:
    """The current span's W3C traceparent, or "" when there is none (tracing off)."""
    carrier: dict[str, str] = {}
    inject(carrier)
    return carrier.get("traceparent", "")


def context_of(traceparent: str | None) -> Context | None:
    """The context a traceparent names, to start a span in; None for none."""
    return extract({"traceparent": traceparent}) if traceparent else None


def span_context_of(traceparent: str | None) -> trace.SpanContext | None:
    """The remote span a traceparent names, to link a span to; None when invalid."""
    context = context_of(traceparent)
    if context is None:
        return None
    span_context = trace.get_current_span(context).get_span_context()
    return span_context if span_context.is_valid else None


def trace_id_of(traceparent: str | None) -> str | None:
    """The trace id (32 hex digits) a traceparent names; None when there is none."""
    span_context = span_context_of(traceparent)
    return format(span_context.trace_id, "032x") if span_context else None
