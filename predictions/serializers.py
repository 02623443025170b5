from datetime import UTC, datetime

from django.urls import reverse
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from common.limits import (
    PAGE_SIZE_MAX,
    TOP_K_DEFAULT,
    TOP_K_MAX,
    TOP_K_MIN,
    WAIT_MAX_SECONDS,
)
from predictions import selectors
from predictions.models import BATCH_NAME_MAX, Batch, Job, Prediction


class PredictionSerializer(serializers.ModelSerializer):
    class Meta:
        model = Prediction
        fields = ["class_id", "label", "score"]


class JobQueueSerializer(serializers.Serializer):
    """Where a job waiting for admission stands; for the schema."""

    position = serializers.IntegerField(
        help_text="jobs of its model version the dispatcher admits before it"
    )
    estimated_start_s = serializers.IntegerField(
        allow_null=True,
        help_text="about how many seconds until it is admitted, at its model version's "
        "rate of the last minute; null when none of them finished lately",
    )


class JobImageSerializer(serializers.Serializer):
    name = serializers.CharField(help_text="the uploaded file's name")
    format = serializers.CharField()
    width = serializers.IntegerField()
    height = serializers.IntegerField()
    bytes = serializers.IntegerField()
    original_url = serializers.URLField(
        allow_null=True,
        help_text="the original as uploaded (with the same token or session); null once it "
        "was deleted after IMAGE_RETENTION_DAYS",
    )


class JobSerializer(serializers.ModelSerializer):
    url = serializers.SerializerMethodField()
    predictions = serializers.SerializerMethodField()
    model = serializers.SerializerMethodField()
    image = serializers.SerializerMethodField()
    timings = serializers.SerializerMethodField()
    owner = serializers.SerializerMethodField(
        help_text="the owner's user name, for staff who may see every user's jobs; null "
        "for everyone else, and for a job uploaded without signing in"
    )
    queue = serializers.SerializerMethodField(
        help_text="while the job waits for admission, where it stands; null otherwise. Only "
        "the job's own answer (GET /api/jobs/{id}/) has it: null in lists, uploads' answers "
        "and batches"
    )
    random_weights = serializers.BooleanField(
        read_only=True,
        help_text="The model ran with random weights: its predictions are not real classes.",
    )

    class Meta:
        model = Job
        fields = [
            "id",
            "url",
            "status",
            "batch",
            "seq",
            "owner",
            "top_k",
            "predictions",
            "error",
            "model",
            "random_weights",
            "image",
            "attempts",
            "created_at",
            "attempt_started_at",
            "finished_at",
            "timings",
            "queue",
        ]

    def to_representation(self, job: Job) -> dict:
        # The fields above describe the answer (the schema). Building and running each of
        # them for every upload's answer was a cost of its own in the web's profile, so the
        # same values are put together here; tests/test_job_answer.py keeps them equal.
        return {
            "id": str(job.pk),
            "url": self.get_url(job),
            "status": str(job.status),
            "batch": job.batch_id,
            "seq": job.seq,
            "owner": self.get_owner(job),
            "top_k": job.top_k,
            "predictions": self.get_predictions(job),
            "error": job.error,
            "model": self.get_model(job),
            "random_weights": job.random_weights,
            "image": self.get_image(job),
            "attempts": job.attempts,
            "created_at": _iso(job.created_at),
            "attempt_started_at": _iso(job.attempt_started_at),
            "finished_at": _iso(job.finished_at),
            "timings": self.get_timings(job),
            "queue": self.get_queue(job),
        }

    def get_url(self, job: Job) -> str:
        return self._absolute(job.get_absolute_url())

    def get_owner(self, job: Job) -> str | None:
        if job.owner_id is None or not self._shows_owners():
            return None
        return job.owner.username

    def _shows_owners(self) -> bool:
        # Asked once per answer, not per job: a list's jobs share the one requester.
        if "shows_owners" not in self.context:
            request = self.context.get("request")
            user = getattr(request, "user", None)
            self.context["shows_owners"] = user is not None and selectors.may_see_every_job(user)
        return self.context["shows_owners"]

    @extend_schema_field(PredictionSerializer(many=True))
    def get_predictions(self, job: Job) -> list:
        # Only a succeeded job has predictions: not asking for the others' saves a query
        # per job, e.g. for every job an upload answers with.
        if job.status != Job.Status.SUCCEEDED:
            return []
        return [
            {"class_id": p.class_id, "label": p.label, "score": p.score}
            for p in job.predictions.all()
        ]

    def get_model(self, job: Job) -> dict:
        """Who answered, as the worker's result said; before the answer, the registered
        version the job was routed to. "ready" (an upload's answer only): whether that
        version has a live worker now; a job for one without waits in Kafka."""
        routed = job.routed_to
        model = {
            "name": job.model_name or (routed.model.name if routed else ""),
            "version": job.model_version or (routed.version if routed else None),
            "weights": job.model_weights,
            "runtime": job.runtime,
            "precision": job.precision,
            "worker": job.worker,
            "batch_size": job.inference_batch_size,
        }
        ready = self.context.get("model_ready", {})
        if routed is not None and routed.pk in ready:
            model["ready"] = ready[routed.pk]
        return model

    @extend_schema_field(JobImageSerializer())
    def get_image(self, job: Job) -> dict:
        return {
            "name": job.original_name,
            "format": job.image_format,
            "width": job.image_width,
            "height": job.image_height,
            "bytes": job.image_bytes,
            "original_url": (
                self._absolute(reverse("job-original", args=[job.pk])) if job.image.name else None
            ),
        }

    def get_timings(self, job: Job) -> dict:
        """Timestamps of each stage, and milliseconds spent between them."""

        def ms(start, end):
            return None if start is None or end is None else (end - start).total_seconds() * 1000

        return {
            "uploaded_at": job.created_at,
            "preprocessed_at": job.preprocessed_at,
            "submitted_at": job.submitted_at,
            "inferred_at": job.inferred_at,
            "stored_at": job.finished_at,
            "preprocess_ms": job.preprocess_ms,
            "inference_ms": job.inference_ms,
            "queue_to_preprocessed_ms": ms(job.attempt_started_at, job.preprocessed_at),
            "preprocessed_to_submitted_ms": ms(job.preprocessed_at, job.submitted_at),
            "submitted_to_inferred_ms": ms(job.submitted_at, job.inferred_at),
            "inferred_to_stored_ms": ms(job.inferred_at, job.finished_at),
            "total_ms": job.total_ms,
        }

    @extend_schema_field(JobQueueSerializer(allow_null=True))
    def get_queue(self, job: Job) -> dict | None:
        # Only with context "queue" (the job's own answer): it takes a few queries per job,
        # too many for a list, an upload's answer or a batch's event stream.
        if not self.context.get("queue"):
            return None
        return selectors.job_queue(job)

    def _absolute(self, path: str) -> str:
        request = self.context.get("request")
        return request.build_absolute_uri(path) if request else path


