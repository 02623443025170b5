"""The operations figures (predictions/operations.py): the same on /metrics and on the staff's
/ops/data.json, equal to what the database holds, and the page refused to non-staff."""

from datetime import timedelta

import pytest
from django.core.cache import cache
from django.utils import timezone

from kafka_wire.topics import describe_topics
from predictions.metrics import FIGURES_KEY, operations_families
from predictions.models import Job
from predictions.operations import STAGES, WINDOW_MINUTES, nearest_rank, stage_percentiles
from registry.services import register_version
from tests.factories import JobFactory, UserFactory
from tests.test_metrics import SCRAPER, samples

METRICS_TOKEN = SCRAPER["Authorization"].removeprefix("Bearer ")


def test_nearest_rank_takes_a_real_value_at_or_above_the_quantile():
    assert nearest_rank([3.0, 1.0, 2.0], 0.5) == 2.0
    assert nearest_rank([1.0, 2.0], 0.5) == 1.0
    assert nearest_rank([1.0, 2.0], 0.9) == 2.0
    assert nearest_rank(list(range(1, 101)), 0.99) == 99
    assert nearest_rank([], 0.5) is None


def test_a_stage_counts_only_jobs_with_both_of_its_ends():
    start = timezone.now()
    row = {field: None for pair in STAGES.values() for field in pair}
    rows = [
        {**row, "attempt_started_at": start, "finished_at": start + timedelta(seconds=4)},
        {**row, "admitted_at": start, "preprocessed_at": start + timedelta(seconds=1)},
    ]
    figures = stage_percentiles(rows)
    assert figures["total"] == {"0.5": 4.0, "0.9": 4.0, "0.99": 4.0}
    assert figures["preprocess"]["0.5"] == 1.0
    assert figures["inference"] == {"0.5": None, "0.9": None, "0.99": None}


def test_metrics_leave_out_what_kafka_did_not_give_rather_than_show_zero():
    entry = {
        "model": "resnet",
        "version": 1,
        "queue": {"queued": 2, "preprocessed": 0, "submitted": 1},
        "workers": None,
        "lag": None,
        "succeeded_last_hour": 5,
        "failed_last_hour": 1,
        "per_minute": [0] * (WINDOW_MINUTES - 1) + [3],
        "jobs_per_minute": 3,
        "stage_seconds": {"total": {"0.5": 1.5, "0.9": None, "0.99": None}},
    }
    operations = {"window_minutes": WINDOW_MINUTES, "versions": [entry], "dead_letters": None}
    found = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in operations_families(operations)
        for sample in family.samples
    }

    def key(name: str, **labels: str) -> tuple:
        return name, tuple(sorted({"model": "resnet", "version": "1", **labels}.items()))

    assert found[key("inferencehub_model_jobs_per_minute")] == 3
    assert found[key("inferencehub_model_queue_depth", status="queued")] == 2
    assert found[key("inferencehub_model_jobs_finished", status="failed")] == 1
    assert found[key("inferencehub_model_stage_seconds", stage="total", quantile="0.5")] == 1.5
    assert key("inferencehub_model_stage_seconds", stage="total", quantile="0.9") not in found
    names = {name for name, _ in found}
    assert not names & {
        "inferencehub_model_workers_alive",
        "inferencehub_model_lag",
        "inferencehub_dead_letter_messages",
    }


def make_jobs() -> dict:
    """Two versions of a model and the unregistered path, with jobs in every state: what the
    figures must show, as the rows below hold it."""
    first = register_version(name="resnet", source="builtin", input_size=224, classes=1000)
    second = register_version(name="resnet", source="builtin", input_size=224, classes=1000)
    now = timezone.now()

    def finished(version, status, ago_s: float, stage_s: tuple[float, ...]) -> Job:
        started = now - timedelta(seconds=ago_s + sum(stage_s))
        moments, at = [], started
        for seconds in stage_s:
            at += timedelta(seconds=seconds)
            moments.append(at)
        admitted, preprocessed, submitted, inferred, stored = moments
        return JobFactory(
            routed_to=version,
            status=status,
            created_at=started,
            attempt_started_at=started,
            admitted_at=admitted,
            preprocessed_at=preprocessed,
            submitted_at=submitted,
            inferred_at=inferred,
            finished_at=stored,
        )

    # Stage times in whole seconds: waiting, preprocess, to Kafka, inference, store.
    finished(first, Job.Status.SUCCEEDED, 10, (1, 2, 1, 3, 1))
    finished(first, Job.Status.SUCCEEDED, 12, (2, 3, 1, 5, 1))
    finished(first, Job.Status.FAILED, 300, (1, 1, 1, 1, 1))
    # Cancelled a moment ago: not an answer, so in no count of jobs per minute.
    finished(first, Job.Status.CANCELLED, 5, (1, 1, 1, 1, 1))
    finished(first, Job.Status.SUCCEEDED, 2 * 3600, (9, 9, 9, 9, 9))  # before the hour
    for status in (Job.Status.QUEUED, Job.Status.QUEUED, Job.Status.SUBMITTED):
        JobFactory(routed_to=first, status=status)
    JobFactory(routed_to=second, status=Job.Status.PREPROCESSED)
    JobFactory(routed_to=None, status=Job.Status.QUEUED)
    return {
        "resnet:1": {
            "queue": {"queued": 2, "preprocessed": 0, "submitted": 1},
            "jobs_per_minute": 2,
            "succeeded_last_hour": 2,
            "failed_last_hour": 1,
            "stage_seconds": {
                "waiting": {"0.5": 1.0, "0.9": 2.0, "0.99": 2.0},
                "preprocess": {"0.5": 2.0, "0.9": 3.0, "0.99": 3.0},
                "to_kafka": {"0.5": 1.0, "0.9": 1.0, "0.99": 1.0},
                "inference": {"0.5": 3.0, "0.9": 5.0, "0.99": 5.0},
                "store": {"0.5": 1.0, "0.9": 1.0, "0.99": 1.0},
                "total": {"0.5": 8.0, "0.9": 12.0, "0.99": 12.0},
            },
        },
        "resnet:2": {
            "queue": {"queued": 0, "preprocessed": 1, "submitted": 0},
            "jobs_per_minute": 0,
            "succeeded_last_hour": 0,
            "failed_last_hour": 0,
            "stage_seconds": {stage: dict.fromkeys(("0.5", "0.9", "0.99")) for stage in STAGES},
        },
        "unregistered": {
            "queue": {"queued": 1, "preprocessed": 0, "submitted": 0},
            "jobs_per_minute": 0,
            "succeeded_last_hour": 0,
            "failed_last_hour": 0,
            "stage_seconds": {stage: dict.fromkeys(("0.5", "0.9", "0.99")) for stage in STAGES},
        },
    }


