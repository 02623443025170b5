"""The API's answers: each one's fields (the schema) and how it is built from the models.
What clients send is checked in predictions/queries.py.

Over 400 lines: one small serializer per answer, kept together because the answers nest
(a batch's answer holds its jobs', an upload's its jobs' and its model's), and the schema
of each is the serializer that builds it."""

from datetime import UTC, datetime

from django.urls import reverse
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from common import tracing
from predictions import selectors
from predictions.models import BATCH_NAME_MAX, Batch, Job, Prediction
from registry import selectors as registry
from registry.models import ModelVersion


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


class CallbackAttemptSerializer(serializers.Serializer):
    at = serializers.DateTimeField()
    status_code = serializers.IntegerField(
        allow_null=True, help_text="the receiver's answer; null when none came (see error)"
    )
    error = serializers.CharField(
        help_text="why no answer came, or why nothing was sent; empty otherwise"
    )
    duration_ms = serializers.FloatField(allow_null=True)


class CallbackSerializer(serializers.Serializer):
    """A job's completion webhook; for the schema."""

    url = serializers.CharField()
    state = serializers.ChoiceField(
        choices=["waiting", "pending", "delivered", "failed", "refused"],
        help_text="waiting: the job has not finished; pending: being sent or retried; "
        "delivered: answered 2xx; failed: no 2xx within WEBHOOK_RETRY_FOR_S; refused: its "
        "host resolved to an address that may not be called, nothing was sent",
    )
    delivery_id = serializers.UUIDField(
        allow_null=True, help_text="the InferenceHub-Delivery header sent with each attempt"
    )
    attempts = CallbackAttemptSerializer(many=True)


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
    request_id = serializers.SerializerMethodField(
        help_text="the X-Request-ID of the upload: every log line about the job carries it; "
        "null for a job made outside a request"
    )
    trace_id = serializers.SerializerMethodField(
        help_text="the OpenTelemetry trace id of the job (32 hex digits), to find its trace "
        "in the trace backend; null when tracing was off at its upload"
    )
    callback = serializers.SerializerMethodField(
        help_text="the completion webhook of an upload with callback_url; null without one"
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
            "deadline",
            "priority",
            "timings",
            "queue",
            "request_id",
            "trace_id",
            "callback",
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
            "deadline": _iso(job.deadline),
            "priority": job.priority,
            "timings": self.get_timings(job),
            "queue": self.get_queue(job),
            "request_id": self.get_request_id(job),
            "trace_id": self.get_trace_id(job),
            "callback": self.get_callback(job),
        }

    def get_request_id(self, job: Job) -> str | None:
        return job.request_id or None

    def get_trace_id(self, job: Job) -> str | None:
        return tracing.trace_id_of(job.trace_parent)

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
        return job.timings()

    @extend_schema_field(JobQueueSerializer(allow_null=True))
    def get_queue(self, job: Job) -> dict | None:
        # Only with context "queue" (the job's own answer): it takes a few queries per job,
        # too many for a list, an upload's answer or a batch's event stream.
        if not self.context.get("queue"):
            return None
        return selectors.job_queue(job)

    @extend_schema_field(CallbackSerializer(allow_null=True))
    def get_callback(self, job: Job) -> dict | None:
        callback = selectors.job_callback(job)
        if callback is not None:
            for attempt in callback["attempts"]:
                attempt["at"] = _iso(attempt["at"])
        return callback

    def _absolute(self, path: str) -> str:
        request = self.context.get("request")
        return request.build_absolute_uri(path) if request else path


def _iso(moment: datetime | None) -> str | None:
    """A time as the API writes it (DRF's DateTimeField in UTC): ISO 8601, "Z" for UTC."""
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat().removesuffix("+00:00") + "Z"


class BatchCountsSerializer(serializers.Serializer):
    jobs = serializers.IntegerField()
    finished = serializers.IntegerField(help_text="succeeded or failed")
    failed = serializers.IntegerField()