def _iso(moment: datetime | None) -> str | None:
    """A time as the API writes it (DRF's DateTimeField in UTC): ISO 8601, "Z" for UTC."""
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat().removesuffix("+00:00") + "Z"


JOB_ORDERINGS = ["created_at", "finished_at", "original_name", "status"]


class StrictQuerySerializer(serializers.Serializer):
    """A query string in which any parameter but these fields is refused: a misspelt
    filter must not silently answer with every job."""

    # DRF's own: ?format=json picks the renderer.
    format = serializers.CharField(required=False)

    @classmethod
    def from_query(cls, query, **kwargs) -> "StrictQuerySerializer":
        """From request.GET: a repeated parameter joins its values with commas, and an
        empty one (a form's empty field) counts as not given."""
        data = {key: ",".join(v for v in query.getlist(key) if v) for key in query}
        known = cls._declared_fields
        return cls(data={k: v for k, v in data.items() if v or k not in known}, **kwargs)

    def to_internal_value(self, data):
        if unknown := sorted(set(data) - set(self.fields)):
            known = f"unknown query parameter; known: {', '.join(self.fields)}"
            raise serializers.ValidationError({name: [known] for name in unknown})
        return super().to_internal_value(data)


class JobListQuerySerializer(StrictQuerySerializer):
    """The query of a job list (the API's and the My jobs page's)."""

    def validate_batch(self, value: str) -> str:
        if selectors.with_id(Batch.objects.none(), value) is None:
            raise serializers.ValidationError(
                "must be a batch id or its first 8 or more hex digits"
            )
        return value

    status = serializers.CharField(
        required=False,
        help_text="one or more statuses, comma-separated or repeated: the jobs in any of them",
    )
    batch = serializers.CharField(
        required=False,
        max_length=36,
        help_text="a batch id, or its first 8 or more hex digits (the short id pages show)",
    )
    label = serializers.CharField(
        required=False, max_length=255, help_text="text in the top-1 label, any case"
    )
    name = serializers.CharField(
        required=False, max_length=255, help_text="text in the uploaded file's name, any case"
    )
    mine = serializers.BooleanField(
        required=False, default=False, help_text="only your own jobs (staff otherwise see all)"
    )
    owner = serializers.CharField(
        required=False, max_length=150, help_text="staff only: the jobs of this username"
    )
    created_after = serializers.DateTimeField(required=False)
    created_before = serializers.DateTimeField(required=False)
    ordering = serializers.ChoiceField(
        choices=[f"{sign}{field}" for field in JOB_ORDERINGS for sign in ("", "-")],
        required=False,
        default="-created_at",
    )
    page = serializers.IntegerField(min_value=1, required=False)
    page_size = serializers.IntegerField(min_value=1, max_value=PAGE_SIZE_MAX, required=False)

    def validate_status(self, value: str) -> list[str]:
        statuses = [part.strip() for part in value.split(",") if part.strip()]
        wrong = [status for status in statuses if status not in Job.Status.values]
        if wrong or not statuses:
            raise serializers.ValidationError(
                f"{', '.join(wrong) or 'nothing'} is not a status; "
                f"use one or more of {', '.join(Job.Status.values)}"
            )
        return statuses

    def validate_owner(self, value: str) -> str:
        request = self.context.get("request")
        if request is None or not selectors.may_see_every_job(request.user):
            raise serializers.ValidationError(
                "only staff with the permission to view jobs may list other users' jobs"
            )
        return value


