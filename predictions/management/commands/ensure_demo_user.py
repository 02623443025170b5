from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from rest_framework.authtoken.models import Token


class Command(BaseCommand):
    help = "Create the demo user (once) and print its API token."

    def add_arguments(self, parser):
        parser.add_argument("--username", default="demo")
        parser.add_argument("--password", default="demo-password")

    def handle(self, *args, username, password, **options):
        user, created = get_user_model().objects.get_or_create(username=username)
        if created:
            user.set_password(password)
            user.is_staff = True
            user.is_superuser = True
            user.save()
        token, _ = Token.objects.get_or_create(user=user)
        state = "created" if created else "exists"
        self.stdout.write(
            f"demo user {username!r} ({state}; password {password!r} if created here), "
            f"API token: {token.key}"
        )
