from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("predictions", "0012_job_callback_url"),
        ("registry", "0003_modelversion_default_timeout_s"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.RemoveIndex(
            model_name="job",
            name="job_dispatch_order",
        ),
        migrations.AddField(
            model_name="batch",
            name="priority",
            field=models.CharField(
                choices=[("high", "High"), ("normal", "Normal"), ("low", "Low")],
                default="normal",
                max_length=8,
            ),
        ),
        migrations.AddField(
            model_name="job",
            name="priority",
            field=models.CharField(
                choices=[("high", "High"), ("normal", "Normal"), ("low", "Low")],
                default="normal",
                max_length=8,
            ),
        ),
        migrations.AddIndex(
            model_name="job",
            index=models.Index(
                fields=["status", "routed_to", "admitted_at", "priority", "owner", "created_at"],
                name="job_dispatch_order",
            ),
        ),
    ]