class BatchCancelledSerializer(serializers.Serializer):
    """The answer to cancelling a batch."""

    batch = serializers.UUIDField()
    cancelled = serializers.IntegerField(help_text="how many of its jobs were cancelled now")


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
        fields = ["id", "url", "name", "priority", "created_at", "counts"]
        extra_kwargs = {
            "priority": {"help_text": "the priority of the uploads into it that name none"}
        }

    def to_internal_value(self, data):
        # A field this endpoint does not take is named, not silently dropped.
        if unknown := set(getattr(data, "keys", dict)()) - {"name", "priority"}:
            raise serializers.ValidationError(
                {
                    field: ["unknown field; a batch takes only: name, priority"]
                    for field in sorted(unknown)
                }
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


class ErrorSerializer(serializers.Serializer):
    """The one error shape of the API (common.errors.exception_handler); for the schema."""

    def get_fields(self) -> dict:
        # "fields" would shadow Serializer.fields if declared as a class attribute.
        return {
            "error": serializers.CharField(),
            "fields": serializers.DictField(
                child=serializers.JSONField(), required=False, help_text="errors per form field"
            ),
        }


class JobListSerializer(serializers.Serializer):
    """The answer to an upload of several images: JobListSerializer({"jobs": jobs})."""

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


def batch_totals(batch: Batch) -> dict:
    """A batch's jobs per status and their total: in its detail and its counts events."""
    counts = selectors.batch_counts(batch)
    return {"counts": counts, "total": sum(counts.values())}


class BatchDetailSerializer(BatchSerializer):
    """The batch detail view's answer: the batch, its counts and where its waiting jobs
    stand, and one page of its jobs (context "paginator": a PageNumberPagination that has
    paginated them, "page": that page's jobs)."""

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

    def to_representation(self, batch: Batch) -> dict:
        paginator = self.context["paginator"]
        return {
            **BatchSerializer(batch, context=self.context).data,
            **batch_totals(batch),
            "queue": selectors.batch_queue(batch),
            "jobs_count": paginator.page.paginator.count,
            "next": paginator.get_next_link(),
            "previous": paginator.get_previous_link(),
            "jobs": JobSerializer(self.context["page"], many=True, context=self.context).data,
        }


class ModelStatusSerializer(serializers.Serializer):
    """One registered model version and how it is served (context "states": the versions'
    serving states, registry.selectors.serving_states; None when Kafka did not answer)."""

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

    def to_representation(self, version: ModelVersion) -> dict:
        states = self.context["states"]
        state = None if states is None else states[version.pk]
        return {
            "name": version.model.name,
            "version": version.version,
            "source": version.source,
            "runtime": version.runtime,
            "precision": version.precision,
            "input_size": version.input_size,
            "classes": version.classes,
            "enabled": version.enabled,
            "default": version.model.is_default,
            "ready": registry.is_ready(version, states),
            "workers": None if state is None else state.members,
            "lag": None if state is None else state.lag,
            "requests_topic": version.route.requests_topic,
            "worker_group": version.route.worker_group,
        }


class TensorMetadataSerializer(serializers.Serializer):
    name = serializers.CharField()
    datatype = serializers.CharField()
    shape = serializers.ListField(child=serializers.IntegerField())


# The Open Inference Protocol's name for what runs each kind of version.
PLATFORMS = {
    "openvino": "openvino_ir",
    "tensorflow": "tensorflow_keras",
    "onnxruntime": "onnxruntime_onnx",
}


class ModelMetadataSerializer(serializers.Serializer):
    """The Open Inference Protocol's model metadata, of a model's versions (oldest first):
    inputs and outputs are those of its latest enabled version (its latest, when none is
    enabled). An ONNX model's are its own tensors, as its input spec records them; the
    others take the uploaded image as uint8 and answer probabilities."""

    name = serializers.CharField()
    versions = serializers.ListField(child=serializers.CharField())
    platform = serializers.CharField()
    inputs = TensorMetadataSerializer(many=True)
    outputs = TensorMetadataSerializer(many=True)

    def to_representation(self, versions: list[ModelVersion]) -> dict:
        enabled = [version for version in versions if version.enabled]
        current = (enabled or versions)[-1]
        spec = current.input_spec or None
        image = {
            "name": "image",
            "datatype": "UINT8",
            "shape": [-1, current.input_size, current.input_size, 3],
        }
        probabilities = {
            "name": "probabilities",
            "datatype": "FP32",
            "shape": [-1, current.classes],
        }
        return {
            "name": current.model.name,
            "versions": [str(version.version) for version in enabled],
            "platform": PLATFORMS.get(current.runtime, current.runtime),
            "inputs": [spec["model_input"] if spec else image],
            "outputs": [spec["model_output"] if spec else probabilities],
            "input_spec": spec,
        }

    input_spec = serializers.JSONField(
        allow_null=True,
        help_text="an ONNX model's input spec: how an uploaded image becomes its input "
        "(layout, channels, resize, resize_to, size, scale, mean, std, output, dtype); null "
        "for the others",
    )
