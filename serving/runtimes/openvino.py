"""Running a model with OpenVINO, at the precision asked for, without TensorFlow."""

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openvino as ov
from openvino import Layout, Type, opset13
from openvino.preprocess import ColorFormat, PrePostProcessor

from serving.inference import ModelLoadError

logger = logging.getLogger(__name__)

# OpenVINO's INFERENCE_PRECISION_HINT for each precision. It is always set: on a CPU with
# bf16 the default is bf16, so "fp32" would silently run bf16. An int8 model keeps the
# layers it did not quantize (the classifier head) in f32.
PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}


# The CPU flags (as Linux names them) that decide how fast each precision runs: AVX2
# alone, AVX-512, int8 dot products (VNNI), bf16, and the AMX tile units.
SILICON_FLAGS = (
    "avx2",
    "avx512f",
    "avx_vnni",
    "avx512_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
)
PERFORMANCE_HINTS = ("auto", "throughput", "latency")


@dataclass(frozen=True)
class Execution:
    """How a model is asked to run on the CPU (the OPENVINO_* settings)."""

    # "auto": throughput with streams when the process has more than one core, whatever
    # the CPU's instruction set (docs/performance.md, "One worker per host").
    hint: str = "auto"
    # Streams for the throughput hint; 0: OpenVINO's choice for this CPU.
    streams: int = 0
    # Infer requests run at once, each on a slice of the batch; 0: OpenVINO's optimal
    # number for the compiled model (one per stream).
    requests: int = 0


DEFAULT_EXECUTION = Execution()


