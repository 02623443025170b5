"""The message contract: round trips, every rejection rule, and fuzzing of the decoders."""

import contextlib
import json
import struct
import uuid

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kafka_wire.contract import (
    MAX_HEADER_BYTES,
    ClassScore,
    ContractError,
    InferenceRequest,
    InferenceResult,
    decode_cancellation,
    decode_key,
    decode_request,
    decode_result,
    encode_cancellation,
    encode_key,
    encode_request,
    encode_result,
)

JOB_ID = "0b7f6a3e-53a4-4c1e-9d0b-3f1c2a9e8d71"


def make_request(**changes) -> InferenceRequest:
    fields = {
        "job_id": JOB_ID,
        "top_k": 5,
        "image": np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3),
        "submitted_at_ms": 1_700_000_000_000,
        "attempt": 2,
    }
    fields.update(changes)
    return InferenceRequest(**fields)


def make_result(**changes) -> InferenceResult:
    fields = {
        "job_id": JOB_ID,
        "ok": True,
        "predictions": [ClassScore(3, "tiger shark", 0.75), ClassScore(7, "cock", 0.125)],
        "worker": "host:42",
        "model": "resnet50",
        "weights": "imagenet",
        "batch_size": 8,
        "inference_ms": 12.5,
        "inferred_at_ms": 1_700_000_000_123,
    }
    fields.update(changes)
    return InferenceResult(**fields)


def envelope(header: object, body: bytes = b"", *, kind: int = 1, version: int = 1) -> bytes:
    header_bytes = json.dumps(header).encode() if not isinstance(header, bytes) else header
    return (
        b"IHUB"
        + bytes([version, kind])
        + struct.pack(">I", len(header_bytes))
        + header_bytes
        + body
    )


def request_header(**changes) -> dict:
    header = {
        "job_id": JOB_ID,
        "top_k": 5,
        "shape": [2, 2, 3],
        "dtype": "uint8",
        "submitted_at_ms": 1,
        "attempt": 1,
    }
    header.update(changes)
    return {key: value for key, value in header.items() if value is not None}


def result_header(**changes) -> dict:
    header = {"job_id": JOB_ID, "ok": True, "predictions": []}
    header.update(changes)
    return {key: value for key, value in header.items() if value is not None}


# --- round trips -------------------------------------------------------------------------


def test_request_round_trip_keeps_every_field_and_pixel():
    request = make_request()
    decoded = decode_request(encode_request(request))
    assert decoded.job_id == request.job_id
    assert decoded.top_k == 5
    assert decoded.submitted_at_ms == request.submitted_at_ms
    assert decoded.attempt == 2
    assert decoded.image.dtype == np.uint8
    assert decoded.image.shape == (4, 6, 3)
    np.testing.assert_array_equal(decoded.image, request.image)


def test_request_encodes_non_contiguous_images_in_row_major_order():
    image = np.arange(6 * 4 * 3, dtype=np.uint8).reshape(6, 4, 3).transpose(1, 0, 2)
    decoded = decode_request(encode_request(make_request(image=image)))
    np.testing.assert_array_equal(decoded.image, image)


def test_request_envelope_layout_matches_the_documented_bytes():
    value = encode_request(make_request())
    assert value[:4] == b"IHUB"
    assert value[4] == 1 and value[5] == 1
    (header_length,) = struct.unpack(">I", value[6:10])
    header = json.loads(value[10 : 10 + header_length])
    assert header == {
        "job_id": JOB_ID,
        "top_k": 5,
        "shape": [4, 6, 3],
        "dtype": "uint8",
        "submitted_at_ms": 1_700_000_000_000,
        "attempt": 2,
    }
    assert value[10 + header_length :] == make_request().image.tobytes()


def test_request_attempt_defaults_to_one_when_absent():
    value = envelope(request_header(attempt=None), bytes(12))
    assert decode_request(value).attempt == 1


def test_a_request_carries_its_deadline_and_one_without_has_none():
    with_deadline = decode_request(encode_request(make_request(deadline_ms=1_700_000_060_000)))
    assert with_deadline.deadline_ms == 1_700_000_060_000
    # A writer from before deadlines sends no field; the header stays as it was then.
    value = encode_request(make_request())
    assert b"deadline_ms" not in value
    assert decode_request(value).deadline_ms is None


