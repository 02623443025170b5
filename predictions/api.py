"""The REST API under /api/: jobs, batches and the models served."""

from collections.abc import Sequence

from django.conf import settings
from django.core.handlers.asgi import ASGIRequest
from django.db.models import QuerySet
from django.http import HttpResponse, StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    PolymorphicProxySerializer,
    extend_schema,
    extend_schema_view,
)
from rest_framework import mixins, permissions, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.pagination import PageNumberPagination
from rest_framework.response import Response

from common.errors import error_response
from common.limits import PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX
from predictions import events, exports, selectors, services, uploads
from predictions.models import Batch, Job, JobFinished
from predictions.openapi import IDEMPOTENCY_KEY, UPLOAD_REQUEST, errors
from predictions.queries import (
    BatchDetailQuerySerializer,
    BatchEventsQuerySerializer,
    BatchExportQuerySerializer,
    JobCreateSerializer,
    JobDetailQuerySerializer,
    JobListQuerySerializer,
    batch_events_query,
)
from predictions.serializers import (
    BatchCancelledSerializer,
    BatchDetailSerializer,
    BatchSerializer,
    JobListSerializer,
    JobSerializer,
    ModelMetadataSerializer,
    ModelStatusSerializer,
)
from registry import selectors as registry


class CanUpload(permissions.BasePermission):
    """Uploading needs a signed-in user unless anonymous uploads are switched on."""

    def has_permission(self, request, view) -> bool:
        if view.action == "create":
            return settings.ALLOW_ANONYMOUS_UPLOADS or request.user.is_authenticated
        if view.action == "retrieve":
            return True  # ids are unguessable; the queryset decides what is visible
        return request.user.is_authenticated


class AnyAccept(DefaultContentNegotiation):
    """For views that answer in their own content type (CSV, an event stream): DRF's
    renderer choice, by Accept and ?format=, does not apply to them."""

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


