"""The model registry: the models the workers serve, each in numbered versions.

A version says how a worker loads it (a model package, the built-in ResNet50, or a saved
.keras classifier with labels) and what the web needs to route to it without loading it
(input size, classes). Its requests topic and consumer group are named by
kafka_wire.config.model_route.
"""

from django.core.validators import RegexValidator
from django.db import models

from kafka_wire.config import ModelRoute, model_route

# Lower-case letters, digits and hyphens: safe in a topic name, and no "." so that
# "<requests topic>.<name>.v<version>" reads back unambiguously.
MODEL_NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"


class RegisteredModel(models.Model):
    name = models.CharField(
        max_length=63,
        unique=True,
        validators=[
            RegexValidator(MODEL_NAME_PATTERN, "lower-case letters, digits and hyphens; at most 63")
        ],
    )
    # Uploads that name no model go to the default model's latest enabled version; at most
    # one is (registry.services.set_default; MariaDB has no partial unique index for it).
    is_default = models.BooleanField("default", default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        # The registry began in the workers app: its tables kept their names.
        db_table = "workers_registeredmodel"
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class ModelVersion(models.Model):
    class Source(models.TextChoices):
        PACKAGE = "package", "model package"
        BUILTIN = "builtin", "built-in ResNet50"
        KERAS = "keras", ".keras file with labels"

    model = models.ForeignKey(RegisteredModel, on_delete=models.CASCADE, related_name="versions")
    version = models.PositiveIntegerField()
    source = models.CharField(max_length=16, choices=Source.choices)
    # The package folder or the .keras file; empty for the built-in ResNet50.
    path = models.CharField(max_length=500, blank=True)
    labels_file = models.CharField(max_length=500, blank=True)
    # For the built-in ResNet50: imagenet, random or a weights file.
    weights = models.CharField(max_length=500, blank=True)
    # A package's manifest.json's SHA-256 (the manifest holds every file's hash), so that
    # registering the same package again can be told apart from a re-export into one folder.
    package_sha256 = models.CharField("package SHA-256", max_length=64, blank=True)
    runtime = models.CharField(max_length=16, default="tensorflow")
    precision = models.CharField(max_length=8, default="fp32")
    input_size = models.PositiveIntegerField()
    classes = models.PositiveIntegerField()
    # An ONNX model's input spec (serving/onnx.py, as its package's manifest has it): how
    # Celery brings an image to input_size, and its real input and output; {} for others.
    input_spec = models.JSONField(default=dict, blank=True)
    # A disabled version takes no new uploads; what is queued for it is still served.
    enabled = models.BooleanField(default=True)
    # Seconds an upload to this version may wait for its answer when it names no deadline
    # of its own; NULL: no deadline.
    default_timeout_s = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "workers_modelversion"
        ordering = ["model__name", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["model", "version"], name="unique_model_version"),
        ]

    def __str__(self) -> str:
        return f"{self.model.name}:{self.version}"

    @property
    def route(self) -> ModelRoute:
        return model_route(self.model.name, self.version)
