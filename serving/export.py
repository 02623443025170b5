"""Exporting a Keras or ONNX classifier as a model package (serving/package.py): conversion
to OpenVINO, int8 post-training quantization with NNCF, and the faithfulness gate that
compares the package with the fp32 reference on held-out images: the Keras model, or for an
ONNX model its own answers computed by ONNX Runtime.

Images reach calibration and the gate through the pipeline's own preprocessing
(common.images.prepare_for_model) and the served model's input transform
(ServedModel.model_input), exactly as a worker sees them. Imports TensorFlow only to
convert a Keras model.
"""

import io
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nncf
import numpy as np
import openvino as ov
from PIL import Image

from common.images import ACCEPTED_FORMATS, CENTRE_SQUARE, Fit, prepare_for_model
from serving.inference import ServedModel, check_runtime_precision
from serving.onnx import OnnxModel
from serving.package import load_package, write_package
from serving.runtimes.onnxruntime import onnxruntime_served
from serving.runtimes.openvino import compile_model, runner, with_input_spec

logger = logging.getLogger(__name__)

DEFAULT_MIN_TOP1 = 0.99
# Calibration and held-out images are fed in batches of this size.
CHUNK = 16
SYNTHETIC_IMAGES = 40


class ExportError(ValueError):
    """The export cannot go on; the text says why and what to do."""


class GateRefused(ExportError):
    """The package disagrees with the fp32 Keras model more than the threshold allows."""


@dataclass(frozen=True)
class ImageSet:
    """Images as the model input size, ready for predict, with where they came from."""

    name: str
    images: list[np.ndarray]

    def split(self) -> tuple["ImageSet", "ImageSet"]:
        """(calibration, held out): every fourth image is held out, so both see the
        whole set's variety."""
        if len(self.images) < 2:
            raise ExportError(
                f"{self.name} has {len(self.images)} image(s): an int8 export needs at least "
                f"two (one to calibrate on, one held out for the faithfulness gate), or a "
                f"--holdout-dir"
            )
        calibration = [image for i, image in enumerate(self.images) if i % 4 != 3]
        held_out = [image for i, image in enumerate(self.images) if i % 4 == 3]
        return ImageSet(self.name, calibration), ImageSet(f"{self.name} (held out)", held_out)


def image_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise ExportError(f"image folder {folder} does not exist")
    files = sorted(path for path in folder.rglob("*") if path.is_file())
    if not files:
        raise ExportError(f"image folder {folder} holds no files: put images in it")
    return files


def load_image_files(
    files: list[Path], *, size: int, name: str, fit: Fit = CENTRE_SQUARE
) -> ImageSet:
    images = []
    for path in files:
        try:
            with open(path, "rb") as file:
                images.append(prepare_for_model(file, size=size, fit=fit))
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            raise ExportError(
                f"{path} is not an image in an accepted format "
                f"({', '.join(ACCEPTED_FORMATS)}): {error}"
            ) from None
    return ImageSet(name, images)


