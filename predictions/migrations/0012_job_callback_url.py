from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("predictions", "0011_job_cancel_and_deadline"),
    ]

    operations = [
        migrations.AddField(
            model_name="job",
            name="callback_url",
            field=models.CharField(blank=True, default="", max_length=500),
        ),
    ]
