from django.contrib import admin

from predictions.models import Batch, Job, Prediction


class PredictionInline(admin.TabularInline):
    model = Prediction
    extra = 0
    can_delete = False
    readonly_fields = ["rank", "class_id", "label", "score"]


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ["id", "status", "owner", "batch", "seq", "model_name", "worker", "created_at"]
    list_filter = ["status", "model_name", "created_at"]
    search_fields = ["id", "predictions__label"]
    list_select_related = ["owner", "batch"]
    readonly_fields = [f.name for f in Job._meta.fields]
    inlines = [PredictionInline]


@admin.register(Batch)
class BatchAdmin(admin.ModelAdmin):
    list_display = ["id", "owner", "created_at"]
    list_select_related = ["owner"]
    search_fields = ["id"]
