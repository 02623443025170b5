"""Prometheus metrics of the web process and of a real inference worker; JSON logs."""

import json
import logging
import sys
import time

import pytest
import requests
from django.core.cache import cache
from prometheus_client.parser import text_string_to_metric_families

from common.logs import JsonFormatter
from predictions.metrics import FIGURES_KEY
from stack import processes
from stack.harness import PYTHON
from tests.conftest import DATA, free_port, started_processes
from tests.factories import JobFactory


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


SCRAPER = {"Authorization": "Bearer metrics-token-for-tests"}


@pytest.fixture
def scrape(settings, client):
    """Scrape /metrics with the test client, as Prometheus does (METRICS_TOKEN)."""
    settings.METRICS_TOKEN = "metrics-token-for-tests"
    cache.delete(FIGURES_KEY)  # another test's kept counts are not this one's
    return lambda: client.get("/metrics", headers=SCRAPER)


@pytest.mark.django_db
def test_web_metrics_show_jobs_by_status_request_latency_and_upload_to_stored(client, scrape):
    client.get("/healthz")
    response = scrape()
    assert response.status_code == 200
    scraped = samples(response.content.decode())
    assert scraped[("inferencehub_jobs", (("status", "queued"),))] == 0
    assert (
        scraped[
            (
                "inferencehub_http_request_duration_seconds_count",
                (("method", "GET"), ("route", "healthz"), ("status", "200")),
            )
        ]
        >= 1
    )
    assert ("inferencehub_upload_to_stored_seconds_count", ()) in scraped


@pytest.mark.django_db
def test_web_metrics_label_routes_by_name_and_leave_out_the_workers_metrics(client, scrape, user):
    job = JobFactory(owner=user)
    client.force_login(user)
    assert client.get(f"/api/jobs/{job.pk}/").status_code == 200
    assert client.get(f"/jobs/{job.pk}/").status_code == 200
    scraped = samples(scrape().content.decode())
    routes = {
        dict(labels)["route"]
        for name, labels in scraped
        if name == "inferencehub_http_request_duration_seconds_count"
    }
    assert {"job-detail", "job-page"} <= routes
    assert not any("(?P<" in route or "<uuid" in route for route in routes), routes
    families = {name for name, _ in scraped}
    assert not any(name.startswith("inferencehub_inference_duration") for name in families)
    assert not any(name.startswith("inferencehub_batch_size") for name in families)


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_gunicorn_metrics_add_up_the_requests_of_every_worker_process(process_env, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with started_processes(process_env) as start:
        # gunicorn.conf.py makes the metrics folder, in TMPDIR.
        web = start(
            processes.web(PYTHON, port=port),
            name="web-metrics",
            TMPDIR=str(tmp_path),
            GUNICORN_CMD_ARGS="--workers 3",
            METRICS_TOKEN="metrics-token-for-tests",
        )
        deadline = time.monotonic() + 60
        while web.log_path.read_text().count("Booting worker") < 3:
            assert time.monotonic() < deadline, web.log_path.read_text()[-2000:]
            time.sleep(0.1)
        for _ in range(30):  # a new connection each, so the workers share them
            assert requests.get(f"{url}/healthz", timeout=10).status_code == 200
        key = (
            "inferencehub_http_request_duration_seconds_count",
            (("method", "GET"), ("route", "healthz"), ("status", "200")),
        )
        scrapes = [
            samples(requests.get(f"{url}/metrics", headers=SCRAPER, timeout=10).text)
            for _ in range(6)
        ]
        writers = {path.name for path in tmp_path.glob("inferencehub-web-metrics-*/histogram_*")}
    assert len(writers) >= 2, writers  # more than one process answered
    assert {scraped[key] for scraped in scrapes} == {30}
    # Defined in the web processes too, but counted only by inference workers.
    assert not any(name.startswith("inferencehub_inference_duration") for name, _ in scrapes[0])


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_worker_metrics_count_batches_and_messages_after_real_work(pipeline, api):
    files = [("image", (n, (DATA / n).read_bytes())) for n in ("fox.png", "toaster.png")]
    created = api.post(f"{api.base_url}/api/jobs/", files=files).json()["jobs"]
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        statuses = {api.get(job["url"]).json()["status"] for job in created}
        if statuses == {"succeeded"}:
            break
        time.sleep(0.5)
    assert statuses == {"succeeded"}

    totals = {"batches": 0.0, "messages": 0.0, "inferences": 0.0}
    lag_series = []
    for port in pipeline["worker_metrics_ports"]:
        scraped = samples(requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text)
        worker = (("consumer", "inference worker"),)
        totals["batches"] += scraped.get(("inferencehub_batch_size_count", worker), 0)
        totals["messages"] += scraped.get(("inferencehub_messages_consumed_total", worker), 0)
        totals["inferences"] += scraped.get(
            ("inferencehub_inference_duration_seconds_count", ()), 0
        )
        lag_series += [key for key in scraped if key[0] == "inferencehub_consumer_lag"]
    assert totals["batches"] >= 1
    assert totals["messages"] >= 2
    assert totals["inferences"] >= 1
    assert lag_series, "a worker that handled a batch reports its lag"


def test_json_log_lines_carry_the_job_id_and_the_exception():
    logger = logging.getLogger("test.json")
    record = logger.makeRecord(
        "test.json",
        logging.WARNING,
        __file__,
        1,
        "job %s failed",
        ("abc",),
        None,
        extra={"job_id": "abc"},
    )
    line = JsonFormatter().format(record)
    entry = json.loads(line)
    assert "\n" not in line
    assert entry["message"] == "job abc failed"
    assert entry["job_id"] == "abc"
    assert entry["level"] == "WARNING" and entry["logger"] == "test.json"

    try:
        raise RuntimeError("boom")
    except RuntimeError:
        failed = logger.makeRecord(
            "test.json", logging.ERROR, __file__, 1, "no job here", (), sys.exc_info()
        )
    entry = json.loads(JsonFormatter().format(failed))
    assert "job_id" not in entry
    assert "RuntimeError: boom" in entry["exception"]
