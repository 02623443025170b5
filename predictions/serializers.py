from datetime import UTC, datetime

from django.urls import reverse
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from inferencehub.limits import (
    PAGE_SIZE_MAX,
    TOP_K_DEFAULT,
    TOP_K_MAX,
    TOP_K_MIN,
    WAIT_MAX_SECONDS,
)
from predictions.models import Batch, Job, Prediction


class PredictionSerializer(serializers.ModelSerializer):
    class Meta:
        model = Prediction
        fields = ["class_id", "label", "score"]


class JobSerializer(serializers.ModelSerializer):
    url = serializers.SerializerMethodField()
    predictions = serializers.SerializerMethodField()
    model = serializers.SerializerMethodField()
    image = serializers.SerializerMethodField()
    timings = serializers.SerializerMethodField()
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
        }

    def get_url(self, job: Job) -> str:
        return self._absolute(job.get_absolute_url())

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

    def get_image(self, job: Job) -> dict:
        return {
            "name": job.original_name,
            "format": job.image_format,
            "width": job.image_width,
            "height": job.image_height,
            "bytes": job.image_bytes,
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
            # Of the current attempt: a retried job's earlier attempts are not counted.
            "total_ms": ms(job.attempt_started_at, job.finished_at),
        }

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

    status = serializers.CharField(
        required=False,
        help_text="one or more statuses, comma-separated or repeated: the jobs in any of them",
    )
    batch = serializers.UUIDField(required=False)
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
        if request is None or not request.user.is_staff:
            raise serializers.ValidationError("only staff may list other users' jobs")
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


class BatchSerializer(serializers.ModelSerializer):
    url = serializers.SerializerMethodField()

    class Meta:
        model = Batch
        fields = ["id", "url", "created_at"]

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


class BatchEventsQuerySerializer(StrictQuerySerializer):
    jobs = serializers.BooleanField(
        default=True, help_text="false: only the counts, no event per job"
    )
    since = serializers.IntegerField(
        min_value=0,
        required=False,
        help_text="epoch milliseconds: jobs that changed before this are left out",
    )


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


class BatchDetailSerializer(BatchSerializer):
    """The batch detail view's answer; for the schema."""

    counts = serializers.DictField(child=serializers.IntegerField(), help_text="jobs per status")
    total = serializers.IntegerField()
    jobs_count = serializers.IntegerField(help_text="jobs in the seq range, on every page")
    next = serializers.URLField(allow_null=True, help_text="the next page of jobs")
    previous = serializers.URLField(allow_null=True, help_text="the previous page of jobs")
    jobs = JobSerializer(many=True, help_text="this page's jobs, in seq order")

    class Meta(BatchSerializer.Meta):
        fields = [
            *BatchSerializer.Meta.fields,
            "counts",
            "total",
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
