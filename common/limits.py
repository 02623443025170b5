"""Limits of what a request may ask for: the top_k range, and a declared body too large
to read."""

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.http import HttpRequest, HttpResponse

from common.errors import error_response
from common.images import PixelLimits

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
        return self.refusal(request) or self.get_response(request)

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        return self.refusal(request) or await self.get_response(request)

    def refusal(self, request: HttpRequest) -> HttpResponse | None:
        try:
            declared = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return error_response("Content-Length is not a number", 400)
        if declared > settings.REQUEST_MAX_BYTES:
            return error_response(
                f"the request body is {declared} bytes; the limit is {settings.REQUEST_MAX_BYTES}",
                413,
            )
        return None


# Jobs per page of a list (the API's page_size, the pages' pagination).
PAGE_SIZE_DEFAULT = 50
PAGE_SIZE_MAX = 500

# How long GET /api/jobs/{id}/?wait=N may hold its answer until the job finishes; under
# gunicorn's --timeout (120 s), and short enough that a proxy does not cut it off.
WAIT_MAX_SECONDS = 30

# The front door (nginx, stack/nginx.conf) disconnects a client that sends nothing of its
# request's head or body, or reads nothing of its answer, for this long; a head must
# arrive whole within it. Slow clients then cost nginx a connection, never a thread of
# the app.
CLIENT_IDLE_SECONDS = 10

# --- Pixels an upload may claim, so that its decode stays within a budget -------------
# Measured per format at 12, 25 and 50 MP (docs/performance.md, "Big images"; `python -m
# bench.decode`). A JPEG is decoded at a reduced DCT scale: 0.12 s and a few MB at 50 MP,
# so it may have UPLOAD_MAX_PIXELS. Every other format is decoded whole, and its decode's
# memory grows with its pixels whatever the file's size (a WebP's about 15 MB a megapixel);
# this bounds one decode to under a second of CPU and 250 MB, two at once within a Celery
# pod's 1 GiB.
DECODED_WHOLE_MAX_PIXELS = 16_000_000
# A picture above this many pixels holds at least this many bytes per million pixels: a
# flat 25 MP lossy WebP 1,800, a flat PNG 4,400, a photo hundreds of thousands. Fewer is a
# decompression bomb's ratio (the 1,970-byte lossless WebP of 50 MP: 39).
RATIO_CHECKED_ABOVE_PIXELS = 4_000_000
MIN_BYTES_PER_MEGAPIXEL = 1_000
# Pixels decoded whole that one request may bring, all its files together: about ten
# seconds of one Celery process.
REQUEST_MAX_DECODED_WHOLE_PIXELS = 160_000_000


def upload_pixel_limits() -> PixelLimits:
    """The limits inspect_image applies to each file (UPLOAD_MAX_PIXELS is a setting)."""
    return PixelLimits(
        jpeg=settings.UPLOAD_MAX_PIXELS,
        decoded_whole=min(settings.UPLOAD_MAX_PIXELS, DECODED_WHOLE_MAX_PIXELS),
        ratio_checked_above=RATIO_CHECKED_ABOVE_PIXELS,
        min_bytes_per_megapixel=MIN_BYTES_PER_MEGAPIXEL,
    )