@pytest.mark.parametrize("deadline", ["soon", -1, 1.5, True])
def test_a_request_with_a_malformed_deadline_is_rejected(deadline):
    with pytest.raises(ContractError, match="deadline_ms"):
        decode_request(envelope(request_header(deadline_ms=deadline), bytes(12)))


def test_an_expired_result_round_trips_and_an_older_result_is_not_expired():
    expired = make_result(ok=False, predictions=[], error="deadline passed", expired=True)
    assert decode_result(encode_result(expired)) == expired
    older = make_result().to_dict()
    del older["expired"]
    assert InferenceResult.from_dict(older).expired is False


def test_an_expired_result_cannot_be_ok():
    with pytest.raises(ContractError, match="expired"):
        make_result(expired=True)


def test_a_cancellation_names_its_job_and_nothing_else_passes_for_one():
    assert decode_cancellation(encode_cancellation(JOB_ID)) == JOB_ID
    with pytest.raises(ContractError, match="kind"):
        decode_cancellation(encode_result(make_result()))
    with pytest.raises(ContractError, match="job_id"):
        decode_cancellation(envelope({"job_id": "nope"}, kind=3))


def test_result_round_trip_is_equal():
    result = make_result()
    assert decode_result(encode_result(result)) == result


def test_result_dict_round_trip_is_equal_and_plain_json():
    result = make_result()
    as_dict = result.to_dict()
    assert json.loads(json.dumps(as_dict)) == as_dict
    assert InferenceResult.from_dict(as_dict) == result


def test_result_from_dict_names_the_field_that_breaks_the_contract():
    with pytest.raises(ContractError, match="'score' must be float"):
        InferenceResult.from_dict(
            {
                **make_result().to_dict(),
                "predictions": [{"class_id": 1, "label": "a", "score": "x"}],
            }
        )


def test_failed_result_round_trip():
    result = InferenceResult(job_id=JOB_ID, ok=False, error="undecodable request: bad magic")
    value = encode_result(result)
    assert value[5] == 2
    assert decode_result(value) == result


def test_result_optional_fields_take_defaults():
    result = decode_result(envelope(result_header(), kind=2))
    assert result == InferenceResult(job_id=JOB_ID, ok=True)


def test_result_accepts_integer_scores_and_unknown_fields():
    header = result_header(
        predictions=[{"class_id": 1, "label": "a", "score": 1}], future_field={"x": 1}
    )
    result = decode_result(envelope(header, kind=2))
    assert result.predictions == [ClassScore(1, "a", 1.0)]
    assert isinstance(result.predictions[0].score, float)


def test_result_keeps_non_ascii_labels():
    result = make_result(predictions=[ClassScore(0, "Äffchen 猿", 1.0)])
    assert decode_result(encode_result(result)).predictions[0].label == "Äffchen 猿"


def test_key_round_trip():
    assert decode_key(encode_key(JOB_ID)) == JOB_ID


@pytest.mark.parametrize("key", [None, b"", b"not-a-uuid", b"\xff\xfe", JOB_ID.upper().encode()])
def test_bad_keys_are_rejected(key):
    with pytest.raises(ContractError):
        decode_key(key)


# --- rejections ----------------------------------------------------------------------------


