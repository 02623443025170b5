"""What every served model shares, whatever runs it: the input transform, batched top-k
predictions and labels. Imports neither TensorFlow nor OpenVINO, so a worker serving a
model package never loads TensorFlow.
"""

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from common.images import CENTRE_SQUARE, Fit
from kafka_wire.contract import ClassScore

IMAGENET_LABELS_FILE = Path(__file__).with_name("imagenet_labels.txt")
RUNTIMES = ("tensorflow", "openvino")
PRECISIONS = ("fp32", "bf16", "int8")
# How pixels become the model's input: "raw" 0..255 RGB floats (a saved classifier does
# its own rescaling), "caffe": BGR with the ImageNet channel means subtracted, which is
# what keras.applications.resnet50.preprocess_input does, or "spec": the uint8 images as
# they are, the runtime applying the model's input spec (serving/onnx.py).
INPUT_TRANSFORMS = ("raw", "caffe", "spec")
CAFFE_BGR_MEANS = np.array([103.939, 116.779, 123.68], dtype=np.float32)


class ModelLoadError(RuntimeError):
    """The model, its weights, its package or its labels could not be loaded; the text says
    what to do."""


@dataclass
class ServedModel:
    name: str
    # "imagenet", "random", or the path of the weights or model file.
    weights: str
    input_size: int
    labels: list[str]
    # Probabilities (N, classes) for a float32 batch already through input_transform.
    run: Callable[[np.ndarray], np.ndarray]
    input_transform: str
    runtime: str = "tensorflow"
    precision: str = "fp32"
    # The runtime's own model object (a Keras model, a compiled OpenVINO model).
    model: object = None
    # How its images are brought to input_size (Celery does it the same way).
    fit: Fit = CENTRE_SQUARE
    # How the runtime runs it on this CPU (OpenVINO's hint, streams, requests), for the log.
    execution: str = ""

    def predict(self, images, top_k: list[int]) -> list[list[ClassScore]]:
        """Top-k predictions, best first, for each image of a batch.

        images: a uint8 array (N, H, W, 3) or a list of (H, W, 3) uint8 arrays of any sizes;
        images whose size differs from the model input are resized. top_k[i] is capped
        at the number of classes.
        """
        if len(images) != len(top_k):
            raise ValueError(f"{len(images)} images but {len(top_k)} top_k values")
        probabilities = self.probabilities(images)
        results = []
        for row, k in zip(probabilities, top_k, strict=True):
            best = np.argsort(-row, kind="stable")[: min(k, len(self.labels))]
            results.append(
                [ClassScore(int(index), self.labels[index], float(row[index])) for index in best]
            )
        return results

    def probabilities(self, images) -> np.ndarray:
        return np.asarray(self.run(self.model_input(images)))

    def model_input(self, images) -> np.ndarray:
        """The batch the model takes (float32; uint8 for "spec"): the one place the input
        transform is applied, for serving, calibration and the faithfulness gate alike."""
        batch = np.stack([self.fit_to_input(image) for image in images])
        return transform_input(batch, self.input_transform)

    def fit_to_input(self, image: np.ndarray) -> np.ndarray:
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image must have shape (H, W, 3), got {image.shape}")
        if image.shape[:2] != (self.input_size, self.input_size):
            side = (self.input_size, self.input_size)
            image = np.asarray(
                Image.fromarray(image.astype(np.uint8)).resize(side, Image.Resampling.BILINEAR)
            )
        return image


def transform_input(batch: np.ndarray, input_transform: str) -> np.ndarray:
    if input_transform == "raw":
        return batch.astype(np.float32)
    if input_transform == "caffe":
        return batch[..., ::-1].astype(np.float32) - CAFFE_BGR_MEANS
    if input_transform == "spec":
        return batch.astype(np.uint8)
    raise ModelLoadError(f"unknown input transform {input_transform!r}: {INPUT_TRANSFORMS}")


def sha256_of(path: Path) -> str:
    """The hex sha256 of a file, read in 1 MiB chunks (model files are hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_labels(path) -> list[str]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ModelLoadError(f"could not read the labels file {path}: {error}") from error
    labels = [line.split(",")[0].strip() for line in lines]
    if not all(labels):
        raise ModelLoadError(f"labels file {path} has an empty line")
    return labels


def check_label_count(labels: list[str], output_shape: tuple, labels_file: str) -> None:
    if len(output_shape) != 2:
        raise ModelLoadError(f"the model outputs {output_shape}; a classifier outputs (N, classes)")
    if output_shape[1] != len(labels):
        raise ModelLoadError(
            f"the model has {output_shape[1]} output classes but {labels_file} has "
            f"{len(labels)} labels"
        )


def check_runtime_precision(runtime: str, precision: str) -> None:
    if runtime not in RUNTIMES:
        raise ModelLoadError(f"unknown runtime {runtime!r}: use one of {', '.join(RUNTIMES)}")
    if precision not in PRECISIONS:
        raise ModelLoadError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if runtime == "tensorflow" and precision != "fp32":
        raise ModelLoadError(
            f"the tensorflow runtime runs fp32 only, not {precision}: use "
            f"--runtime openvino --precision {precision} (or a model package)"
        )


class InstantModel:
    """Fixed probabilities for any batch, at once: what the benchmark and the distributed
    suite serve to measure the pipeline without inference."""

    def __init__(self, classes: int) -> None:
        # Distinct, decreasing scores that sum to 1, so top-k is well defined.
        weights = np.arange(classes, 0, -1, dtype=np.float32)
        self.probabilities = weights / weights.sum()

    def predict_on_batch(self, batch: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.probabilities, (len(batch), len(self.probabilities)))


def instant_model(labels_file: str, input_size: int) -> ServedModel:
    """The built-in "instant" model; a worker serving it never imports TensorFlow."""
    labels = read_labels(labels_file or IMAGENET_LABELS_FILE)
    model = InstantModel(len(labels))
    return ServedModel(
        "instant",
        "none",
        input_size,
        labels,
        run=model.predict_on_batch,
        input_transform="raw",
        # No runtime computes these answers; jobs say so.
        runtime="none",
        model=model,
    )
