"""Reads of the model registry: which version serves an upload, what is available, and
how each version is served (its live workers and lag, read from Kafka)."""

import logging

from django.db.models.signals import post_delete, post_save

from common.readings import kept_reading
from kafka_wire.producer import TRANSIENT_ERRORS
from kafka_wire.topics import GroupState, group_states
from registry.models import ModelVersion, RegisteredModel

logger = logging.getLogger(__name__)


class UnknownModel(ValueError):
    """No enabled registered version matches; the message names the ones available."""


def available() -> str:
    """The enabled versions, as an error message lists them: "a:1, a:2, b:1" or "none"."""
    versions = ModelVersion.objects.filter(enabled=True).select_related("model")
    return ", ".join(str(version) for version in versions.order_by("model__name", "version"))


def parse_reference(reference: str) -> tuple[str, int | None]:
    """ "NAME" or "NAME:VERSION" as (name, version or None); ValueError if malformed."""
    name, _, version = reference.partition(":")
    if not version:
        return name, None
    if not version.isdigit() or int(version) < 1:
        raise ValueError(f"{reference!r}: the version must be a number from 1, as in {name}:2")
    return name, int(version)


def every_version() -> list[ModelVersion]:
    """Every registered version with its model, by model name, newest first."""
    return list(ModelVersion.objects.select_related("model"))


def versions_of(name: str) -> list[ModelVersion]:
    """The model's versions, enabled or not, oldest first; [] for no such model."""
    return list(
        ModelVersion.objects.filter(model__name=name).select_related("model").order_by("version")
    )


def upload_choices() -> list[ModelVersion]:
    """The enabled versions an upload may choose: the default model's first, then by name,
    newest first per model."""
    return sorted(
        ModelVersion.objects.filter(enabled=True).select_related("model"),
        key=lambda v: (not v.model.is_default, v.model.name, -v.version),
    )


def default_model() -> RegisteredModel | None:
    return RegisteredModel.objects.filter(is_default=True).first()


def find_version(name: str, version: int | None = None) -> ModelVersion | None:
    """The version (the latest when None), enabled or not; None if there is none."""
    versions = ModelVersion.objects.filter(model__name=name).select_related("model")
    if version is not None:
        return versions.filter(version=version).first()
    return versions.order_by("-version").first()


# An upload may be routed by a reading of the registry this old: the registry changes a few
# times a day, uploads come hundreds a second, and the query cost a tenth of an upload.
# A change made in this process (services, admin) is seen at once; in others within this.
ROUTING_MAX_AGE_S = 5.0
_routes: dict[tuple[str | None, int | None], tuple[float, ModelVersion | None]] = {}


def forget_routes(**_signal) -> None:
    """Drop the process's routing readings (the registry changed; also a signal receiver)."""
    _routes.clear()


def servable_version(
    name: str | None, version: int | None, *, max_age_s: float = 0.0
) -> ModelVersion | None:
    """The enabled version an upload goes to: the named model (or the default one), at the
    given version or its latest enabled one, as the registry stood at most max_age_s ago.

    None when neither a model nor a default is registered: the upload takes the unregistered
    path (the requests topic every `run_worker` without --model reads). Raises UnknownModel
    naming the enabled versions when the model or version is unknown or disabled.
    """
    return kept_reading(_routes, (name, version), max_age_s, lambda: _find_servable(name, version))


def _find_servable(name: str | None, version: int | None) -> ModelVersion | None:
    # One query finds the version; the rest runs only to say why there is none.
    model = {"model__is_default": True} if name is None else {"model__name": name}
    enabled = ModelVersion.objects.filter(enabled=True, **model).select_related("model")
    if version is not None:
        enabled = enabled.filter(version=version)
    if chosen := enabled.order_by("-version").first():
        return chosen
    if name is None:
        default = default_model()
        if default is None:
            if version is not None:
                raise UnknownModel("model_version needs a model; no default model is set")
            return None
        name = default.name
    wanted = f"model {name!r}" if version is None else f"model {name!r} version {version}"
    known = find_version(name, version)
    state = "is disabled" if known is not None else "is not registered"
    if known is not None and version is None:
        state = "has no enabled version"
    raise UnknownModel(f"{wanted} {state}; available: {available() or 'none'}")


for _model in (RegisteredModel, ModelVersion):
    post_save.connect(forget_routes, sender=_model, dispatch_uid=f"forget_routes_save_{_model}")
    post_delete.connect(forget_routes, sender=_model, dispatch_uid=f"forget_routes_delete_{_model}")


# An upload's answer may say "ready" from a reading this old: reading the groups from Kafka
# on every upload would cost more than the rest of the upload.
UPLOAD_STATE_MAX_AGE_S = 5.0
_readings: dict[frozenset, tuple[float, dict]] = {}


def serving_states(
    versions: list[ModelVersion], *, max_age_s: float = 0.0
) -> dict[int, GroupState] | None:
    """Each version's live workers and lag by its primary key, as its consumer group and
    topic stand in Kafka (read at most max_age_s ago); None when Kafka does not answer."""
    routes = frozenset(version.route for version in versions)
    try:
        states = kept_reading(_readings, routes, max_age_s, lambda: group_states(list(routes)))
    except (*TRANSIENT_ERRORS, TimeoutError) as error:
        logger.warning("could not read the model groups from Kafka: %s", error)
        return None
    return {version.pk: states[version.route] for version in versions}


def is_ready(version: ModelVersion, states: dict[int, GroupState] | None) -> bool:
    """Enabled, with at least one live worker in its consumer group."""
    return version.enabled and states is not None and states[version.pk].members > 0
