"""The admin's list filters: text boxes for values too many to list (batch ids, owners),
and choices named in advance, so that listing them reads nothing."""

from django.contrib import admin
from django.db.models import QuerySet

from predictions import selectors
from predictions.models import Batch
from registry.models import ModelVersion
from serving.inference import PRECISIONS, RUNTIMES


class InputFilter(admin.SimpleListFilter):
    """A text box instead of a list of choices, for values too many to list."""

    template = "admin/input_filter.html"

    def lookups(self, request, model_admin):
        # Never shown, but a filter with no lookups is hidden altogether.
        return [("", "")]

    def choices(self, changelist):
        all_choice = next(super().choices(changelist))
        all_choice["query_parts"] = [
            (key, value)
            for key, values in changelist.get_filters_params().items()
            if key != self.parameter_name
            for value in (values if isinstance(values, list) else [values])
        ]
        if changelist.query:
            all_choice["query_parts"].append(("q", changelist.query))
        yield all_choice


class BatchFilter(InputFilter):
    title = "batch id"
    parameter_name = "batch"

    def queryset(self, request, queryset: QuerySet) -> QuerySet:
        if not self.value():
            return queryset
        batches = selectors.with_id(Batch.objects.all(), self.value())
        if batches is None:
            return queryset.none()
        return queryset.filter(batch__in=batches.values("pk"))


class OwnerFilter(InputFilter):
    title = "owner (user name)"
    parameter_name = "owner"

    def queryset(self, request, queryset: QuerySet) -> QuerySet:
        if not self.value():
            return queryset
        return queryset.filter(owner__username=self.value().strip())


class ChoicesFilter(admin.SimpleListFilter):
    """Choices named in advance, so listing them reads nothing."""

    choices_list: list[str] = []

    def lookups(self, request, model_admin):
        return [(value, value) for value in self.choices_list]

    def queryset(self, request, queryset: QuerySet) -> QuerySet:
        if self.value():
            return queryset.filter(**{self.parameter_name: self.value()})
        return queryset


class RuntimeFilter(ChoicesFilter):
    title = parameter_name = "runtime"
    choices_list = list(RUNTIMES)


class PrecisionFilter(ChoicesFilter):
    title = parameter_name = "precision"
    choices_list = list(PRECISIONS)


class ModelFilter(admin.SimpleListFilter):
    """The registered model versions (a small table), not the distinct values of jobs."""

    title = "model"
    parameter_name = "model"

    def lookups(self, request, model_admin):
        versions = ModelVersion.objects.select_related("model").order_by("model__name", "version")
        return [(str(version), str(version)) for version in versions]

    def queryset(self, request, queryset: QuerySet) -> QuerySet:
        if not self.value():
            return queryset
        name, _, version = self.value().rpartition(":")
        if not version.isdecimal():
            return queryset.filter(model_name=self.value())
        return queryset.filter(model_name=name, model_version=int(version))
