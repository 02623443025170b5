"""Loading the classifier a worker serves and running batched top-k predictions with it.

Two kinds of model can be served:
- the built-in ResNet50 (name "resnet50"), with ImageNet weights from Keras' download
  cache, weights from a file, or random weights for demos;
- the built-in "instant" model, which answers every image at once with the same fixed
  probabilities: the benchmark uses it to measure what the pipeline costs without inference;
- any saved Keras classifier (model_file, a .keras file) that takes (S, S, 3) float32 pixels
  in 0..255, does its own rescaling/normalisation inside the model, and outputs class
  probabilities (a softmax), one per line of its labels file.
"""

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from kafka_bridge.contract import Prediction

logger = logging.getLogger(__name__)

IMAGENET_LABELS_FILE = Path(__file__).with_name("imagenet_labels.txt")
RESNET50_WEIGHTS_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels.h5"


class ModelLoadError(RuntimeError):
    """The model, its weights or its labels could not be loaded; the text says what to do."""


@dataclass
class ServedModel:
    name: str
    # "imagenet", "random", or the path of the weights or model file.
    weights: str
    input_size: int
    labels: list[str]
    model: "keras.Model | InstantModel"
    # True when the model expects raw 0..255 pixels (a saved classifier does its own
    # preprocessing); False for ResNet50, which needs its Caffe-style mean subtraction.
    takes_raw_pixels: bool

    def predict(self, images, top_k: list[int]) -> list[list[Prediction]]:
        """Top-k predictions, best first, for each image of a batch.

        images: a uint8 array (N, H, W, 3) or a list of (H, W, 3) uint8 arrays of any sizes;
        images whose size differs from the model input are resized. top_k[i] is capped
        at the number of classes.
        """
        if len(images) != len(top_k):
            raise ValueError(f"{len(images)} images but {len(top_k)} top_k values")
        batch = np.stack([self.fit_to_input(image) for image in images])
        if not self.takes_raw_pixels:
            batch = keras.applications.resnet50.preprocess_input(batch)
        probabilities = np.asarray(self.model.predict_on_batch(batch))
        results = []
        for row, k in zip(probabilities, top_k, strict=True):
            best = np.argsort(-row, kind="stable")[: min(k, len(self.labels))]
            results.append(
                [Prediction(int(index), self.labels[index], float(row[index])) for index in best]
            )
        return results

    def fit_to_input(self, image: np.ndarray) -> np.ndarray:
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image must have shape (H, W, 3), got {image.shape}")
        pixels = image.astype(np.float32)
        if pixels.shape[:2] != (self.input_size, self.input_size):
            pixels = tf.image.resize(pixels, (self.input_size, self.input_size)).numpy()
        return pixels


def load_model(
    *,
    name: str,
    weights: str,
    model_file: str = "",
    labels_file: str = "",
    input_size: int = 224,
    threads: int | None = None,
) -> ServedModel:
    """Load the model to serve and warm it up; ModelLoadError with advice when that fails.

    weights: "imagenet", "random", or a path to a .h5/.weights.h5 file (ignored when
    model_file is set). labels_file: one class per line, the first comma-separated name
    being the label; required with model_file, the shipped ImageNet labels otherwise.
    threads: TensorFlow intra-op threads; None lets TensorFlow use every core.
    """
    if threads is not None:
        set_threads(threads)
    if model_file:
        served = load_saved_classifier(name, model_file, labels_file, input_size)
    else:
        served = load_builtin(name, weights, labels_file, input_size)
    started = time.monotonic()
    # The first call traces the graph for its batch size; a second batch size makes
    # TensorFlow trace one graph for any batch size (Keras predicts with reduce_retracing).
    # Done here, no real batch pays the second or so a trace takes (without it, each of
    # the first few new batch sizes was traced again).
    for batch_size in (1, 2):
        zeros = np.zeros((batch_size, served.input_size, served.input_size, 3), np.uint8)
        served.predict(zeros, [1] * batch_size)
    logger.info(
        "loaded model %s (weights %s, input %dx%d, %d classes), warm-up took %.2f s",
        served.name,
        served.weights,
        served.input_size,
        served.input_size,
        len(served.labels),
        time.monotonic() - started,
    )
    return served


def set_threads(threads: int) -> None:
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
    except RuntimeError as error:
        # TensorFlow fixes its thread pools when it first runs an operation.
        logger.warning("could not set TensorFlow to %d threads: %s", threads, error)


