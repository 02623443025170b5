"""The registry's models left for the registry app; their tables stay, now its own."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("predictions", "0009_routed_to_registry"),
        ("workers", "0002_version_package_sha256"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.DeleteModel(
                    name="ModelVersion",
                ),
                migrations.DeleteModel(
                    name="RegisteredModel",
                ),
            ],
        ),
    ]
