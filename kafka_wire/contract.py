"""The versioned message contract between the API, the workers and the result bridge.

Every Kafka message value is an envelope:

    magic b"IHUB" | version (1 byte) | kind (1 byte) | header length N (4 bytes, big-endian)
    | N bytes of UTF-8 JSON (the header) | body

Requests carry the image as raw uint8 pixels in the body (float32 pixels are accepted too:
the seed's format, which only the benchmark's baseline still sends); results and
cancellations have an empty body.
Fields added to version 1 since its start are optional, and readers that do not know them
ignore them: a request's deadline_ms, a result's expired.
Decoding only parses JSON and copies bytes, so a hostile message cannot run code, and every
size it claims is checked against the bytes actually received before anything is allocated.
docs/message-contract.md is the language-neutral description of the same format.
"""

import json
import math
import struct
import uuid
from dataclasses import dataclass, field

import numpy as np

from common.limits import TOP_K_MAX, TOP_K_MIN

MAGIC = b"IHUB"
VERSION = 1
KIND_REQUEST = 1
KIND_RESULT = 2
KIND_CANCELLATION = 3

# magic, version, kind, header length
_PREFIX = struct.Struct(">4sBBI")
# Real headers are a few hundred bytes (a result with 1000 predictions is ~70 KiB);
# the cap bounds the JSON parser's work on hostile input.
MAX_HEADER_BYTES = 1024 * 1024
MAX_IMAGE_SIDE = 4096
# numpy dtype of each accepted "dtype" header value; float32 is little-endian IEEE 754.
DTYPES = {"uint8": np.dtype(np.uint8), "float32": np.dtype("<f4")}
# Go, Java and JavaScript readers hold these fields in 64-bit integers or doubles.
_MAX_INT = 2**53 - 1


class ContractError(ValueError):
    """A message does not follow the contract; the text says which rule it breaks."""


@dataclass(frozen=True)
class ClassScore:
    """One class of a result's top-k and the model's score for it."""

    class_id: int
    label: str
    score: float

    def __post_init__(self) -> None:
        _check_int("class_id", self.class_id, 0, _MAX_INT)
        _check_str("label", self.label)
        _check_float("score", self.score)


# eq=False: comparing two ndarrays with == gives an array, not a bool.
@dataclass(frozen=True, eq=False)
class InferenceRequest:
    job_id: str
    top_k: int
    image: np.ndarray
    submitted_at_ms: int
    attempt: int = 1
    # Epoch milliseconds after which the answer is of no use: the worker does not infer
    # the request but answers with an expired result. None: no deadline.
    deadline_ms: int | None = None

    def __post_init__(self) -> None:
        _check_job_id(self.job_id)
        _check_int("top_k", self.top_k, TOP_K_MIN, TOP_K_MAX)
        _check_int("submitted_at_ms", self.submitted_at_ms, 0, _MAX_INT)
        _check_int("attempt", self.attempt, 1, _MAX_INT)
        if self.deadline_ms is not None:
            _check_int("deadline_ms", self.deadline_ms, 0, _MAX_INT)
        if not isinstance(self.image, np.ndarray) or self.image.dtype not in DTYPES.values():
            raise ContractError("image must be a numpy array of dtype uint8 (or float32)")
        _check_shape(list(self.image.shape))


