"""`manage.py models register|list|enable|disable|set-default`: the model registry."""

import hashlib
import json
from pathlib import Path

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from registry import services
from registry.models import ModelVersion, RegisteredModel
from registry.selectors import UnknownModel, parse_reference
from serving.inference import PRECISIONS, RUNTIMES, ModelLoadError, read_labels
from serving.onnx import add_input_spec_arguments, read_onnx, spec_from_options

# The built-in ResNet50's input and classes (ImageNet).
RESNET50_INPUT_SIZE = 224
IMAGENET_CLASSES = 1000


class Command(BaseCommand):
    help = "Register model versions, list them, enable or disable them, set the default model."

    def add_arguments(self, parser):
        actions = parser.add_subparsers(dest="action", required=True)
        register = actions.add_parser(
            "register", help="add the next version of NAME", description=REGISTER_HELP
        )
        register.add_argument("name")
        source = register.add_mutually_exclusive_group(required=True)
        source.add_argument("--package", help="a model package folder (manage.py export_model)")
        source.add_argument("--builtin", choices=["resnet50"], help="the built-in ResNet50")
        source.add_argument("--keras", help="a saved .keras classifier (needs --labels)")
        source.add_argument(
            "--onnx",
            help="an ONNX classifier (needs --input-preset): exported to an fp32 package "
            "(--output) and registered as it",
        )
        register.add_argument(
            "--labels",
            default="",
            help="one class per line; for --onnx, else from its metadata, else class_0..N-1",
        )
        register.add_argument(
            "--input-size",
            type=int,
            default=None,
            help=f"for --keras (default {RESNET50_INPUT_SIZE}); for --onnx, needed only when "
            "the model's spatial size is dynamic",
        )
        register.add_argument(
            "--output",
            help="for --onnx: the package folder to write (default: beside the ONNX file, "
            "named after it, its sha256 and the runtime)",
        )
        add_input_spec_arguments(register)
        register.add_argument(
            "--weights", default="imagenet", help="for --builtin: imagenet, random or a file"
        )
        register.add_argument(
            "--runtime",
            choices=(*RUNTIMES, "onnxruntime"),
            help="for --keras and --builtin: tensorflow (default) or openvino; for --onnx: "
            "openvino (default) or onnxruntime",
        )
        register.add_argument("--precision", choices=PRECISIONS, default="fp32")
        register.add_argument(
            "--default-timeout-s",
            type=int,
            default=None,
            help="seconds an upload may wait for its answer when it names no deadline",
        )
        register.add_argument(
            "--if-new",
            action="store_true",
            help="add no version when NAME's latest is this same one (for a package: the "
            "same manifest hash)",
        )
        register.add_argument(
            "--default", action="store_true", help="also make NAME the default model"
        )
        actions.add_parser("list", help="every version, newest first per model")
        for action in ("enable", "disable"):
            toggle = actions.add_parser(action, help=f"{action} NAME (every version) or NAME:N")
            toggle.add_argument("reference", metavar="NAME[:VERSION]")
        default = actions.add_parser("set-default", help="uploads naming no model go to NAME")
        default.add_argument("name")

    def handle(self, *args, action: str, **options):
        try:
            if action == "register":
                self.register(options)
            elif action == "list":
                self.list()
            elif action in ("enable", "disable"):
                name, version = parse_reference(options["reference"])
                changed = services.set_enabled(
                    name=name, version=version, enabled=action == "enable"
                )
                self.stdout.write(f"{options['reference']}: {action}d ({changed} changed)")
            else:
                services.set_default(name=options["name"])
                self.stdout.write(f"{options['name']} is the default model")
        except (UnknownModel, ModelLoadError, ValueError) as error:
            raise CommandError(str(error)) from None

    def register(self, options: dict) -> None:
        name = options["name"]
        runtime = options["runtime"]
        # Before any export: a refused name must cost nothing and write nothing.
        try:
            RegisteredModel._meta.get_field("name").run_validators(name)
        except ValidationError as error:
            raise CommandError(f"model name {name!r}: {' '.join(error.messages)}") from None
        if options["package"]:
            fields = package_fields(Path(options["package"]))
            self.warn_if_forced(Path(options["package"]))
        elif options["onnx"]:
            fields = package_fields(self.export_onnx(name, options))
        elif runtime == "onnxruntime":
            raise CommandError("--runtime onnxruntime runs an ONNX model (--onnx) only")
        elif options["keras"]:
            if not options["labels"]:
                raise CommandError("--keras needs --labels, a file with one class per line")
            model_file = Path(options["keras"]).resolve()
            if not model_file.is_file():
                raise CommandError(f"no such file: {model_file}")
            labels = Path(options["labels"]).resolve()
            fields = dict(
                source=ModelVersion.Source.KERAS,
                path=str(model_file),
                labels_file=str(labels),
                runtime=runtime or "tensorflow",
                precision=options["precision"],
                input_size=options["input_size"] or RESNET50_INPUT_SIZE,
                classes=len(read_labels(labels)),
            )
        else:
            fields = dict(
                source=ModelVersion.Source.BUILTIN,
                weights=options["weights"],
                runtime=runtime or "tensorflow",
                precision=options["precision"],
                input_size=RESNET50_INPUT_SIZE,
                classes=IMAGENET_CLASSES,
            )
        if (timeout_s := options["default_timeout_s"]) is not None:
            if timeout_s <= 0:
                raise CommandError(f"--default-timeout-s must be positive, got {timeout_s}")
            fields["default_timeout_s"] = timeout_s
        try:
            if options["if_new"]:
                version, new = services.register_if_new(name=name, **fields)
            else:
                version, new = services.register_version(name=name, **fields), True
        except ValidationError as error:
            raise CommandError(f"model name {name!r}: {' '.join(error.messages)}") from None
        if options["default"]:
            version.model = services.set_default(name=name)
        route = version.route
        self.stdout.write(
            f"{'registered' if new else 'already registered:'} {version} "
            f"({version.get_source_display()}, {version.runtime} {version.precision}, input "
            f"{version.input_size}, {version.classes} classes"
            f"{', the default' if version.model.is_default else ''}); "
            f"topic {route.requests_topic}, group {route.worker_group}"
        )

    def export_onnx(self, name: str, options: dict) -> Path:
        """The fp32 package of the ONNX model, exported for its runtime; nothing is
        registered when the model or its options are refused."""
        from serving.export import export_package, onnx_reference

        if options["precision"] != "fp32":
            raise CommandError(
                "--onnx registers an fp32 package: for int8, make one with `manage.py "
                "export_model --onnx ... --precision int8` and register it with --package"
            )
        onnx = read_onnx(
            options["onnx"],
            spec=spec_from_options(options),
            input_size=options["input_size"],
            labels_file=options["labels"],
        )
        self.stdout.write(f"labels: {onnx.labels_source}")
        runtime = options["runtime"] or "openvino"
        output = Path(options["output"] or default_output(onnx, name, runtime)).resolve()
        if serving := ModelVersion.objects.filter(path=str(output)).first():
            raise CommandError(f"{output} is the package {serving} serves: choose another --output")
        export_package(
            served=onnx_reference(onnx, name=name),
            output=output,
            precision="fp32",
            source={"model": name, **onnx.source()},
            calibration=None,
            held_out=None,
            onnx=onnx,
            runtime=runtime,
            log=self.stdout.write,
        )
        self.stdout.write(f"wrote {output}")
        return output

    def warn_if_forced(self, folder: Path) -> None:
        """Say so when the package failed its faithfulness gate and was written anyway."""
        from serving.package import read_manifest

        figures = read_manifest(folder.resolve()).get("faithfulness") or {}
        if figures.get("forced"):
            self.stderr.write(
                f"warning: this package failed its faithfulness gate (top-1 agreement "
                f"{figures['top1_agreement']:.2%} with {figures['reference']}, under "
                f"{figures['min_top1_agreement']:.2%}) and was written with --force"
            )

    def list(self) -> None:
        header = ("model", "default", "enabled", "source", "runtime", "input", "classes", "topic")
        rows = [header]
        for version in ModelVersion.objects.select_related("model"):
            rows.append(
                (
                    str(version),
                    "yes" if version.model.is_default else "",
                    "yes" if version.enabled else "no",
                    version.source,
                    f"{version.runtime} {version.precision}",
                    str(version.input_size),
                    str(version.classes),
                    version.route.requests_topic,
                )
            )
        if len(rows) == 1:
            self.stdout.write("no models registered: manage.py models register NAME ...")
            return
        widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
        for row in rows:
            self.stdout.write(
                "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
            )