def cpu_runs_bf16(core: ov.Core | None = None) -> bool:
    capabilities = (core or ov.Core()).get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return "BF16" in capabilities


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> list[str]:
    """Which of SILICON_FLAGS this CPU has (none where /proc/cpuinfo does not say)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return []
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    return [flag for flag in SILICON_FLAGS if flag in flags]


def usable_cores() -> int:
    """The cores this process may run on (a container's or taskset's share, not the host's)."""
    return len(os.sched_getaffinity(0))


def performance_config(execution: Execution, threads: int | None = None) -> dict:
    """OpenVINO's compile properties for execution on this CPU.

    One process feeding several infer requests to the throughput hint's streams keeps every
    core busy, which two processes each using all cores with the latency hint did not:
    measured on AVX2-only, AVX-512 VNNI and AMX CPUs alike (docs/performance.md). On one
    core there is nothing to overlap, so latency.
    """
    hint = execution.hint
    if hint == "auto":
        hint = "throughput" if (threads or usable_cores()) > 1 else "latency"
    config = {"PERFORMANCE_HINT": hint.upper()}
    if hint == "throughput" and execution.streams:
        config["NUM_STREAMS"] = execution.streams
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    return config


def describe_choice(execution: Execution) -> str:
    """What performance_config asks of OpenVINO on this CPU, told without compiling."""
    config = performance_config(execution)
    hint = config["PERFORMANCE_HINT"].lower()
    streams = 1 if hint == "latency" else config.get("NUM_STREAMS", "OpenVINO's choice")
    return (
        f"{hint} hint, streams {streams}, "
        f"requests {execution.requests or 'one per stream'}, {usable_cores()} cores, "
        f"cpu flags {','.join(cpu_flags()) or '-'}"
    )


def infer_requests(compiled: ov.CompiledModel, requests: int = 0) -> int:
    """requests, or for 0 OpenVINO's optimal number for the compiled model."""
    return requests or compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")


def describe_execution(compiled: ov.CompiledModel, requests: int = 0) -> str:
    """What the compiled model really runs, for the worker's log and the package description."""
    flags = ",".join(cpu_flags()) or "-"
    capabilities = ",".join(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    return (
        f"hint={str(compiled.get_property('PERFORMANCE_HINT')).lower()} "
        f"streams={compiled.get_property('NUM_STREAMS')} "
        f"threads={compiled.get_property('INFERENCE_NUM_THREADS')} "
        f"requests={infer_requests(compiled, requests)} cpu_flags={flags} "
        f"openvino_capabilities={capabilities}"
    )


def compile_model(
    model: "ov.Model | str",
    precision: str,
    *,
    threads: int | None = None,
    bf16_fallback: bool = False,
    execution: Execution = DEFAULT_EXECUTION,
) -> tuple[ov.CompiledModel, str]:
    """The model compiled for the CPU as execution asks, and the precision it will really
    run at.

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
    config = {
        "INFERENCE_PRECISION_HINT": PRECISION_HINTS[precision],
        **performance_config(execution, threads),
    }
    try:
        return core.compile_model(model, "CPU", config), precision
    except RuntimeError as error:
        raise ModelLoadError(f"OpenVINO could not compile the model: {error}") from error


def output_shape(model: ov.Model) -> tuple:
    """The first output's shape, None for a dynamic dimension, as Keras reports shapes."""
    return tuple(
        dim.get_length() if dim.is_static else None for dim in model.output(0).get_partial_shape()
    )


def runner(compiled: ov.CompiledModel, requests: int = 0):
    """A function of a batch returning the model's first output. The batch is given as the
    model takes it: float32, or uint8 images for a model with its input spec inside.

    requests: infer requests, 0 for OpenVINO's optimal number for the compiled model (one
    under the latency hint, one per stream under throughput). With one request, the whole
    batch goes through it. With several, the batch is cut into that many slices, run at
    once (on the throughput hint's streams) and put back in order: one process then keeps
    every core busy. A worker predicts one batch at a time.
    """
    output = compiled.output(0)
    dtype = compiled.input(0).get_element_type().to_dtype()
    requests = infer_requests(compiled, requests)
    if requests == 1:
        request = compiled.create_infer_request()

        def run(batch: np.ndarray) -> np.ndarray:
            return request.infer({0: np.ascontiguousarray(batch, dtype=dtype)})[output].copy()

        return run

    pool = [compiled.create_infer_request() for _ in range(requests)]

    def run_async(batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=dtype)
        size = max(1, math.ceil(len(batch) / requests))
        used = pool[: math.ceil(len(batch) / size)]
        for index, request in enumerate(used):
            request.start_async({0: batch[index * size : (index + 1) * size]})
        slices = []
        for request in used:
            request.wait()
            # A copy: the request's output memory is reused by its next slice.
            slices.append(request.get_output_tensor(0).data.copy())
        return np.concatenate(slices)

    return run_async


def with_input_spec(model: ov.Model, spec) -> ov.Model:
    """model (as converted from ONNX) taking uint8 (N, S, S, 3) RGB images instead, the
    input spec (serving.onnx.InputSpec) applied inside it by OpenVINO's pre-processing:
    channel order, scale, mean and std, the layout; and softmax on logits."""
    size = spec.size
    shape = [-1, 3, size, size] if spec.layout == "NCHW" else [-1, size, size, 3]
    model.reshape({model.input(0).get_any_name(): ov.PartialShape(shape)})
    ppp = PrePostProcessor(model)
    image = ppp.input(0)
    image.tensor().set_element_type(Type.u8).set_layout(Layout("NHWC")).set_color_format(
        ColorFormat.RGB
    )
    image.model().set_layout(Layout(spec.layout))
    steps = image.preprocess().convert_element_type(Type.f32)
    if spec.channels == "BGR":
        steps.convert_color(ColorFormat.BGR)
    if spec.scale != 1:
        steps.scale(1 / spec.scale)  # scale() divides
    if any(spec.mean):
        steps.mean(list(spec.mean))
    if any(value != 1 for value in spec.std):
        steps.scale(list(spec.std))
    if spec.output == "logits":
        ppp.output(0).postprocess().custom(lambda node: opset13.softmax(node, 1).output(0))
    return ppp.build()
