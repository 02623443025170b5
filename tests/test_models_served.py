"""Several models served side by side by real workers over real Kafka: each registered
version has its own requests topic and consumer group, uploads are routed by `model`, and
each result names the model and version that answered."""

import io
import time

import pytest
from django.core.management import call_command

from predictions.models import Job
from registry.models import ModelVersion
from stack import processes
from stack.harness import PYTHON
from tests.conftest import started_processes
from tests.test_pipeline import wait_until_finished
from tests.test_trained_model import COLOURS, png, train_colour_model

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="module")
def colour_model(tmp_path_factory):
    return train_colour_model(tmp_path_factory.mktemp("colour-model"))


@pytest.fixture(scope="module")
def bridge(kafka_topics, celery_worker, start_process):
    return start_process(processes.bridge(PYTHON), name="models-bridge")


@pytest.fixture
def start_worker(process_env):
    """start_worker("NAME:VERSION") starts `run_worker --model NAME:VERSION` and waits until
    it consumes; the test's workers are stopped when it ends."""
    with started_processes(process_env) as start:
        yield lambda ref: start(
            processes.worker(PYTHON, f"worker-{ref.replace(':', '-')}", "--model", ref)
        )


def register(name: str, *source: str) -> None:
    call_command("models", "register", name, *source, stdout=io.StringIO())


def register_colours(name: str, colour_model) -> None:
    register(
        name,
        *("--keras", str(colour_model / "colours.keras")),
        *("--labels", str(colour_model / "labels.txt"), "--input-size", "32"),
    )


def create_topics() -> None:
    from kafka_wire.topics import ensure_topics

    ensure_topics(models=[version.route for version in ModelVersion.objects.all()])


def post_colour(api, colour: str, **fields):
    files = [("image", (f"{colour}.png", png(COLOURS[colour]), "application/octet-stream"))]
    return api.post(f"{api.base_url}/api/jobs/", files=files, data={"top_k": 3, **fields})


def served(api) -> dict[str, dict]:
    return {
        f"{row['name']}:{row['version']}": row
        for row in api.get(f"{api.base_url}/api/models/").json()
    }


def wait_for(api, ref: str, *, ready: bool, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = served(api)[ref]
        if row["ready"] is ready:
            return row
        time.sleep(0.5)
    raise AssertionError(f"{ref} not ready={ready} within {timeout}s: {row}")


def test_two_models_and_a_pinned_old_version_are_served_side_by_side(
    bridge, colour_model, start_worker, api
):
    register("resnet", "--builtin", "resnet50", "--weights", "random")
    register_colours("colours", colour_model)
    register_colours("colours", colour_model)
    create_topics()
    for ref in ("resnet:1", "colours:1", "colours:2"):
        start_worker(ref)

    default = post_colour(api, "red")
    latest = post_colour(api, "green", model="colours")
    pinned = post_colour(api, "blue", model="colours", model_version=1)
    for response in (default, latest, pinned):
        assert response.status_code == 202, response.text
    jobs = {
        job.original_name: job
        for job in wait_until_finished([r.json()["id"] for r in (default, latest, pinned)])
    }
    answered = {
        name: (job.status, job.model_name, job.model_version, job.runtime, job.precision)
        for name, job in jobs.items()
    }
    assert answered == {
        "red.png": ("succeeded", "resnet", 1, "tensorflow", "fp32"),
        "green.png": ("succeeded", "colours", 2, "tensorflow", "fp32"),
        "blue.png": ("succeeded", "colours", 1, "tensorflow", "fp32"),
    }
    for colour in ("green", "blue"):
        assert jobs[f"{colour}.png"].predictions.order_by("rank").first().label == colour
    job_api = api.get(f"{api.base_url}/api/jobs/{pinned.json()['id']}/").json()
    assert {k: job_api["model"][k] for k in ("name", "version", "runtime", "precision")} == {
        "name": "colours",
        "version": 1,
        "runtime": "tensorflow",
        "precision": "fp32",
    }

    # The lag counts from each group's last commit, made every KAFKA_COMMIT_INTERVAL_MS.
    every_one_served = {
        "resnet:1": (1, True, 0),
        "colours:1": (1, True, 0),
        "colours:2": (1, True, 0),
    }
    deadline = time.monotonic() + 15
    while True:
        rows = {ref: (row["workers"], row["ready"], row["lag"]) for ref, row in served(api).items()}
        if rows == every_one_served or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert rows == every_one_served

    call_command("models", "disable", "colours:1", stdout=io.StringIO())
    refused = post_colour(api, "blue", model="colours", model_version=1)
    assert refused.status_code == 400
    assert refused.json()["error"] == (
        "model 'colours' version 1 is disabled; available: colours:2, resnet:1"
    )
    assert Job.objects.count() == 3


def test_a_request_for_a_model_without_a_worker_waits_in_kafka_until_one_starts(
    bridge, colour_model, start_worker, api
):
    register_colours("late", colour_model)
    create_topics()
    assert served(api)["late:1"]["ready"] is False

    response = post_colour(api, "red", model="late")
    assert response.status_code == 202, response.text
    model = response.json()["model"]
    assert (model["name"], model["version"], model["ready"]) == ("late", 1, False)
    job_id = response.json()["id"]
    deadline = time.monotonic() + 30
    while Job.objects.get(pk=job_id).status != Job.Status.SUBMITTED:
        assert time.monotonic() < deadline, "the request never reached Kafka"
        time.sleep(0.25)
    assert wait_for(api, "late:1", ready=False)["lag"] == 1

    worker = start_worker("late:1")
    (job,) = wait_until_finished([job_id])
    assert (job.status, job.model_name, job.model_version) == ("succeeded", "late", 1)
    assert job.predictions.order_by("rank").first().label == "red"
    assert wait_for(api, "late:1", ready=True)["workers"] == 1

    worker.stop()
    assert wait_for(api, "late:1", ready=False)["workers"] == 0
    start_worker("late:1")
    assert wait_for(api, "late:1", ready=True)["workers"] == 1


def test_make_runs_workers_serve_the_model_bootstrap_registers(bridge, process_env, api):
    """bootstrap --model, then make run's worker command line (stack/processes.py):
    /api/models/ shows the model ready with that worker, and uploads naming no model go
    to it."""
    call_command(
        "bootstrap",
        *("--no-demo-user", "--model", processes.SERVED_MODEL, "--weights", "random"),
        stdout=io.StringIO(),
    )
    local = processes.local_stack(PYTHON, web_host="127.0.0.1", web_port=0, beat_schedule="s")
    worker = next(process for process in local if process.name == "worker")
    ref = f"{processes.SERVED_MODEL}:1"
    with started_processes(process_env) as start:
        start(worker)
        assert wait_for(api, ref, ready=True)["workers"] == 1
        response = post_colour(api, "red")
        assert response.status_code == 202, response.text
        (job,) = wait_until_finished([response.json()["id"]])
    assert (job.status, job.model_name, job.model_version) == (
        "succeeded",
        processes.SERVED_MODEL,
        1,
    )
    assert ModelVersion.objects.get().model.is_default