class JobCreateSerializer(serializers.Serializer):
    """Form fields of an upload; the images themselves are read from request.FILES."""

    top_k = serializers.IntegerField(
        min_value=TOP_K_MIN, max_value=TOP_K_MAX, default=TOP_K_DEFAULT
    )
    batch = serializers.UUIDField(required=False)
    seq = serializers.IntegerField(min_value=0, required=False)
    model = serializers.CharField(
        max_length=63, required=False, help_text="a registered model (default: the default one)"
    )
    model_version = serializers.IntegerField(
        min_value=1, required=False, help_text="default: the model's latest enabled version"
    )

    # The multipart part that carries the files; request.FILES has them, request.data too.
    FILES_FIELD = "image"

    def to_internal_value(self, data):
        # A misspelt field (the seed API's `topk`) must not silently give the default.
        if unknown := sorted(set(data) - set(self.fields) - {self.FILES_FIELD}):
            known = ", ".join([self.FILES_FIELD, *self.fields])
            message = f"unknown field; an upload takes: {known}"
            raise serializers.ValidationError({name: [message] for name in unknown})
        return super().to_internal_value(data)


class BatchCountsSerializer(serializers.Serializer):
    jobs = serializers.IntegerField()
    finished = serializers.IntegerField(help_text="succeeded or failed")
    failed = serializers.IntegerField()


class BatchSerializer(serializers.ModelSerializer):
    url = serializers.SerializerMethodField()
    name = serializers.CharField(
        required=False,
        allow_blank=True,
        max_length=BATCH_NAME_MAX,
        help_text="your own name for the batch (optional)",
    )
    counts = serializers.SerializerMethodField(
        help_text="in the batch list: its jobs, and how many have finished or failed"
    )

    class Meta:
        model = Batch
        fields = ["id", "url", "name", "created_at", "counts"]

    def to_internal_value(self, data):
        # A field this endpoint does not take is named, not silently dropped.
        if unknown := set(getattr(data, "keys", dict)()) - {"name"}:
            raise serializers.ValidationError(
                {field: ["unknown field; a batch takes only: name"] for field in sorted(unknown)}
            )
        return super().to_internal_value(data)

    @extend_schema_field(BatchCountsSerializer(allow_null=True))
    def get_counts(self, batch: Batch) -> dict | None:
        if not hasattr(batch, "jobs_count"):
            return None  # counted only for the list (selectors.with_counts)
        return {
            "jobs": batch.jobs_count,
            "finished": batch.finished_count,
            "failed": batch.failed_count,
        }

    def get_url(self, batch: Batch) -> str:
        path = reverse("batch-detail", kwargs={"pk": batch.pk})
        request = self.context.get("request")
        return request.build_absolute_uri(path) if request else path


class JobDetailQuerySerializer(StrictQuerySerializer):
    wait = serializers.IntegerField(
        min_value=0,
        max_value=WAIT_MAX_SECONDS,
        default=0,
        help_text="hold the answer up to this many seconds until the job has finished",
    )


class BatchExportQuerySerializer(StrictQuerySerializer):
    format = serializers.ChoiceField(choices=["csv", "json"], default="csv")


# The last epoch millisecond a datetime (and MariaDB's DATETIME) can hold, 9999-12-31:
# a later "since" is no time at all, and overflowed the stream's datetime.
EPOCH_MS_MAX = 253_402_300_799_999


class BatchEventsQuerySerializer(StrictQuerySerializer):
    jobs = serializers.BooleanField(
        default=True, help_text="false: only the counts, no event per job"
    )
    since = serializers.IntegerField(
        min_value=0,
        max_value=EPOCH_MS_MAX,
        required=False,
        help_text="epoch milliseconds: jobs that changed before this are left out",
    )


