"""Model packages: a folder holding an OpenVINO model (or, for the "onnxruntime" runtime,
an ONNX file), its labels and a manifest.json that describes it (files and their sha256,
input size and transform, the input spec of an ONNX model, precision, source model,
calibration set, OpenVINO version, creation time, faithfulness figures).

Loading one checks every file against its hash and needs neither TensorFlow nor Keras.
"""

import json
import logging
import shutil
import time
from pathlib import Path

import openvino as ov

from common.images import CENTRE_SQUARE
from serving.inference import (
    INPUT_TRANSFORMS,
    PRECISIONS,
    ModelLoadError,
    ServedModel,
    check_label_count,
    read_labels,
    sha256_of,
)
from serving.onnx import spec_from_dict
from serving.runtimes.openvino import (
    DEFAULT_EXECUTION,
    Execution,
    compile_model,
    describe_execution,
    output_shape,
    runner,
)

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MODEL_XML = "model.xml"
MODEL_BIN = "model.bin"
MODEL_ONNX = "model.onnx"
LABELS = "labels.txt"
FORMAT = 1
# Package precisions, fastest first, as `manage.py benchmark` measures them
# (docs/performance.md): make run serves the first that passes the faithfulness gate.
FASTEST_FIRST = ("int8", "bf16", "fp32")
# What runs a package: OpenVINO (model.xml), or ONNX Runtime (model.onnx, fp32).
PACKAGE_RUNTIMES = ("openvino", "onnxruntime")


def write_package(
    folder: Path, *, model: ov.Model | Path, labels: list[str], manifest: dict
) -> dict:
    """Save the model (an OpenVINO model, or the path of an ONNX file, copied) and labels in
    folder and the manifest naming them with their hashes.

    manifest holds everything but "files", "format", "openvino_version" and "created_at",
    which are added here. The manifest is written last, so a folder without one was never
    finished.
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).unlink(missing_ok=True)
    if isinstance(model, Path):
        shutil.copyfile(model, folder / MODEL_ONNX)
        files = (MODEL_ONNX, LABELS)
    else:
        # compress_to_fp16=False: the default rounds the weights to fp16.
        ov.save_model(model, folder / MODEL_XML, compress_to_fp16=False)
        files = (MODEL_XML, MODEL_BIN, LABELS)
    (folder / LABELS).write_text("\n".join(labels) + "\n", encoding="utf-8")
    manifest = {
        "format": FORMAT,
        **manifest,
        "files": {name: sha256_of(folder / name) for name in files},
        "openvino_version": ov.get_version(),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def read_manifest(folder: Path) -> dict:
    """The package's manifest once every file it names has the hash it records."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        inside = sorted(p.parent for p in Path(folder).glob(f"*/{MANIFEST}"))
        if inside:
            raise ModelLoadError(
                f"{folder} is not a model package but holds "
                + ", ".join(str(package) for package in inside)
                + ": give one of those"
            )
        raise ModelLoadError(
            f"{folder} is not a model package: it has no {MANIFEST} "
            f"(make one with `manage.py export_model --output {folder}`)"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"could not read {path}: {error}") from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ModelLoadError(f"{path} is not a format {FORMAT} package manifest")
    for key in ("name", "precision", "input_size", "input_transform", "files"):
        if key not in manifest:
            raise ModelLoadError(f"{path} lacks {key!r}")
    if manifest["precision"] not in PRECISIONS:
        raise ModelLoadError(f"{path}: unknown precision {manifest['precision']!r}")
    if manifest["input_transform"] not in INPUT_TRANSFORMS:
        raise ModelLoadError(f"{path}: unknown input transform {manifest['input_transform']!r}")
    if manifest["input_transform"] == "spec" and "input_spec" not in manifest:
        raise ModelLoadError(f"{path} lacks 'input_spec'")
    if manifest.get("runtime", "openvino") not in PACKAGE_RUNTIMES:
        raise ModelLoadError(f"{path}: unknown runtime {manifest['runtime']!r}")
    for name, expected in manifest["files"].items():
        file = Path(folder) / name
        if not file.is_file():
            raise ModelLoadError(f"model package {folder} is missing {name}")
        if sha256_of(file) != expected:
            raise ModelLoadError(
                f"{name} in model package {folder} was changed after export (its sha256 "
                f"differs from the manifest's); export the package again"
            )
    return manifest


def load_package(
    folder: str | Path,
    *,
    threads: int | None = None,
    bf16_fallback: bool = False,
    execution: Execution = DEFAULT_EXECUTION,
) -> ServedModel:
    started = time.monotonic()
    folder = Path(folder)
    manifest = read_manifest(folder)
    labels = read_labels(folder / LABELS)
    spec = spec_from_dict(manifest["input_spec"]) if "input_spec" in manifest else None
    if manifest.get("runtime") == "onnxruntime":
        from serving.runtimes.onnxruntime import onnxruntime_served

        served = onnxruntime_served(
            folder / MODEL_ONNX, spec, labels, name=manifest["name"], threads=threads
        )
        logger.info("loaded model package %s (onnxruntime fp32)", folder)
        return served
    model = ov.Core().read_model(folder / MODEL_XML)
    check_label_count(labels, output_shape(model), str(folder / LABELS))
    compiled, precision = compile_model(
        model,
        manifest["precision"],
        threads=threads,
        bf16_fallback=bf16_fallback,
        execution=execution,
    )
    served = ServedModel(
        manifest["name"],
        manifest.get("source", {}).get("weights", ""),
        int(manifest["input_size"]),
        labels,
        run=runner(compiled, execution.requests),
        input_transform=manifest["input_transform"],
        runtime="openvino",
        precision=precision,
        model=compiled,
        fit=spec.fit if spec else CENTRE_SQUARE,
        execution=describe_execution(compiled, execution.requests),
    )
    logger.info(
        "loaded model package %s (%s, openvino %s, %s) in %.2f s",
        folder,
        precision,
        manifest.get("openvino_version", "?"),
        served.execution,
        time.monotonic() - started,
    )
    return served
