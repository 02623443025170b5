"""The operator's view of jobs, batches and predictions.

Built to stay fast with 100,000+ jobs: the top-1 prediction is a subquery rather than a
query per row, no full result count, and batches and owners are typed in rather than
listed as choices.
"""

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ActionForm
from django.core.exceptions import ValidationError
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe
from django.utils.text import Truncator

from common.limits import TOP_K_MAX, TOP_K_MIN
from predictions import selectors, services
from predictions.admin_filters import (
    BatchFilter,
    ModelFilter,
    OwnerFilter,
    PrecisionFilter,
    RuntimeFilter,
)
from predictions.models import Batch, Job, Prediction

TOP_K_FIELD = forms.IntegerField(min_value=TOP_K_MIN, max_value=TOP_K_MAX)

admin.site.site_header = admin.site.site_title = "InferenceHub"
admin.site.index_title = "Jobs, batches and predictions"
# The job list needs the width at 1280 px; the header's breadcrumbs lead back anyway.
admin.site.enable_nav_sidebar = False


class SearchByIdMixin:
    """A pasted id, or the short id the lists show (its first 8 hex digits or more), finds
    its row by primary key (an index range), not by a text scan."""

    def get_search_results(self, request, queryset, search_term):
        if (found := selectors.with_id(queryset, search_term)) is not None:
            return found, False
        return super().get_search_results(request, queryset, search_term)


class JobActionForm(ActionForm):
    # Checked by the action itself (TOP_K_FIELD), which says what is wrong: a form error
    # here would only make the admin answer "No action selected."
    top_k = forms.CharField(required=False, label="top-k (for re-run):")


class PredictionInline(admin.TabularInline):
    model = Prediction
    extra = 0
    can_delete = False
    fields = readonly_fields = ["rank", "label", "rounded_score", "class_id"]

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description="score")
    def rounded_score(self, prediction: Prediction) -> str:
        return f"{prediction.score:.3f}"


def thumbnail(job: Job, size: int = 96, shown: int = 48) -> str:
    if not job.image.name:
        return "purged"  # purge_images deleted the original; the results stay
    if not job.has_thumbnail:
        return "no image"
    # Served by a view that checks access; stored originals are never public MEDIA files.
    return format_html(
        '<img src="{}" alt="" width="{}" height="{}" loading="lazy" style="object-fit:cover">',
        reverse("job-image", args=[job.pk, size]),
        shown,
        shown,
    )


