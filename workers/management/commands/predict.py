"""`manage.py predict PATH...`: classify image files locally, with no stack running."""

import json
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from PIL import UnidentifiedImageError

from common.images import prepare_for_model
from common.limits import TOP_K_DEFAULT, top_k_problem
from serving.inference import PRECISIONS, RUNTIMES, ModelLoadError
from serving.loading import load_served


class Command(BaseCommand):
    help = (
        "Classify image files as a worker would (the pipeline's preprocessing, the same "
        "model loading), one line per file, or JSON lines with --json."
    )

    def add_arguments(self, parser):
        parser.add_argument("paths", nargs="+", help="image files to classify")
        parser.add_argument(
            "--model-package",
            default=settings.MODEL_PACKAGE,
            help="a package folder from export_model, OpenVINO or ONNX Runtime (default: "
            "MODEL_PACKAGE, else Keras)",
        )
        parser.add_argument(
            "--runtime",
            choices=RUNTIMES,
            default=settings.MODEL_RUNTIME,
            help="for a Keras model (default: %(default)s, MODEL_RUNTIME)",
        )
        parser.add_argument(
            "--precision",
            choices=PRECISIONS,
            default=settings.MODEL_PRECISION,
            help="for a Keras model run by OpenVINO (default: %(default)s, MODEL_PRECISION)",
        )
        parser.add_argument(
            "--bf16-fallback",
            action="store_true",
            default=settings.MODEL_BF16_FALLBACK,
            help="run bf16 as fp32 on a CPU without bf16 instead of refusing",
        )
        parser.add_argument(
            "--top-k",
            type=int,
            default=TOP_K_DEFAULT,
            help="labels per image (default: %(default)s)",
        )
        parser.add_argument("--json", action="store_true", help="one JSON object per line")

    def handle(self, *args, **options):
        if problem := top_k_problem(options["top_k"], name="--top-k"):
            raise CommandError(problem)
        try:
            served = load_served(
                package=options["model_package"],
                runtime=options["runtime"],
                precision=options["precision"],
                bf16_fallback=options["bf16_fallback"],
                name=settings.MODEL_NAME,
                weights=settings.MODEL_WEIGHTS,
                model_file=settings.MODEL_FILE,
                labels_file=settings.MODEL_LABELS_FILE,
                input_size=settings.MODEL_INPUT_SIZE,
            )
        except ModelLoadError as error:
            raise CommandError(str(error)) from None
        if served.weights == "random":
            self.stderr.write(
                "warning: the model has random weights (no trained weights could be loaded): "
                "its labels are not a real classification"
            )
        failed = 0
        for path in options["paths"]:
            try:
                with open(path, "rb") as file:
                    image = prepare_for_model(file, size=served.input_size, fit=served.fit)
            except UnidentifiedImageError:
                failed += 1
                self.stderr.write(f"{path}: not an image in a format that can be read")
                continue
            except (OSError, ValueError, SyntaxError) as error:
                failed += 1
                self.stderr.write(f"{path}: not an image that can be read: {error}")
                continue
            predictions = served.predict([image], [options["top_k"]])[0]
            if options["json"]:
                self.stdout.write(
                    json.dumps(
                        {
                            "file": path,
                            "predictions": [
                                {"class_id": p.class_id, "label": p.label, "score": p.score}
                                for p in predictions
                            ],
                        }
                    )
                )
            else:
                ranked = ", ".join(f"{p.label} {p.score:.3f}" for p in predictions)
                self.stdout.write(f"{Path(path).name}: {ranked}")
        if failed:
            raise CommandError(f"{failed} of {len(options['paths'])} files could not be read")
