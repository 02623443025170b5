"""Running an ONNX classifier with ONNX Runtime (CPU, fp32), the runtime its authors ship
for: a package of runtime "onnxruntime", and the reference the faithfulness gate holds an
ONNX model's OpenVINO packages to.

ONNX Runtime has no pre-processing inside the model: the input spec is applied in numpy
before each batch (InputSpec.model_input). Its other execution providers (CUDA, TensorRT)
take the same session options.
"""

from pathlib import Path

import numpy as np
import onnxruntime as ort

from serving.inference import ModelLoadError, ServedModel
from serving.onnx import InputSpec, softmax


def runner(path: Path, spec: InputSpec, *, threads: int | None = None):
    """A function of a uint8 (N, S, S, 3) RGB batch returning probabilities (N, classes)."""
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own untyped errors
        raise ModelLoadError(f"ONNX Runtime could not load {path}: {error}") from error
    (image,) = session.get_inputs()
    output = session.get_outputs()[0].name
    # A model exported for batch 1 is run one image at a time.
    one_by_one = isinstance(image.shape[0], int)

    def run(batch: np.ndarray) -> np.ndarray:
        tensor = spec.model_input(batch)
        if one_by_one:
            parts = [
                session.run([output], {image.name: tensor[i : i + 1]})[0]
                for i in range(len(tensor))
            ]
            answer = np.concatenate(parts)
        else:
            answer = session.run([output], {image.name: tensor})[0]
        return softmax(answer) if spec.output == "logits" else answer

    return run


def onnxruntime_served(
    path: Path, spec: InputSpec, labels: list[str], *, name: str, threads: int | None = None
) -> ServedModel:
    return ServedModel(
        name,
        str(path),
        spec.size,
        labels,
        run=runner(path, spec, threads=threads),
        input_transform="spec",
        runtime="onnxruntime",
        precision="fp32",
        fit=spec.fit,
    )
