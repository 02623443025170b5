"""The REST API under /api/: jobs and batches."""

import re
from collections.abc import Sequence

from django.conf import settings
from django.db import DatabaseError
from django.db.models import Count, Q, QuerySet
from django.utils.dateparse import parse_datetime
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    PolymorphicProxySerializer,
    extend_schema,
    extend_schema_view,
)
from rest_framework import mixins, permissions, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from predictions import services
from predictions.models import Batch, Job
from predictions.serializers import (
    BatchDetailQuerySerializer,
    BatchDetailSerializer,
    BatchSerializer,
    ErrorSerializer,
    JobCreateSerializer,
    JobListSerializer,
    JobSerializer,
)


def exception_handler(exc, context):
    """Every API error is {"error": "<readable message>"} plus "fields" for form errors."""
    if isinstance(exc, DatabaseError):
        # The database being away is an outage to wait out, not a server bug: a 503 lets
        # clients retry, and nothing was accepted.
        return error_response("the database is unavailable; try again in a few seconds", 503)
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    detail = response.data
    if isinstance(detail, dict) and set(detail) == {"detail"}:
        response.data = {"error": str(detail["detail"])}
    elif isinstance(detail, dict):
        messages = [f"{field}: {' '.join(map(str, errors))}" for field, errors in detail.items()]
        response.data = {"error": "; ".join(messages), "fields": detail}
    else:
        response.data = {"error": " ".join(map(str, detail))}
    return response


# An Idempotency-Key: what clients send (UUIDs, hashes) and what fits the column.
UPLOAD_KEY = re.compile(r"[\x21-\x7e]{1,100}")

# What a 503 tells the client to wait before trying again: outages of the database or
# the task queue are expected to last seconds to minutes.
RETRY_AFTER_SECONDS = "5"


def error_response(message: str, code: int) -> Response:
    headers = {"Retry-After": RETRY_AFTER_SECONDS} if code == 503 else None
    return Response({"error": message}, status=code, headers=headers)


def errors(*codes: int) -> dict:
    """Schema of the error responses an operation can give, besides those of every one:
    401 (bad or missing token), 403 (session without CSRF token) and 429 (throttled)."""
    return {code: ErrorSerializer for code in sorted({401, 403, 429, *codes})}


class CanUpload(permissions.BasePermission):
    """Uploading needs a signed-in user unless anonymous uploads are switched on."""

    def has_permission(self, request, view) -> bool:
        if view.action == "create":
            return settings.ALLOW_ANONYMOUS_UPLOADS or request.user.is_authenticated
        if view.action == "retrieve":
            return True  # ids are unguessable; the queryset decides what is visible
        return request.user.is_authenticated


def visible_to(queryset: QuerySet, user, *, include_anonymous: bool) -> QuerySet:
    """Staff see everything; users their own; anonymous items are reachable by id only."""
    if user.is_staff:
        return queryset
    mine = Q(owner=user) if user.is_authenticated else Q(pk__in=[])
    return queryset.filter(mine | Q(owner__isnull=True) if include_anonymous else mine)