def assert_rejected(decode, value: object, fragment: str) -> None:
    with pytest.raises(ContractError) as caught:
        decode(value)
    assert fragment in str(caught.value)


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (b"", "bad magic b''"),
        (b"GIF", "bad magic b'GIF'"),
        (b"IHUB\x01\x01\x00", "shorter than the envelope prefix"),
        (b"JPEG" + bytes(20), "bad magic"),
        (envelope(request_header(), bytes(12), version=2), "unsupported contract version 2"),
        (envelope(request_header(), bytes(12), version=0), "unsupported contract version 0"),
        (envelope(request_header(), bytes(12), kind=2), "kind is 2, expected 1"),
        (b"IHUB\x01\x01" + struct.pack(">I", 50) + b"{}", "runs past the end"),
        (b"IHUB\x01\x01" + struct.pack(">I", 2**32 - 1), "exceeds the limit"),
        (envelope(b"\xff\xfe{}"), "not valid UTF-8"),
        (envelope(b"{not json"), "not valid JSON"),
        (envelope(b"[" * 100_000), "not valid JSON"),
        (envelope(b'{"top_k": ' + b"9" * 5000 + b"}"), "not valid JSON"),
        (envelope(b'{"x": NaN}'), "NaN"),
        (envelope([1, 2, 3]), "must be a JSON object"),
        (envelope(request_header(job_id=None), bytes(12)), "missing field 'job_id'"),
        (envelope(request_header(job_id="job-1"), bytes(12)), "is not a UUID"),
        (envelope(request_header(job_id=JOB_ID.upper()), bytes(12)), "canonical"),
        (envelope(request_header(job_id=7), bytes(12)), "'job_id' must be str"),
        (envelope(request_header(top_k=0), bytes(12)), "top_k is 0"),
        (envelope(request_header(top_k=1001), bytes(12)), "top_k is 1001"),
        (envelope(request_header(top_k=2.0), bytes(12)), "'top_k' must be int"),
        (envelope(request_header(top_k=True), bytes(12)), "got a boolean"),
        (envelope(request_header(top_k=None), bytes(12)), "missing field 'top_k'"),
        (envelope(request_header(shape=[2, 2]), bytes(12)), "shape must be"),
        (envelope(request_header(shape=[2, 2, 1]), bytes(4)), "shape must be"),
        (envelope(request_header(shape=[2, 2, 3.0]), bytes(12)), "shape must be"),
        (envelope(request_header(shape=[0, 2, 3]), b""), "within 1..4096"),
        (envelope(request_header(shape=[4097, 1, 3]), bytes(4097 * 3)), "within 1..4096"),
        (envelope(request_header(shape=[2, "2", 3]), bytes(12)), "must be an integer"),
        (envelope(request_header(shape="2x2"), bytes(12)), "'shape' must be list"),
        (envelope(request_header(dtype="float64"), bytes(96)), "unsupported dtype"),
        (envelope(request_header(dtype="float32"), bytes(12)), "body has 12 bytes"),
        (envelope(request_header(), bytes(11)), "body has 11 bytes"),
        (envelope(request_header(), bytes(13)), "body has 13 bytes"),
        (envelope(request_header(submitted_at_ms=-1), bytes(12)), "submitted_at_ms is -1"),
        (envelope(request_header(attempt=0), bytes(12)), "attempt is 0"),
        (None, "must be bytes"),
    ],
)
def test_malformed_requests_are_rejected(value, fragment):
    assert_rejected(decode_request, value, fragment)


def test_huge_claimed_shape_is_rejected_without_allocating():
    # 4096 x 4096 x 3 would be 48 MiB; the message itself is tiny.
    value = envelope(request_header(shape=[4096, 4096, 3]), bytes(12))
    assert_rejected(decode_request, value, "body has 12 bytes")


def prediction(**changes) -> dict:
    fields = {"class_id": 1, "label": "tench", "score": 0.5}
    fields.update(changes)
    return {key: value for key, value in fields.items() if value is not None}


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (envelope(result_header(), kind=1), "kind is 1, expected 2"),
        (envelope(result_header(), b"x", kind=2), "empty body"),
        (envelope(result_header(ok=None), kind=2), "missing field 'ok'"),
        (envelope(result_header(ok=1), kind=2), "'ok' must be bool"),
        (envelope(result_header(job_id="nope"), kind=2), "is not a UUID"),
        (envelope(result_header(predictions={}), kind=2), "'predictions' must be list"),
        (envelope(result_header(predictions=[1]), kind=2), "must be a JSON object"),
        (envelope(result_header(predictions=[prediction(score=None)]), kind=2), "'score'"),
        (envelope(result_header(predictions=[prediction(score="1")]), kind=2), "'score'"),
        (envelope(result_header(predictions=[prediction(class_id=-1)]), kind=2), "class_id"),
        (envelope(result_header(predictions=[prediction(label=3)]), kind=2), "'label'"),
        (envelope(result_header(predictions=[prediction(label="\ud800")]), kind=2), "Unicode"),
        (
            envelope(
                result_header(predictions=[prediction(score=0.1), prediction(score=0.9)]), kind=2
            ),
            "sorted by score",
        ),
        (
            envelope(
                b'{"job_id": "%s", "ok": true, "inference_ms": Infinity}' % JOB_ID.encode(), kind=2
            ),
            "Infinity",
        ),
        (
            envelope(
                b'{"job_id": "%s", "ok": true, "predictions": '
                b'[{"class_id": 1, "label": "a", "score": 1e400}]}' % JOB_ID.encode(),
                kind=2,
            ),
            "finite",
        ),
        (envelope(result_header(ok=False), kind=2), "must say why"),
        (
            envelope(result_header(ok=False, error="x", predictions=[prediction()]), kind=2),
            "must not carry",
        ),
        (envelope(result_header(batch_size=-1), kind=2), "batch_size is -1"),
        (envelope(result_header(inference_ms=-0.5), kind=2), "must not be negative"),
        (envelope(result_header(inferred_at_ms=2**63), kind=2), "inferred_at_ms"),
        (envelope(result_header(worker=None, error=["x"]), kind=2), "'error' must be str"),
    ],
)
def test_malformed_results_are_rejected(value, fragment):
    assert_rejected(decode_result, value, fragment)


