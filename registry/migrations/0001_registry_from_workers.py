"""The model registry moves from the workers app to an app of its own, keeping its tables
(workers_registeredmodel, workers_modelversion) and the permissions staff hold on them: the
models are created in Django's state only, and their content types change label."""

import django.core.validators
import django.db.models.deletion
from django.db import migrations, models


def relabel_content_types(apps, schema_editor, old="workers", new="registry"):
    ContentType = apps.get_model("contenttypes", "ContentType")
    names = ["registeredmodel", "modelversion"]
    ContentType.objects.filter(app_label=old, model__in=names).update(app_label=new)


def relabel_content_types_back(apps, schema_editor):
    relabel_content_types(apps, schema_editor, old="registry", new="workers")


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        ("workers", "0002_version_package_sha256"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="RegisteredModel",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True,
                                primary_key=True,
                                serialize=False,
                                verbose_name="ID",
                            ),
                        ),
                        (
                            "name",
                            models.CharField(
                                max_length=63,
                                unique=True,
                                validators=[
                                    django.core.validators.RegexValidator(
                                        "^[a-z0-9][a-z0-9-]{0,62}$",
                                        "lower-case letters, digits and hyphens; at most 63",
                                    )
                                ],
                            ),
                        ),
                        ("is_default", models.BooleanField(default=False, verbose_name="default")),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                    ],
                    options={
                        "db_table": "workers_registeredmodel",
                        "ordering": ["name"],
                    },
                ),
                migrations.CreateModel(
                    name="ModelVersion",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True,
                                primary_key=True,
                                serialize=False,
                                verbose_name="ID",
                            ),
                        ),
                        ("version", models.PositiveIntegerField()),
                        (
                            "source",
                            models.CharField(
                                choices=[
                                    ("package", "model package"),
                                    ("builtin", "built-in ResNet50"),
                                    ("keras", ".keras file with labels"),
                                ],
                                max_length=16,
                            ),
                        ),
                        ("path", models.CharField(blank=True, max_length=500)),
                        ("labels_file", models.CharField(blank=True, max_length=500)),
                        ("weights", models.CharField(blank=True, max_length=500)),
                        (
                            "package_sha256",
                            models.CharField(
                                blank=True, max_length=64, verbose_name="package SHA-256"
                            ),
                        ),
                        ("runtime", models.CharField(default="tensorflow", max_length=16)),
                        ("precision", models.CharField(default="fp32", max_length=8)),
                        ("input_size", models.PositiveIntegerField()),
                        ("classes", models.PositiveIntegerField()),
                        ("enabled", models.BooleanField(default=True)),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                        (
                            "model",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="versions",
                                to="registry.registeredmodel",
                            ),
                        ),
                    ],
                    options={
                        "db_table": "workers_modelversion",
                        "ordering": ["model__name", "-version"],
                        "constraints": [
                            models.UniqueConstraint(
                                fields=("model", "version"), name="unique_model_version"
                            )
                        ],
                    },
                ),
            ],
        ),
        migrations.RunPython(relabel_content_types, relabel_content_types_back),
    ]