def synthetic_images(
    *, size: int, count: int = SYNTHETIC_IMAGES, seed: int = 0, fit: Fit = CENTRE_SQUARE
) -> ImageSet:
    """Smooth colour gradients with noise, as PNG files through the pipeline's
    preprocessing: for a model whose real images are not at hand (make run's first start)."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        height, width = rng.integers(size, 2 * size, 2)
        corners = rng.uniform(0, 255, (2, 2, 3))
        y = np.linspace(0, 1, height)[:, None, None]
        x = np.linspace(0, 1, width)[None, :, None]
        top = corners[0, 0] * (1 - x) + corners[0, 1] * x
        bottom = corners[1, 0] * (1 - x) + corners[1, 1] * x
        pixels = top * (1 - y) + bottom * y + rng.normal(0, 20, (height, width, 3))
        buffer = io.BytesIO()
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "PNG")
        buffer.seek(0)
        images.append(prepare_for_model(buffer, size=size, fit=fit))
    return ImageSet(f"{count} synthetic gradient images (seed {seed})", images)


def convert(served: ServedModel) -> ov.Model:
    """The Keras model as an OpenVINO model with a dynamic batch dimension."""
    import tensorflow as tf

    if not hasattr(served.model, "save_weights"):
        raise ExportError(f"model {served.name!r} is not a Keras model and cannot be exported")
    keras_model = served.model
    size = served.input_size
    function = tf.function(
        lambda x: keras_model(x, training=False),
        input_signature=[tf.TensorSpec((None, size, size, 3), tf.float32)],
    )
    return ov.convert_model(function.get_concrete_function())


def batches(served: ServedModel, images: ImageSet) -> list[np.ndarray]:
    return [
        served.model_input(images.images[start : start + CHUNK])
        for start in range(0, len(images.images), CHUNK)
    ]


def quantize(model: ov.Model, served: ServedModel, calibration: ImageSet) -> ov.Model:
    """int8 post-training quantization; the classifier head (MatMul) stays fp32, which costs
    no speed and keeps the probabilities close."""
    data = batches(served, calibration)
    return nncf.quantize(
        model,
        nncf.Dataset(data),
        subset_size=len(data),
        # Not every ONNX classifier's head is a MatMul.
        ignored_scope=nncf.IgnoredScope(types=["MatMul"], validate=False),
    )


def faithfulness(reference: ServedModel, candidate: ServedModel, held_out: ImageSet) -> dict:
    """How closely candidate answers like reference on held_out."""
    want = np.concatenate([reference.run(batch) for batch in batches(reference, held_out)])
    got = np.concatenate([candidate.run(batch) for batch in batches(candidate, held_out)])
    k = min(5, want.shape[1])
    top_want = np.argsort(-want, axis=1, kind="stable")[:, :k]
    top_got = np.argsort(-got, axis=1, kind="stable")[:, :k]
    overlap = [len(set(a) & set(b)) / k for a, b in zip(top_want, top_got, strict=True)]
    return {
        "images": len(held_out.images),
        "held_out": held_out.name,
        "top1_agreement": float(np.mean(top_want[:, 0] == top_got[:, 0])),
        "top5_overlap": float(np.mean(overlap)),
        "max_probability_difference": float(np.max(np.abs(want - got))),
    }


def export_package(
    *,
    served: ServedModel,
    output: Path,
    precision: str,
    source: dict,
    calibration: ImageSet | None,
    held_out: ImageSet | None,
    min_top1: float = DEFAULT_MIN_TOP1,
    force: bool = False,
    log=logger.info,
    onnx: OnnxModel | None = None,
    runtime: str = "openvino",
) -> dict:
    """Convert, quantize (int8), gate and write the package; returns its manifest.

    served is the fp32 reference: the Keras model, or for onnx the ONNX file run by ONNX
    Runtime (onnx_reference). runtime "onnxruntime" packages the ONNX file itself (fp32),
    which is its own reference: nothing to gate.
    calibration: required for int8; without held_out, a quarter of it is held out.
    For fp32 and bf16, held_out (or calibration, or synthetic images) is only compared on.
    GateRefused when top-1 agreement is under min_top1 and not force.
    """
    check_runtime_precision("openvino", precision)
    if runtime == "onnxruntime" and (onnx is None or precision != "fp32"):
        raise ExportError("the onnxruntime runtime packages an ONNX model (--onnx) at fp32 only")
    if precision == "int8":
        if calibration is None:
            raise ExportError("an int8 export needs calibration images")
        if held_out is None:
            calibration, held_out = calibration.split()
    else:
        held_out = (
            held_out or calibration or synthetic_images(size=served.input_size, fit=served.fit)
        )
        calibration = None
    if runtime == "onnxruntime":
        return write_checked(
            output,
            model=onnx.path,
            labels=served.labels,
            manifest={
                **manifest_of(served, onnx, precision, source, calibration),
                "runtime": "onnxruntime",
                "faithfulness": None,
            },
        )
    model = convert(served) if onnx is None else convert_onnx(onnx)
    if calibration is not None:
        log(f"quantizing to int8 on {len(calibration.images)} images ({calibration.name}) ...")
        model = quantize(model, served, calibration)
    compiled, _ = compile_model(model, precision)
    candidate = on_openvino(served, compiled, precision)
    reference = "Keras" if onnx is None else "ONNX Runtime"
    figures = {
        **faithfulness(served, candidate, held_out),
        "reference": f"fp32 {reference}",
        "min_top1_agreement": min_top1,
    }
    log(
        f"faithfulness against fp32 {reference} on {figures['images']} held-out images: "
        f"top-1 agreement {figures['top1_agreement']:.2%}, top-5 overlap "
        f"{figures['top5_overlap']:.2%}, max probability difference "
        f"{figures['max_probability_difference']:.4f}"
    )
    if figures["top1_agreement"] < min_top1:
        if not force:
            raise GateRefused(
                f"refused: top-1 agreement {figures['top1_agreement']:.2%} is under "
                f"{min_top1:.2%}; no package written (calibrate on more representative "
                f"images, or --force to write it anyway)"
            )
        figures["forced"] = True
        log("top-1 agreement is under the threshold: written anyway (--force)")
    manifest = {
        **manifest_of(served, onnx, precision, source, calibration),
        "runtime": "openvino",
        "faithfulness": figures,
    }
    return write_checked(output, model=model, labels=served.labels, manifest=manifest)


def manifest_of(
    served: ServedModel,
    onnx: OnnxModel | None,
    precision: str,
    source: dict,
    calibration: ImageSet | None,
) -> dict:
    return {
        "name": served.name,
        "precision": precision,
        "input_size": served.input_size,
        "input_transform": served.input_transform,
        **({"input_spec": onnx.describe()} if onnx else {}),
        "classes": len(served.labels),
        "source": source,
        "calibration": (
            {"images": len(calibration.images), "set": calibration.name} if calibration else None
        ),
    }


def write_checked(output: Path, *, model, labels: list[str], manifest: dict) -> dict:
    # Written to a sibling folder and renamed, so a failed export never leaves half a
    # package where a worker may look.
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=f".{output.name}-") as staging:
        written = write_package(Path(staging), model=model, labels=labels, manifest=manifest)
        load_package(staging)  # reads back what a worker will read, hashes included
        shutil.rmtree(output, ignore_errors=True)
        Path(staging).rename(output)
        Path(staging).mkdir()  # for TemporaryDirectory's cleanup
    return written


def convert_at_start(
    served: ServedModel, precision: str, *, threads: int | None, bf16_fallback: bool
) -> ServedModel:
    """served converted to OpenVINO in memory, for a worker started with --runtime openvino.
    int8 calibrates on synthetic images, since a starting worker has no others; the
    faithfulness figures are logged. A package exported once starts faster and is gated."""
    check_runtime_precision("openvino", precision)
    model = convert(served)
    if precision == "int8":
        images = synthetic_images(size=served.input_size)
        calibration, held_out = images.split()
        model = quantize(model, served, calibration)
    compiled, ran = compile_model(model, precision, threads=threads, bf16_fallback=bf16_fallback)
    converted = on_openvino(served, compiled, ran)
    if precision == "int8":
        logger.info("int8 against fp32 Keras: %s", faithfulness(served, converted, held_out))
    return converted


def onnx_reference(onnx: OnnxModel, *, name: str) -> ServedModel:
    """The ONNX model as its authors run it (ONNX Runtime, fp32): the gate's reference."""
    return onnxruntime_served(onnx.path, onnx.spec, onnx.labels, name=name)


def convert_onnx(onnx: OnnxModel) -> ov.Model:
    """The ONNX model in OpenVINO, taking uint8 images with its input spec inside."""
    try:
        model = ov.convert_model(str(onnx.path))
    except Exception as error:  # the ONNX frontend's errors have no common type
        raise ExportError(f"OpenVINO could not convert {onnx.path}: {error}") from error
    return with_input_spec(model, onnx.spec)


def on_openvino(served: ServedModel, compiled, precision: str) -> ServedModel:
    """The reference model's twin run by OpenVINO: same name, labels and input transform."""
    return ServedModel(
        served.name,
        served.weights,
        served.input_size,
        served.labels,
        run=runner(compiled),
        input_transform=served.input_transform,
        runtime="openvino",
        precision=precision,
        model=compiled,
        fit=served.fit,
    )
