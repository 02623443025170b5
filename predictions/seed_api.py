"""The seed system's HTTP API (/register, /image, /result), kept so its clients move over
unchanged. The uuid of a batch /register made is the capability: whoever holds it may
upload and read. A batch a user made elsewhere answers only to that user's credentials.
Its schema is in predictions/openapi.py."""

import json
import math
import uuid

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST
from rest_framework.exceptions import APIException
from rest_framework.request import Request
from rest_framework.settings import api_settings

from common.errors import error_response
from predictions import selectors, uploads
from predictions.models import Job
from predictions.throttles import AnonThrottle, UserThrottle


def _require_enabled() -> None:
    if not settings.SEED_API_ENABLED:
        raise Http404("the seed-compatible API is switched off")


def _int_field(data, name: str) -> int:
    raw = data.get(name)
    if raw is None or raw == "":
        raise ValueError(f"{name} is required")
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None


def _optional_int_field(data, name: str) -> int | None:
    return None if data.get(name) in (None, "") else _int_field(data, name)


def _batch_id(raw) -> uuid.UUID:
    try:
        return uuid.UUID(str(raw))
    except ValueError:
        raise ValueError(f"uuid {raw!r} is not a registered uuid") from None


def _not_usable(raw) -> str:
    # One message for unknown and for someone else's batch, so a guess learns nothing.
    return f"uuid {raw} is not registered, or belongs to a user: send that user's token"


def _user(request: HttpRequest):
    """The caller, authenticated as the REST API does: a token, or a session with its CSRF
    token (the views are csrf_exempt for the seed's scripts, so the check happens here).
    Raises APIException for a bad token or a missing CSRF token."""
    authenticators = [auth() for auth in api_settings.DEFAULT_AUTHENTICATION_CLASSES]
    return Request(request, authenticators=authenticators).user


def _refusal(request: HttpRequest, user) -> HttpResponse | None:
    """None when the caller may upload or register: a signed-in one, or an anonymous one
    while SEED_API_ANONYMOUS is on, within the rates (_throttled). Otherwise the error."""
    if not user.is_authenticated and not settings.SEED_API_ANONYMOUS:
        return error_response(
            "the seed API needs credentials (Authorization: Token <token>): "
            "calls without them are switched off (SEED_API_ANONYMOUS)",
            401,
        )
    return _throttled(request, user)


def _throttled(request: HttpRequest, user) -> HttpResponse | None:
    """A 429 once the caller is over the REST API's rates, counted with its requests: per
    signed-in user (API_THROTTLE_USER), else per address (API_THROTTLE_ANON)."""
    # The throttles read the caller from request.user, which the token sets only here.
    request.user = user
    throttle = UserThrottle() if user.is_authenticated else AnonThrottle()
    if throttle.allow_request(request, None):
        return None
    who = "this user" if user.is_authenticated else "this address"
    response = error_response(f"too many requests from {who}; try again later", 429)
    response["Retry-After"] = str(math.ceil(throttle.wait()))
    return response


# csrf_exempt: the seed clients are scripts that never held a CSRF cookie. A registered
# batch belongs to no one, so a cross-site request gains nothing it could not do itself;
# a session is only honoured, for a user's own batch, with its CSRF token (_user).
@csrf_exempt
@require_POST
def register(request):
    _require_enabled()
    try:
        caller = _user(request)
    except APIException as exc:
        return error_response(str(exc.detail), exc.status_code)
    if (refusal := _refusal(request, caller)) is not None:
        return refusal
    # Never the caller's: the uuid is the capability, and batch ids show in page URLs.
    return JsonResponse({"uuid": str(uploads.create_batch(owner=None).pk)})


@csrf_exempt
@require_POST
def image(request):
    _require_enabled()
    raw = request.POST.get("uuid")
    try:
        uploader = _user(request)
    except APIException as exc:
        return error_response(str(exc.detail), exc.status_code)
    if (refusal := _refusal(request, uploader)) is not None:
        return refusal
    try:
        upload = uploads.upload_images(
            uploader=uploader,
            files=[request.FILES["payload"]] if "payload" in request.FILES else [],
            top_k=_int_field(request.POST, "topk"),
            batch_id=_batch_id(raw),
            seq=_int_field(request.POST, "seq"),
            # As the REST API's: an image sent again after a lost answer makes no second
            # job. Anonymous callers may send one too: their key belongs to the batch.
            upload_key=request.headers.get("Idempotency-Key"),
            # Optional, as in the REST API: not in the seed system, so its clients omit it.
            callback_url=request.POST.get("callback_url", "").strip(),
            # Optional, not in the seed's API: as the REST upload's.
            deadline=request.POST.get("deadline") or None,
            timeout_s=_optional_int_field(request.POST, "timeout_s"),
            priority=request.POST.get("priority") or None,
        )
    except uploads.UnknownBatch:
        return error_response(_not_usable(raw), 400)
    except uploads.UploadError as exc:
        return error_response(str(exc), exc.status)
    except ValueError as exc:
        return error_response(str(exc), 400)
    response = HttpResponse(status=200)
    if upload.replayed:
        response["Idempotent-Replayed"] = "true"
    return response


# csrf_exempt: it only reads, and a POST should hear that /result takes GET, not that a
# CSRF token is missing.
@csrf_exempt
@require_GET
def result(request):
    """Finished items with seqStart <= seq <= seqEnd; labels only, short names, best first."""
    _require_enabled()
    raw = request.GET.get("uuid")
    try:
        caller = _user(request)
    except APIException as exc:
        return error_response(str(exc.detail), exc.status_code)
    # Reading a batch by its uuid stays open to anonymous callers (the uuid is the
    # capability), within the same rates.
    if (refusal := _throttled(request, caller)) is not None:
        return refusal
    try:
        batch = selectors.usable_batch(_batch_id(raw), caller)
        seq_start = _int_field(request.GET, "seqStart")
        seq_end = _int_field(request.GET, "seqEnd")
    except ValueError as exc:
        return error_response(str(exc), 400)
    except APIException as exc:
        return error_response(str(exc.detail), exc.status_code)
    if batch is None:
        return error_response(_not_usable(raw), 400)
    jobs = selectors.batch_jobs(batch, seq_start=seq_start, seq_end=seq_end, finished_only=True)
    items = []
    for job in jobs:
        item = {"seq": job.seq, "predictions": [p.short_label for p in job.predictions.all()]}
        # Failed, cancelled or expired: the seed's clients read any error as "no answer".
        if job.status != Job.Status.SUCCEEDED:
            item["error"] = job.error or str(job.status)
        items.append(item)
    return HttpResponse(json.dumps({"items": items}), content_type="application/json")
