"""Which model a worker (or `manage.py predict`) serves: a model package, or a Keras model
run by TensorFlow or converted to OpenVINO at start.

A package (or the built-in "instant" model) is loaded without importing TensorFlow:
serving.runtimes.tensorflow and serving.export, which import it, are imported only when a
Keras model is needed.
"""

import logging
import time
from typing import TYPE_CHECKING

import numpy as np

from serving.inference import (
    ModelLoadError,
    ServedModel,
    check_runtime_precision,
    instant_model,
)

if TYPE_CHECKING:
    from serving.runtimes.openvino import Execution

logger = logging.getLogger(__name__)


def load_served(
    *,
    package: str = "",
    runtime: str = "tensorflow",
    precision: str = "fp32",
    name: str = "resnet50",
    weights: str = "random",
    model_file: str = "",
    labels_file: str = "",
    input_size: int = 224,
    threads: int | None = None,
    bf16_fallback: bool = False,
    execution: "Execution | None" = None,
) -> ServedModel:
    """Load and warm up the model to serve; ModelLoadError with advice when that fails.

    execution: how OpenVINO runs a package on this CPU (serving.runtimes.openvino).
    """
    if package:
        from serving.package import load_package
        from serving.runtimes.openvino import DEFAULT_EXECUTION

        served = load_package(
            package,
            threads=threads,
            bf16_fallback=bf16_fallback,
            execution=execution or DEFAULT_EXECUTION,
        )
        warm_up(served)
        return served
    if name == "instant" and not model_file:
        return instant_model(labels_file, input_size)
    check_runtime_precision(runtime, precision)
    from serving.runtimes.tensorflow import load_model

    served = load_model(
        name=name,
        weights=weights,
        model_file=model_file,
        labels_file=labels_file,
        input_size=input_size,
        threads=threads,
    )
    if runtime == "tensorflow":
        return served
    from serving.export import ExportError, convert_at_start

    started = time.monotonic()
    try:
        converted = convert_at_start(
            served, precision, threads=threads, bf16_fallback=bf16_fallback
        )
    except ExportError as error:
        raise ModelLoadError(str(error)) from error
    warm_up(converted)
    logger.info(
        "converted %s to openvino %s in %.2f s",
        served.name,
        converted.precision,
        time.monotonic() - started,
    )
    return converted


def warm_up(served: ServedModel) -> None:
    for batch_size in (1, 2):
        zeros = np.zeros((batch_size, served.input_size, served.input_size, 3), np.uint8)
        served.predict(zeros, [1] * batch_size)
