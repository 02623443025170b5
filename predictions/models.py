import uuid
from datetime import datetime

from django.conf import settings
from django.db import models
from django.db.models import F
from django.urls import reverse
from django.utils import timezone

from common import lanes
from common.callbacks import CALLBACK_URL_MAX
from common.limits import TOP_K_DEFAULT

BATCH_NAME_MAX = 200


class Priority(models.TextChoices):
    """The lane a job's request waits in (common/lanes.py, docs/scheduling.md)."""

    HIGH = lanes.HIGH
    NORMAL = lanes.NORMAL
    LOW = lanes.LOW


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
    # The priority of the uploads into it that name none.
    priority = models.CharField(max_length=8, choices=Priority.choices, default=Priority.NORMAL)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        verbose_name_plural = "batches"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return str(self.id)


class JobFinished(ValueError):
    """A change asked of a job that only an unfinished job takes."""


def original_image_path(job: "Job", filename: str) -> str:
    # The uploader's file name never reaches the file system: only the job id does.
    return f"originals/{job.created_at:%Y/%m/%d}/{job.id}"


class JobQuerySet(models.QuerySet):
    def start_new_attempt(self, *, now: datetime, **changes) -> int:
        """Put these jobs back to wait for the dispatcher as a new attempt, with nothing of
        the last one left (its stage times, result, error): what the sweep does to a stuck
        attempt and retry and re-run to a finished one. changes: other fields to set (a
        re-run's top_k). One UPDATE; returns how many jobs it changed."""
        return self.update(
            status=Job.Status.QUEUED,
            attempts=F("attempts") + 1,
            attempt_started_at=now,
            error="",
            admitted_at=None,
            preprocessed_at=None,
            submitted_at=None,
            inferred_at=None,
            finished_at=None,
            preprocess_ms=None,
            inference_ms=None,
            inference_batch_size=None,
            model_name="",
            model_version=None,
            model_weights="",
            runtime="",
            precision="",
            worker="",
            **changes,
        )


def _ms_between(start: datetime | None, end: datetime | None) -> float | None:
    return None if start is None or end is None else (end - start).total_seconds() * 1000


class Job(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued"
        PREPROCESSED = "preprocessed"
        SUBMITTED = "submitted"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELLED = "cancelled"
        EXPIRED = "expired"

    FINISHED = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED, Status.EXPIRED)

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
    top_k = models.PositiveSmallIntegerField(default=TOP_K_DEFAULT)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    error = models.TextField(blank=True)
    attempts = models.PositiveSmallIntegerField(default=1)
    # The X-Request-ID of the upload (common/request_ids.py), carried to the worker and the
    # bridge in a Kafka header so that their log lines about the job can be found by it.
    request_id = models.CharField(max_length=64, blank=True, default="")
    # The W3C traceparent of the upload's span (common/tracing.py): every later hop's spans
    # join the job's trace from it; "" while tracing is off.
    trace_parent = models.CharField(max_length=64, blank=True, default="")
    # Where the finished job is POSTed (webhooks/, docs/webhooks.md); "" for nowhere.
    # Checked at upload (common/callbacks.py) and again before each attempt.
    callback_url = models.CharField(max_length=CALLBACK_URL_MAX, blank=True, default="")
    # Its lane: the dispatcher admits and the workers read higher lanes first.
    priority = models.CharField(max_length=8, choices=Priority.choices, default=Priority.NORMAL)
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
    # After this the answer is of no use to the uploader: the job is not inferred but ends
    # expired (preprocessing and the worker both check). NULL: no deadline.
    deadline = models.DateTimeField(null=True, blank=True)
    attempt_started_at = models.DateTimeField(default=timezone.now, editable=False)
    # When the dispatcher let this attempt into preprocessing; NULL while it waits its turn
    # in the database (pipeline.dispatch_jobs, docs/scheduling.md).
    admitted_at = models.DateTimeField(null=True, blank=True, editable=False)
    preprocessed_at = models.DateTimeField(null=True, blank=True)
    submitted_at = models.DateTimeField(null=True, blank=True)
    inferred_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    objects = JobQuerySet.as_manager()

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
                fields=["status", "routed_to", "admitted_at", "priority", "owner", "created_at"],
                name="job_dispatch_order",
            ),
            # A model version's recent completion rate, for the estimate of a queued job.
            models.Index(fields=["routed_to", "finished_at"], name="job_finished_per_model"),
        ]

    def __str__(self) -> str:
        return str(self.id)

    def get_absolute_url(self) -> str:
        return reverse("job-detail", kwargs={"pk": self.pk})

    def cancel(self, *, now: datetime) -> None:
        """Mark this unfinished job cancelled; JobFinished when it has already finished: its
        answer (or its failure) is kept, never overwritten by a cancellation."""
        if self.is_finished:
            raise JobFinished(f"only an unfinished job can be cancelled; this one is {self.status}")
        self.status = self.Status.CANCELLED
        self.error = "cancelled"
        self.finished_at = now

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
            rows.append((name, moment, _ms_between(before, moment)))
        return rows

    def timings(self) -> dict:
        """The API's timings: when each stage of this attempt ended, and the milliseconds
        between them (None while not known)."""
        return {
            "uploaded_at": self.created_at,
            "preprocessed_at": self.preprocessed_at,
            "submitted_at": self.submitted_at,
            "inferred_at": self.inferred_at,
            "stored_at": self.finished_at,
            "preprocess_ms": self.preprocess_ms,
            "inference_ms": self.inference_ms,
            "queue_to_preprocessed_ms": _ms_between(self.attempt_started_at, self.preprocessed_at),
            "preprocessed_to_submitted_ms": _ms_between(self.preprocessed_at, self.submitted_at),
            "submitted_to_inferred_ms": _ms_between(self.submitted_at, self.inferred_at),
            "inferred_to_stored_ms": _ms_between(self.inferred_at, self.finished_at),
            "total_ms": self.total_ms,
        }

    @property
    def total_ms(self) -> float | None:
        """From the start of this attempt to its stored result: the API's total_ms and the
        admin's "total ms". Not from the upload: a retried job's earlier attempts, and the
        time before someone asked for the retry, are not the pipeline's (README, the API's
        GET /api/jobs/{id}/)."""
        return _ms_between(self.attempt_started_at, self.finished_at)


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
