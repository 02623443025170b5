"""The hand-written parts of the OpenAPI schema: what drf-spectacular cannot read from the
views (the multipart upload, the Idempotency-Key header, the seed API's plain Django views)
and the error responses every operation documents."""

from django.conf import settings
from drf_spectacular.utils import OpenApiParameter

from common.limits import TOP_K_DEFAULT, TOP_K_MAX, TOP_K_MIN
from predictions.models import Priority
from predictions.serializers import ErrorSerializer
from predictions.uploads import UPLOAD_KEY

TOP_K = {"type": "integer", "minimum": TOP_K_MIN, "maximum": TOP_K_MAX}


def errors(*codes: int) -> dict:
    """Schema of the error responses an operation can give, besides those of every one:
    401 (bad or missing token), 403 (session without CSRF token) and 429 (throttled)."""
    return {code: ErrorSerializer for code in sorted({401, 403, 429, *codes})}


UPLOAD_REQUEST = {
    "multipart/form-data": {
        "type": "object",
        "properties": {
            "image": {
                "type": "array",
                "items": {"type": "string", "format": "binary"},
                "minItems": 1,
            },
            "top_k": {**TOP_K, "default": TOP_K_DEFAULT},
            # An empty example: Swagger UI's "Try it out" fills each field with its
            # example, else with one made from the schema (a made-up batch uuid, seq 0),
            # and the upload as shipped would be refused for an unknown batch.
            "batch": {"type": "string", "format": "uuid", "example": ""},
            "seq": {"type": "integer", "minimum": 0, "example": ""},
            "model": {
                "type": "string",
                "description": "a registered model (GET /api/models/); default: the default one",
                "example": "",
            },
            "model_version": {
                "type": "integer",
                "minimum": 1,
                "description": "default: the model's latest enabled version",
                "example": "",
            },
            "callback_url": {
                "type": "string",
                "format": "uri",
                "description": "an http(s) URL each job is POSTed to once it has finished, "
                "signed with your webhook secret (GET /api/webhook-secret/); refused when its "
                "host is not public (docs/webhooks.md)",
                "example": "",
            },
            "deadline": {
                "type": "string",
                "format": "date-time",
                "description": "ISO 8601 time with a time zone after which the job is not "
                "inferred but ends expired; not with timeout_s",
                "example": "",
            },
            "timeout_s": {
                "type": "integer",
                "minimum": 1,
                "description": "seconds from the upload after which the job is not inferred but "
                "ends expired; default: the model version's default_timeout_s, if any",
                "example": "",
            },
            "priority": {
                "type": "string",
                "enum": Priority.values,
                "description": "the jobs' lane: workers take higher lanes first, keeping a "
                "share for the lower (docs/scheduling.md); default: the batch's, else normal",
                "example": "",
            },
        },
        "required": ["image"],
    }
}

IDEMPOTENCY_KEY = OpenApiParameter(
    "Idempotency-Key",
    str,
    OpenApiParameter.HEADER,
    description="any 1 to 100 printable ASCII characters, e.g. a UUID, new for "
    "each upload: the same upload sent again answers with the first one's jobs "
    "(header Idempotent-Replayed: true); the same key with another upload answers 422",
    pattern=f"^{UPLOAD_KEY.pattern}$",
)


def _error(description: str) -> dict:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


# What /register and /image answer a caller without credentials (seed_api.py).
SEED_ANONYMOUS_ERRORS = {
    "401": _error("No credentials, and SEED_API_ANONYMOUS is off."),
    "429": _error("Too many calls without credentials from this address (API_THROTTLE_ANON)."),
}

SEED_API_PATHS = {
    "/register": {
        "post": {
            "operationId": "seed_register",
            "summary": "Register a batch of no one; its uuid is the capability to upload to "
            "and read it.",
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
                },
                **SEED_ANONYMOUS_ERRORS,
            },
        }
    },
    "/image": {
        "post": {
            "operationId": "seed_image",
            "summary": "Upload one image as item `seq` of a batch; answers 200 with an empty body.",
            "tags": ["seed-compatible"],
            "security": [{}],
            # The REST API's header, scoped to the batch for a caller without credentials.
            "parameters": [
                {
                    "name": IDEMPOTENCY_KEY.name,
                    "in": "header",
                    "required": False,
                    "description": IDEMPOTENCY_KEY.description,
                    "schema": {"type": "string", "pattern": IDEMPOTENCY_KEY.pattern},
                }
            ],
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "uuid": {"type": "string", "format": "uuid"},
                                "seq": {"type": "integer", "minimum": 0},
                                "topk": TOP_K,
                                "payload": {"type": "string", "format": "binary"},
                                "callback_url": {
                                    "type": "string",
                                    "format": "uri",
                                    "description": "optional, as the REST API's upload "
                                    "takes it (docs/webhooks.md); needs credentials",
                                },
                            },
                            "required": ["uuid", "seq", "topk", "payload"],
                        }
                    }
                },
            },
            "responses": {
                "200": {
                    "description": "Stored and queued, or sent before with this "
                    "Idempotency-Key; the body is empty."
                },
                "400": _error("A bad field or image, or an unknown uuid."),
                "409": _error("The seq is already used in the batch."),
                "413": _error("The image is over UPLOAD_MAX_BYTES."),
                "422": _error("The Idempotency-Key was used for another upload."),
                **SEED_ANONYMOUS_ERRORS,
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
                "400": _error("A missing or malformed field, or an unknown uuid."),
            },
        }
    },
}


def add_to_schema(result: dict, generator, request, public: bool) -> dict:
    """drf-spectacular postprocessing hook: these plain Django views are invisible to it."""
    if settings.SEED_API_ENABLED:
        result["paths"].update(SEED_API_PATHS)
    return result
