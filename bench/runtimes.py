"""Every runtime and precision side by side: model packages exported for this run (with
their faithfulness figures), then each one's ceiling at batch 1 and at the workers' batch
size, with its worker-like process's resident memory and start time. Beside Keras'
ResNet50, the same network as an ONNX file (bench/onnx_resnet.py) through OpenVINO fp32 and
int8 and through ONNX Runtime fp32, as a user's own ONNX model is served."""

import contextlib
import io
import json
import sys
from pathlib import Path

from django.core.management import CommandError, call_command

from bench.ceiling import single_and_batched
from serving.package import FASTEST_FIRST
from serving.runtimes.openvino import cpu_runs_bf16


def export_packages(folder: Path, log) -> dict:
    """precision -> {"path", "faithfulness", "passed"} or {"skipped": reason}.

    The benchmark's ResNet50 has random weights and no real photos are at hand, so int8
    calibrates on synthetic images and every package is written (--force) with its figures,
    whether the gate would pass it or not ("passed" says).
    """
    packages = {}
    for precision in FASTEST_FIRST:
        if precision == "bf16" and not cpu_runs_bf16():
            packages[precision] = {"skipped": "this CPU has no bf16 instructions"}
            log("  bf16 SKIPPED: this CPU has no bf16 instructions")
            continue
        package = export(precision, folder / precision, precision, ["--weights", "random"], log)
        if "path" in package:
            figures = package["faithfulness"]
            package["passed"] = figures["top1_agreement"] >= figures["min_top1_agreement"]
        packages[precision] = package
    return packages


def export(name: str, output: Path, precision: str, arguments: list[str], log) -> dict:
    """{"path", "faithfulness"} of the package export_model writes to output past its gate
    (--force; int8 calibrated on synthetic images), or {"skipped": why}."""
    arguments = [*arguments, "--output", str(output), "--precision", precision, "--force"]
    if precision == "int8":
        arguments.append("--synthetic-calibration")
    try:
        with contextlib.redirect_stdout(sys.stderr):
            call_command("export_model", *arguments, stdout=io.StringIO())
    except CommandError as error:
        log(f"  {name} export failed: {error}")
        return {"skipped": str(error)}
    figures = json.loads((output / "manifest.json").read_text()).get("faithfulness")
    log(f"  {name}: {json.dumps(figures)}")
    return {"path": str(output), "faithfulness": figures}


# The ONNX model's packages: (runtime, precision) of each.
ONNX_PACKAGES = (("openvino", "fp32"), ("openvino", "int8"), ("onnxruntime", "fp32"))


def export_onnx_packages(folder: Path, log) -> dict:
    """ "onnx RUNTIME PRECISION" -> {"path", "faithfulness"} or {"skipped": reason}, the
    packages of a ResNet-50 ONNX file with random weights (--input-preset imagenet). Its
    OpenVINO packages are gated against ONNX Runtime's fp32 answers (written whatever the
    gate says: --force); ONNX Runtime's is the file itself."""
    from bench.onnx_resnet import write_resnet50

    folder.mkdir(parents=True, exist_ok=True)
    onnx_file = write_resnet50(folder / "resnet50.onnx")
    packages = {}
    for runtime, precision in ONNX_PACKAGES:
        name = f"onnx {runtime} {precision}"
        arguments = ["--onnx", str(onnx_file), "--input-preset", "imagenet", "--runtime", runtime]
        packages[name] = export(name, folder / f"{runtime}-{precision}", precision, arguments, log)
    return packages


def make_run_choice(packages: dict) -> str | None:
    """The precision make run would serve: the fastest package that passes the gate."""
    for precision in FASTEST_FIRST:
        if packages.get(precision, {}).get("passed"):
            return precision
    return None


def measure_runtimes(
    options, packages: dict, log_dir: Path, log, onnx_packages: dict | None = None
) -> dict:
    configurations = {"tensorflow fp32": ()}
    for precision in FASTEST_FIRST[::-1]:
        if "path" in packages.get(precision, {}):
            configurations[f"openvino {precision}"] = (
                "--model-package",
                packages[precision]["path"],
            )
    for name, package in (onnx_packages or {}).items():
        if "path" in package:
            configurations[name] = ("--model-package", package["path"])
    figures = {}
    for name, model_args in configurations.items():
        tag = "-" + name.replace(" ", "-")
        single, batched = single_and_batched(options, log_dir, model_args, tag)
        figures[name] = {
            "batch_1_images_per_s": single["images_per_s"],
            "batch_1_ms": single["batch_ms_p50"],
            "batch_size": options.max_batch_size,
            "processes": options.workers,
            "images_per_s": batched["images_per_s"],
            "rss_mib": single["rss_mib"],
            "start_s": single["start_s"],
        }
        if name in (onnx_packages or {}):
            figures[name]["faithfulness"] = onnx_packages[name]["faithfulness"]
        log(f"  {name}: {json.dumps(figures[name])}")
    base = figures["tensorflow fp32"]["images_per_s"]
    for values in figures.values():
        values["x_tensorflow_fp32"] = values["images_per_s"] / base
    return figures
