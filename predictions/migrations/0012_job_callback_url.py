from django.db import migrations, models


class Migration(migrations.Migration):
    # 0011 comes from the cancel/deadlines branch; this is chained after it when they merge.
    dependencies = [
        ("predictions", "0010_job_request_id_and_trace_parent"),
    ]

    operations = [
        migrations.AddField(
            model_name="job",
            name="callback_url",
            field=models.CharField(blank=True, default="", max_length=500),
        ),
    ]
