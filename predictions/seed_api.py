"""The seed system's HTTP API (/register, /image, /result), kept so its clients move over
unchanged. The batch uuid is the capability: whoever holds it may upload and read."""

import json
import uuid

from django.conf import settings
from django.http import Http404, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from predictions import services
from predictions.models import Batch, Job


def _error(message: str, status: int = 400) -> JsonResponse:
    response = JsonResponse({"error": message}, status=status)
    if status == 503:
        response["Retry-After"] = "5"
    return response


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


def _batch(raw) -> Batch:
    try:
        batch_id = uuid.UUID(str(raw))
    except ValueError:
        raise ValueError(f"uuid {raw!r} is not a registered uuid") from None
    batch = Batch.objects.filter(pk=batch_id).first()
    if batch is None:
        raise ValueError(f"uuid {raw} is not registered")
    return batch


# csrf_exempt: the seed clients are scripts that never held a CSRF cookie, and these views
# act on no session-held authority: uploads and reads are allowed to whoever knows the
# batch uuid (the capability), so a cross-site request gains nothing it could not do itself.
@csrf_exempt
@require_POST
def register(request):
    _require_enabled()
    owner = request.user if request.user.is_authenticated else None
    return JsonResponse({"uuid": str(services.create_batch(owner=owner).pk)})


@csrf_exempt
@require_POST
def image(request):
    _require_enabled()
    try:
        batch = _batch(request.POST.get("uuid"))
        seq = _int_field(request.POST, "seq")
        top_k = _int_field(request.POST, "topk")
        services.create_jobs(
            owner=batch.owner,
            uploads=[request.FILES["payload"]] if "payload" in request.FILES else [],
            top_k=top_k,
            batch=batch,
            seq=seq,
        )
    except services.UploadError as exc:
        return _error(str(exc), exc.status)
    except ValueError as exc:
        return _error(str(exc))
    return HttpResponse(status=200)


@require_GET
def result(request):
    """Finished items with seqStart <= seq <= seqEnd; labels only, short names, best first."""
    _require_enabled()
    try:
        batch = _batch(request.GET.get("uuid"))
        seq_start = _int_field(request.GET, "seqStart")
        seq_end = _int_field(request.GET, "seqEnd")
    except ValueError as exc:
        return _error(str(exc))
    jobs = (
        batch.jobs.filter(seq__gte=seq_start, seq__lte=seq_end, status__in=Job.FINISHED)
        .prefetch_related("predictions")
        .order_by("seq")
    )
    items = []
    for job in jobs:
        item = {"seq": job.seq, "predictions": [p.short_label for p in job.predictions.all()]}
        if job.status == Job.Status.FAILED:
            item["error"] = job.error
        items.append(item)
    return HttpResponse(json.dumps({"items": items}), content_type="application/json")


def _error_response(description: str) -> dict:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


SEED_API_PATHS = {
    "/register": {
        "post": {
            "operationId": "seed_register",
            "summary": "Register a batch; its uuid is the capability to upload to and read it.",
            "tags": ["seed-compatible"],
            "security": [{}],
            "responses": {
                "200": {
                    "description": "The new batch.",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {"uuid": {"type": "string", "format": "uuid"}},
                                "required": ["uuid"],
                            }
                        }
                    },
                }
            },
        }
    },
    "/image": {
        "post": {
            "operationId": "seed_image",
            "summary": "Upload one image as item `seq` of a batch; answers 200 with an empty body.",
            "tags": ["seed-compatible"],
            "security": [{}],
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "uuid": {"type": "string", "format": "uuid"},
                                "seq": {"type": "integer", "minimum": 0},
                                "topk": {"type": "integer", "minimum": 1, "maximum": 1000},
                                "payload": {"type": "string", "format": "binary"},
                            },
                            "required": ["uuid", "seq", "topk", "payload"],
                        }
                    }
                },
            },
            "responses": {
                "200": {"description": "Stored and queued; the body is empty."},
                "400": _error_response("A bad field or image, or an unknown uuid."),
                "409": _error_response("The seq is already used in the batch."),
                "413": _error_response("The image is over UPLOAD_MAX_BYTES."),
            },
        }
    },
    "/result": {
        "get": {
            "operationId": "seed_result",
            "summary": "Finished items with seqStart <= seq <= seqEnd, best label first.",
            "tags": ["seed-compatible"],
            "security": [{}],
            "parameters": [
                {"name": name, "in": "query", "required": True, "schema": schema}
                for name, schema in (
                    ("uuid", {"type": "string", "format": "uuid"}),
                    ("seqStart", {"type": "integer"}),
                    ("seqEnd", {"type": "integer"}),
                )
            ],
            "responses": {
                "200": {
                    "description": "The finished items; `error` only on failed ones.",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "items": {
                                        "type": "array",
                                        "items": {
                                            "type": "object",
                                            "properties": {
                                                "seq": {"type": "integer"},
                                                "predictions": {
                                                    "type": "array",
                                                    "items": {"type": "string"},
                                                },
                                                "error": {"type": "string"},
                                            },
                                            "required": ["seq", "predictions"],
                                        },
                                    }
                                },
                                "required": ["items"],
                            }
                        }
                    },
                },
                "400": _error_response("A missing or malformed field, or an unknown uuid."),
            },
        }
    },
}


def add_to_schema(result: dict, generator, request, public: bool) -> dict:
    """drf-spectacular postprocessing hook: these plain Django views are invisible to it."""
    if settings.SEED_API_ENABLED:
        result["paths"].update(SEED_API_PATHS)
    return result
