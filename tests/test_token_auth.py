"""API tokens are taken in both header forms: `Token <key>` (DRF's) and `Bearer <key>`."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.authtoken.models import Token

from predictions.authentication import CachedTokenAuthentication
from tests.factories import JobFactory

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("keyword", ["Token", "Bearer"])
def test_a_token_signs_in_with_either_keyword(client, user, keyword):
    job = JobFactory(owner=user)
    key = Token.objects.create(user=user).key
    response = client.get(f"/api/jobs/{job.pk}/", HTTP_AUTHORIZATION=f"{keyword} {key}")
    assert response.status_code == 200
    assert response.json()["id"] == str(job.pk)


def test_a_wrong_bearer_token_is_refused_with_401(client):
    response = client.get("/api/jobs/", HTTP_AUTHORIZATION="Bearer not-a-token")
    assert response.status_code == 401
    assert response.json()["error"] == "Invalid token."


def test_the_schema_names_both_token_forms(client):
    schemes = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()[
        "components"
    ]["securitySchemes"]
    assert schemes["tokenAuth"]["description"].startswith(
        'Token-based authentication with required prefix "Token"'
    )
    assert schemes["bearerAuth"]["scheme"] == "bearer"


def token_queries(client, key: str) -> int:
    """How many queries of the token table one authenticated request made."""
    with CaptureQueriesContext(connection) as queries:
        assert client.get("/api/jobs/", HTTP_AUTHORIZATION=f"Token {key}").status_code == 200
    return sum("authtoken_token" in query["sql"] for query in queries)


def test_a_token_is_looked_up_once_per_cache_period(client, user, settings, monkeypatch):
    settings.API_TOKEN_CACHE_SECONDS = 5
    key = Token.objects.create(user=user).key
    now = [1000.0]
    monkeypatch.setattr("common.readings.time.monotonic", lambda: now[0])
    assert token_queries(client, key) == 1
    now[0] += 4.9
    assert token_queries(client, key) == 0
    now[0] += 0.2
    assert token_queries(client, key) == 1


def test_each_request_gets_its_own_copy_of_a_kept_user(user, rf, settings):
    settings.API_TOKEN_CACHE_SECONDS = 5
    key = Token.objects.create(user=user).key
    request = rf.get("/api/jobs/", HTTP_AUTHORIZATION=f"Token {key}")
    first, _ = CachedTokenAuthentication().authenticate(request)
    first.first_name = "changed by one request"
    second, _ = CachedTokenAuthentication().authenticate(request)
    assert second.pk == first.pk == user.pk
    assert second is not first
    assert second.first_name == user.first_name != "changed by one request"


def test_a_deleted_token_is_refused_at_once(client, user):
    token = Token.objects.create(user=user)
    assert token_queries(client, token.key) == 1
    token.delete()
    response = client.get("/api/jobs/", HTTP_AUTHORIZATION=f"Bearer {token.key}")
    assert response.status_code == 401


def test_a_deactivated_user_is_refused_at_once(client, user):
    key = Token.objects.create(user=user).key
    assert token_queries(client, key) == 1
    user.is_active = False
    user.save()
    response = client.get("/api/jobs/", HTTP_AUTHORIZATION=f"Token {key}")
    assert response.status_code == 401


def test_a_zero_cache_period_looks_the_token_up_every_time(client, user, settings):
    settings.API_TOKEN_CACHE_SECONDS = 0
    key = Token.objects.create(user=user).key
    assert [token_queries(client, key) for _ in range(3)] == [1, 1, 1]
