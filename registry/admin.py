"""The model registry in the admin: staff with the registry's rights see and edit it."""

import threading

from django.contrib import admin

from kafka_wire.topics import GroupState
from registry import services
from registry.models import ModelVersion, RegisteredModel
from registry.selectors import UPLOAD_STATE_MAX_AGE_S, serving_states

_page = threading.local()


class ModelVersionInline(admin.TabularInline):
    model = ModelVersion
    extra = 0
    fields = [
        "version",
        "source",
        "runtime",
        "precision",
        "input_size",
        "classes",
        "enabled",
        "default_timeout_s",
    ]
    readonly_fields = ["version", "source", "runtime", "precision", "input_size", "classes"]
    can_delete = False


@admin.register(RegisteredModel)
class RegisteredModelAdmin(admin.ModelAdmin):
    list_display = ["name", "is_default", "created_at"]
    readonly_fields = ["name", "is_default", "created_at"]
    inlines = [ModelVersionInline]
    actions = ["make_default"]

    def has_add_permission(self, request) -> bool:
        return False  # versions are registered with `manage.py models register`

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # jobs point at its versions; disable them instead

    @admin.action(description="Make the default model", permissions=["change"])
    def make_default(self, request, queryset) -> None:
        if queryset.count() != 1:
            self.message_user(request, "choose exactly one model", level="error")
            return
        model = services.set_default(name=queryset.get().name)
        # Worded so that the admin's capitalised first letter is not the model's name.
        self.message_user(request, f"The default model is now {model}.")


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = [
        "__str__",
        "source",
        "runtime",
        "precision",
        "input_size",
        "classes",
        "enabled",
        "ready",
        "workers",
        "lag",
        "created_at",
    ]
    list_editable = ["enabled"]
    list_filter = ["model", "enabled", "runtime", "precision"]
    # Everything but `enabled` and the default timeout comes from the registration and
    # stays as registered.
    readonly_fields = [
        field.name
        for field in ModelVersion._meta.fields
        if field.name not in ("id", "enabled", "default_timeout_s")
    ] + ["ready", "workers", "lag"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        # Jobs keep pointing at the version that served them; disable it instead.
        return False

    def changelist_view(self, request, extra_context=None):
        # One reading of the worker groups for the page, not one per row; kept per thread,
        # since one ModelAdmin serves every request.
        _page.states = None
        try:
            return super().changelist_view(request, extra_context)
        finally:
            _page.states = None

    def _state(self, version: ModelVersion) -> GroupState | None:
        states = getattr(_page, "states", None)
        if states is None:
            listed = [version] if version.pk is None else list(ModelVersion.objects.all())
            states = serving_states(listed, max_age_s=UPLOAD_STATE_MAX_AGE_S) or {}
            _page.states = states
        return states.get(version.pk)

    @admin.display(description="ready", boolean=True)
    def ready(self, version: ModelVersion) -> bool | None:
        state = self._state(version)
        return None if state is None else version.enabled and state.members > 0

    @admin.display(description="workers")
    def workers(self, version: ModelVersion) -> str:
        state = self._state(version)
        return "Kafka unreachable" if state is None else str(state.members)

    @admin.display(description="lag")
    def lag(self, version: ModelVersion) -> str:
        state = self._state(version)
        return "–" if state is None or state.lag is None else str(state.lag)
