"""The operator's view of webhook deliveries and their attempts; read-only, as they are
a record of what was sent. Secrets are not shown: each user reads theirs from the API."""

from django.contrib import admin
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html

from webhooks.models import Attempt, Delivery


class AttemptInline(admin.TabularInline):
    model = Attempt
    extra = 0
    can_delete = False
    fields = readonly_fields = ["at", "status_code", "error", "duration_ms"]

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


@admin.register(Delivery)
class DeliveryAdmin(admin.ModelAdmin):
    list_display = ["delivery_id", "job_link", "job_attempt", "state", "url", "created_at"]
    list_filter = ["state"]
    list_select_related = ["job"]
    search_fields = ["=delivery_id", "=job__id", "url"]
    readonly_fields = [
        "delivery_id",
        "job_link",
        "job_attempt",
        "url",
        "state",
        "created_at",
        "next_attempt_at",
        "finished_at",
        "body",
    ]
    fields = readonly_fields
    inlines = [AttemptInline]
    show_full_result_count = False

    @admin.display(description="job")
    def job_link(self, delivery: Delivery) -> str:
        url = reverse("admin:predictions_job_change", args=[delivery.job_id])
        return format_html('<a href="{}">{}</a>', url, delivery.job_id)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False