class InstantModel:
    """Stands in for a Keras model: fixed probabilities for any batch, no TensorFlow work."""

    def __init__(self, classes: int) -> None:
        # Distinct, decreasing scores that sum to 1, so top-k is well defined.
        weights = np.arange(classes, 0, -1, dtype=np.float32)
        self.probabilities = weights / weights.sum()
        self.output_shape = (None, classes)

    def predict_on_batch(self, batch: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.probabilities, (len(batch), len(self.probabilities)))


def load_builtin(name: str, weights: str, labels_file: str, input_size: int) -> ServedModel:
    if name == "instant":
        labels = read_labels(labels_file or IMAGENET_LABELS_FILE)
        model = InstantModel(len(labels))
        return ServedModel(name, "none", input_size, labels, model, takes_raw_pixels=True)
    if name != "resnet50":
        raise ModelLoadError(
            f"unknown built-in model {name!r}: use 'resnet50' (or 'instant', which answers "
            f"at once without a real model), or serve a saved Keras classifier with "
            f"MODEL_FILE and MODEL_LABELS_FILE"
        )
    shape = (input_size, input_size, 3)
    if weights == "imagenet":
        if input_size != 224:
            raise ModelLoadError(
                f"ResNet50 ImageNet weights need MODEL_INPUT_SIZE=224, got {input_size}"
            )
        try:
            model = keras.applications.ResNet50(weights="imagenet", input_shape=shape)
        # Keras raises a bare Exception when the download fails.
        except Exception as error:
            raise ModelLoadError(
                f"ImageNet weights could not be downloaded ({error}). Put "
                f"{RESNET50_WEIGHTS_FILE} in ~/.keras/models/, or pass a weights file path "
                f"with MODEL_WEIGHTS, or use MODEL_WEIGHTS=random for demos."
            ) from error
    elif weights == "random":
        logger.warning(
            "RANDOM WEIGHTS: %s is serving untrained weights, its predictions are meaningless "
            "(demo mode; set MODEL_WEIGHTS=imagenet or a weights file for real predictions)",
            name,
        )
        model = keras.applications.ResNet50(weights=None, input_shape=shape)
    else:
        if not Path(weights).is_file():
            raise ModelLoadError(
                f"weights file {weights!r} does not exist; MODEL_WEIGHTS must be 'imagenet', "
                f"'random' or the path of a .h5/.weights.h5 file"
            )
        model = keras.applications.ResNet50(weights=None, input_shape=shape)
        try:
            model.load_weights(weights)
        except (OSError, ValueError) as error:
            raise ModelLoadError(
                f"could not load ResNet50 weights from {weights}: {error}"
            ) from error
    labels = read_labels(labels_file or IMAGENET_LABELS_FILE)
    check_label_count(labels, model, labels_file or str(IMAGENET_LABELS_FILE))
    return ServedModel(name, weights, input_size, labels, model, takes_raw_pixels=False)


def load_saved_classifier(
    name: str, model_file: str, labels_file: str, input_size: int
) -> ServedModel:
    if not labels_file:
        raise ModelLoadError("a MODEL_FILE needs its MODEL_LABELS_FILE (one class per line)")
    if not Path(model_file).is_file():
        raise ModelLoadError(f"model file {model_file!r} does not exist")
    try:
        model = keras.models.load_model(model_file)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"could not load the Keras model {model_file}: {error}") from error
    input_shape = tuple(model.input_shape)
    if len(input_shape) != 4 or input_shape[3] != 3 or input_shape[1] != input_shape[2]:
        raise ModelLoadError(
            f"{model_file} takes input {input_shape}; a served classifier takes (S, S, 3) images"
        )
    # A model built for any image size gets the configured size.
    served_size = input_shape[1] or input_size
    labels = read_labels(labels_file)
    check_label_count(labels, model, labels_file)
    return ServedModel(name, model_file, served_size, labels, model, takes_raw_pixels=True)


def read_labels(path) -> list[str]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ModelLoadError(f"could not read the labels file {path}: {error}") from error
    labels = [line.split(",")[0].strip() for line in lines]
    if not all(labels):
        raise ModelLoadError(f"labels file {path} has an empty line")
    return labels


def check_label_count(labels: list[str], model: keras.Model, labels_file: str) -> None:
    output_shape = tuple(model.output_shape)
    if len(output_shape) != 2:
        raise ModelLoadError(f"the model outputs {output_shape}; a classifier outputs (N, classes)")
    if output_shape[1] != len(labels):
        raise ModelLoadError(
            f"the model has {output_shape[1]} output classes but {labels_file} has "
            f"{len(labels)} labels"
        )
