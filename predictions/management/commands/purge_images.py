from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from predictions import services


class Command(BaseCommand):
    help = (
        "Delete the stored originals of jobs finished more than DAYS ago; jobs and "
        "predictions stay (Celery beat runs this daily with IMAGE_RETENTION_DAYS)."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--older-than",
            type=int,
            default=settings.IMAGE_RETENTION_DAYS,
            metavar="DAYS",
            help="age in days (default IMAGE_RETENTION_DAYS); 0 keeps them forever",
        )

    def handle(self, *args, older_than: int, **options):
        if older_than < 0:
            raise CommandError(f"--older-than must be 0 or more days, got {older_than}")
        if older_than == 0:
            self.stdout.write("0 days: originals are kept forever, nothing deleted")
            return
        purged = services.purge_old_images(older_than_days=older_than)
        self.stdout.write(f"deleted {purged} stored originals older than {older_than} days")