@extend_schema_view(
    retrieve=extend_schema(responses={200: JobSerializer, **errors(404)}),
    destroy=extend_schema(responses={204: None, **errors(404)}),
)
class JobViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    serializer_class = JobSerializer
    permission_classes = [CanUpload]

    def get_queryset(self) -> QuerySet:
        jobs = Job.objects.prefetch_related("predictions")
        jobs = visible_to(jobs, self.request.user, include_anonymous=self.action == "retrieve")
        if self.action != "list":
            return jobs
        params = self.request.query_params
        if status_filter := params.get("status"):
            if status_filter not in Job.Status.values:
                raise ValidationError(
                    {"status": [f"must be one of {', '.join(Job.Status.values)}"]}
                )
            jobs = jobs.filter(status=status_filter)
        if batch := params.get("batch"):
            jobs = jobs.filter(batch_id=_uuid_param("batch", batch))
        for name, lookup in (
            ("created_after", "created_at__gte"),
            ("created_before", "created_at__lt"),
        ):
            if value := params.get(name):
                try:
                    moment = parse_datetime(value)
                except ValueError:  # well formed but not a date, e.g. month 13
                    moment = None
                if moment is None:
                    raise ValidationError({name: ["must be an ISO 8601 date-time"]})
                jobs = jobs.filter(**{lookup: moment})
        return jobs

    @extend_schema(
        parameters=[
            OpenApiParameter("status", str, enum=Job.Status.values),
            OpenApiParameter("batch", OpenApiTypes.UUID),
            OpenApiParameter("created_after", OpenApiTypes.DATETIME),
            OpenApiParameter("created_before", OpenApiTypes.DATETIME),
        ],
        # 404: a page number past the end.
        responses={200: JobSerializer(many=True), **errors(400, 404)},
    )
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)

    @extend_schema(
        request={
            "multipart/form-data": {
                "type": "object",
                "properties": {
                    "image": {
                        "type": "array",
                        "items": {"type": "string", "format": "binary"},
                        "minItems": 1,
                    },
                    "top_k": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 5},
                    "batch": {"type": "string", "format": "uuid"},
                    "seq": {"type": "integer", "minimum": 0},
                },
                "required": ["image"],
            }
        },
        parameters=[
            OpenApiParameter(
                "Idempotency-Key",
                str,
                OpenApiParameter.HEADER,
                description="any 1 to 100 printable ASCII characters, e.g. a UUID, new for "
                "each upload: the same upload sent again answers with the first one's jobs "
                "(header Idempotent-Replayed: true)",
                pattern=f"^{UPLOAD_KEY.pattern}$",
            )
        ],
        responses={
            202: PolymorphicProxySerializer(
                component_name="JobsCreated",
                serializers=[JobSerializer, JobListSerializer],
                resource_type_field_name=None,
            ),
            **errors(400, 409, 413),
        },
    )
    def create(self, request, *args, **kwargs):
        """Upload one or more images (`image` repeated); each becomes a queued job.

        One image answers with the job; several answer with `{"jobs": [...]}`. With an
        `Idempotency-Key` header, sending the same upload again (say, after a lost answer)
        answers with the jobs of the first instead of making new ones.
        """
        params = JobCreateSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        uploads = request.FILES.getlist("image")
        if not uploads:
            raise ValidationError({"image": ["no image was uploaded"]})
        upload_key = request.headers.get("Idempotency-Key")
        if upload_key is not None:
            if not UPLOAD_KEY.fullmatch(upload_key):
                return error_response(
                    "Idempotency-Key must be 1 to 100 printable ASCII characters", 400
                )
            if request.user.is_authenticated and (
                earlier := services.jobs_of_upload(owner=request.user, upload_key=upload_key)
            ):
                if len(earlier) != len(uploads):
                    return error_response(
                        f"Idempotency-Key {upload_key} was used for an upload of "
                        f"{len(earlier)} image(s); this one has {len(uploads)}",
                        409,
                    )
                return self.jobs_accepted(earlier, replayed=True)
        batch = None
        if batch_id := params.validated_data.get("batch"):
            batch = (
                visible_to(Batch.objects, request.user, include_anonymous=False)
                .filter(pk=batch_id)
                .first()
            )
            if batch is None:
                raise ValidationError({"batch": [f"unknown batch {batch_id}"]})
        try:
            jobs = services.create_jobs(
                owner=request.user if request.user.is_authenticated else None,
                uploads=uploads,
                top_k=params.validated_data["top_k"],
                batch=batch,
                seq=params.validated_data.get("seq"),
                upload_key=upload_key,
            )
        except services.UploadError as exc:
            return error_response(str(exc), exc.status)
        return self.jobs_accepted(jobs, replayed=False)

    # Sequence: inside this class, `list` is the list action.
    def jobs_accepted(self, jobs: Sequence[Job], *, replayed: bool) -> Response:
        data = JobSerializer(jobs, many=True, context=self.get_serializer_context()).data
        headers = {"Idempotent-Replayed": "true"} if replayed else {}
        if len(jobs) == 1:
            headers["Location"] = data[0]["url"]
            return Response(data[0], status=status.HTTP_202_ACCEPTED, headers=headers)
        return Response({"jobs": data}, status=status.HTTP_202_ACCEPTED, headers=headers)

    @extend_schema(request=None, responses={202: JobSerializer, **errors(404, 409)})
    @action(detail=True, methods=["post"])
    def retry(self, request, pk=None):
        """Run a failed job again from the start, as a new attempt of the same image."""
        job = self.get_object()
        retried = services.retry_jobs(jobs=[job])
        job.refresh_from_db()
        if not retried:
            return error_response(
                f"only a failed job can be retried; this one is {job.status}", 409
            )
        data = JobSerializer(job, context=self.get_serializer_context()).data
        return Response(data, status=status.HTTP_202_ACCEPTED)

    def perform_destroy(self, instance: Job) -> None:
        services.delete_job(job=instance)


@extend_schema_view(
    create=extend_schema(request=None, responses={201: BatchSerializer, **errors()}),
    list=extend_schema(responses={200: BatchSerializer(many=True), **errors(404)}),
)
class BatchViewSet(
    mixins.CreateModelMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,
):
    serializer_class = BatchSerializer
    permission_classes = [CanUpload]

    def get_queryset(self) -> QuerySet:
        return visible_to(
            Batch.objects.all(), self.request.user, include_anonymous=self.action == "retrieve"
        )

    def perform_create(self, serializer) -> None:
        owner = self.request.user if self.request.user.is_authenticated else None
        serializer.instance = services.create_batch(owner=owner)

    @extend_schema(
        parameters=[
            OpenApiParameter("seq_start", int, description="first seq to include (inclusive)"),
            OpenApiParameter("seq_end", int, description="last seq to include (inclusive)"),
        ],
        responses={200: BatchDetailSerializer, **errors(400, 404)},
    )
    def retrieve(self, request, *args, **kwargs):
        """The batch with job counts per status and its jobs with seq in [seq_start, seq_end]."""
        batch = self.get_object()
        query = BatchDetailQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        counts = dict(
            batch.jobs.values_list("status").annotate(n=Count("pk")).values_list("status", "n")
        )
        jobs = batch.jobs.prefetch_related("predictions").order_by("seq")
        if "seq_start" in query.validated_data:
            jobs = jobs.filter(seq__gte=query.validated_data["seq_start"])
        if "seq_end" in query.validated_data:
            jobs = jobs.filter(seq__lte=query.validated_data["seq_end"])
        data = BatchSerializer(batch, context=self.get_serializer_context()).data
        data["counts"] = {s: counts.get(s, 0) for s in Job.Status.values}
        data["total"] = sum(counts.values())
        data["jobs"] = JobSerializer(jobs, many=True, context=self.get_serializer_context()).data
        return Response(data)


def _uuid_param(name: str, value: str):
    import uuid

    try:
        return uuid.UUID(value)
    except ValueError:
        raise ValidationError({name: ["must be a UUID"]}) from None