def default_output(onnx, name: str, runtime: str) -> Path:
    """Beside the ONNX file, named after the model and a digest of all the package is made
    of: registering the file again with another name, spec or labels writes a new folder
    rather than replacing the one a version serves; the same again, the same folder."""
    made_of = json.dumps(
        {
            "name": name,
            "onnx": onnx.sha256,
            "spec": onnx.describe(),
            "labels": onnx.labels,
            "runtime": runtime,
        },
        sort_keys=True,
    )
    digest = hashlib.sha256(made_of.encode()).hexdigest()[:12]
    return onnx.path.with_name(f"{name}-{digest}-{runtime}-fp32")


def package_fields(folder: Path) -> dict:
    from serving.inference import sha256_of
    from serving.package import LABELS, MANIFEST, read_manifest

    folder = folder.resolve()
    manifest = read_manifest(folder)
    return dict(
        source=ModelVersion.Source.PACKAGE,
        path=str(folder),
        package_sha256=sha256_of(folder / MANIFEST),
        runtime=manifest.get("runtime", "openvino"),
        precision=manifest["precision"],
        input_size=int(manifest["input_size"]),
        input_spec=manifest.get("input_spec", {}),
        classes=len(read_labels(folder / LABELS)),
    )


REGISTER_HELP = (
    "Add version N+1 of NAME from a model package (--package), the built-in ResNet50 "
    "(--builtin resnet50 --weights ...), a .keras file with labels (--keras --labels "
    "--input-size) or an ONNX classifier (--onnx --input-preset ..., exported to an fp32 "
    "package first). The first model registered becomes the default."
)