class JobPagination(PageNumberPagination):
    page_size = PAGE_SIZE_DEFAULT
    page_size_query_param = "page_size"
    max_page_size = PAGE_SIZE_MAX


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
    pagination_class = JobPagination

    def get_queryset(self) -> QuerySet:
        jobs = selectors.visible_jobs(self.request.user, by_id=self.action == "retrieve")
        jobs = jobs.select_related("routed_to__model").prefetch_related("predictions")
        if selectors.may_see_every_job(self.request.user):
            jobs = jobs.select_related("owner")  # their answers name each job's owner
        if self.action != "list":
            return jobs
        query = JobListQuerySerializer.from_query(
            self.request.query_params, context={"request": self.request}
        )
        query.is_valid(raise_exception=True)
        return selectors.search_jobs(jobs, self.request.user, query.validated_data)

    @extend_schema(
        parameters=[JobListQuerySerializer],
        # 404: a page number past the end.
        responses={200: JobSerializer(many=True), **errors(400, 404)},
    )
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)

    def get_throttles(self) -> list:
        # A held ?wait= answer was counted when it was asked for (held_job_detail).
        if getattr(self.request, "held_answer", False):
            return []
        return super().get_throttles()

    @extend_schema(parameters=[JobDetailQuerySerializer])
    def retrieve(self, request, *args, **kwargs):
        """The job. With `wait=N` (at most 30), the answer is held up to N seconds until
        the job has finished; when the web process holds as many requests as it may, it
        comes at once, with `Retry-After: 1`."""
        # The holding is held_job_detail's, in front of this view.
        query = JobDetailQuerySerializer.from_query(request.query_params)
        query.is_valid(raise_exception=True)
        # One job: where it stands in the queue is worth its few queries here.
        context = {**self.get_serializer_context(), "queue": True}
        return Response(self.get_serializer(self.get_object(), context=context).data)

    @extend_schema(
        request=UPLOAD_REQUEST,
        parameters=[IDEMPOTENCY_KEY],
        responses={
            202: PolymorphicProxySerializer(
                component_name="JobsCreated",
                serializers=[JobSerializer, JobListSerializer],
                resource_type_field_name=None,
            ),
            **errors(400, 409, 413, 422),
        },
    )
    def create(self, request, *args, **kwargs):
        """Upload one or more images (`image` repeated); each becomes a queued job.

        One image answers with the job; several answer with `{"jobs": [...]}`. With an
        `Idempotency-Key` header, sending the same upload again (say, after a lost answer)
        answers with the jobs of the first instead of making new ones.
        """
        if request.query_params:
            # POST ?wait=10 would be a hold that never happens: said, not ignored.
            names = ", ".join(sorted(request.query_params))
            return error_response(f"an upload takes no query parameters; got {names}", 400)
        params = JobCreateSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        # Asked before the upload: once its jobs are committed the answer is built without
        # the database, so that one gone meanwhile cannot turn an accepted upload into a
        # 503 (a staff member's permissions are a query).
        context = self.get_serializer_context()
        context["shows_owners"] = selectors.may_see_every_job(request.user)
        try:
            upload = uploads.upload_images(
                uploader=request.user,
                files=request.FILES.getlist("image"),
                top_k=params.validated_data["top_k"],
                batch_id=params.validated_data.get("batch"),
                seq=params.validated_data.get("seq"),
                upload_key=request.headers.get("Idempotency-Key"),
                model=params.validated_data.get("model"),
                model_version=params.validated_data.get("model_version"),
                callback_url=params.validated_data.get("callback_url", ""),
                deadline=params.validated_data.get("deadline"),
                timeout_s=params.validated_data.get("timeout_s"),
                priority=params.validated_data.get("priority"),
            )
        except uploads.UploadError as exc:
            return error_response(str(exc), exc.status)
        return self.jobs_accepted(upload.jobs, replayed=upload.replayed, context=context)

    # Sequence: inside this class, `list` is the list action.
    def jobs_accepted(self, jobs: Sequence[Job], *, replayed: bool, context: dict) -> Response:
        # The answer says whether the chosen model has a live worker: the job is accepted
        # either way (Kafka holds it until one starts).
        versions = list({job.routed_to_id: job.routed_to for job in jobs if job.routed_to}.values())
        if versions:
            states = registry.serving_states(versions, max_age_s=registry.UPLOAD_STATE_MAX_AGE_S)
            context["model_ready"] = {v.pk: registry.is_ready(v, states) for v in versions}
        headers = {"Idempotent-Replayed": "true"} if replayed else {}
        if len(jobs) == 1:
            data = JobSerializer(jobs[0], context=context).data
            headers["Location"] = data["url"]
        else:
            data = JobListSerializer({"jobs": jobs}, context=context).data
        return Response(data, status=status.HTTP_202_ACCEPTED, headers=headers)

    @extend_schema(request=None, responses={202: JobSerializer, **errors(404, 409)})
    @action(detail=True, methods=["post"])
    def retry(self, request, pk=None):
        """Run a failed job again from the start, as a new attempt of the same image."""
        job = self.get_object()
        if not selectors.may_act_on(job, request.user, "change"):
            raise PermissionDenied("you may read this job but not retry it")
        retried = services.retry_jobs(jobs=[job])
        job.refresh_from_db()
        if not retried:
            return error_response(
                f"only a failed job can be retried; this one is {job.status}", 409
            )
        data = JobSerializer(job, context=self.get_serializer_context()).data
        return Response(data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=None, responses={200: JobSerializer, **errors(403, 404, 409)})
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        """Cancel a job not yet finished: it is not inferred (or its result is ignored) and
        ends `cancelled`, its record kept. A finished job answers 409."""
        job = self.get_object()
        if not selectors.may_act_on(job, request.user, "change"):
            raise PermissionDenied("you may read this job but not cancel it")
        try:
            job = services.cancel_job(job=job)
        except JobFinished as exc:
            return error_response(str(exc), 409)
        return Response(JobSerializer(job, context=self.get_serializer_context()).data)

    def perform_destroy(self, instance: Job) -> None:
        if not selectors.may_act_on(instance, self.request.user, "delete"):
            raise PermissionDenied("you may read this job but not delete it")
        services.delete_job(job=instance)


