from django.core.management.base import BaseCommand

from predictions import pipeline


class Command(BaseCommand):
    help = (
        "Retry or fail jobs that have not finished within JOB_TIMEOUT_SECONDS "
        "(Celery beat runs the same sweep every SWEEP_INTERVAL_SECONDS)."
    )

    def handle(self, *args, **options):
        retried, failed = pipeline.sweep_stuck_jobs()
        self.stdout.write(f"retried {retried} stuck jobs, failed {failed}")
