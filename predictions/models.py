import uuid
from datetime import datetime

from django.conf import settings
from django.db import models
from django.urls import reverse
from django.utils import timezone

BATCH_NAME_MAX = 200


class Batch(models.Model):
    """A group of jobs uploaded together; the seed API calls its id the "uuid"."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="batches",
    )
    # The owner's own name for it, as given when it was made (optional).
    name = models.CharField(max_length=BATCH_NAME_MAX, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        verbose_name_plural = "batches"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return str(self.id)


def original_image_path(job: "Job", filename: str) -> str:
    # The uploader's file name never reaches the file system: only the job id does.
    return f"originals/{job.created_at:%Y/%m/%d}/{job.id}"


class Job(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued"
        PREPROCESSED = "preprocessed"
        SUBMITTED = "submitted"
        SUCCEEDED = "succeeded"
        FAILED = "failed"

    FINISHED = (Status.SUCCEEDED, Status.FAILED)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="jobs",
    )
    batch = models.ForeignKey(
        Batch, null=True, blank=True, on_delete=models.CASCADE, related_name="jobs"
    )
    seq = models.PositiveIntegerField(null=True, blank=True)
    top_k = models.PositiveSmallIntegerField(default=5)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    error = models.TextField(blank=True)
    attempts = models.PositiveSmallIntegerField(default=1)
    # The client's Idempotency-Key for the upload that made this job, and the image's place
    # in that upload: a retried upload finds its jobs instead of making new ones. NULL
    # without a key, so that the unique constraint below leaves those jobs alone (MariaDB
    # has no partial indexes; NULLs never collide).
    upload_key = models.CharField(max_length=100, null=True, blank=True)
    upload_index = models.PositiveSmallIntegerField(default=0)
    # What that upload was (this image's SHA-256, top_k, batch, seq), so that the key sent
    # again with another upload is refused rather than answered with these jobs.
    upload_fingerprint = models.JSONField(null=True, blank=True)

    image = models.FileField(upload_to=original_image_path, max_length=200)
    original_name = models.CharField(max_length=255, blank=True)
    image_format = models.CharField(max_length=16)
    image_width = models.PositiveIntegerField()
    image_height = models.PositiveIntegerField()
    image_bytes = models.PositiveIntegerField()

    # The registered model version the upload chose (or the default's); NULL for the
    # unregistered path. PROTECT: a version with jobs is retired by disabling it.
    routed_to = models.ForeignKey(
        "registry.ModelVersion",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="jobs",
        verbose_name="model version asked for",
    )
    model_name = models.CharField(max_length=100, blank=True)
    # The registered version that answered, as the worker's result said.
    model_version = models.PositiveIntegerField(null=True, blank=True)
    model_weights = models.CharField(max_length=255, blank=True)
    # What ran the model and at which precision, as the worker's result said.
    runtime = models.CharField(max_length=16, blank=True)
    precision = models.CharField(max_length=8, blank=True)
    worker = models.CharField(max_length=255, blank=True)
    inference_batch_size = models.PositiveSmallIntegerField(null=True, blank=True)
    inference_ms = models.FloatField(null=True, blank=True)
    preprocess_ms = models.FloatField(null=True, blank=True)

    created_at = models.DateTimeField(default=timezone.now, editable=False)
    attempt_started_at = models.DateTimeField(default=timezone.now, editable=False)
    # When the dispatcher let this attempt into preprocessing; NULL while it waits its turn
    # in the database (services.dispatch_jobs, docs/scheduling.md).
    admitted_at = models.DateTimeField(null=True, blank=True, editable=False)
    preprocessed_at = models.DateTimeField(null=True, blank=True)
    submitted_at = models.DateTimeField(null=True, blank=True)
    inferred_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["batch", "seq"], name="unique_seq_per_batch"),
            models.UniqueConstraint(
                fields=["owner", "upload_key", "upload_index"], name="unique_upload_key_per_owner"
            ),
        ]
        indexes = [
            models.Index(fields=["owner", "-created_at"]),
            models.Index(fields=["status", "attempt_started_at"]),
            models.Index(fields=["-created_at"]),
            # The admin's model filter lists the distinct model names.
            models.Index(fields=["model_name"]),
            # The dispatcher's reads: jobs in flight per model version, the waiting ones per
            # owner in their order, one's place among them (predictions/selectors.py).
            models.Index(
                fields=["status", "routed_to", "admitted_at", "owner", "created_at"],
                name="job_dispatch_order",
            ),
            # A model version's recent completion rate, for the estimate of a queued job.
            models.Index(fields=["routed_to", "finished_at"], name="job_finished_per_model"),
        ]

    def __str__(self) -> str:
        return str(self.id)

    def get_absolute_url(self) -> str:
        return reverse("job-detail", kwargs={"pk": self.pk})

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED

    @property
    def random_weights(self) -> bool:
        """Its predictions came from an untrained model: they show the pipeline working,
        not what the image shows."""
        return self.model_weights == "random"

    @property
    def has_thumbnail(self) -> bool:
        """A thumbnail can be shown: its original is kept, and was decoded at least once
        (a job that failed before preprocessing was never an image that could be)."""
        return bool(self.image.name) and not (
            self.status == self.Status.FAILED and self.preprocessed_at is None
        )

    def stages(self) -> list[tuple[str, datetime | None, float | None]]:
        """Each stage of this attempt: its name, when it ended, and the milliseconds since
        the stage before it ended (None when either is not known): the page and the admin
        show these."""
        moments = [
            ("uploaded", self.created_at),
            ("attempt started", self.attempt_started_at),
            ("admitted", self.admitted_at),
            ("preprocessed", self.preprocessed_at),
            ("submitted to Kafka", self.submitted_at),
            ("inferred", self.inferred_at),
            ("stored", self.finished_at),
        ]
        rows = []
        for index, (name, moment) in enumerate(moments):
            before = moments[index - 1][1] if index else None
            since = None if None in (moment, before) else (moment - before).total_seconds() * 1000
            rows.append((name, moment, since))
        return rows

    @property
    def total_ms(self) -> float | None:
        """From the start of this attempt to its stored result: a retried job's earlier
        attempts are not counted (the one definition the API and the admin show)."""
        if self.finished_at is None:
            return None
        return (self.finished_at - self.attempt_started_at).total_seconds() * 1000


class Prediction(models.Model):
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="predictions")
    rank = models.PositiveSmallIntegerField()
    class_id = models.PositiveIntegerField()
    label = models.CharField(max_length=255)
    score = models.FloatField()

    class Meta:
        ordering = ["job", "rank"]
        constraints = [
            models.UniqueConstraint(fields=["job", "rank"], name="unique_rank_per_job"),
        ]
        indexes = [models.Index(fields=["label"])]

    def __str__(self) -> str:
        return f"{self.label} ({self.score:.3f})"

    @property
    def short_label(self) -> str:
        """The first synonym, as the seed system reported labels."""
        return self.label.split(",")[0].strip()
