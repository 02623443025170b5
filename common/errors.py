"""The one shape of every error answer: JSON {"error": ...} for the API and the seed API,
a branded page for the web pages.

Django answers some errors itself (an unknown URL, a wrong method, a failed CSRF check,
an exception), with its debug pages under DEBUG: ErrorPagesMiddleware and the handlers in
inferencehub/urls.py turn those into ours, so no visitor sees a debug page or an empty 405.
"""

import logging

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.loader import render_to_string
from rest_framework.exceptions import MethodNotAllowed

log = logging.getLogger(__name__)

# What a 503 tells the client to wait before trying again: outages of the database or
# the task queue are expected to last seconds to minutes.
RETRY_AFTER_SECONDS = "5"

# The seed system's API paths (inferencehub/urls.py); they answer errors in JSON too.
SEED_API_PATHS = ("/register", "/image", "/result")

# Django's own error answers that are replaced by ours.
REPLACED_STATUSES = {
    400: "the request is malformed",
    403: "you may not do this",
    404: "there is nothing here",
    405: "this method is not allowed here",
    500: "the server failed; the error was logged",
}
TITLES = {
    400: "Bad request",
    403: "Forbidden",
    404: "Page not found",
    405: "Not allowed",
    429: "Too many requests",
}


def error_body(message: str, fields: dict | None = None) -> dict:
    """{"error": "<what is wrong>"}, plus "fields" (errors per form field) for form errors."""
    return {"error": message} if fields is None else {"error": message, "fields": fields}


def error_response(message: str, status: int) -> JsonResponse:
    response = JsonResponse(error_body(message), status=status)
    if status == 503:
        response["Retry-After"] = RETRY_AFTER_SECONDS
    response.error_shape = True
    return response


def wants_json(request: HttpRequest) -> bool:
    """Whether the request went to the API or the seed API rather than to a page."""
    path = request.path_info
    return path.startswith("/api/") or path.rstrip("/") in SEED_API_PATHS


def error_answer(request: HttpRequest, status: int, message: str) -> HttpResponse:
    """The error in the shape the request's part of the site answers in."""
    if wants_json(request):
        return error_response(message, status)
    # A standalone template without the signed-in user: a 500 may come from the database
    # being away, and the page must still render.
    html = render_to_string(
        "error.html",
        {"status": status, "title": TITLES.get(status, "Server error"), "message": message},
    )
    response = HttpResponse(html, status=status)
    response.error_shape = True
    return response


def _message(request: HttpRequest, status: int) -> str:
    if status == 404:
        return f"{REPLACED_STATUSES[404]}: {request.path}"
    return REPLACED_STATUSES[status]


def bad_request(request: HttpRequest, exception=None) -> HttpResponse:
    return error_answer(request, 400, _message(request, 400))


def permission_denied(request: HttpRequest, exception=None) -> HttpResponse:
    return error_answer(request, 403, _message(request, 403))


def not_found(request: HttpRequest, exception=None) -> HttpResponse:
    return error_answer(request, 404, _message(request, 404))


def server_error(request: HttpRequest) -> HttpResponse:
    return error_answer(request, 500, _message(request, 500))


def sign_in_locked_out(request: HttpRequest, original_response=None, credentials=None):
    """AXES_LOCKOUT_CALLABLE: a sign-in refused, before its password is checked, because
    its account or its address failed too often (django-axes)."""
    minutes = settings.LOGIN_LOCKOUT_MINUTES
    response = error_answer(
        request,
        429,
        f"too many failed sign-ins for this account or from this address; "
        f"try again in {minutes} minutes",
    )
    response["Retry-After"] = str(minutes * 60)
    return response


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """CSRF_FAILURE_VIEW: a form posted without its token, e.g. from a page left open
    across a sign-out."""
    return error_answer(request, 403, f"the CSRF check failed ({reason}); reload the page")


# Headers of the replaced answer that describe its body, not the request's handling.
BODY_HEADERS = {"content-type", "content-length", "content-disposition", "content-encoding"}


class ErrorPagesMiddleware:
    """Replace Django's own error answers (debug pages, the empty 405 of require_POST) with
    ours. First in MIDDLEWARE, so that it also sees what Django made of an exception raised
    by another middleware (DisallowedHost, CommonMiddleware's RuntimeError under DEBUG);
    the replacement keeps the headers and cookies the other middleware set (security
    headers, Allow, Vary). Django has already logged the exception behind a 500."""

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
        return self.replace(request, self.get_response(request))

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        return self.replace(request, await self.get_response(request))

    def replace(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        if response.status_code not in REPLACED_STATUSES or getattr(response, "error_shape", False):
            return response
        if response.get("Content-Type", "").startswith("application/json"):
            return response  # an answer of the API's own, already in its shape
        message = _message(request, response.status_code)
        if response.status_code == 405 and response.has_header("Allow"):
            message = f"{request.method} is not allowed here; allowed: {response['Allow']}"
        replacement = error_answer(request, response.status_code, message)
        for name, value in response.items():
            if name.lower() not in BODY_HEADERS:
                replacement[name] = value
        replacement.cookies = response.cookies
        return replacement


def exception_handler(exc, context):
    """DRF's EXCEPTION_HANDLER: every API error is {"error": "<readable message>"} plus
    "fields" for form errors."""
    if isinstance(exc, TooManyFilesSent):
        # Django raises it while reading the form; said here, not only in the log.
        return error_response(
            f"too many files in one request; the limit is {settings.DATA_UPLOAD_MAX_NUMBER_FILES}",
            400,
        )
    if isinstance(exc, RequestDataTooBig):
        # A form or JSON body over what Django reads into memory; files are limited apart.
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        return error_response(f"the request's fields are over the limit of {limit} bytes", 413)
    if isinstance(exc, TooManyFieldsSent):
        limit = settings.DATA_UPLOAD_MAX_NUMBER_FIELDS
        return error_response(f"too many form fields in one request; the limit is {limit}", 400)
    if isinstance(exc, DatabaseError):
        # The database being away is an outage to wait out, not a server bug: a 503 lets
        # clients retry, and nothing was accepted.
        return error_response("the database is unavailable; try again in a few seconds", 503)
    # Imported here: DRF's views module loads the throttle classes named in the settings,
    # which use this module's SEED_API_PATHS.
    from rest_framework.views import exception_handler as drf_exception_handler

    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    detail = response.data
    if isinstance(exc, MethodNotAllowed):
        # The Allow header says it to programs; the message says it to people.
        allowed = ", ".join(context["view"].allowed_methods)
        response.data = error_body(
            f"method {context['request'].method} is not allowed here; allowed: {allowed}"
        )
    elif isinstance(detail, dict) and set(detail) == {"detail"}:
        response.data = error_body(str(detail["detail"]))
    elif isinstance(detail, dict):
        messages = [f"{field}: {' '.join(map(str, errors))}" for field, errors in detail.items()]
        response.data = error_body("; ".join(messages), detail)
    else:
        response.data = error_body(" ".join(map(str, detail)))
    return response