def version_name(entry: dict) -> str:
    return entry["model"] if entry["version"] is None else f"{entry['model']}:{entry['version']}"


def metrics_figures(scraped: dict, name: str) -> dict:
    """The figures /metrics shows for one version, in the JSON's shape."""
    model, _, version = name.partition(":")
    labels = (("model", model), ("version", version))

    def value(series: str, *more: tuple[str, str]):
        return scraped.get((series, tuple(sorted((*labels, *more)))))

    return {
        "queue": {
            status: value("inferencehub_model_queue_depth", ("status", status))
            for status in ("queued", "preprocessed", "submitted")
        },
        "workers": value("inferencehub_model_workers_alive"),
        "lag": value("inferencehub_model_lag"),
        "jobs_per_minute": value("inferencehub_model_jobs_per_minute"),
        "succeeded_last_hour": value("inferencehub_model_jobs_finished", ("status", "succeeded")),
        "failed_last_hour": value("inferencehub_model_jobs_finished", ("status", "failed")),
        "stage_seconds": {
            stage: {
                q: value("inferencehub_model_stage_seconds", ("stage", stage), ("quantile", q))
                for q in ("0.5", "0.9", "0.99")
            }
            for stage in STAGES
        },
    }


@pytest.fixture
def staff_client(client):
    client.force_login(UserFactory(is_staff=True))
    return client


@pytest.mark.django_db
def test_ops_data_equals_metrics_and_the_database(settings, staff_client, kafka_topics):
    settings.METRICS_TOKEN = METRICS_TOKEN
    cache.delete(FIGURES_KEY)
    expected = make_jobs()

    data = staff_client.get("/ops/data.json").json()
    scraped = samples(staff_client.get("/metrics", headers=SCRAPER).content.decode())

    shown = {version_name(entry): entry for entry in data["versions"]}
    assert set(shown) == set(expected)
    for name, figures in expected.items():
        for key, value in figures.items():
            assert shown[name][key] == value, (name, key)
        from_metrics = metrics_figures(scraped, name)
        # /metrics leaves out what is not known (a stage no job has timed, the unregistered
        # path's workers); the JSON says null, which reads the same here.
        for key, value in from_metrics.items():
            assert value == shown[name][key], (name, key)
    assert shown["resnet:1"]["per_minute"][-1] == 2
    assert sum(shown["resnet:1"]["per_minute"]) == 3
    # No worker runs here: Kafka's answer is 0 members, not "unreachable".
    assert shown["resnet:1"]["workers"] == 0
    assert shown["unregistered"]["workers"] is None
    statuses = {
        status: scraped[("inferencehub_jobs", (("status", status),))] for status in data["jobs"]
    }
    assert (
        data["jobs"]
        == statuses
        == {
            "queued": 3,
            "preprocessed": 1,
            "submitted": 1,
            "succeeded": 3,
            "failed": 1,
            "cancelled": 1,
            "expired": 0,
        }
    )
    end_offsets = sum(
        row.end_offset for row in describe_topics({settings.KAFKA_DEAD_LETTER_TOPIC: None})
    )
    assert data["dead_letters"] == scraped[("inferencehub_dead_letter_messages", ())] == end_offsets


@pytest.mark.django_db
def test_ops_page_is_for_staff_only(client):
    assert client.get("/ops/").status_code == 302
    assert client.get("/ops/")["Location"].startswith("/accounts/login/?next=/ops/")
    client.force_login(UserFactory())
    assert client.get("/ops/").status_code == 404
    assert client.get("/ops/data.json").status_code == 404
    client.force_login(UserFactory(is_staff=True))
    page = client.get("/ops/")
    assert page.status_code == 200
    assert b"uPlot.iife.min.js" in page.content
    assert b'href="/ops/"' in page.content
