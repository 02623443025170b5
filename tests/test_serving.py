"""Model loading and batched top-k prediction: random-weight ResNet50, a tiny saved classifier."""

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import keras
import numpy as np
import pytest

from kafka_wire.contract import (
    ClassScore,
    InferenceRequest,
    InferenceResult,
    decode_key,
    decode_result,
    encode_key,
    encode_request,
)
from kafka_wire.headers import REQUEST_ID, TRACEPARENT
from kafka_wire.producer import DeliveryError
from serving.runtimes.tensorflow import (
    IMAGENET_LABELS_FILE,
    ModelLoadError,
    ServedModel,
    load_model,
)
from tests.conftest import REPO
from workers.worker import InferenceHandler

# Seconds each (a real model exported, loaded or run, or processes started): make test
# runs them, make test-fast leaves them out (tests/conftest.py).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def resnet() -> ServedModel:
    # Loading ResNet50 takes seconds: once for the module.
    return load_model(name="resnet50", weights="random")


def random_images(count: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, height, width, 3), dtype=np.uint8)


def assert_top_k(predictions: list[ClassScore], k: int, labels: list[str]) -> None:
    assert len(predictions) == k
    scores = [p.score for p in predictions]
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 <= score <= 1.0 for score in scores)
    assert sum(scores) <= 1.0 + 1e-5
    assert len({p.class_id for p in predictions}) == k
    for p in predictions:
        assert p.label == labels[p.class_id]


def test_random_resnet50_returns_sorted_top_k_with_imagenet_labels(resnet):
    assert resnet.name == "resnet50"
    assert resnet.weights == "random"
    assert resnet.input_size == 224
    assert len(resnet.labels) == 1000
    assert resnet.labels[0] == "tench"
    assert resnet.labels[999] == "toilet tissue"

    results = resnet.predict(random_images(3, 224, 224), [1, 5, 1000])
    assert [len(r) for r in results] == [1, 5, 1000]
    for predictions, k in zip(results, [1, 5, 1000], strict=True):
        assert_top_k(predictions, k, resnet.labels)
    # All 1000 classes of a softmax add up to one.
    assert sum(p.score for p in results[2]) == pytest.approx(1.0, abs=1e-4)


def test_images_of_other_sizes_are_resized_in_one_batch(resnet):
    images = [
        random_images(1, 100, 150)[0],
        random_images(1, 224, 224)[0],
        random_images(1, 300, 17)[0],
    ]
    results = resnet.predict(images, [3, 3, 3])
    assert [len(r) for r in results] == [3, 3, 3]


def test_batch_and_single_predictions_agree(resnet):
    images = random_images(2, 224, 224, seed=1)
    together = resnet.predict(images, [5, 5])
    alone = resnet.predict(images[1:], [5])
    assert [p.class_id for p in together[1]] == [p.class_id for p in alone[0]]
    assert [p.score for p in together[1]] == pytest.approx([p.score for p in alone[0]], rel=1e-3)


