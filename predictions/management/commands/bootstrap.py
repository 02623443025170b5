from pathlib import Path

from django.core.management import call_command
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = (
        "Everything the app needs before its processes start, each step idempotent: the "
        "database schema, the static files, the Kafka topics and the demo user (whose name, "
        "password and API token it prints). Run by `make run`, the compose file's migrate "
        "service and the fault suite."
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

    def handle(
        self, *args, username: str, password_file: Path | None, no_demo_user: bool, **options
    ) -> None:
        call_command("migrate", interactive=False, verbosity=0, stdout=self.stdout)
        call_command("collectstatic", interactive=False, verbosity=0, stdout=self.stdout)
        call_command("kafka_topics", "create", stdout=self.stdout)
        if no_demo_user:
            return
        demo = ["--username", username]
        if password_file:
            demo += ["--password-file", str(password_file)]
        call_command("ensure_demo_user", *demo, stdout=self.stdout)
