"""Refuse a request whose declared body is too large before anything reads the body."""

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse


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
            return JsonResponse({"error": "Content-Length is not a number"}, status=400)
        if declared > settings.REQUEST_MAX_BYTES:
            return JsonResponse(
                {
                    "error": f"the request body is {declared} bytes; "
                    f"the limit is {settings.REQUEST_MAX_BYTES}"
                },
                status=413,
            )
        return self.get_response(request)
