from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("registry", "0001_registry_from_workers"),
    ]

    operations = [
        migrations.AddField(
            model_name="modelversion",
            name="input_spec",
            field=models.JSONField(blank=True, default=dict),
        ),
    ]
