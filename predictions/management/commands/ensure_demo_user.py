import os
import secrets
from pathlib import Path

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.management.base import BaseCommand
from rest_framework.authtoken.models import Token

from stack.common import STATE

# Beside the stack's other state (.stack/ or STACK_DIR), which git ignores.
DEFAULT_PASSWORD_FILE = STATE / "demo-password"


def stored_password(path: Path) -> str:
    """The password kept in `path`, generated and written (mode 0600) on the first call."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(secrets.token_urlsafe(18) + "\n")
    return path.read_text().strip()


class Command(BaseCommand):
    help = (
        "Create or update the demo user: staff with the permissions to manage jobs and "
        "batches in the admin, not a superuser, with a password generated on the first run "
        "and kept in the stack's folder. Prints the user, its password and its API token."
    )

    def add_arguments(self, parser):
        parser.add_argument("--username", default="demo")
        parser.add_argument(
            "--password-file",
            type=Path,
            default=None,
            help="where the password is kept (default: <STACK_DIR>/demo-password)",
        )

    def handle(self, *args, username: str, password_file: Path | None, **options) -> None:
        password = stored_password(password_file or DEFAULT_PASSWORD_FILE)
        user, created = get_user_model().objects.get_or_create(username=username)
        # Also applied to an existing user, so a demo superuser from an older version with a
        # published password loses both.
        user.set_password(password)
        user.is_staff = True
        user.is_superuser = False
        user.save()
        # Jobs and batches, and viewing and changing (enabling, the default) the model registry.
        user.user_permissions.set(
            Permission.objects.filter(content_type__app_label="predictions")
            | Permission.objects.filter(
                content_type__app_label="registry", codename__regex=r"^(view|change)_"
            )
        )
        token, _ = Token.objects.get_or_create(user=user)
        self.stdout.write(
            f"demo user {username!r} ({'created' if created else 'updated'}), "
            f"password: {password}, API token: {token.key}"
        )