def test_nan_scores_cannot_be_built_or_encoded():
    with pytest.raises(ContractError, match="finite"):
        ClassScore(1, "tench", float("nan"))


def test_building_an_invalid_request_fails_before_encoding():
    with pytest.raises(ContractError, match="uint8"):
        make_request(image=np.zeros((2, 2, 3), dtype=np.float64))
    with pytest.raises(ContractError, match="shape"):
        make_request(image=np.zeros((2, 2), dtype=np.uint8))
    with pytest.raises(ContractError, match="UUID"):
        make_request(job_id=str(uuid.uuid4()).replace("-", ""))


# --- fuzzing -------------------------------------------------------------------------------

DECODERS = [decode_request, decode_result]
VALID_VALUES = [
    encode_request(make_request()),
    encode_result(make_result()),
    encode_result(InferenceResult(job_id=JOB_ID, ok=False, error="boom")),
]


def decode_or_contract_error(decode, value: bytes) -> None:
    with contextlib.suppress(ContractError):
        decode(value)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(value=st.binary(max_size=512))
def test_arbitrary_bytes_decode_or_raise_contract_error(value):
    for decode in DECODERS:
        decode_or_contract_error(decode, value)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(value=st.binary(max_size=256))
def test_arbitrary_bytes_behind_a_valid_prefix_decode_or_raise_contract_error(value):
    for kind in (1, 2):
        framed = b"IHUB" + bytes([1, kind]) + struct.pack(">I", len(value)) + value
        for decode in DECODERS:
            decode_or_contract_error(decode, framed)


@st.composite
def mutated_valid_values(draw) -> bytes:
    value = bytearray(draw(st.sampled_from(VALID_VALUES)))
    for _ in range(draw(st.integers(1, 8))):
        position = draw(st.integers(0, len(value) - 1))
        action = draw(st.sampled_from(["flip", "delete", "insert", "truncate"]))
        if action == "flip":
            value[position] = draw(st.integers(0, 255))
        elif action == "delete":
            del value[position]
        elif action == "insert":
            value[position:position] = draw(st.binary(min_size=1, max_size=8))
        else:
            del value[position:]
        if not value:
            break
    return bytes(value)


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(value=mutated_valid_values())
def test_mutated_valid_messages_decode_or_raise_contract_error(value):
    for decode in DECODERS:
        decode_or_contract_error(decode, value)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    changes=st.dictionaries(
        st.sampled_from(
            [
                "job_id",
                "top_k",
                "shape",
                "dtype",
                "submitted_at_ms",
                "attempt",
                "ok",
                "predictions",
                "error",
                "batch_size",
                "inference_ms",
                "inferred_at_ms",
            ]
        ),
        json_values,
        max_size=4,
    ),
    body=st.binary(max_size=32),
)
def test_well_formed_json_with_wrong_field_values_raises_contract_error_only(changes, body):
    for kind, base in ((1, request_header()), (2, result_header())):
        header = json.dumps({**base, **changes}).encode()
        framed = b"IHUB" + bytes([1, kind]) + struct.pack(">I", len(header)) + header + body
        for decode in DECODERS:
            decode_or_contract_error(decode, framed)


def test_header_limit_is_enforced_when_encoding():
    huge_label = "x" * MAX_HEADER_BYTES
    with pytest.raises(ContractError, match="limit"):
        encode_result(make_result(predictions=[ClassScore(0, huge_label, 1.0)]))


def test_a_float32_request_the_benchmark_baseline_sends_round_trips():
    image = np.arange(2 * 2 * 3, dtype=np.float32).reshape(2, 2, 3) / 3
    decoded = decode_request(encode_request(make_request(image=image)))
    assert decoded.image.dtype == np.float32
    assert np.array_equal(decoded.image, image)
