from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = (
        "Everything the app needs before its processes start, each step idempotent: the "
        "database schema, the static files, the model it serves (with --model), the Kafka "
        "topics and the demo user (whose name, password and API token it prints). Run by "
        "`make run`, the compose file's migrate service, the Kubernetes migrate Job and the "
        "fault suite."
    )

    def add_arguments(self, parser):
        parser.add_argument("--username", default="demo", help="the demo user (default: demo)")
        parser.add_argument(
            "--no-demo-user",
            action="store_true",
            help="skip the demo user (a production deployment's migrate job)",
        )
        parser.add_argument(
            "--password-file",
            type=Path,
            default=None,
            help="where the demo password is kept (default: <STACK_DIR>/demo-password)",
        )
        parser.add_argument(
            "--model",
            metavar="NAME",
            help="register what the workers serve as NAME (a new version only when it "
            "changed) and make it the default model, before its topics are created",
        )
        parser.add_argument(
            "--package",
            default=settings.MODEL_PACKAGE,
            help="for --model: this model package; without one, the built-in ResNet50",
        )
        parser.add_argument(
            "--weights",
            default=settings.MODEL_WEIGHTS,
            help="for --model without a package: the built-in ResNet50's weights",
        )

    def handle(
        self,
        *args,
        username: str,
        password_file: Path | None,
        no_demo_user: bool,
        model: str | None,
        package: str,
        weights: str,
        **options,
    ) -> None:
        call_command("migrate", interactive=False, verbosity=0, stdout=self.stdout)
        call_command("collectstatic", interactive=False, verbosity=0, stdout=self.stdout)
        if model:
            source = ["--package", package] if package else ["--builtin", "resnet50"]
            if not package:
                source += ["--weights", weights, "--runtime", settings.MODEL_RUNTIME]
                source += ["--precision", settings.MODEL_PRECISION]
            register = ["register", model, *source, "--if-new", "--default"]
            call_command("models", *register, stdout=self.stdout)
        call_command("kafka_topics", "create", stdout=self.stdout)
        if no_demo_user:
            return
        demo = ["--username", username]
        if password_file:
            demo += ["--password-file", str(password_file)]
        call_command("ensure_demo_user", *demo, stdout=self.stdout)
