"""The model registry in the admin: staff with the registry's rights see and edit it."""

from django.contrib import admin

from workers import services
from workers.models import ModelVersion, RegisteredModel


class ModelVersionInline(admin.TabularInline):
    model = ModelVersion
    extra = 0
    fields = ["version", "source", "runtime", "precision", "input_size", "classes", "enabled"]
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
        self.message_user(request, f"{model} is the default model")


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
        "created_at",
    ]
    list_editable = ["enabled"]
    list_filter = ["model", "enabled", "runtime", "precision"]
    readonly_fields = [
        "model",
        "version",
        "source",
        "path",
        "labels_file",
        "weights",
        "runtime",
        "precision",
        "input_size",
        "classes",
        "created_at",
    ]

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        # Jobs keep pointing at the version that served them; disable it instead.
        return False
