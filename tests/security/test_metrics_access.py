"""The web's /metrics is for Prometheus only, and a scrape does not count the jobs table
each time (issue 22, item 8)."""

import pytest
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext

from predictions.metrics import FIGURES_KEY
from tests.factories import JobFactory

pytestmark = pytest.mark.django_db

TOKEN = "a-metrics-token"


@pytest.fixture
def token(settings):
    settings.METRICS_TOKEN = TOKEN
    cache.delete(FIGURES_KEY)
    return TOKEN


def test_metrics_answer_only_the_bearer_of_the_token(client, token):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": token}):
        refused = client.get("/metrics", headers=headers)
        assert refused.status_code == 401
        assert "METRICS_TOKEN" in refused.json()["error"]
        assert b"inferencehub_" not in refused.content
    scraped = client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert scraped.status_code == 200 and b"inferencehub_jobs" in scraped.content


def test_metrics_are_off_without_a_token(client, settings):
    settings.METRICS_TOKEN = ""
    response = client.get("/metrics", headers={"Authorization": "Bearer "})
    assert response.status_code == 404 and "METRICS_TOKEN" in response.json()["error"]


def test_scrapes_within_the_refresh_interval_read_no_job_table(client, token, settings):
    settings.METRICS_JOBS_REFRESH_SECONDS = 3600
    bearer = {"Authorization": f"Bearer {token}"}
    JobFactory()
    assert (
        b'inferencehub_jobs{status="queued"} 1.0' in client.get("/metrics", headers=bearer).content
    )
    JobFactory()
    with CaptureQueriesContext(connection) as queries:
        for _ in range(5):
            kept = client.get("/metrics", headers=bearer)
    assert not [q["sql"] for q in queries if "predictions_job" in q["sql"]]
    # The kept counts, until the interval has passed.
    assert b'inferencehub_jobs{status="queued"} 1.0' in kept.content
    settings.METRICS_JOBS_REFRESH_SECONDS = 1
    cache.set(FIGURES_KEY, {**cache.get(FIGURES_KEY), "counted_at": 0}, timeout=None)
    recounted = client.get("/metrics", headers=bearer)
    assert b'inferencehub_jobs{status="queued"} 2.0' in recounted.content