@extend_schema_view(
    create=extend_schema(request=None, responses={201: BatchSerializer, **errors()}),
    list=extend_schema(responses={200: BatchSerializer(many=True), **errors(404)}),
)
class BatchViewSet(
    mixins.CreateModelMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    serializer_class = BatchSerializer
    permission_classes = [CanUpload]

    def get_queryset(self) -> QuerySet:
        batches = selectors.visible_batches(
            self.request.user, by_id=self.action in ("retrieve", "destroy")
        )
        return selectors.with_counts(batches) if self.action == "list" else batches

    def perform_create(self, serializer) -> None:
        owner = self.request.user if self.request.user.is_authenticated else None
        serializer.instance = uploads.create_batch(owner=owner, **serializer.validated_data)

    @extend_schema(responses={204: None, **errors(403, 404)})
    def destroy(self, request, *args, **kwargs):
        """Delete the batch with its jobs, their results and stored images: its owner, or
        staff with the delete permission on batches and jobs."""
        return super().destroy(request, *args, **kwargs)

    def perform_destroy(self, instance: Batch) -> None:
        if not selectors.may_delete_batch(instance, self.request.user):
            raise PermissionDenied("only the batch's owner may delete it")
        services.delete_batches(batches=[instance])

    @extend_schema(
        request=None,
        responses={200: BatchCancelledSerializer, **errors(403, 404)},
    )
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        """Cancel every job of the batch not yet finished; answers how many were."""
        batch = self.get_object()
        if not selectors.may_cancel_batch(batch, request.user):
            raise PermissionDenied("only the batch's owner may cancel its jobs")
        cancelled = services.cancel_batch(batch=batch)
        return Response({"batch": str(batch.pk), "cancelled": cancelled})

    @extend_schema(
        parameters=[BatchDetailQuerySerializer],
        responses={200: BatchDetailSerializer, **errors(400, 404)},
    )
    def retrieve(self, request, *args, **kwargs):
        """The batch with job counts per status and a page of its jobs (seq order) with
        seq in [seq_start, seq_end]; `next` and `previous` link the other pages."""
        batch = self.get_object()
        query = BatchDetailQuerySerializer.from_query(request.query_params)
        query.is_valid(raise_exception=True)
        jobs = selectors.batch_jobs(
            batch,
            seq_start=query.validated_data.get("seq_start"),
            seq_end=query.validated_data.get("seq_end"),
        )
        paginator = JobPagination()
        page = paginator.paginate_queryset(jobs, request, view=self)
        context = {**self.get_serializer_context(), "paginator": paginator, "page": page}
        return Response(BatchDetailSerializer(batch, context=context).data)

    @extend_schema(
        parameters=[BatchExportQuerySerializer],
        responses={
            (200, "text/csv"): OpenApiTypes.STR,
            (200, "application/json"): OpenApiTypes.OBJECT,
            **errors(400, 404),
        },
    )
    @action(detail=True, methods=["get"], content_negotiation_class=AnyAccept)
    def export(self, request, pk=None):
        """Every job of the batch in seq order, to download: CSV (one row per job with its
        top-1 result) or JSON (with every prediction)."""
        batch = self.get_object()
        query = BatchExportQuerySerializer.from_query(request.query_params)
        query.is_valid(raise_exception=True)
        jobs = selectors.batch_jobs(batch)
        kind = query.validated_data["format"]
        if kind == "csv":
            body = exports.export_csv(jobs)
            response = HttpResponse(body, content_type="text/csv; charset=utf-8")
        else:
            body = exports.export_json(batch, jobs)
            response = HttpResponse(body, content_type="application/json")
        response["Content-Disposition"] = f'attachment; filename="batch-{batch.pk}.{kind}"'
        return response

    @extend_schema(
        parameters=[BatchEventsQuerySerializer],
        responses={(200, "text/event-stream"): OpenApiTypes.STR, **errors(400, 404)},
    )
    @action(detail=True, methods=["get"], content_negotiation_class=AnyAccept)
    def events(self, request, pk=None):
        """Server-Sent Events of the batch's jobs: a `job` event (the job as
        GET /api/jobs/{id}/ shows it) for each job that changed since `since` (epoch ms)
        or the `Last-Event-ID` (none with `jobs=false`), then a `counts` event (as in the
        batch's detail); then the same whenever jobs change, for up to 30 s. The
        browser's EventSource then reconnects by itself, from the last event's id."""
        batch = self.get_object()
        query = batch_events_query(request.query_params, request.headers.get("Last-Event-ID"))
        stream = events.BatchStream(
            batch, query["since"], self.get_serializer_context() if query["jobs"] else None
        )
        # Under ASGI (the held process) the stream is async code that holds no thread;
        # Django would read a sync one to its end before sending anything, and the other
        # way round under WSGI.
        asynchronous = isinstance(request._request, ASGIRequest)
        text = stream.async_events() if asynchronous else stream.events()
        response = StreamingHttpResponse(text, content_type="text/event-stream")
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"  # a proxy must pass each event on at once
        return response


class CanReadModels(permissions.BasePermission):
    """Whoever may upload may see which models there are to choose from."""

    def has_permission(self, request, view) -> bool:
        return settings.ALLOW_ANONYMOUS_UPLOADS or request.user.is_authenticated


class ModelViewSet(viewsets.ViewSet):
    """The registered models, their versions and how each is served right now."""

    permission_classes = [CanReadModels]
    lookup_field = "name"
    lookup_value_regex = "[a-z0-9][a-z0-9-]*"

    @extend_schema(responses={200: ModelStatusSerializer(many=True)})
    def list(self, request):
        """Every registered version, with its live workers and lag read from Kafka."""
        versions = registry.every_version()
        states = registry.serving_states(versions) if versions else {}
        return Response(ModelStatusSerializer(versions, many=True, context={"states": states}).data)

    @extend_schema(responses={200: ModelMetadataSerializer, **errors(404)})
    def retrieve(self, request, name=None):
        """The model's metadata in the Open Inference Protocol's shape; inputs and outputs
        are those of its latest enabled version (its latest, when none is enabled): an ONNX
        model's own tensors, with the input spec that makes an upload into its input."""
        versions = registry.versions_of(name)
        if not versions:
            return error_response(
                f"no model {name!r}; available: {registry.available() or 'none'}", 404
            )
        return Response(ModelMetadataSerializer(versions).data)
