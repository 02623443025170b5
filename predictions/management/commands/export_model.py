"""`manage.py export_model --output DIR --precision fp32|bf16|int8`: a gated model package,
of the built-in ResNet50, a .keras classifier or an ONNX classifier (--onnx)."""

import contextlib
import sys
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from serving.inference import PRECISIONS, ModelLoadError
from serving.onnx import add_input_spec_arguments, read_onnx, spec_from_options
from serving.package import PACKAGE_RUNTIMES, sha256_of


def fraction(text: str) -> float:
    value = float(text.rstrip("%")) / (100 if text.endswith("%") else 1)
    if not 0 <= value <= 1:
        raise ValueError(text)
    return value


class Command(BaseCommand):
    help = (
        "Export the model (built-in ResNet50, a saved .keras classifier, or an ONNX classifier "
        "with --onnx and its --input-preset) as an OpenVINO model package at fp32, bf16 or "
        "int8 (calibrated), checked against fp32 Keras (for ONNX: ONNX Runtime) on held-out "
        "images; refuses a package whose top-1 agreement is under --min-top1. An ONNX model "
        "can also be packaged for ONNX Runtime (--runtime onnxruntime, fp32)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--output", required=True, help="the package folder to write")
        parser.add_argument(
            "--precision",
            choices=PRECISIONS,
            default="int8",
            help="the package's precision; int8 is calibrated on images (default: %(default)s)",
        )
        parser.add_argument(
            "--name",
            default=None,
            help="the model to export: resnet50 or a name for --model-file or --onnx "
            f"(default: MODEL_NAME, {settings.MODEL_NAME}; for --onnx, the file's name)",
        )
        parser.add_argument(
            "--weights",
            default=settings.MODEL_WEIGHTS,
            help="imagenet, random, or a weights file (default: %(default)s, MODEL_WEIGHTS)",
        )
        parser.add_argument(
            "--model-file",
            default=settings.MODEL_FILE,
            help="a saved .keras classifier to export instead of ResNet50 (MODEL_FILE)",
        )
        parser.add_argument(
            "--onnx",
            help="an ONNX classifier to export instead (needs --input-preset; labels from "
            "--labels, else its metadata, else class_0..N-1)",
        )
        parser.add_argument(
            "--labels-file",
            "--labels",
            default=settings.MODEL_LABELS_FILE,
            help="class labels, one per line (default: %(default)s, MODEL_LABELS_FILE)",
        )
        parser.add_argument(
            "--input-size",
            type=int,
            default=None,
            help="the model's square input side in pixels (default: MODEL_INPUT_SIZE, "
            f"{settings.MODEL_INPUT_SIZE}; for --onnx, the model's own)",
        )
        parser.add_argument(
            "--runtime",
            choices=PACKAGE_RUNTIMES,
            default="openvino",
            help="for --onnx: what runs the package (onnxruntime: fp32, the ONNX file itself)",
        )
        add_input_spec_arguments(parser)
        images = parser.add_mutually_exclusive_group()
        images.add_argument("--calibration-dir", help="calibration images (searched recursively)")
        images.add_argument(
            "--calibrate-from-uploads",
            type=int,
            metavar="N",
            help="calibrate on the originals of the last N succeeded jobs",
        )
        images.add_argument(
            "--synthetic-calibration",
            action="store_true",
            help="calibrate on generated gradient images (when no real images are at hand)",
        )
        parser.add_argument(
            "--holdout-dir",
            help="images for the faithfulness gate (default: every 4th calibration image)",
        )
        parser.add_argument(
            "--min-top1",
            type=fraction,
            default=0.99,
            help="least top-1 agreement with fp32 Keras, e.g. 0.99 or 99%% (default 99%%)",
        )
        parser.add_argument("--force", action="store_true", help="write even if the gate fails")

    def handle(self, *args, **options):
        from serving.export import ExportError, export_package, onnx_reference, synthetic_images
        from serving.runtimes.tensorflow import load_model

        try:
            onnx = None
            if options["onnx"]:
                onnx = read_onnx(
                    options["onnx"],
                    spec=spec_from_options(options),
                    input_size=options["input_size"],
                    labels_file=options["labels_file"],
                )
                self.stdout.write(f"labels: {onnx.labels_source}")
                served = onnx_reference(onnx, name=options["name"] or onnx.path.stem)
            else:
                # Keras reports downloads on stdout.
                with contextlib.redirect_stdout(sys.stderr):
                    served = load_model(
                        name=options["name"] or settings.MODEL_NAME,
                        weights=options["weights"],
                        model_file=options["model_file"],
                        labels_file=options["labels_file"],
                        input_size=options["input_size"] or settings.MODEL_INPUT_SIZE,
                    )
            size = served.input_size
            calibration = self.calibration_images(options, size, served.fit)
            if options["synthetic_calibration"]:
                calibration = synthetic_images(size=size, fit=served.fit)
            held_out = None
            if options["holdout_dir"]:
                held_out = self.folder_images(Path(options["holdout_dir"]), size, served.fit)
            if onnx is not None:
                source = {"model": served.name, **onnx.source()}
            elif options["model_file"]:
                source = {
                    "model": served.name,
                    "weights": served.weights,
                    "model_file": str(Path(options["model_file"]).resolve()),
                    "model_file_sha256": sha256_of(Path(options["model_file"])),
                }
            else:
                source = {"model": served.name, "weights": served.weights}
            manifest = export_package(
                served=served,
                output=Path(options["output"]),
                precision=options["precision"],
                source=source,
                calibration=calibration,
                held_out=held_out,
                min_top1=options["min_top1"],
                force=options["force"],
                log=self.stdout.write,
                onnx=onnx,
                runtime=options["runtime"] if onnx else "openvino",
            )
        except (ModelLoadError, ExportError) as error:
            raise CommandError(str(error)) from None
        self.stdout.write(
            f"wrote {options['output']}: {manifest['name']} {manifest['runtime']} "
            f"{manifest['precision']}"
        )

    def calibration_images(self, options, size, fit):
        if options["calibration_dir"]:
            return self.folder_images(Path(options["calibration_dir"]), size, fit)
        if options["calibrate_from_uploads"] is not None:
            return self.upload_images(options["calibrate_from_uploads"], size, fit)
        return None

    def folder_images(self, folder: Path, size: int, fit):
        from serving.export import image_files, load_image_files

        return load_image_files(image_files(folder), size=size, name=str(folder), fit=fit)

    def upload_images(self, count: int, size: int, fit):
        from common.images import prepare_for_model
        from predictions.models import Job
        from serving.export import ExportError, ImageSet

        if count < 1:
            raise ExportError("--calibrate-from-uploads needs a positive number of jobs")
        jobs = Job.objects.filter(status=Job.Status.SUCCEEDED).order_by("-finished_at")[:count]
        images = []
        for job in jobs:
            try:
                with job.image.open("rb") as file:
                    images.append(prepare_for_model(file, size=size, fit=fit))
            except (OSError, ValueError) as error:
                self.stderr.write(f"skipped job {job.pk}: its original is unreadable ({error})")
        if not images:
            raise ExportError("no succeeded job with a readable original to calibrate on")
        return ImageSet(f"originals of the last {len(images)} succeeded jobs", images)
