from django.conf import settings
from django.db import migrations, models


def admit_unfinished_jobs(apps, schema_editor):
    # Jobs already on their way (a preprocessing task in Redis, a request in Kafka) were
    # admitted by the code before the dispatcher: the sweep times them from their attempt's start.
    Job = apps.get_model("predictions", "Job")
    Job.objects.exclude(status__in=["succeeded", "failed"]).update(
        admitted_at=models.F("attempt_started_at")
    )


class Migration(migrations.Migration):
    dependencies = [
        ("predictions", "0006_job_model_version"),
        ("workers", "0002_version_package_sha256"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(
            model_name="job",
            name="admitted_at",
            field=models.DateTimeField(blank=True, editable=False, null=True),
        ),
        migrations.RunPython(admit_unfinished_jobs, migrations.RunPython.noop),
        migrations.AddIndex(
            model_name="job",
            index=models.Index(
                fields=["status", "routed_to", "admitted_at", "owner", "created_at"],
                name="job_dispatch_order",
            ),
        ),
        migrations.AddIndex(
            model_name="job",
            index=models.Index(fields=["routed_to", "finished_at"], name="job_finished_per_model"),
        ),
    ]