@dataclass(frozen=True)
class InferenceResult:
    job_id: str
    ok: bool
    predictions: list[ClassScore] = field(default_factory=list)
    error: str = ""
    worker: str = ""
    model: str = ""
    weights: str = ""
    # What answered: "tensorflow" or "openvino", and "fp32", "bf16" or "int8".
    runtime: str = ""
    precision: str = ""
    # The registered version the worker serves (run_worker --model); 0 from a worker
    # serving an unregistered model.
    model_version: int = 0
    batch_size: int = 0
    inference_ms: float = 0.0
    inferred_at_ms: int = 0
    # Not inferred because its deadline had passed (ok is false, error says so): the job
    # ends expired rather than failed.
    expired: bool = False

    def __post_init__(self) -> None:
        _check_job_id(self.job_id)
        if not isinstance(self.ok, bool):
            raise ContractError("ok must be a boolean")
        if not isinstance(self.expired, bool):
            raise ContractError("expired must be a boolean")
        if self.expired and self.ok:
            raise ContractError("an expired result must not be ok")
        if not isinstance(self.predictions, list) or not all(
            isinstance(p, ClassScore) for p in self.predictions
        ):
            raise ContractError("predictions must be a list of ClassScore")
        scores = [p.score for p in self.predictions]
        if scores != sorted(scores, reverse=True):
            raise ContractError("predictions must be sorted by score, highest first")
        for name in ("error", "worker", "model", "weights", "runtime", "precision"):
            _check_str(name, getattr(self, name))
        if not self.ok and not self.error:
            raise ContractError("a failed result (ok=false) must say why in error")
        if not self.ok and self.predictions:
            raise ContractError("a failed result (ok=false) must not carry predictions")
        _check_int("model_version", self.model_version, 0, _MAX_INT)
        _check_int("batch_size", self.batch_size, 0, _MAX_INT)
        _check_float("inference_ms", self.inference_ms)
        if self.inference_ms < 0:
            raise ContractError("inference_ms must not be negative")
        _check_int("inferred_at_ms", self.inferred_at_ms, 0, _MAX_INT)

    def to_dict(self) -> dict:
        """The result as plain JSON types: the header of its message, and what a task queue
        carries."""
        return {
            "job_id": self.job_id,
            "ok": self.ok,
            "predictions": [
                {"class_id": p.class_id, "label": p.label, "score": p.score}
                for p in self.predictions
            ],
            "error": self.error,
            "worker": self.worker,
            "model": self.model,
            "weights": self.weights,
            "runtime": self.runtime,
            "precision": self.precision,
            "model_version": self.model_version,
            "batch_size": self.batch_size,
            "inference_ms": self.inference_ms,
            "inferred_at_ms": self.inferred_at_ms,
            "expired": self.expired,
        }

    @classmethod
    def from_dict(cls, header: dict) -> "InferenceResult":
        """The result a to_dict() mapping (or a message header) describes; ContractError
        naming the first field that breaks the contract."""
        raw_predictions = _optional(header, "predictions", list, [])
        predictions = []
        for index, raw in enumerate(raw_predictions):
            if not isinstance(raw, dict):
                raise ContractError(f"predictions[{index}] must be a JSON object")
            predictions.append(
                ClassScore(
                    class_id=_require(raw, "class_id", int),
                    label=_require(raw, "label", str),
                    score=_require(raw, "score", float),
                )
            )
        return cls(
            job_id=_require(header, "job_id", str),
            ok=_require(header, "ok", bool),
            predictions=predictions,
            error=_optional(header, "error", str, ""),
            worker=_optional(header, "worker", str, ""),
            model=_optional(header, "model", str, ""),
            weights=_optional(header, "weights", str, ""),
            runtime=_optional(header, "runtime", str, ""),
            precision=_optional(header, "precision", str, ""),
            model_version=_optional(header, "model_version", int, 0),
            batch_size=_optional(header, "batch_size", int, 0),
            inference_ms=_optional(header, "inference_ms", float, 0.0),
            inferred_at_ms=_optional(header, "inferred_at_ms", int, 0),
            expired=_optional(header, "expired", bool, False),
        )


def encode_key(job_id: str) -> bytes:
    """The Kafka key of every message about a job: its UUID string in UTF-8."""
    _check_job_id(job_id)
    return job_id.encode()


def decode_key(key: bytes | None) -> str:
    """The job id a Kafka key names; ContractError if it is not a canonical UUID."""
    if not isinstance(key, bytes):
        raise ContractError("message key is missing")
    try:
        job_id = key.decode()
    except UnicodeDecodeError:
        raise ContractError("message key is not UTF-8") from None
    _check_job_id(job_id)
    return job_id


def job_id_of_key(key: bytes | None) -> str | None:
    """The job a message that failed to decode belongs to, when its key names one."""
    try:
        return decode_key(key)
    except ContractError:
        return None


def encode_request(request: InferenceRequest) -> bytes:
    header = {
        "job_id": request.job_id,
        "top_k": request.top_k,
        "shape": list(request.image.shape),
        "dtype": "uint8" if request.image.dtype == np.uint8 else "float32",
        "submitted_at_ms": request.submitted_at_ms,
        "attempt": request.attempt,
    }
    if request.deadline_ms is not None:
        header["deadline_ms"] = request.deadline_ms
    # tobytes() writes row-major order whatever the array's memory layout.
    image = request.image.astype(DTYPES[header["dtype"]], copy=False)
    return _encode(KIND_REQUEST, header, image.tobytes())


def decode_request(value: bytes) -> InferenceRequest:
    header, body = _decode(value, KIND_REQUEST)
    shape = _require(header, "shape", list)
    _check_shape(shape)
    dtype = DTYPES.get(_require(header, "dtype", str))
    if dtype is None:
        raise ContractError(f"unsupported dtype {header['dtype']!r}, expected 'uint8'")
    height, width, channels = shape
    needed = height * width * channels * dtype.itemsize
    if len(body) != needed:
        raise ContractError(f"body has {len(body)} bytes, shape {shape} needs {needed}")
    return InferenceRequest(
        job_id=_require(header, "job_id", str),
        top_k=_require(header, "top_k", int),
        image=np.frombuffer(body, dtype=dtype).reshape(shape),
        submitted_at_ms=_require(header, "submitted_at_ms", int),
        attempt=_optional(header, "attempt", int, 1),
        deadline_ms=_optional(header, "deadline_ms", int, None),
    )


def encode_result(result: InferenceResult) -> bytes:
    return _encode(KIND_RESULT, result.to_dict(), b"")


def decode_result(value: bytes) -> InferenceResult:
    header, body = _decode(value, KIND_RESULT)
    if body:
        raise ContractError(f"a result must have an empty body, got {len(body)} bytes")
    return InferenceResult.from_dict(header)


