"""`manage.py ensure_model_package`: the fastest model package that passes the faithfulness
gate, exported once and cached under the stack's folder; prints its path (empty: serve
TensorFlow fp32) for `make run`, and with --describe what the workers will run."""

import contextlib
import hashlib
import json
import os
import sys
from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from serving.inference import ModelLoadError
from serving.package import FASTEST_FIRST, read_manifest
from serving.runtimes.openvino import describe_choice
from workers.management.commands.run_worker import execution


def cache_root() -> Path:
    return Path(settings.BASE_DIR) / os.environ.get("STACK_DIR", ".stack") / "model-packages"


class Command(BaseCommand):
    help = __doc__

    def add_arguments(self, parser):
        parser.add_argument("--weights", default=settings.MODEL_WEIGHTS)
        parser.add_argument(
            "--describe", action="store_true", help="print what the workers run, not the path"
        )

    def handle(self, *args, **options):
        folder = cache_root() / self.source_key(options["weights"])
        choice = folder / "choice.json"
        package = self.cached(choice) if choice.is_file() else self.export(folder, options)
        if options["describe"]:
            self.stdout.write(self.description(package))
        else:
            self.stdout.write(str(package or ""))

    def description(self, package: Path | None) -> str:
        if package is None:
            return "tensorflow fp32 (no OpenVINO package passed the faithfulness gate)"
        manifest = read_manifest(package)
        top1 = manifest["faithfulness"]["top1_agreement"]
        return (
            f"openvino {manifest['precision']} ({package}, top-1 agreement with fp32 Keras "
            f"{top1:.2%}), run with the {describe_choice(execution())}"
        )

    def source_key(self, weights: str) -> str:
        """One cache folder per model the workers would load, so changing it exports again."""
        source = [settings.MODEL_NAME, weights, settings.MODEL_FILE, settings.MODEL_LABELS_FILE]
        for path in (settings.MODEL_FILE, weights):
            if path and Path(path).is_file():
                source.append(Path(path).stat().st_mtime_ns)
        digest = hashlib.sha256(json.dumps(source).encode()).hexdigest()[:12]
        return f"{settings.MODEL_NAME}-{digest}"

    def cached(self, choice: Path) -> Path | None:
        recorded = json.loads(choice.read_text())
        chosen = recorded["package"]
        if chosen is None:
            return None
        try:
            read_manifest(Path(chosen))
        except ModelLoadError as error:
            # An edited or half-deleted cache: export again rather than serve it.
            sys.stderr.write(f"cached package unusable ({error}); exporting again\n")
            return self.export(
                choice.parent, {"weights": json.loads(choice.read_text())["weights"]}
            )
        return Path(chosen)

    def export(self, folder: Path, options: dict) -> Path | None:
        folder.mkdir(parents=True, exist_ok=True)
        chosen = None
        for precision in FASTEST_FIRST:
            output = folder / precision
            sys.stderr.write(f"exporting {settings.MODEL_NAME} at {precision} ...\n")
            arguments = ["--output", str(output), "--precision", precision]
            arguments += ["--weights", options["weights"]]
            if precision == "int8":
                arguments.append("--synthetic-calibration")
            try:
                # Progress and figures go to stderr: stdout holds only the answer.
                with contextlib.redirect_stdout(sys.stderr):
                    call_command("export_model", *arguments, stdout=sys.stderr)
            except CommandError as error:
                sys.stderr.write(f"  {precision}: {error}\n")
                continue
            chosen = str(output)
            break
        choice = {"package": chosen, "weights": options["weights"]}
        (folder / "choice.json").write_text(json.dumps(choice) + "\n")
        return Path(chosen) if chosen else None
