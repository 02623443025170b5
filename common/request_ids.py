"""Request ids: every request gets one (the client's X-Request-ID when it is sane, else a new
one), answers with it, and every log line written while it is handled carries it, in the web
and in the Celery tasks it enqueues (inferencehub/celery.py passes it along in the task's
headers). So `grep <request id> .stack/logs/*` finds the lines of one request's work.

The web writes one access line per request (method, route, status, duration), logger
`inferencehub.access`; Django's own per-request warnings for 4xx answers are left out
(settings.LOGGING), so each answer is logged once.
"""

import contextvars
import logging
import re
import time
import uuid

from asgiref.sync import iscoroutinefunction, markcoroutinefunction

from common import tracing

HEADER = "X-Request-ID"
# A client's id is kept if it is short and plain: it ends up in log lines and headers.
ACCEPTED = re.compile(r"[A-Za-z0-9._:-]{1,64}")

current = contextvars.ContextVar("request_id", default=None)
access_log = logging.getLogger("inferencehub.access")


def new_request_id() -> str:
    return uuid.uuid4().hex


def request_id_of(value: str | None) -> str:
    """The client's id when it is acceptable, else a new one."""
    return value if value and ACCEPTED.fullmatch(value) else new_request_id()


class RequestIdFilter(logging.Filter):
    """Gives every record a request_id attribute (the current one, or "-"), for the log
    formats; set on the handlers, so records of every logger get it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = current.get() or "-"
        return True


class RequestIdMiddleware:
    """Outermost but for the error pages: the id is set before anything logs, and the
    access line is written with the status the client gets."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response) -> None:
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request):
        if iscoroutinefunction(self):
            return self._acall(request)
        request_id, token, started = self._start(request)
        try:
            response = self.get_response(request)
            return self._finish(request, response, request_id, started)
        finally:
            current.reset(token)

    async def _acall(self, request):
        request_id, token, started = self._start(request)
        try:
            response = await self.get_response(request)
            return self._finish(request, response, request_id, started)
        finally:
            current.reset(token)

    def _start(self, request):
        request_id = request_id_of(request.headers.get(HEADER))
        request.request_id = request_id
        tracing.tag_request(request_id)
        return request_id, current.set(request_id), time.monotonic()

    def _finish(self, request, response, request_id: str, started: float):
        response[HEADER] = request_id
        match = getattr(request, "resolver_match", None)
        # Named here, where the route is known, in the web and the held process alike.
        tracing.name_request_span(request.method, match.route if match else None)
        access_log.info(
            "%s %s %d %.1f ms",
            request.method,
            # As the request's span is named: a job's id is in neither, its request id in both.
            tracing.route_template(match.route) if match and match.route else request.path,
            response.status_code,
            (time.monotonic() - started) * 1000,
        )
        return response
