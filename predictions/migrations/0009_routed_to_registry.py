"""Jobs point at the registry's versions in their new app; the table is the same, so
nothing changes in the database."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("predictions", "0008_batch_name"),
        ("registry", "0001_registry_from_workers"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="job",
                    name="routed_to",
                    field=models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="jobs",
                        to="registry.modelversion",
                        verbose_name="model version asked for",
                    ),
                ),
            ],
        ),
    ]
