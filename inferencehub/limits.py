"""Limits of what a request may ask for: the top_k range, and a declared body too large
to read."""

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from inferencehub.errors import error_response

# How many classes a job may ask for: every form, serializer, schema and check reads these.
TOP_K_MIN = 1
TOP_K_MAX = 1000
TOP_K_DEFAULT = 5


class RequestSizeLimitMiddleware:
    """413 with the API's JSON error shape when Content-Length exceeds REQUEST_MAX_BYTES.

    Django checks DATA_UPLOAD_MAX_MEMORY_SIZE only for non-file fields, and per-file sizes
    only after a file is received; this stops a huge upload at its headers, so the server
    neither reads nor stores it. A body without Content-Length (chunked) is left to gunicorn
    and to those later checks."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        try:
            declared = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return error_response("Content-Length is not a number", 400)
        if declared > settings.REQUEST_MAX_BYTES:
            return error_response(
                f"the request body is {declared} bytes; the limit is {settings.REQUEST_MAX_BYTES}",
                413,
            )
        return self.get_response(request)


# Jobs per page of a list (the API's page_size, the pages' pagination).
PAGE_SIZE_DEFAULT = 50
PAGE_SIZE_MAX = 500

# How long GET /api/jobs/{id}/?wait=N may hold its answer until the job finishes; under
# gunicorn's --timeout (120 s), and short enough that a proxy does not cut it off.
WAIT_MAX_SECONDS = 30
# How often a held request looks at the database for a change.
HELD_POLL_SECONDS = 0.5
