"""The model registry: the `models` command, choosing a model per upload, the naming of each
version's topic and group, and GET /api/models/ read from the registry and from Kafka."""

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from kafka_wire.config import model_route
from predictions.models import Job
from registry.models import ModelVersion, RegisteredModel
from tests.conftest import DATA
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def models(*args: str) -> str:
    from io import StringIO

    out = StringIO()
    call_command("models", *args, stdout=out)
    return out.getvalue()


@pytest.fixture
def labels(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("red\ngreen\nblue\n")
    keras_file = tmp_path / "colours.keras"
    keras_file.write_bytes(b"not loaded at registration")
    return keras_file, path


@pytest.fixture
def client():
    client = APIClient()
    client.force_authenticate(UserFactory())
    return client


def upload(client, **fields):
    headers = {name: fields.pop(name) for name in list(fields) if name.startswith("HTTP_")}
    image = SimpleUploadedFile("fox.png", (DATA / "fox.png").read_bytes())
    return client.post("/api/jobs/", {"image": image, **fields}, format="multipart", **headers)


def test_register_numbers_versions_and_the_first_model_becomes_the_default(labels):
    keras_file, labels_file = labels
    printed = models("register", "resnet", "--builtin", "resnet50", "--weights", "random")
    assert "registered resnet:1" in printed
    assert model_route("resnet", 1).requests_topic in printed
    models("register", "colours", "--keras", str(keras_file), "--labels", str(labels_file))
    models("register", "colours", "--keras", str(keras_file), "--labels", str(labels_file))
    colours = ModelVersion.objects.filter(model__name="colours").order_by("version")
    assert [(v.version, v.classes, v.source) for v in colours] == [
        (1, 3, "keras"),
        (2, 3, "keras"),
    ]
    assert list(RegisteredModel.objects.filter(is_default=True)) == [
        RegisteredModel.objects.get(name="resnet")
    ]
    models("set-default", "colours")
    assert RegisteredModel.objects.get(is_default=True).name == "colours"
    listing = models("list")
    assert "colours:2" in listing and "resnet:1" in listing


def test_register_refuses_a_bad_name_and_keras_without_labels(labels):
    keras_file, _ = labels
    with pytest.raises(CommandError, match="lower-case letters"):
        models("register", "Bad.Name", "--builtin", "resnet50")
    with pytest.raises(CommandError, match="--labels"):
        models("register", "colours", "--keras", str(keras_file))
    assert not ModelVersion.objects.exists()


def test_enable_and_disable_name_a_version_or_every_version(labels):
    models("register", "resnet", "--builtin", "resnet50")
    models("register", "resnet", "--builtin", "resnet50")
    models("disable", "resnet:1")
    assert dict(ModelVersion.objects.values_list("version", "enabled")) == {1: False, 2: True}
    models("disable", "resnet")
    assert not ModelVersion.objects.filter(enabled=True).exists()
    models("enable", "resnet:2")
    assert dict(ModelVersion.objects.values_list("version", "enabled")) == {1: False, 2: True}
    with pytest.raises(CommandError, match="no registered model resnet:7"):
        models("enable", "resnet:7")


def test_each_version_has_its_own_topic_and_group_built_on_the_run_settings(settings):
    one, two = model_route("colours", 1), model_route("colours", 2)
    assert one.requests_topic == f"{settings.KAFKA_REQUESTS_TOPIC}.colours.v1"
    assert one.worker_group == f"{settings.KAFKA_WORKER_GROUP}.colours.v1"
    assert len({one.requests_topic, two.requests_topic, one.worker_group, two.worker_group}) == 4


def test_uploads_naming_no_model_take_the_unregistered_path_while_none_is_registered(client):
    response = upload(client)
    assert response.status_code == 202, response.json()
    job = Job.objects.get(pk=response.json()["id"])
    assert job.routed_to is None
    assert "ready" not in response.json()["model"]


@pytest.mark.usefixtures("kafka_topics")
def test_an_upload_goes_to_the_default_or_named_model_at_its_latest_enabled_version(client, labels):
    keras_file, labels_file = labels
    models("register", "resnet", "--builtin", "resnet50")
    models("register", "colours", "--keras", str(keras_file), "--labels", str(labels_file))
    models("register", "colours", "--keras", str(keras_file), "--labels", str(labels_file))
    default = upload(client).json()
    latest = upload(client, model="colours").json()
    pinned = upload(client, model="colours", model_version=1).json()
    assert (default["model"]["name"], default["model"]["version"]) == ("resnet", 1)
    assert (latest["model"]["name"], latest["model"]["version"]) == ("colours", 2)
    assert (pinned["model"]["name"], pinned["model"]["version"]) == ("colours", 1)
    # No worker serves them: accepted, and the answer says so.
    assert default["model"]["ready"] is False


def test_an_unknown_or_disabled_model_is_refused_naming_the_available_ones(client, labels):
    models("register", "resnet", "--builtin", "resnet50")
    models("register", "resnet", "--builtin", "resnet50")
    models("disable", "resnet:2")
    for fields, problem in (
        ({"model": "nope"}, "model 'nope' is not registered"),
        ({"model": "resnet", "model_version": 2}, "model 'resnet' version 2 is disabled"),
        ({"model": "resnet", "model_version": 9}, "model 'resnet' version 9 is not registered"),
    ):
        response = upload(client, **fields)
        assert response.status_code == 400
        assert response.json()["error"] == f"{problem}; available: resnet:1"
    models("disable", "resnet")
    response = upload(client)
    assert response.status_code == 400
    assert response.json()["error"] == "model 'resnet' has no enabled version; available: none"
    assert not Job.objects.exists()


@pytest.mark.usefixtures("kafka_topics")
def test_models_api_lists_versions_with_workers_and_lag_from_kafka(client, labels):
    keras_file, labels_file = labels
    models("register", "resnet", "--builtin", "resnet50")
    models("register", "colours", "--keras", str(keras_file), "--labels", str(labels_file))
    models("disable", "colours:1")
    rows = client.get("/api/models/").json()
    assert [(r["name"], r["version"], r["enabled"], r["default"]) for r in rows] == [
        ("colours", 1, False, False),
        ("resnet", 1, True, True),
    ]
    for row in rows:
        assert (row["ready"], row["workers"]) == (False, 0)
        assert row["classes"] == (3 if row["name"] == "colours" else 1000)


def test_model_metadata_has_the_open_inference_protocol_shape(client, labels):
    keras_file, labels_file = labels
    models("register", "colours", "--keras", str(keras_file), "--labels", str(labels_file))
    models(
        *("register", "colours", "--keras", str(keras_file), "--labels", str(labels_file)),
        *("--input-size", "32"),
    )
    assert client.get("/api/models/colours/").json() == {
        "name": "colours",
        "versions": ["1", "2"],
        "platform": "tensorflow_keras",
        "inputs": [{"name": "image", "datatype": "UINT8", "shape": [-1, 32, 32, 3]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}],
        "input_spec": None,
    }
    missing = client.get("/api/models/nope/")
    assert missing.status_code == 404
    assert missing.json()["error"] == "no model 'nope'; available: colours:1, colours:2"


@pytest.mark.usefixtures("kafka_topics")
def test_kafka_topics_creates_and_stack_status_shows_every_registered_version(capsys):
    from kafka_wire.topics import admin_client

    models("register", "resnet", "--builtin", "resnet50")
    models("register", "resnet", "--builtin", "resnet50")
    models("disable", "resnet:1")
    call_command("kafka_topics", "create")
    topics = admin_client().list_topics(timeout=10).topics
    for version in (1, 2):
        assert model_route("resnet", version).requests_topic in topics
    capsys.readouterr()
    with pytest.raises(CommandError, match="the default model has no live worker: resnet:2"):
        call_command("stack_status")
    out = capsys.readouterr().out
    assert f"{model_route('resnet', 2).requests_topic}[0]" in out
    lines = {line.split()[0]: line.split()[1:] for line in out.splitlines() if "resnet:" in line}
    assert lines == {
        "resnet:1": ["0", "workers", "lag", "0", "group", model_route("resnet", 1).worker_group]
        + ["disabled", "default"],
        "resnet:2": ["0", "workers", "lag", "0", "group", model_route("resnet", 2).worker_group]
        + ["default"],
    }


def fake_package(folder, *, created_at: str):
    """A folder read_manifest accepts (registration reads the manifest and the labels, and
    loads nothing); created_at stands for another export of the same model."""
    import json

    from serving.inference import sha256_of
    from serving.package import FORMAT, LABELS, MANIFEST, MODEL_BIN, MODEL_XML

    folder.mkdir(exist_ok=True)
    for name, text in ((MODEL_XML, "<net/>"), (MODEL_BIN, "weights"), (LABELS, "a\nb\n")):
        (folder / name).write_text(text)
    manifest = {
        "format": FORMAT,
        "name": "resnet50",
        "precision": "int8",
        "input_size": 224,
        "input_transform": "caffe",
        "files": {name: sha256_of(folder / name) for name in (MODEL_XML, MODEL_BIN, LABELS)},
        "created_at": created_at,
    }
    (folder / MANIFEST).write_text(json.dumps(manifest))
    return folder


def test_register_if_new_adds_a_version_only_when_the_package_changed(tmp_path):
    package = fake_package(tmp_path / "package", created_at="2026-01-01T00:00:00Z")
    register = ["register", "served", "--package", str(package), "--if-new", "--default"]
    models("register", "other", "--builtin", "resnet50")  # the default until --default
    assert "registered served:1" in models(*register)
    assert "already registered: served:1" in models(*register)
    fake_package(package, created_at="2026-02-01T00:00:00Z")  # exported again, same folder
    assert "registered served:2" in models(*register)
    served = ModelVersion.objects.filter(model__name="served").order_by("version")
    assert [(v.version, v.source, v.precision, v.classes) for v in served] == [
        (1, "package", "int8", 2),
        (2, "package", "int8", 2),
    ]
    assert served[0].package_sha256 != served[1].package_sha256
    assert RegisteredModel.objects.get(is_default=True).name == "served"


def test_register_if_new_adds_a_version_when_the_builtin_weights_changed():
    register = ["register", "resnet", "--builtin", "resnet50", "--if-new"]
    for weights in ("random", "random", "imagenet", "imagenet"):
        models(*register, "--weights", weights)
    versions = ModelVersion.objects.filter(model__name="resnet").order_by("version")
    assert [(v.version, v.weights) for v in versions] == [(1, "random"), (2, "imagenet")]


@pytest.mark.usefixtures("kafka_topics")
def test_bootstrap_registers_the_served_model_once_as_the_default_with_its_topic(tmp_path):
    from kafka_wire.topics import admin_client

    package = fake_package(tmp_path / "package", created_at="2026-01-01T00:00:00Z")
    models("register", "other", "--builtin", "resnet50")
    for _ in range(2):
        call_command("bootstrap", "--no-demo-user", "--model", "served", "--package", str(package))
    (version,) = ModelVersion.objects.filter(model__name="served")
    assert (version.version, version.path, version.model.is_default) == (1, str(package), True)
    assert model_route("served", 1).requests_topic in admin_client().list_topics(timeout=10).topics


def test_staff_with_the_registry_rights_edit_it_in_the_admin_and_others_cannot():
    from django.contrib.auth.models import Permission
    from django.test import Client

    models("register", "resnet", "--builtin", "resnet50")
    models("register", "colours", "--builtin", "resnet50")
    outsider = Client()
    outsider.force_login(UserFactory(is_staff=True))
    assert outsider.get("/admin/registry/modelversion/").status_code == 403

    operator = UserFactory(is_staff=True)
    operator.user_permissions.set(
        Permission.objects.filter(
            content_type__app_label="registry", codename__regex="^(view|change)_"
        )
    )
    browser = Client()
    browser.force_login(operator)
    assert "colours:1" in browser.get("/admin/registry/modelversion/").content.decode()
    colours = RegisteredModel.objects.get(name="colours")
    response = browser.post(
        "/admin/registry/registeredmodel/",
        {"action": "make_default", "_selected_action": [colours.pk]},
        follow=True,
    )
    assert response.redirect_chain[-1][1] == 302
    assert "The default model is now colours." in response.content.decode()
    assert RegisteredModel.objects.get(is_default=True) == colours
    version = ModelVersion.objects.get(model=colours)
    page = browser.get(f"/admin/registry/modelversion/{version.pk}/change/").content.decode()
    # As registered: only `enabled` is a field to edit; the package's hash is not.
    assert 'name="package_sha256"' not in page and 'name="enabled"' in page
    listing = browser.get("/admin/registry/modelversion/").content.decode()
    for column in ("ready", "workers", "lag"):
        assert f'class="column-{column}' in listing
    response = browser.post(f"/admin/registry/modelversion/{version.pk}/change/", {"enabled": ""})
    assert response.status_code == 302
    assert not ModelVersion.objects.get(pk=version.pk).enabled


def test_jobs_say_which_model_version_answered_in_the_admin_list_and_filter():
    from django.test import Client

    from tests.factories import JobFactory

    JobFactory(model_name="colours", model_version=2, status=Job.Status.SUCCEEDED)
    JobFactory(model_name="resnet", model_version=1, status=Job.Status.SUCCEEDED)
    admin = Client()
    admin.force_login(UserFactory(is_staff=True, is_superuser=True))
    page = admin.get("/admin/predictions/job/", {"model_version": "2"}).content.decode()
    assert "colours:2" in page and "resnet:1" not in page


@pytest.mark.usefixtures("kafka_topics")
def test_an_idempotency_key_sent_again_with_another_model_is_refused_naming_it(client):
    models("register", "resnet", "--builtin", "resnet50")
    models("register", "other", "--builtin", "resnet50")
    first = upload(client, model="resnet", HTTP_IDEMPOTENCY_KEY="key-1")
    assert first.status_code == 202
    again = upload(client, model="resnet", HTTP_IDEMPOTENCY_KEY="key-1")
    assert (again.status_code, again.json()["id"]) == (202, first.json()["id"])
    other = upload(client, model="other", HTTP_IDEMPOTENCY_KEY="key-1")
    assert other.status_code == 422
    assert other.json()["error"] == (
        "Idempotency-Key key-1 was used for another upload: model resnet then; "
        "this upload has model other"
    )


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("kafka_topics")
def test_submit_chooses_a_model_and_an_unknown_one_is_refused_naming_the_available(
    live_server, user, process_env
):
    from rest_framework.authtoken.models import Token

    from tests.test_commands import run_submit

    models("register", "resnet", "--builtin", "resnet50")
    token = Token.objects.create(user=user).key
    common = (str(DATA / "fox.png"), "--server", live_server.url, "--json", "--timeout", "1")
    refused = run_submit(user, process_env, *common, "--model", "nope", token=token)
    assert "model 'nope' is not registered; available: resnet:1" in refused.stdout
    run_submit(user, process_env, *common, "--model", "resnet:1", token=token)
    job = Job.objects.get()
    assert (job.routed_to.model.name, job.routed_to.version) == ("resnet", 1)


def test_the_upload_page_offers_the_enabled_versions_default_model_first():
    from django.test import Client

    models("register", "alpha", "--builtin", "resnet50")
    models("register", "zeta", "--builtin", "resnet50")
    models("register", "zeta", "--builtin", "resnet50")
    models("disable", "zeta:1")
    models("set-default", "zeta")
    browser = Client()
    browser.force_login(UserFactory())
    page = browser.get("/").content.decode()
    choice = page.split('<select id="model"')[1].split("</select>")[0]
    options = [part.split('"')[0] for part in choice.split('<option value="')[1:]]
    assert options == ["zeta:2", "alpha:1"]


def test_uploads_are_routed_by_a_reading_at_most_seconds_old_and_a_registry_change_is_seen_at_once(
    labels, monkeypatch
):
    from common import readings
    from registry import selectors

    models("register", "resnet", "--builtin", "resnet50", "--weights", "random")
    first = selectors.servable_version(None, None, max_age_s=5)
    # As another process would change it: this process keeps its reading...
    ModelVersion.objects.filter(pk=first.pk).update(enabled=False)
    assert selectors.servable_version(None, None, max_age_s=5) == first
    # ...until it is older than the bound, when the registry is read again.
    later = readings.time.monotonic() + 5.1
    monkeypatch.setattr(readings.time, "monotonic", lambda: later)
    with pytest.raises(selectors.UnknownModel, match="has no enabled version"):
        selectors.servable_version(None, None, max_age_s=5)
    # A change through the services is seen by this process at once.
    models("enable", "resnet")
    assert selectors.servable_version(None, None, max_age_s=5) == first
    models("disable", "resnet")
    with pytest.raises(selectors.UnknownModel):
        selectors.servable_version(None, None, max_age_s=5)