def encode_cancellation(job_id: str) -> bytes:
    """The value of a job's message on the cancellations topic (keyed by encode_key)."""
    _check_job_id(job_id)
    return _encode(KIND_CANCELLATION, {"job_id": job_id}, b"")


def decode_cancellation(value: bytes) -> str:
    """The job a cancellation message cancels."""
    header, body = _decode(value, KIND_CANCELLATION)
    if body:
        raise ContractError(f"a cancellation must have an empty body, got {len(body)} bytes")
    job_id = _require(header, "job_id", str)
    _check_job_id(job_id)
    return job_id


def _encode(kind: int, header: dict, body: bytes) -> bytes:
    header_bytes = json.dumps(header, ensure_ascii=False, allow_nan=False).encode()
    if len(header_bytes) > MAX_HEADER_BYTES:
        raise ContractError(f"header is {len(header_bytes)} bytes, limit {MAX_HEADER_BYTES}")
    return _PREFIX.pack(MAGIC, VERSION, kind, len(header_bytes)) + header_bytes + body


def _decode(value: bytes, expected_kind: int) -> tuple[dict, bytes]:
    if not isinstance(value, bytes):
        raise ContractError(f"message value must be bytes, got {type(value).__name__}")
    # Magic first: a value that is not ours at all is reported as such, whatever its length.
    if value[: len(MAGIC)] != MAGIC:
        raise ContractError(f"bad magic {value[: len(MAGIC)]!r}, expected {MAGIC!r}")
    if len(value) < _PREFIX.size:
        raise ContractError(f"message is {len(value)} bytes, shorter than the envelope prefix")
    _, version, kind, header_length = _PREFIX.unpack_from(value)
    if version != VERSION:
        raise ContractError(f"unsupported contract version {version}, this reader knows {VERSION}")
    if kind != expected_kind:
        raise ContractError(f"message kind is {kind}, expected {expected_kind}")
    if header_length > MAX_HEADER_BYTES:
        raise ContractError(f"header length {header_length} exceeds the limit {MAX_HEADER_BYTES}")
    header_end = _PREFIX.size + header_length
    if header_end > len(value):
        raise ContractError(
            f"header length {header_length} runs past the end of the {len(value)}-byte message"
        )
    try:
        header = json.loads(
            value[_PREFIX.size : header_end].decode(), parse_constant=_reject_constant
        )
    except UnicodeDecodeError:
        raise ContractError("header is not valid UTF-8") from None
    # RecursionError: deeply nested arrays; ValueError also covers oversized integers.
    except (ValueError, RecursionError) as error:
        raise ContractError(f"header is not valid JSON: {error}") from None
    if not isinstance(header, dict):
        raise ContractError("header must be a JSON object")
    return header, value[header_end:]


def _reject_constant(name: str) -> None:
    raise ContractError(f"header contains {name}, which is not valid JSON")


def _require(mapping: dict, key: str, kind: type):
    if key not in mapping:
        raise ContractError(f"missing field {key!r}")
    return _typed(key, mapping[key], kind)


def _optional(mapping: dict, key: str, kind: type, default):
    if key not in mapping:
        return default
    return _typed(key, mapping[key], kind)


def _typed(key: str, value, kind: type):
    # JSON true/false arrive as Python bools, which are also ints: keep them apart.
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, bool) and kind is not bool:
        raise ContractError(f"field {key!r} must be {kind.__name__}, got a boolean")
    if not isinstance(value, kind):
        raise ContractError(f"field {key!r} must be {kind.__name__}, got {type(value).__name__}")
    return value


def _check_job_id(job_id: object) -> None:
    if not isinstance(job_id, str):
        raise ContractError("job_id must be a string")
    try:
        canonical = str(uuid.UUID(job_id))
    except ValueError:
        raise ContractError(f"job_id {job_id[:64]!r} is not a UUID") from None
    if canonical != job_id:
        raise ContractError(f"job_id {job_id[:64]!r} is not a canonical lower-case UUID")


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ContractError(f"{name} must be an integer")
    if not low <= value <= high:
        raise ContractError(f"{name} is {value}, must be within {low}..{high}")


def _check_float(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ContractError(f"{name} must be a number")
    if not math.isfinite(value):
        raise ContractError(f"{name} must be a finite number, got {value}")


def _check_str(name: str, value: object) -> None:
    if not isinstance(value, str):
        raise ContractError(f"{name} must be a string")
    try:
        value.encode()
    except UnicodeEncodeError:
        # JSON escapes can spell lone surrogates, which no UTF-8 writer downstream accepts.
        raise ContractError(f"{name} is not valid Unicode text") from None


def _check_shape(shape: list) -> None:
    if len(shape) != 3 or type(shape[2]) is not int or shape[2] != 3:
        raise ContractError(f"shape must be [height, width, 3], got {shape!r:.80}")
    for side in shape[:2]:
        _check_int("image height and width", side, 1, MAX_IMAGE_SIDE)