@admin.register(Job)
class JobAdmin(SearchByIdMixin, admin.ModelAdmin):
    list_display = [
        "thumb",
        "short_id",
        "file_name",
        "status",
        "top_1",
        "model_and_weights",
        "worker_name",
        "latency",
        "owner",
        "created",
    ]
    list_display_links = ["thumb", "short_id"]
    # Filters list fixed choices or what the small registry holds: a plain field filter
    # runs SELECT DISTINCT over the whole jobs table at every page load, and so would a
    # date hierarchy.
    list_filter = [
        "status",
        "priority",
        ModelFilter,
        RuntimeFilter,
        PrecisionFilter,
        "created_at",
        BatchFilter,
        OwnerFilter,
    ]
    list_select_related = ["owner"]
    # Searched by get_search_results below; listed so the admin shows its search box.
    search_fields = ["original_name"]
    search_help_text = (
        "A job id (or its first 8 hex digits), or part of the top-1 label or of a file name."
    )
    show_full_result_count = False
    inlines = [PredictionInline]
    action_form = JobActionForm
    actions = ["retry_failed", "rerun_with_top_k", "cancel_selected"]
    readonly_fields = ["image_preview", "original", "timings", "batch_link", "callback"] + [
        f.name for f in Job._meta.fields if f.name != "batch"
    ]
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "id",
                    "status",
                    "error",
                    "attempts",
                    "top_k",
                    "deadline",
                    "priority",
                    "owner",
                    "batch_link",
                ]
            },
        ),
        ("Image", {"fields": ["image_preview", "original_name", "image_format", "original"]}),
        (
            "Model",
            {
                "fields": [
                    "routed_to",
                    "model_name",
                    "model_version",
                    "model_weights",
                    "runtime",
                    "precision",
                    "worker",
                    "inference_batch_size",
                ]
            },
        ),
        ("Timings", {"fields": ["timings"]}),
        ("Completion webhook", {"fields": ["callback_url", "callback"]}),
    ]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return selectors.with_top_prediction(super().get_queryset(request))

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # jobs come from uploads

    def get_search_results(self, request, queryset, search_term):
        """An id (or its short form) by primary key; otherwise part of a file name or of the
        top-1 label. The label is an EXISTS per job, not a join: joined, each job came
        once per prediction and the list needed a DISTINCT over them all before its first
        page, where this walks the jobs in the list's order and stops at a page's worth."""
        term = search_term.strip()
        if not term:
            return queryset, False
        if (found := selectors.with_id(queryset, term)) is not None:
            return found, False
        # The top-1 label, as the API's `label` filter: a fifth of the predictions to read.
        labelled = selectors.top_label_contains(term)
        return queryset.filter(Q(original_name__icontains=term) | labelled), False

    def has_change_permission(self, request: HttpRequest, obj: Job | None = None) -> bool:
        # A job is read, never edited: its page has no Save buttons. The list's actions
        # (retry, re-run) still need the change permission.
        return obj is None and super().has_change_permission(request)

    @admin.display(description="image")
    def thumb(self, job: Job) -> str:
        return thumbnail(job)

    @admin.display(description="id", ordering="id")
    def short_id(self, job: Job) -> str:
        # Enough to tell jobs apart at a glance; the full id is on the job's page.
        return format_html('<span title="{}">{}</span>', job.pk, str(job.pk)[:8])

    @admin.display(description="file name", ordering="original_name")
    def file_name(self, job: Job) -> str:
        return Truncator(job.original_name).chars(32) or "–"

    @admin.display(description="model", ordering="model_name")
    def model_and_weights(self, job: Job) -> str:
        name = job.model_name
        if name and job.model_version:
            name = f"{name}:{job.model_version}"
        if job.random_weights:
            return format_html("{} <strong>random weights</strong>", name)
        return name or "–"

    # Label and score in one column, and a worker's name cut short: the list must fit 1280
    # pixels with ImageNet's longest label and a Kubernetes pod's name in it.
    @admin.display(description="top-1")
    def top_1(self, job: Job) -> str:
        if job.top_score is None:
            return "–"
        return format_html("{} <strong>{}</strong>", job.top_label, f"{job.top_score:.3f}")

    @admin.display(description="worker", ordering="worker")
    def worker_name(self, job: Job) -> str:
        # A pod's name has no space to wrap at. Its end tells pods apart (and holds the
        # pid); the whole name is in the tooltip and on the job's page.
        if not job.worker:
            return "–"
        shown = job.worker if len(job.worker) <= 15 else f"…{job.worker[-14:]}"
        return format_html('<span title="{}">{}</span>', job.worker, shown)

    @admin.display(description="created", ordering="created_at")
    def created(self, job: Job) -> str:
        # Narrower than the default "Nov. 26, 2026, 3:10 p.m.", with its time zone.
        return f"{timezone.localtime(job.created_at):%Y-%m-%d %H:%M %Z}"

    @admin.display(description="total ms", ordering="finished_at")
    def latency(self, job: Job) -> str:
        return "–" if job.total_ms is None else f"{job.total_ms:.0f}"

    @admin.display(description="image")
    def image_preview(self, job: Job) -> str:
        if not job.image.name:
            return "The original was purged; the results are kept."
        return format_html(
            '<a href="{}">{}</a>', reverse("job-page", args=[job.pk]), thumbnail(job, 480, 320)
        )

    @admin.display(description="original")
    def original(self, job: Job) -> str:
        # Through the view that checks access: stored originals are not public MEDIA files.
        if not job.image.name:
            return "deleted (IMAGE_RETENTION_DAYS)"
        return format_html(
            '<a href="{}">{} ({} bytes)</a>',
            reverse("job-original", args=[job.pk]),
            job.original_name or job.pk,
            job.image_bytes,
        )

    @admin.display(description="batch")
    def batch_link(self, job: Job) -> str:
        if job.batch_id is None:
            return "–"
        url = reverse("admin:predictions_batch_change", args=[job.batch_id])
        return format_html('<a href="{}">{}</a> seq {}', url, job.batch_id, job.seq)

    @admin.display(description="delivery")
    def callback(self, job: Job) -> str:
        """The current attempt's delivery and its attempts, as the API's `callback` says,
        with a link to every delivery of the job (the webhooks app's admin, by URL name:
        predictions does not import it)."""
        callback = selectors.job_callback(job)
        if callback is None:
            return "–"
        rows = [
            (
                attempt["at"].isoformat(timespec="milliseconds"),
                attempt["status_code"] or "",
                attempt["error"],
                _ms(attempt["duration_ms"]),
            )
            for attempt in callback["attempts"]
        ]
        every = reverse("admin:webhooks_delivery_changelist") + f"?job__id__exact={job.pk}"
        return format_html(
            '{} <a href="{}">(every delivery)</a><table>{}</table>',
            callback["state"],
            every,
            format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>", rows),
        )

    @admin.display(description="per stage")
    def timings(self, job: Job) -> str:
        rows = [
            (
                name,
                "–" if moment is None else moment.isoformat(timespec="milliseconds"),
                "" if since is None else f"+{since:.0f} ms",
            )
            for name, moment, since in job.stages()
        ]
        rows.append(("preprocessing work", "", _ms(job.preprocess_ms)))
        rows.append(("model time for its batch", "", _ms(job.inference_ms)))
        return format_html(
            "<table>{}</table>",
            format_html_join("", "<tr><th>{}</th><td>{}</td><td>{}</td></tr>", rows),
        )

    @admin.action(description="Retry the selected failed jobs", permissions=["change"])
    def retry_failed(self, request: HttpRequest, queryset: QuerySet) -> None:
        selected = queryset.count()
        count = services.retry_jobs(jobs=queryset)
        self._tell(
            request,
            f"{count} failed job(s) queued again.",
            skipped=selected - count,
            why="only failed jobs are retried",
        )

    @admin.action(
        description="Re-run the selected finished jobs with the top-k given",
        permissions=["change"],
    )
    def rerun_with_top_k(self, request: HttpRequest, queryset: QuerySet) -> None:
        try:
            top_k = TOP_K_FIELD.clean(request.POST.get("top_k"))
        except ValidationError as exc:
            self.message_user(request, f"top-k: {' '.join(exc.messages)}", messages.ERROR)
            return
        selected = queryset.count()
        count = services.rerun_jobs(jobs=queryset, top_k=top_k)
        self._tell(
            request,
            f"{count} finished job(s) queued again with top-k {top_k}.",
            skipped=selected - count,
            why="only finished jobs are re-run",
        )

    @admin.action(description="Cancel selected jobs", permissions=["change"])
    def cancel_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        selected = queryset.count()
        count = services.cancel_jobs(jobs=queryset)
        self._tell(
            request,
            f"{count} job(s) cancelled.",
            skipped=selected - count,
            why="only unfinished jobs are cancelled",
        )

    def _tell(self, request: HttpRequest, done: str, *, skipped: int, why: str) -> None:
        """What an action did, and what it left alone and why."""
        self.message_user(request, done, messages.SUCCESS)
        if skipped:
            self.message_user(request, f"{skipped} job(s) skipped: {why}.", messages.WARNING)

    def delete_model(self, request: HttpRequest, obj: Job) -> None:
        services.delete_job(job=obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        services.delete_jobs(jobs=queryset)


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f} ms"


