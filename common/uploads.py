"""What Django does with an upload: the check of a declared body too large to read, the
pixel limits each image is held to, and the upload handlers reading a multipart body in
larger pieces.

Django reads an upload's body in its handlers' chunk size, 64 KiB by default. Under
gunicorn each read also copies what gunicorn has already received beyond it (up to 1 MiB,
gunicorn/http/unreader.py), so a photo of a few MB was copied dozens of times over: with
1 MiB pieces it is copied about once. FILE_UPLOAD_HANDLERS (settings.py) names these.
"""

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.core.files import uploadhandler
from django.http import HttpRequest, HttpResponse

from common.errors import error_response
from common.images import PixelLimits
from common.limits import (
    DECODED_WHOLE_MAX_PIXELS,
    MIN_BYTES_PER_MEGAPIXEL,
    RATIO_CHECKED_ABOVE_PIXELS,
)

CHUNK_SIZE = 1024 * 1024


class MemoryFileUploadHandler(uploadhandler.MemoryFileUploadHandler):
    chunk_size = CHUNK_SIZE


class TemporaryFileUploadHandler(uploadhandler.TemporaryFileUploadHandler):
    chunk_size = CHUNK_SIZE


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


def upload_pixel_limits() -> PixelLimits:
    """The limits inspect_image applies to each file (UPLOAD_MAX_PIXELS is a setting)."""
    return PixelLimits(
        jpeg=settings.UPLOAD_MAX_PIXELS,
        decoded_whole=min(settings.UPLOAD_MAX_PIXELS, DECODED_WHOLE_MAX_PIXELS),
        ratio_checked_above=RATIO_CHECKED_ABOVE_PIXELS,
        min_bytes_per_megapixel=MIN_BYTES_PER_MEGAPIXEL,
    )
