"""Loading a Keras classifier and serving it with TensorFlow.

Two kinds of model can be served (the built-in "instant" model, which needs no TensorFlow,
is dispatched by serving/loading.py before this module is imported):
- the built-in ResNet50 (name "resnet50"), with ImageNet weights from Keras' download
  cache, weights from a file, or random weights for demos;
- any saved Keras classifier (model_file, a .keras file) that takes (S, S, 3) float32 pixels
  in 0..255, does its own rescaling/normalisation inside the model, and outputs class
  probabilities (a softmax), one per line of its labels file.

This module imports TensorFlow; serving/inference.py holds what a served model shares with
the OpenVINO runtime (serving/runtimes/openvino.py), which must not import it.
"""

import logging
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from serving.inference import (
    IMAGENET_LABELS_FILE,
    ModelLoadError,
    ServedModel,
    check_label_count,
    read_labels,
)

__all__ = ["IMAGENET_LABELS_FILE", "ModelLoadError", "ServedModel", "load_model"]

logger = logging.getLogger(__name__)

RESNET50_WEIGHTS_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels.h5"


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


def load_builtin(name: str, weights: str, labels_file: str, input_size: int) -> ServedModel:
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
    check_label_count(labels, tuple(model.output_shape), labels_file or str(IMAGENET_LABELS_FILE))
    return keras_served(name, weights, input_size, labels, model, input_transform="caffe")


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
    check_label_count(labels, tuple(model.output_shape), labels_file)
    return keras_served(name, model_file, served_size, labels, model, input_transform="raw")


def keras_served(
    name: str, weights: str, input_size: int, labels: list[str], model, *, input_transform: str
) -> ServedModel:
    return ServedModel(
        name,
        weights,
        input_size,
        labels,
        run=model.predict_on_batch,
        input_transform=input_transform,
        runtime="tensorflow",
        precision="fp32",
        model=model,
    )
