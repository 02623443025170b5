"""Running a model with OpenVINO, at the precision asked for, without TensorFlow."""

import logging

import numpy as np
import openvino as ov

from serving.inference import ModelLoadError

logger = logging.getLogger(__name__)

# OpenVINO's INFERENCE_PRECISION_HINT for each precision. It is always set: on a CPU with
# bf16 the default is bf16, so "fp32" would silently run bf16. An int8 model keeps the
# layers it did not quantize (the classifier head) in f32.
PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}


def cpu_runs_bf16(core: ov.Core | None = None) -> bool:
    capabilities = (core or ov.Core()).get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return "BF16" in capabilities


def compile_model(
    model: "ov.Model | str",
    precision: str,
    *,
    threads: int | None = None,
    bf16_fallback: bool = False,
) -> tuple[ov.CompiledModel, str]:
    """The model compiled for the CPU, and the precision it will really run at.

    bf16 on a CPU without bf16 instructions is refused unless bf16_fallback, which runs fp32
    instead (and says so).
    """
    core = ov.Core()
    if precision == "bf16" and not cpu_runs_bf16(core):
        capabilities = ", ".join(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
        if not bf16_fallback:
            raise ModelLoadError(
                f"bf16 was asked for but this CPU cannot run bf16 (OpenVINO sees: "
                f"{capabilities}); use fp32 or int8, or allow the fallback to fp32 "
                f"(--bf16-fallback, MODEL_BF16_FALLBACK=true)"
            )
        logger.warning("this CPU has no bf16 (%s): running fp32 instead", capabilities)
        precision = "fp32"
    config = {"INFERENCE_PRECISION_HINT": PRECISION_HINTS[precision]}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    try:
        return core.compile_model(model, "CPU", config), precision
    except RuntimeError as error:
        raise ModelLoadError(f"OpenVINO could not compile the model: {error}") from error


def output_shape(model: ov.Model) -> tuple:
    """The first output's shape, None for a dynamic dimension, as Keras reports shapes."""
    return tuple(
        dim.get_length() if dim.is_static else None for dim in model.output(0).get_partial_shape()
    )


def runner(compiled: ov.CompiledModel):
    """A function of a float32 batch returning the model's first output, through one
    infer request: a worker predicts one batch at a time."""
    request = compiled.create_infer_request()
    output = compiled.output(0)

    def run(batch: np.ndarray) -> np.ndarray:
        return request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)})[output].copy()

    return run
