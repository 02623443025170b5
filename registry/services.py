"""Every write to the model registry: the `models` command and the admin's actions call these."""

from django.db import transaction
from django.db.models import Max

from registry.models import ModelVersion, RegisteredModel
from registry.selectors import UnknownModel, find_version, forget_routes


@transaction.atomic
def register_version(
    *,
    name: str,
    source: str,
    input_size: int,
    classes: int,
    path: str = "",
    labels_file: str = "",
    weights: str = "",
    package_sha256: str = "",
    runtime: str = "tensorflow",
    precision: str = "fp32",
    input_spec: dict | None = None,
    default_timeout_s: int | None = None,
) -> ModelVersion:
    """Add the next version of name (1 for a new model), enabled. The first model registered
    becomes the default, so that uploads naming no model have one to go to."""
    model, created = RegisteredModel.objects.get_or_create(name=name)
    if created:
        model.full_clean()
        if not RegisteredModel.objects.filter(is_default=True).exists():
            model.is_default = True
            model.save(update_fields=["is_default"])
    # Locks the model's row, so two registrations cannot take the same number.
    RegisteredModel.objects.select_for_update().get(pk=model.pk)
    last = model.versions.aggregate(last=Max("version"))["last"] or 0
    return ModelVersion.objects.create(
        model=model,
        version=last + 1,
        source=source,
        path=path,
        labels_file=labels_file,
        weights=weights,
        package_sha256=package_sha256,
        runtime=runtime,
        precision=precision,
        input_size=input_size,
        input_spec=input_spec or {},
        classes=classes,
        default_timeout_s=default_timeout_s,
    )


@transaction.atomic
def register_if_new(*, name: str, **fields) -> tuple[ModelVersion, bool]:
    """NAME's latest version when it was registered with these same fields (for a package:
    the same manifest hash), else the next version, as register_version; and whether it is
    new. So that a deployment can register what it serves at every start without adding a
    version each time. A disabled latest version stays as it is."""
    latest = (
        ModelVersion.objects.select_for_update()
        .filter(model__name=name)
        .order_by("-version")
        .first()
    )
    if latest is not None and all(
        getattr(latest, field) == value for field, value in fields.items()
    ):
        return latest, False
    return register_version(name=name, **fields), True


@transaction.atomic
def set_enabled(*, name: str, version: int | None, enabled: bool) -> int:
    """Enable or disable one version, or every version of name when version is None;
    returns how many changed state. Raises UnknownModel for an unknown model or version."""
    if find_version(name, version) is None:
        what = name if version is None else f"{name}:{version}"
        raise UnknownModel(f"no registered model {what}")
    versions = ModelVersion.objects.filter(model__name=name)
    if version is not None:
        versions = versions.filter(version=version)
    changed = versions.exclude(enabled=enabled).update(enabled=enabled)
    forget_routes()
    return changed


@transaction.atomic
def set_default(*, name: str) -> RegisteredModel:
    model = RegisteredModel.objects.select_for_update().filter(name=name).first()
    if model is None:
        raise UnknownModel(f"no registered model {name}")
    RegisteredModel.objects.exclude(pk=model.pk).filter(is_default=True).update(is_default=False)
    model.is_default = True
    model.save(update_fields=["is_default"])  # post_save forgets the routes
    return model
