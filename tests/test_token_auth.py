"""API tokens are taken in both header forms: `Token <key>` (DRF's) and `Bearer <key>`."""

import pytest
from rest_framework.authtoken.models import Token

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