def test_predict_rejects_mismatched_top_k_list(resnet):
    with pytest.raises(ValueError, match="top_k"):
        resnet.predict(random_images(2, 224, 224), [1])


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory) -> Path:
    """A three-class classifier over 8x8 images that rescales its own input."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Rescaling(1 / 255),
            keras.layers.Flatten(),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    path = tmp_path_factory.mktemp("models") / "tiny.keras"
    model.save(path)
    return path


def write_labels(path: Path, labels: list[str]) -> Path:
    path.write_text("\n".join(labels) + "\n", encoding="utf-8")
    return path


def test_saved_classifier_loads_with_its_labels_and_predicts(tiny_classifier, tmp_path):
    labels_file = write_labels(tmp_path / "labels.txt", ["cat, kitty", "dog", "bird"])
    served = load_model(
        name="tiny",
        weights="ignored",
        model_file=str(tiny_classifier),
        labels_file=str(labels_file),
    )
    assert served.labels == ["cat", "dog", "bird"]
    assert served.input_size == 8
    assert served.weights == str(tiny_classifier)

    # top_k above the class count is capped; a 20x20 image is resized to 8x8.
    results = served.predict([random_images(1, 8, 8)[0], random_images(1, 20, 20)[0]], [2, 10])
    assert_top_k(results[0], 2, served.labels)
    assert_top_k(results[1], 3, served.labels)
    assert sum(p.score for p in results[1]) == pytest.approx(1.0, abs=1e-5)


def test_saved_classifier_with_wrong_label_count_is_rejected(tiny_classifier, tmp_path):
    labels_file = write_labels(tmp_path / "labels.txt", ["cat", "dog"])
    with pytest.raises(ModelLoadError, match="3 output classes but .* has 2 labels"):
        load_model(
            name="tiny", weights="", model_file=str(tiny_classifier), labels_file=str(labels_file)
        )


def test_saved_classifier_needs_a_labels_file(tiny_classifier):
    with pytest.raises(ModelLoadError, match="MODEL_LABELS_FILE"):
        load_model(name="tiny", weights="", model_file=str(tiny_classifier))


def test_missing_weights_file_is_reported(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(name="resnet50", weights=str(tmp_path / "missing.weights.h5"))


def test_unknown_builtin_model_is_rejected():
    with pytest.raises(ModelLoadError, match="unknown built-in model 'vgg16'"):
        load_model(name="vgg16", weights="random")


def test_imagenet_weights_without_network_give_clear_advice():
    cached = Path.home() / ".keras" / "models" / "resnet50_weights_tf_dim_ordering_tf_kernels.h5"
    if cached.exists():
        pytest.skip("ImageNet weights are cached here, so the download is not attempted")
    with pytest.raises(ModelLoadError) as caught:
        load_model(name="resnet50", weights="imagenet")
    message = str(caught.value)
    assert "ImageNet weights could not be downloaded" in message
    assert "resnet50_weights_tf_dim_ordering_tf_kernels.h5" in message
    assert "~/.keras/models/" in message
    assert "MODEL_WEIGHTS=random" in message


def test_shipped_labels_file_has_one_line_per_imagenet_class():
    lines = IMAGENET_LABELS_FILE.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1000
    assert lines[0].startswith("tench,")


def test_weights_file_is_loaded_into_resnet50(resnet, tmp_path):
    weights_file = tmp_path / "resnet50.weights.h5"
    resnet.model.save_weights(weights_file)
    served = load_model(name="resnet50", weights=str(weights_file))
    assert served.weights == str(weights_file)
    image = random_images(1, 224, 224, seed=2)
    expected = resnet.predict(image, [3])[0]
    got = served.predict(image, [3])[0]
    assert [p.class_id for p in got] == [p.class_id for p in expected]


# --- the inference handler, with a stand-in model and producer -------------------------------


class StubModel:
    """Predicts class 0 for every image, and fails any batch holding an all-255 image."""

    name = "stub"
    weights = "random"
    runtime = "tensorflow"
    precision = "fp32"

    def __init__(self):
        self.batch_sizes = []

    def predict(self, images, top_k):
        self.batch_sizes.append(len(images))
        if any(image.min() == 255 for image in images):
            raise ValueError("poison image")
        return [[ClassScore(0, "tench", 0.9)][:k] for k in top_k]


class StubMessage:
    def __init__(self, key: bytes | None, value: bytes, offset: int, headers=None):
        self._key, self._value, self._offset, self._headers = key, value, offset, headers

    def headers(self):
        return self._headers

    def key(self):
        return self._key

    def value(self):
        return self._value

    def topic(self):
        return "requests"

    def partition(self):
        return 0

    def offset(self):
        return self._offset


class RecordingProducer:
    def __init__(self, deliver: bool = True):
        self.deliver = deliver
        self.produced = []

    def produce(self, topic, *, key, value, headers=None):
        self.produced.append((topic, key, value, headers))

    def flush_or_raise(self):
        if not self.deliver:
            raise DeliveryError("broker down")


def request_message(offset: int, fill: int = 0, headers=None) -> StubMessage:
    job_id = str(uuid.uuid4())
    image = np.full((4, 4, 3), fill, dtype=np.uint8)
    request = InferenceRequest(job_id=job_id, top_k=1, image=image, submitted_at_ms=1)
    return StubMessage(encode_key(job_id), encode_request(request), offset, headers)


def results_by_job(producer: RecordingProducer) -> dict[str, InferenceResult]:
    return {
        decode_key(key): decode_result(value)
        for topic, key, value, _ in producer.produced
        if topic == "results"
    }


def test_handler_runs_one_predict_per_batch_and_answers_every_request():
    model, producer = StubModel(), RecordingProducer()
    messages = [request_message(offset) for offset in range(3)]
    poisoned = InferenceHandler(model, producer, results_topic="results")(messages)
    assert model.batch_sizes == [3]
    results = results_by_job(producer)
    assert set(results) == {decode_key(m.key()) for m in messages}
    for result in results.values():
        assert result.ok and result.predictions == [ClassScore(0, "tench", 0.9)]
        assert result.batch_size == 3 and result.model == "stub" and result.weights == "random"
        assert result.worker.endswith(f":{os.getpid()}")
    assert poisoned == []


def test_undecodable_request_is_signalled_poison_and_failed_when_its_key_names_a_job():
    model, producer = StubModel(), RecordingProducer()
    job_id = str(uuid.uuid4())
    messages = [
        StubMessage(encode_key(job_id), b"GIF89a...", 0),
        StubMessage(b"not-a-job", b"junk", 1),
        request_message(2),
    ]
    poisoned = InferenceHandler(model, producer, results_topic="results")(messages)
    # The runner dead-letters these (tests/test_runner_batching.py).
    assert [poison.message for poison in poisoned] == messages[:2]
    assert poisoned[0].reason.startswith("undecodable request: bad magic")
    results = results_by_job(producer)
    assert not results[job_id].ok
    assert results[job_id].error == poisoned[0].reason
    assert results[job_id].model == "stub" and results[job_id].worker.endswith(f":{os.getpid()}")
    # The valid request is still answered; the keyless junk gets no result.
    assert len(results) == 2
    assert model.batch_sizes == [1]


def test_each_result_carries_its_requests_id_and_a_failure_is_logged_with_it(caplog):
    model, producer = StubModel(), RecordingProducer()
    traced = request_message(0, headers=[(REQUEST_ID, b"upload-7f3a")])
    poison = request_message(1, fill=255, headers=[(REQUEST_ID, b"upload-99")])
    untraced = request_message(2)
    InferenceHandler(model, producer, results_topic="results")([traced, poison, untraced])
    headers = {decode_key(key): h for topic, key, _, h in producer.produced if topic == "results"}
    assert headers == {
        decode_key(traced.key()): [(REQUEST_ID, b"upload-7f3a")],
        decode_key(poison.key()): [(REQUEST_ID, b"upload-99")],
        decode_key(untraced.key()): [],
    }
    [failure] = [r for r in caplog.records if r.getMessage().startswith("inference failed")]
    assert (failure.request_id, failure.job_id) == ("upload-99", decode_key(poison.key()))


def test_a_batch_is_one_span_linked_to_each_request_whose_own_span_joins_its_trace(spans):
    model, producer = StubModel(), RecordingProducer()
    parents = {
        f"{trace_id:032x}": f"00-{trace_id:032x}-{span_id:016x}-01"
        for trace_id, span_id in ((0xA1, 0xB1), (0xA2, 0xB2))
    }
    messages = [
        request_message(offset, headers=[(TRACEPARENT, parent.encode())])
        for offset, parent in enumerate(parents.values())
    ]
    InferenceHandler(model, producer, results_topic="results")(messages)

    finished = {span.name: [] for span in spans.get_finished_spans()}
    for span in spans.get_finished_spans():
        finished[span.name].append(span)
    [batch] = finished["inference batch"]
    assert batch.attributes["inferencehub.batch_size"] == 2
    assert {f"{link.context.trace_id:032x}" for link in batch.links} == set(parents)
    requests = finished["inference request"]
    assert {f"{span.context.trace_id:032x}" for span in requests} == set(parents)
    for span in requests:
        assert [link.context.span_id for link in span.links] == [batch.context.span_id]
    # Each result goes on in its job's trace, from the request's span.
    sent = {
        dict(h)[TRACEPARENT].decode()[3:35] for t, _, _, h in producer.produced if t == "results"
    }
    assert sent == set(parents)


def test_a_poison_image_fails_only_its_own_job():
    model, producer = StubModel(), RecordingProducer()
    good, poison, other = request_message(0), request_message(1, fill=255), request_message(2)
    poisoned = InferenceHandler(model, producer, results_topic="results")([good, poison, other])
    assert model.batch_sizes == [3, 1, 1, 1]
    results = results_by_job(producer)
    assert results[decode_key(good.key())].ok and results[decode_key(other.key())].ok
    failed = results[decode_key(poison.key())]
    assert not failed.ok and failed.error == "inference failed: poison image"
    assert [(p.message, p.reason) for p in poisoned] == [(poison, failed.error)]


def test_undelivered_output_fails_the_batch():
    producer = RecordingProducer(deliver=False)
    with pytest.raises(DeliveryError):
        InferenceHandler(StubModel(), producer, results_topic="results")([request_message(0)])


def test_a_worker_serving_the_instant_model_does_not_load_tensorflow():
    """The benchmark's plumbing rows and the distributed suite start many such workers."""
    script = (
        "import json, sys\n"
        "from serving.loading import load_served\n"
        "served = load_served(name='instant', input_size=64)\n"
        "print(json.dumps({'runtime': served.runtime,"
        " 'loaded': sorted(m for m in ('tensorflow', 'keras') if m in sys.modules)}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"runtime": "none", "loaded": []}
