from django.urls import reverse
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

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
            "image",
            "attempts",
            "created_at",
            "finished_at",
            "timings",
        ]

    def get_url(self, job: Job) -> str:
        return self._absolute(job.get_absolute_url())

    @extend_schema_field(PredictionSerializer(many=True))
    def get_predictions(self, job: Job) -> list:
        # Only a succeeded job has predictions: not asking for the others' saves a query
        # per job, e.g. for every job an upload answers with.
        if job.status != Job.Status.SUCCEEDED:
            return []
        return PredictionSerializer(job.predictions.all(), many=True).data

    def get_model(self, job: Job) -> dict:
        return {
            "name": job.model_name,
            "weights": job.model_weights,
            "worker": job.worker,
            "batch_size": job.inference_batch_size,
        }

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
            "total_ms": ms(job.created_at, job.finished_at),
        }

    def _absolute(self, path: str) -> str:
        request = self.context.get("request")
        return request.build_absolute_uri(path) if request else path


class JobCreateSerializer(serializers.Serializer):
    """Form fields of an upload; the images themselves are read from request.FILES."""

    top_k = serializers.IntegerField(min_value=1, max_value=1000, default=5)
    batch = serializers.UUIDField(required=False)
    seq = serializers.IntegerField(min_value=0, required=False)


class BatchSerializer(serializers.ModelSerializer):
    url = serializers.SerializerMethodField()

    class Meta:
        model = Batch
        fields = ["id", "url", "created_at"]

    def get_url(self, batch: Batch) -> str:
        path = reverse("batch-detail", kwargs={"pk": batch.pk})
        request = self.context.get("request")
        return request.build_absolute_uri(path) if request else path


class BatchDetailQuerySerializer(serializers.Serializer):
    seq_start = serializers.IntegerField(min_value=0, required=False)
    seq_end = serializers.IntegerField(min_value=0, required=False)


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
    jobs = JobSerializer(many=True)

    class Meta(BatchSerializer.Meta):
        fields = [*BatchSerializer.Meta.fields, "counts", "total", "jobs"]