def batch_events_query(query, last_event_id: str | None) -> dict:
    """The checked query of a batch's event stream, {"jobs": bool, "since": epoch ms}: the
    Last-Event-ID header (the id of the last event an EventSource got) wins over ?since=.
    Raises ValidationError (400) for either one out of range or not a plain number; "²"
    passes str.isdigit() but not int()."""
    params = BatchEventsQuerySerializer.from_query(query)
    params.is_valid(raise_exception=True)
    checked = {"jobs": params.validated_data["jobs"]}
    checked["since"] = params.validated_data.get("since", 0)
    if last_event_id:
        field = serializers.IntegerField(min_value=0, max_value=EPOCH_MS_MAX)
        if not (last_event_id.isascii() and last_event_id.isdigit()):
            raise serializers.ValidationError(
                # Not echoed: a header's bytes come decoded as Latin-1 and would read garbled.
                {"Last-Event-ID": ["must be an event id: the digits of an epoch in ms"]}
            )
        try:
            checked["since"] = field.run_validation(last_event_id)
        except serializers.ValidationError as exc:
            raise serializers.ValidationError({"Last-Event-ID": exc.detail}) from None
    return checked


class BatchDetailQuerySerializer(StrictQuerySerializer):
    seq_start = serializers.IntegerField(min_value=0, required=False)
    seq_end = serializers.IntegerField(min_value=0, required=False)
    page = serializers.IntegerField(min_value=1, required=False)
    page_size = serializers.IntegerField(min_value=1, max_value=PAGE_SIZE_MAX, required=False)


class ErrorSerializer(serializers.Serializer):
    """The one error shape of the API (predictions.api.exception_handler); for the schema."""

    def get_fields(self) -> dict:
        # "fields" would shadow Serializer.fields if declared as a class attribute.
        return {
            "error": serializers.CharField(),
            "fields": serializers.DictField(
                child=serializers.JSONField(), required=False, help_text="errors per form field"
            ),
        }


class JobListSerializer(serializers.Serializer):
    """The answer to an upload of several images; for the schema."""

    jobs = JobSerializer(many=True)


class BatchQueueSerializer(serializers.Serializer):
    """Where a batch's jobs waiting for admission stand; for the schema."""

    waiting = serializers.IntegerField(help_text="its jobs waiting for admission")
    ahead = serializers.IntegerField(
        help_text="jobs the dispatcher admits before the first of them"
    )
    estimated_start_s = serializers.IntegerField(
        allow_null=True,
        help_text="about how many seconds until that first one is admitted; null when its "
        "model version finished no job lately",
    )


class BatchDetailSerializer(BatchSerializer):
    """The batch detail view's answer; for the schema."""

    counts = serializers.DictField(child=serializers.IntegerField(), help_text="jobs per status")
    total = serializers.IntegerField()
    jobs_count = serializers.IntegerField(help_text="jobs in the seq range, on every page")
    next = serializers.URLField(allow_null=True, help_text="the next page of jobs")
    previous = serializers.URLField(allow_null=True, help_text="the previous page of jobs")
    jobs = JobSerializer(many=True, help_text="this page's jobs, in seq order")
    queue = BatchQueueSerializer(allow_null=True, help_text="null when none of its jobs wait")

    class Meta(BatchSerializer.Meta):
        fields = [
            *BatchSerializer.Meta.fields,
            "counts",
            "total",
            "queue",
            "jobs_count",
            "next",
            "previous",
            "jobs",
        ]


class ModelStatusSerializer(serializers.Serializer):
    """One registered model version and how it is served; for the schema."""

    name = serializers.CharField()
    version = serializers.IntegerField()
    source = serializers.CharField()
    runtime = serializers.CharField()
    precision = serializers.CharField()
    input_size = serializers.IntegerField()
    classes = serializers.IntegerField()
    enabled = serializers.BooleanField()
    default = serializers.BooleanField()
    ready = serializers.BooleanField(help_text="enabled, with a live worker in its group")
    workers = serializers.IntegerField(
        allow_null=True, help_text="members of its consumer group (null: Kafka did not answer)"
    )
    lag = serializers.IntegerField(
        allow_null=True, help_text="requests its group has still to read"
    )
    requests_topic = serializers.CharField()
    worker_group = serializers.CharField()


class TensorMetadataSerializer(serializers.Serializer):
    name = serializers.CharField()
    datatype = serializers.CharField()
    shape = serializers.ListField(child=serializers.IntegerField())


class ModelMetadataSerializer(serializers.Serializer):
    """The Open Inference Protocol's model metadata; for the schema."""

    name = serializers.CharField()
    versions = serializers.ListField(child=serializers.CharField())
    platform = serializers.CharField()
    inputs = TensorMetadataSerializer(many=True)
    outputs = TensorMetadataSerializer(many=True)