@admin.register(Batch)
class BatchAdmin(SearchByIdMixin, admin.ModelAdmin):
    list_display = ["id", "name", "owner", "priority", "job_count", "created_at"]
    list_filter = ["created_at", OwnerFilter]
    list_select_related = ["owner"]
    search_fields = ["owner__username", "name"]
    search_help_text = "A batch id (or its first 8 hex digits), its name, or its owner's user name."
    date_hierarchy = "created_at"
    show_full_result_count = False
    readonly_fields = ["id", "name", "owner", "priority", "created_at", "job_count"]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return selectors.with_jobs_count(super().get_queryset(request))

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # batches come from the API

    @admin.display(description="jobs")
    def job_count(self, batch: Batch) -> str:
        url = reverse("admin:predictions_job_changelist") + f"?batch={batch.pk}"
        return format_html('<a href="{}">{}</a>', url, batch.n_jobs or 0)

    def delete_model(self, request: HttpRequest, obj: Batch) -> None:
        services.delete_batches(batches=[obj])

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        services.delete_batches(batches=queryset)


@admin.register(Prediction)
class PredictionAdmin(admin.ModelAdmin):
    list_display = ["label", "rounded_score", "rank", "class_id", "job", "weights"]
    list_filter = ["rank"]
    list_select_related = ["job"]
    search_fields = ["label"]
    show_full_result_count = False
    readonly_fields = ["job", "rank", "class_id", "label", "rounded_score"]
    fields = readonly_fields

    @admin.display(description="score", ordering="score")
    def rounded_score(self, prediction: Prediction) -> str:
        return f"{prediction.score:.3f}"

    @admin.display(description="weights")
    def weights(self, prediction: Prediction) -> str:
        if prediction.job.random_weights:
            return mark_safe("<strong>random weights</strong>")
        return prediction.job.model_weights or "–"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False  # predictions go with their job
